"""Checkpoints survive a crash and a resumed training repeats an uninterrupted one (issue 23).

With real processes: a checkpoint save SIGKILLed while it writes leaves the previous checkpoint
and no partial file; both bundles' trainings SIGKILLed at a random point after their first
checkpoint and resumed with ``--resume true`` end with bit-identical weights (and, for the
segmentation, the same best-metric ``model.pt``, also with its random augmentations run by two
loader worker processes, the GPU setting). In process: ``--resume`` skips an empty or
truncated newest checkpoint with a warning naming it, and a resumed key-metric saver never lets
a worse network overwrite ``model.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tumoraware.bundle_helpers import latest_checkpoint
from tumoraware.handlers.checkpoint import CheckpointLoader, CheckpointSaver

from ..conftest import REPO_ROOT
from ..integration.bundle_runner import run_bundle

SYNTHESIS = REPO_ROOT / "bundles" / "lung_ct2mri_synthesis"
SEGMENTATION = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation"

# The saver of both bundles, an epoch-level interval checkpoint of one big tensor (64 Mi floats,
# 256 MB), epoch e writing the value e; the test kills it while epoch 2 is being written.
SAVE_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from ignite.engine import Engine, Events
    from tumoraware.handlers.checkpoint import CheckpointSaver

    net = torch.nn.Linear(1, 1)
    net.big = torch.nn.Parameter(torch.zeros(64 * 2**20))
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: net.big.data.fill_(e.state.epoch))
    saver = CheckpointSaver(sys.argv[1], {"net": net, "trainer": engine}, save_interval=1,
                            n_saved=1)
    saver.attach(engine)
    engine.run([0], max_epochs=3)
    """
)

# Slows every iteration down (no random number is drawn) so that a kill lands mid-run.
SLOW = {"+imports": ["$import time", "$import ignite"], "run": [
    "$attach_all(@train#state_handlers, @train#trainer)",
    "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED,"
    " lambda e: time.sleep(0.25))",
    "$@train#trainer.run()",
]}  # fmt: skip


def _start(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """``args`` in a subprocess writing to ``log`` (a pipe nobody reads could fill and stall it)."""
    with open(log, "w") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True, **kwargs)


def _wait_for(condition, timeout_s: float, proc: subprocess.Popen, what: str, log: Path) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            out = log.read_text()[-3000:]
            pytest.fail(f"the process ended ({proc.returncode}) before {what}:\n{out}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


def test_a_save_killed_while_writing_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path):
    log = tmp_path.parent / f"{tmp_path.name}.log"
    proc = _start([sys.executable, "-c", SAVE_SCRIPT, str(tmp_path)], log)
    first, second = tmp_path / "checkpoint_epoch=1.pt", tmp_path / "checkpoint_epoch=2.pt"

    def writing_epoch_2() -> bool:  # a file of epoch 2 (the saver's: a hidden temporary one)
        files = [*tmp_path.glob(".checkpoint_epoch=2.pt.*"), second]
        return any(0 < f.stat().st_size < 128 * 2**20 for f in files if f.exists())

    _wait_for(first.exists, 120, proc, "the first checkpoint", log)
    _wait_for(writing_epoch_2, 120, proc, "the second checkpoint's write", log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not second.exists(), "a partial checkpoint under its final name"
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == [first.name]
    saved = torch.load(first, weights_only=True)  # complete: it loads, with epoch 1's values
    assert saved["trainer"]["iteration"] == 1 and bool((saved["net"]["big"] == 1).all())
    assert latest_checkpoint(tmp_path) == str(first)  # the leftover temporary file is ignored


def _checkpoint(path: Path, epoch: int, mtime: float) -> None:
    torch.save({"trainer": {"epoch": epoch}}, path)
    os.utime(path, (mtime, mtime))


def test_resume_skips_an_empty_or_truncated_newest_checkpoint_naming_it(tmp_path, caplog):
    good = tmp_path / "checkpoint_epoch=2.pt"
    _checkpoint(good, 2, 100.0)
    truncated = tmp_path / "checkpoint_epoch=3.pt"
    _checkpoint(truncated, 3, 200.0)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    os.utime(truncated, (200.0, 200.0))
    empty = tmp_path / "checkpoint_final.pt"
    empty.write_bytes(b"")
    os.utime(empty, (300.0, 300.0))
    with caplog.at_level(logging.WARNING, logger="tumoraware.bundle_helpers"):
        assert latest_checkpoint(tmp_path) == str(good)
    warned = caplog.text
    assert f"skipping {empty}" in warned and "empty (0 bytes)" in warned
    assert f"skipping {truncated}" in warned and "truncated" in warned

    # given such a file explicitly, the loader fails naming it, before loading anything
    loader = CheckpointLoader(str(truncated), {"net": torch.nn.Linear(1, 1)})
    with pytest.raises(RuntimeError, match=r"cannot resume from .*checkpoint_epoch=3\.pt"):
        loader(None)  # type: ignore[arg-type]


def test_an_older_checkpoint_resumes_without_the_new_items_and_names_what_is_missing(
    tmp_path, caplog
):
    from ignite.engine import Engine

    from tumoraware.engines import RandomStates

    net, old = torch.nn.Linear(2, 2), tmp_path / "checkpoint_final.pt"
    trained = Engine(lambda e, b: None)
    trained.run([0, 1], max_epochs=2)
    torch.save({"net": net.state_dict(), "trainer": trained.state_dict()}, old)
    resumed = Engine(lambda e, b: None)
    resumed.state.max_epochs = 5
    load = {"net": torch.nn.Linear(2, 2), "trainer": resumed, "random_states": RandomStates()}
    with caplog.at_level(logging.WARNING, logger="tumoraware.handlers.checkpoint"):
        CheckpointLoader(str(old), load)(resumed)
    assert f"resuming from {old} without ['random_states']" in caplog.text
    assert resumed.state.iteration == 4 and resumed.state.max_epochs == 5
    assert torch.equal(load["net"].weight, net.weight)
    with pytest.raises(
        ValueError, match=r"checkpoint_final\.pt: it lacks \['optimizer', 'random_states'\]"
    ):
        CheckpointLoader(str(old), {**load, "optimizer": torch.optim.SGD(net.parameters())})(
            resumed
        )


# ------------------------------------------------------------------------------------------------
# best-metric record


class _FixedPrediction(torch.nn.Module):
    """Predicts the same one-hot mask whatever the input; ``marker`` tells saved weights apart."""

    def __init__(self, prediction: torch.Tensor, marker: float) -> None:
        super().__init__()
        self.marker = torch.nn.Parameter(torch.tensor(marker))
        self.register_buffer("prediction", prediction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction.expand(x.shape[0], -1, -1, -1) + 0 * self.marker


def _evaluate(folder: Path, dice_of: str, marker: float, epoch: int, record: dict | None):
    """One validation at ``epoch`` of a network with Dice 1 (``"good"``) or about 0.5
    (``"worse"``), with a fresh key-metric saver (restored from ``record`` when given)."""
    from monai.engines import SupervisedEvaluator
    from monai.handlers import MeanDice, from_engine

    label = torch.zeros(1, 2, 8, 8)
    label[:, 1, 2:6, 2:6] = 1
    label[:, 0] = 1 - label[:, 1]
    prediction = label.clone()
    if dice_of == "worse":
        prediction[:, 1, 2:6, 2:4] = 0
        prediction[:, 0] = 1 - prediction[:, 1]
    net = _FixedPrediction(prediction, marker)
    saver = CheckpointSaver(str(folder), {"model": net}, save_key_metric=True,
                            key_metric_filename="model.pt")  # fmt: skip
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=[{"image": torch.zeros(1, 1, 8, 8), "label": label}],
        network=net,
        key_val_metric={"dice": MeanDice(include_background=False,
                                         output_transform=from_engine(["pred", "label"]))},
        val_handlers=[saver],
    )  # fmt: skip
    if record is not None:
        saver.load_state_dict(record)
    evaluator.run(global_epoch=epoch)
    return evaluator, saver


def test_a_resumed_best_metric_saver_never_overwrites_the_best_model_with_a_worse_one(tmp_path):
    first, saver = _evaluate(tmp_path, "good", marker=1.0, epoch=1, record=None)
    assert first.state.best_metric == pytest.approx(1.0) and first.state.best_metric_epoch == 1
    record = saver.state_dict()  # what the trainer's checkpoint holds
    assert record["best_metric_epoch"] == 1 and len(record["key_metric_saved"]) == 1

    resumed, _ = _evaluate(tmp_path, "worse", marker=2.0, epoch=2, record=record)
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["marker"]) == 1.0
    assert resumed.state.best_metric == pytest.approx(1.0)
    assert resumed.state.best_metric_epoch == 1

    _evaluate(tmp_path, "worse", marker=3.0, epoch=2, record=None)  # without the record
    assert float(torch.load(tmp_path / "model.pt", weights_only=True)["marker"]) == 3.0


# ------------------------------------------------------------------------------------------------
# kill and resume: both bundles, real processes


def _bundle_args(configs: list[str], overrides: dict) -> list[str]:
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def _kill_after_first_checkpoint(bundle: Path, configs: list[str], models: Path, **overrides):
    """Run with iterations slowed down, SIGKILL it at a random time after its first interval
    checkpoint appeared; return the delay (for failure messages)."""
    slow = models.parent / "slow.json"
    slow.parent.mkdir(parents=True, exist_ok=True)
    slow.write_text(json.dumps(SLOW))
    args = _bundle_args([*configs, str(slow)], {"ckpt_dir": models, **overrides})
    log = models.parent / "killed.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = _start(args, log, cwd=bundle, env=env)
    first = models / "checkpoint_epoch=1.pt"
    _wait_for(first.exists, 300, proc, "the first checkpoint", log)
    delay = random.uniform(0.0, 0.6)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    out = log.read_text()[-3000:]
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill ({delay:.3f} s):\n{out}"
    return delay


def _same_tensors(a: dict, b: dict) -> list[str]:
    """The keys of state dicts ``a`` and ``b`` whose tensors differ (``torch.equal``)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _kill_resume_compare(bundle: Path, configs: list[str], tmp: Path, nets: list[str], **data):
    epochs = {"max_epochs": 3}
    whole, parts = tmp / "whole" / "models", tmp / "killed" / "models"
    run_bundle(bundle, configs, ckpt_dir=whole, output_dir=whole.parent / "runs", **epochs, **data)
    delay = _kill_after_first_checkpoint(
        bundle, configs, parts, output_dir=parts.parent / "runs", **epochs, **data
    )
    resumed = run_bundle(bundle, configs, ckpt_dir=parts, output_dir=parts.parent / "runs",
                         resume="true", **epochs, **data)  # fmt: skip
    log = resumed.stdout + resumed.stderr
    restored = [line for line in log.splitlines() if "Restored all variables from" in line]
    assert restored, log[-3000:]
    a = torch.load(whole / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    b = torch.load(parts / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    context = f"killed {delay:.3f} s after the first checkpoint; {restored[0]}"
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"], context
    for net in nets:
        assert _same_tensors(a[net], b[net]) == [], f"{net} differs; {context}"
    return a, b, whole, parts, context


@pytest.mark.slow
def test_a_killed_synthesis_training_resumes_to_bit_identical_weights(tmp_path, tiny_world):
    manifest = tiny_world[1]
    configs = ["configs/train.json", "configs/profiles/test.json"]
    a, b, *_ = _kill_resume_compare(
        SYNTHESIS, configs, tmp_path, ["g_ct2mri", "g_mri2ct", "d_mri", "d_ct", "tumour_nets"],
        ct_manifest=manifest, mri_manifest=manifest, val_interval=2,
    )  # fmt: skip
    for pool in ("pool_mri", "pool_ct"):
        assert _same_tensors(dict(enumerate(a[pool]["images"])),
                             dict(enumerate(b[pool]["images"]))) == []  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["in_process", "two_workers"])
def test_a_killed_segmentation_training_resumes_to_the_same_weights_and_best_model(
    tmp_path, tiny_world, workers
):
    configs = [
        "configs/train.json", "configs/variants/week_one_only.json", "configs/profiles/test.json",
    ]  # fmt: skip
    a, b, whole, parts, context = _kill_resume_compare(
        SEGMENTATION, configs, tmp_path, ["network"], mri_manifest=tiny_world[1],
        synthetic_manifest=tmp_path / "none.json", num_workers=workers,
    )  # fmt: skip
    assert a["best_model"] == b["best_model"], context  # the best Dice, its epoch and file
    best = [
        torch.load(m / "model.pt", map_location="cpu", weights_only=True) for m in (whole, parts)
    ]
    assert _same_tensors(*best) == [], context
