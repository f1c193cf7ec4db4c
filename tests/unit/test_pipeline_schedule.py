"""`run_stages`: real `python -m monai.bundle run` stages of a small config, several at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tumoraware.pipeline import BundleStage, run_stage
from tumoraware.pipeline.schedule import run_stages, threads_per_stage

# Logs its start to the shared journal, optionally waits for a peer stage to have started
# (so it can only succeed when both run at once), needs its inputs' results, records torch's
# thread count, then writes its own result.
CONFIG = {
    "imports": ["$import os", "$import time", "$import torch"],
    "out_dir": "/tmp/unset",
    "journal": "/tmp/unset",
    "name": "unset",
    "wait_for": "",
    "needs": [],
    "fail": False,
    "sleep": 0.0,
    "run": [
        "$open(@journal, 'a').write(@name + '\\n')",
        "$open(@out_dir + '/started', 'w').write('1')",
        "$[time.sleep(0.05) for _ in range(600) if @wait_for and not os.path.exists(@wait_for)]",
        "$1 / 0 if @wait_for and not os.path.exists(@wait_for) else None",
        "$1 / 0 if not all(os.path.exists(p) for p in @needs) else None",
        "$1 / 0 if @fail else None",
        "$time.sleep(@sleep)",
        "$open(@out_dir + '/threads.txt', 'w').write(str(torch.get_num_threads()))",
        "$open(@out_dir + '/result.txt', 'w').write('done')",
    ],
}


@pytest.fixture
def bundle(config_bundle) -> Path:
    return config_bundle(CONFIG)


def _stage(bundle: Path, out: Path, name: str, after=(), **overrides) -> BundleStage:
    needs = [str(out / a / "result.txt") for a in after]
    values = {"out_dir": out / name, "journal": out / "journal.txt", "name": name,
              "needs": needs, **overrides}  # fmt: skip
    return BundleStage(name=name, bundle=bundle, configs=["configs/run.json"],
                       overrides=values, after=list(after), outputs=["result.txt"])  # fmt: skip


def _journal(out: Path) -> list[str]:
    return (out / "journal.txt").read_text().split()


def test_independent_stages_run_at_once_and_dependents_wait(bundle, tmp_path):
    out = tmp_path / "study"
    a_started, b_started = out / "a" / "started", out / "b" / "started"
    stages = [
        _stage(bundle, out, "a", wait_for=b_started),  # fails unless b runs beside it
        _stage(bundle, out, "b", wait_for=a_started),
        _stage(bundle, out, "c", after=["a", "b"]),  # fails if it starts before a and b end
    ]
    lines: list[str] = []
    results = run_stages(stages, out, workers=2, progress=False, on_line=lines.append)
    assert [r.name for r in results] == ["a", "b", "c"] and not any(r.skipped for r in results)
    assert _journal(out)[-1] == "c" and sorted(_journal(out)[:2]) == ["a", "b"]
    assert len(lines) == 3 and lines[-1].startswith("c: done in ")
    expected = str(threads_per_stage(2))  # the cores shared out: 1 each on 2 cores
    assert all((out / n / "threads.txt").read_text() == expected for n in "abc")

    again = run_stages(stages, out, workers=2, progress=False, on_line=lines.append)
    assert all(r.skipped for r in again)
    assert sorted(lines[-3:]) == [f"{n}: unchanged, skipped" for n in "abc"]
    assert [r.content_hash for r in again] == [r.content_hash for r in results]


def test_the_stage_with_most_work_downstream_starts_first(bundle, tmp_path):
    out = tmp_path / "study"
    stages = [
        _stage(bundle, out, "leaf"),
        _stage(bundle, out, "root"),
        _stage(bundle, out, "mid", after=["root"]),
        _stage(bundle, out, "end", after=["mid"]),
    ]
    run_stages(stages, out, workers=1, progress=False, on_line=lambda _: None)
    assert _journal(out) == ["root", "mid", "leaf", "end"]  # leaf, end: a tie, study order
    assert (out / "root" / "threads.txt").exists()


def test_a_failure_stops_new_stages_but_keeps_the_running_ones(bundle, tmp_path):
    out = tmp_path / "study"
    stages = [
        _stage(bundle, out, "slow", sleep=2.0),
        _stage(bundle, out, "bad", fail=True),
        _stage(bundle, out, "after_slow", after=["slow"]),
    ]
    lines: list[str] = []
    with pytest.raises(RuntimeError, match=r"stage bad failed .*ZeroDivisionError"):
        run_stages(stages, out, workers=2, progress=False, on_line=lines.append)
    assert (out / "slow" / "stage.json").exists()  # finished, so the next run skips it
    assert not (out / "bad" / "stage.json").exists() and not (out / "after_slow").exists()
    assert "bad: failed; waiting for 1 running stage(s) to finish (Ctrl-C stops them)" in lines


@pytest.mark.parametrize(
    ("names_after", "error", "message"),
    [
        ([("a", []), ("a", [])], ValueError, r"\['a'\] appear twice"),
        ([("a", ["ghost"])], KeyError, r"needs \['ghost'\], which are not in the study"),
        ([("a", ["b"]), ("b", ["a"])], ValueError, r"wait on each other"),
    ],
)
def test_an_invalid_stage_graph_is_a_clear_error(bundle, tmp_path, names_after, error, message):
    stages = [_stage(bundle, tmp_path, n, after=a) for n, a in names_after]
    with pytest.raises(error, match=message):
        run_stages(stages, tmp_path, workers=2, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        run_stages(stages, tmp_path, workers=0, progress=False)


def test_cancel_terminates_a_running_stage(bundle, tmp_path):
    run_dir = tmp_path / "long"
    stage = _stage(bundle, tmp_path, "long", sleep=60.0)
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="stage long cancelled"):
        run_stage(stage, run_dir, {}, progress=False, cancel=cancel)
    assert time.perf_counter() - start < 30 and not (run_dir / "stage.json").exists()


def test_ctrl_c_terminates_the_running_stages(bundle, tmp_path):
    out = tmp_path / "study"
    stages = [_stage(bundle, out, "one", sleep=60.0), _stage(bundle, out, "two", sleep=60.0)]

    def press_ctrl_c_once_both_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
            (out / n / "started").exists() for n in ("one", "two")
        ):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    # A job started with `&` by a non-interactive shell (no job control) inherits SIGINT
    # ignored (POSIX), and Python then keeps SIG_IGN: pytest launched that way would see no
    # Ctrl-C at all. An interactive shell gives Python its own handler; install it for this
    # test and put back what was there.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=press_ctrl_c_once_both_run, daemon=True).start()
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_stages(stages, out, workers=2, progress=False, on_line=lambda _: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - start < 50  # start-up, then seconds: not the stages' 60 s
    assert not multiprocessing.active_children()  # their processes were terminated
    assert sorted(_journal(out)) == ["one", "two"]  # both had started
    assert not any((out / n / "stage.json").exists() for n in ("one", "two"))
