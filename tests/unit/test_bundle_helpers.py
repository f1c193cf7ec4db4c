"""`latest_checkpoint`: what `--resume True` continues from, finished or interrupted;
`contoured_mri`: the MRI the synthesis bundle cuts around its tumours; what the trainers log and
how often (`log_every`); `seed_run`, the `deterministic` switch."""

from __future__ import annotations

import json
import os

import pytest
import torch
from monai.utils import set_determinism

from tumoraware.bundle_helpers import (
    checkpoint_objects,
    contoured_mri,
    every_n_iterations,
    iteration_loss,
    latest_checkpoint,
    scalar_losses,
)
from tumoraware.seeding import seed_run


def _touch(path, mtime: float) -> None:
    """A small readable checkpoint with modification time ``mtime``."""
    torch.save({"trainer": {"iteration": 1}}, path)
    os.utime(path, (mtime, mtime))


def test_an_interrupted_run_resumes_from_its_last_interval_checkpoint(tmp_path):
    _touch(tmp_path / "checkpoint_epoch=3.pt", 100.0)
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=3.pt")


def test_the_newest_wins_and_ties_go_to_the_higher_epoch(tmp_path):
    _touch(tmp_path / "checkpoint_final.pt", 100.0)  # an older finished run
    _touch(tmp_path / "checkpoint_epoch=7.pt", 200.0)  # a later run, killed in epoch 8
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=7.pt")
    _touch(tmp_path / "checkpoint_final.pt", 300.0)  # that run finished after all
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final.pt")
    _touch(tmp_path / "checkpoint_epoch=9.pt", 300.0)
    _touch(tmp_path / "checkpoint_final.pt", 250.0)
    _touch(tmp_path / "checkpoint_epoch=10.pt", 300.0)  # same second: epoch 10, not 9
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")


def test_other_files_are_ignored_and_nothing_gives_the_final_path(tmp_path):
    _touch(tmp_path / "model.pt", 500.0)  # best-metric weights are not a full checkpoint
    _touch(tmp_path / "checkpoint_epoch=x.pt", 500.0)
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final.pt")
    assert latest_checkpoint(tmp_path / "missing") == str(tmp_path / "missing/checkpoint_final.pt")


def test_contoured_mri_joins_the_splits_and_every_entry_has_a_label(tiny_world):
    _, manifest = tiny_world
    entries = contoured_mri(manifest, ["mri_week1", "mri_validation"])
    splits = json.loads(manifest.read_text())
    assert len(entries) == len(splits["mri_week1"]) + len(splits["mri_validation"]) > 0
    assert all(os.path.isfile(e["label"]) for e in entries)


@pytest.mark.parametrize(
    ("split", "message"),
    [("mri_contoured", 'no split "mri_contoured"'), ("mri_unlabelled", "has no tumour label")],
)
def test_contoured_mri_names_the_problem_and_both_fixes(tiny_world, split, message):
    _, manifest = tiny_world
    with pytest.raises(ValueError, match=message) as info:
        contoured_mri(manifest, ["mri_week1", split])
    assert "--mri_tumour_regions false" in str(info.value) and str(manifest) in str(info.value)


def test_logging_every_n_iterations_filters_the_iteration_event():
    from ignite.engine import Engine, Events

    assert every_n_iterations(1) is True  # MONAI's plain event, as before the option
    engine = Engine(lambda e, b: None)
    logged = []
    engine.add_event_handler(
        Events.ITERATION_COMPLETED(event_filter=every_n_iterations(3)),
        lambda e: logged.append(e.state.iteration),
    )
    engine.run(range(4), max_epochs=2)
    assert logged == [3, 6]


def test_logged_losses_read_decollated_or_batch_outputs_and_unsynced_tensors():
    batch = {"loss": torch.tensor(0.5), "loss_G": torch.tensor(0.5), "cycle": 2.0,
             "images": {"ct": torch.zeros(1, 1, 2, 2)}}  # fmt: skip
    assert iteration_loss(batch) is batch["loss"]
    assert iteration_loss([{"loss": 0.25}, {"loss": 0.25}]) == 0.25
    assert scalar_losses(batch) == {"loss_G": 0.5, "cycle": 2.0}
    assert scalar_losses([{"loss": 1.0, "loss_D": 3.0}]) == {"loss_D": 3.0}


@pytest.mark.parametrize("deterministic", [True, False, "false", "True"])
def test_seed_run_seeds_and_switches_cudnn(deterministic):
    seed_run(3, deterministic)
    first = torch.rand(2)
    fast = deterministic in (False, "false")
    assert torch.backends.cudnn.benchmark is fast
    assert torch.backends.cudnn.deterministic is not fast
    seed_run(3, deterministic)
    assert torch.equal(torch.rand(2), first)
    seed_run(0)  # the bundles' default
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    set_determinism(seed=None)  # torch's own flags again, for the tests that follow


def test_checkpoint_objects_are_flat_for_ignite_0_4_and_round_trip(tmp_path):
    """ignite 0.4 (MONAI 1.5, MONAI Label) checks every top-level item for ``state_dict``;
    nested dicts become groups that save and load their members."""
    from ignite.handlers import Checkpoint

    net, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    objects = checkpoint_objects({"net": net, "group": {"a": other, "none": None}})
    assert all(callable(getattr(v, "state_dict", None)) for v in objects.values())
    torch.save({k: v.state_dict() for k, v in objects.items()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(state["group"]["a"]["weight"], other.weight)
    with torch.no_grad():
        other.weight.zero_()
    Checkpoint.load_objects(to_load=objects, checkpoint=state)
    assert not torch.equal(other.weight, torch.zeros_like(other.weight))
    with pytest.raises(ValueError, match=r"lacks \['a'\]"):
        objects["group"].load_state_dict({})
