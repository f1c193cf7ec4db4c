"""A killed study leaves nothing running, resumes its training, and never shares a folder (issue
23).

With real processes: the tiny study's week-one-only training (``study_driver``) is SIGKILLed
at a random point between checkpoints, without its process group, as when only the study's
process is killed; SIGTERM and SIGHUP are sent to a study running a long stage of a small
config; the folder lock and the override check are driven through ``run_stage``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from tumoraware.pipeline import BundleStage, run_stage
from tumoraware.pipeline.layout import INTERRUPTED_LOG, LOCK, STARTED
from tumoraware.pipeline.lock import FolderBusyError, FolderLock, StaleLockWarning
from tumoraware.pipeline.stage import OverrideWarning, check_overrides
from tumoraware.pipeline.study import study_stages

from ..conftest import REPO_ROOT
from .study_driver import TRAIN

BUNDLES = REPO_ROOT / "bundles"
EPOCHS = 6

# Counts its runs, can fail after writing a checkpoint (while a flag file exists, which is not
# part of the stage's hash) and records whether it was asked to resume; or waits `sleep` s.
CONFIG = {
    "imports": ["$import os", "$import time", "$import torch"],
    "out_dir": "/tmp/unset",
    "resume": False,
    "sleep": 0.0,
    "fail": False,
    "run": [
        "$open(@out_dir + '/started', 'w').write('1')",
        "$open(@out_dir + '/resumed.txt', 'a').write(str(@resume) + '\\n')",
        "$os.makedirs(@out_dir + '/models', exist_ok=True)",
        "$torch.save({'epoch': 1}, @out_dir + '/models/checkpoint_epoch=1.pt')",
        "$1 / 0 if os.path.exists(@out_dir + '/../fail_once') else None",
        "$time.sleep(@sleep)",
        "$open(@out_dir + '/result.txt', 'w').write('done')",
    ],
}


def _default_hangup() -> None:
    """In the child before exec: SIGHUP back to its default action (``nohup`` sets it ignored)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture
def bundle(config_bundle) -> Path:
    return config_bundle(CONFIG)


def _stage(bundle: Path, run_dir: Path, **overrides: object) -> BundleStage:
    return BundleStage(name="s", bundle=bundle, configs=["configs/run.json"],
                       overrides={"out_dir": run_dir, **overrides}, outputs=["result.txt"],
                       checkpoints="models")  # fmt: skip


def _study_processes(token: str) -> list[int]:
    """PIDs of live (not zombie) processes whose environment carries ``token``: the study
    started with it and everything it started, in any process group or session."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if token.encode() not in (proc / "environ").read_bytes():
                continue
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] not in "ZX":
            pids.append(int(proc.name))
    return pids


def _wait_until_gone(token: str, timeout_s: float = 15.0) -> float:
    """Seconds until no process of the study runs; fails the test after ``timeout_s``."""
    start = time.monotonic()
    while _study_processes(token):
        assert time.monotonic() - start < timeout_s, f"still running: {_study_processes(token)}"
        time.sleep(0.1)
    return time.monotonic() - start


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def _last_checkpoint(train_dir: Path) -> int:
    """The epoch of the newest ``checkpoint_epoch=N.pt`` of a training, 0 before the first."""
    names = [p.name for p in (train_dir / "models").glob("checkpoint_epoch=*.pt")]
    return max((int(n.split("=")[1].split(".")[0]) for n in names), default=0)


def _driver(out: Path, manifest: Path, token: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.study_driver", str(out), str(manifest),
         str(EPOCHS)],
        cwd=REPO_ROOT, env={**os.environ, "TA_STUDY_TOKEN": token}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    return output


def _result(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.slow
def test_a_killed_study_leaves_nothing_running_and_its_training_resumes(tiny_world, tmp_path):
    _, manifest = tiny_world
    whole = _finish(_driver(tmp_path / "whole", manifest, uuid.uuid4().hex))

    out, token = tmp_path / "killed", uuid.uuid4().hex
    train_dir = out / TRAIN
    after = random.randint(1, EPOCHS - 2)  # kill during a random epoch after this one
    proc = _driver(out, manifest, token)
    try:
        deadline = time.monotonic() + 300
        while _last_checkpoint(train_dir) < after:
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the training wrote no checkpoint in time"
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 0.5))
        assert proc.poll() is None and not (train_dir / "stage.json").exists(), after
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the study's process only: its children must follow
        proc.communicate()
    assert _wait_until_gone(token) < 10.0
    before = _snapshot(out)
    time.sleep(3.0)
    assert _snapshot(out) == before, "something still writes into the study folder"
    assert (train_dir / LOCK).exists() and (train_dir / STARTED).exists()  # killed: stale

    resumed = _finish(_driver(out, manifest, uuid.uuid4().hex))
    assert f"{TRAIN}: done in " in resumed and "resumed from its checkpoints" in resumed
    assert "took over a stale lock" in resumed
    log = (train_dir / "log.txt").read_text()
    assert log.startswith("tumoraware: ") and "resuming an interrupted training" in log
    assert "Restored all variables from" in log and "Epoch: 1/" not in log, after
    assert (train_dir / INTERRUPTED_LOG).exists() and "Epoch: 1/" in (
        train_dir / INTERRUPTED_LOG
    ).read_text()
    assert not (train_dir / LOCK).exists() and not (train_dir / STARTED).exists()
    # The final numbers equal those of the run that was never interrupted, to the bit.
    assert _result(resumed) == _result(whole)
    weights = [torch.load(d / TRAIN / "models" / "model.pt", map_location="cpu")
               for d in (out, tmp_path / "whole")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_of_the_study_stops_its_stages(bundle, tmp_path, signum):
    out, token = tmp_path / "study", uuid.uuid4().hex
    script = textwrap.dedent(f"""
        from pathlib import Path
        from tumoraware.pipeline import BundleStage
        from tumoraware.pipeline.schedule import run_stages
        if __name__ == "__main__":
            out = Path({str(out)!r})
            stage = BundleStage(name="long", bundle=Path({str(bundle)!r}),
                                configs=["configs/run.json"],
                                overrides={{"out_dir": out / "long", "sleep": 120}},
                                outputs=["result.txt"], checkpoints="models")
            run_stages([stage], out, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                            env={**os.environ, "TA_STUDY_TOKEN": token},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            # a study started under nohup keeps ignoring SIGHUP, by design; the
                            # test's own runner may be such a process, so give the child defaults
                            preexec_fn=_default_hangup)  # fmt: skip
    run_dir = out / "long"
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "started").exists():
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signum)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, output[-4000:]
    assert f"{signal.Signals(signum).name}: stopping the running stages" in output
    assert _wait_until_gone(token) < 10.0
    assert not (run_dir / LOCK).exists()  # stopped in order: the lock is released
    assert (run_dir / STARTED).exists() and not (run_dir / "stage.json").exists()


def test_a_failed_training_resumes_and_a_changed_one_starts_afresh(bundle, tmp_path):
    run_dir, flag = tmp_path / "run", tmp_path / "fail_once"
    flag.write_text("")
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        run_stage(_stage(bundle, run_dir), run_dir, {}, progress=False)
    assert (run_dir / "models" / "checkpoint_epoch=1.pt").exists()
    flag.unlink()
    result = run_stage(_stage(bundle, run_dir), run_dir, {}, progress=False)
    assert result.resumed and not result.skipped
    assert (run_dir / "resumed.txt").read_text().split() == ["False", "True"]
    assert "resuming an interrupted training" in (run_dir / "log.txt").read_text()
    assert "ZeroDivisionError" in (run_dir / INTERRUPTED_LOG).read_text()
    assert not (run_dir / STARTED).exists()

    flag.write_text("")
    with pytest.raises(RuntimeError):
        run_stage(_stage(bundle, run_dir, sleep=0.01), run_dir, {}, progress=False)
    flag.unlink()
    (run_dir / "resumed.txt").unlink()
    # Another hash than the interrupted run's: its checkpoints are not this run's to continue.
    changed = run_stage(_stage(bundle, run_dir, sleep=0.02), run_dir, {}, progress=False)
    assert not changed.resumed and (run_dir / "resumed.txt").read_text().split() == ["False"]
    # A stage without a checkpoint folder always starts afresh.
    plain = BundleStage(name="p", bundle=bundle, configs=["configs/run.json"],
                        overrides={"out_dir": tmp_path / "plain"},
                        outputs=["result.txt"])  # fmt: skip
    flag.write_text("")
    with pytest.raises(RuntimeError):
        run_stage(plain, tmp_path / "plain", {}, progress=False)
    flag.unlink()
    assert not run_stage(plain, tmp_path / "plain", {}, progress=False).resumed


def test_a_held_folder_refuses_a_second_run_and_a_stale_lock_is_taken_over(bundle, tmp_path):
    run_dir = tmp_path / "run"
    cancel, errors = threading.Event(), []

    def first() -> None:
        try:
            run_stage(_stage(bundle, run_dir, sleep=120), run_dir, {}, progress=False,
                      cancel=cancel)  # fmt: skip
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "started").exists():
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        holders = json.loads((run_dir / LOCK).read_text())["holders"]
        stage_pid = holders[1]["pid"]
        with pytest.raises(FolderBusyError) as busy:
            run_stage(_stage(bundle, run_dir), run_dir, {}, progress=False)
        message = str(busy.value)
        assert str(run_dir) in message and str(os.getpid()) in message
        assert str(stage_pid) in message and "Fix:" in message
    finally:
        cancel.set()
        thread.join(60)
    assert "cancelled" in str(errors[0]) and not (run_dir / LOCK).exists()

    # A lock left by a killed run: its process is gone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run_dir / LOCK).write_text(json.dumps({
        "host": os.uname().nodename, "started": "2026-01-01T00:00:00", "token": "old",
        "holders": [{"pid": dead.pid, "start_ticks": None}]}))  # fmt: skip
    with pytest.warns(StaleLockWarning, match=rf"stale lock of PID {dead.pid}\b"):
        assert not run_stage(_stage(bundle, run_dir), run_dir, {}, progress=False).skipped
    assert not (run_dir / LOCK).exists()

    # A PID that now belongs to another process (same PID, other start time) is stale too.
    lock = FolderLock(tmp_path / "reused", "x")
    lock.acquire()
    held = json.loads(lock.path.read_text())
    held["holders"][0]["start_ticks"] = -1
    lock.path.write_text(json.dumps({**held, "token": "old"}))
    with pytest.warns(StaleLockWarning):
        FolderLock(tmp_path / "reused", "y").acquire()
    # A lock of another host cannot be checked from here: it is left alone.
    lock.path.write_text(json.dumps({**held, "host": "elsewhere", "token": "old"}))
    with pytest.raises(FolderBusyError, match="on host elsewhere"):
        FolderLock(tmp_path / "reused", "z").acquire()


def test_unknown_override_ids_warn_with_the_closest_defined_id(bundle, tmp_path):
    synthesis = BUNDLES / "lung_ct2mri_synthesis"
    messages = check_overrides(
        synthesis, ["configs/train.json", "configs/profiles/test.json"],
        {"max_epoch": 1, "ct_manifst": "x", "train#trainer#max_epoch": 1, "max_epochs": 1,
         "train#trainer#max_epochs": 1, "ckpt_dir": "x"},
    )  # fmt: skip
    assert len(messages) == 3
    for typo, closest in [("max_epoch", "max_epochs"), ("ct_manifst", "ct_manifest"),
                          ("train#trainer#max_epoch", "train#trainer#max_epochs")]:  # fmt: skip
        assert any(m.startswith(f"--{typo} ") and f"did you mean --{closest}?" in m
                   for m in messages)  # fmt: skip
    # Every override of the study is an id of its configs, `resume` of both trainings too.
    world = json.dumps({"ct_train": [{}], "ct_test": [{}]})
    (tmp_path / "m.json").write_text(world)
    for stage in study_stages(BUNDLES, tmp_path / "s", tmp_path / "m.json", tmp_path / "m.json",
                              0, "test"):  # fmt: skip
        ids = [*stage.overrides, *(["resume"] if stage.checkpoints else [])]
        assert check_overrides(stage.bundle, stage.configs, ids) == [], stage.name

    run_dir = tmp_path / "run"
    with pytest.warns(OverrideWarning, match=r"--slep is not an id .*did you mean --sleep\?"):
        run_stage(_stage(bundle, run_dir, slep=1), run_dir, {}, progress=False)
    assert "did you mean --sleep?" in (run_dir / "log.txt").read_text()
