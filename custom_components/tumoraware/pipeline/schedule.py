"""Run a study's stages several at a time, each as soon as the stages it consumes are done.

Why: on the 2-core CPU the demo targets, one training process does not keep both cores busy
(data loading, the Python engine loop and small convolutions are serial), so two 1-thread
stages side by side get more done than one 2-thread stage. The study's stages form a DAG (three
synthesis chains, five segmentation chains, ``BundleStage.after``), so most of them can overlap.

Each running stage gets ``cores // workers`` threads (``OMP_NUM_THREADS``), so ``workers``
stages never oversubscribe the cores. Results stay deterministic per seed: every stage is its
own seeded process; only its thread count can change float summation order. Among the stages
that are ready, the one with the most stages downstream of it starts first (the critical path
of this DAG), ties in study order. When a stage fails, no new stage starts, the running ones
finish (their work is kept for the next run) and the first error is raised; Ctrl-C, SIGTERM or
SIGHUP of the study's process terminates the running ones (their process groups), so no stage
goes on writing after the study has stopped; a killed training resumes on the next run.

The scheduler is written here because neither MONAI nor ignite schedules whole processes by
dependency; it is a thread per running stage around :func:`run_stage`, with the standard
library's :mod:`concurrent.futures`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm

from tumoraware.pipeline.stage import BundleStage, StageResult, run_stage

__all__ = ["available_cores", "run_stages", "threads_per_stage"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_stage(workers: int) -> int | None:
    """Threads each of ``workers`` concurrent stages gets: the cores shared out, at least 1;
    None for one stage at a time (torch's default, the stage has the machine to itself)."""
    return max(1, available_cores() // workers) if workers > 1 else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _kind(stage: BundleStage) -> str:
    """The stages whose wall time estimates this one's: a study stage's kind, step and split
    (``segmentation/evaluate/mri_test`` for every method and seed); else its own name."""
    return stage.address.group if stage.address is not None else stage.name


def _check_graph(stages: Sequence[BundleStage]) -> None:
    """Unique names, every ``after`` names a stage of the list, no cycle; else a clear error."""
    names = [s.name for s in stages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"stages {duplicates} appear twice. Fix: give every stage its own name.")
    known = set(names)
    for stage in stages:
        unknown = [a for a in stage.after if a not in known]
        if unknown:
            raise KeyError(
                f"stage {stage.name}: needs {unknown}, which are not in the study. Fix: add "
                "those stages or remove them from its `after`."
            )
    done: set[str] = set()
    waiting = list(stages)
    while waiting:  # peel off stages whose inputs are all done; a cycle is what remains
        ready = [s for s in waiting if set(s.after) <= done]
        if not ready:
            raise ValueError(
                f"stages {[s.name for s in waiting]} wait on each other (a cycle in `after`). "
                "Fix: make the stage graph acyclic."
            )
        done.update(s.name for s in ready)
        waiting = [s for s in waiting if s.name not in done]


def _downstream_counts(stages: Sequence[BundleStage]) -> dict[str, int]:
    """Per stage, how many stages consume its result directly or indirectly."""
    children: dict[str, list[str]] = {s.name: [] for s in stages}
    for stage in stages:
        for parent in stage.after:
            children[parent].append(stage.name)

    @functools.cache
    def reach(name: str) -> frozenset[str]:
        return frozenset(children[name]).union(*(reach(c) for c in children[name]))

    return {name: len(reach(name)) for name in children}


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``SystemExit(128 + signal)`` in the main thread while the
    stages run, so they are stopped as on Ctrl-C instead of the study dying without a word.

    Only where a signal has its default action: ``nohup`` (SIGHUP ignored) keeps working; a
    later signal of either kind is ignored while the stages are being stopped.
    """
    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = [sig for sig in wanted if signal.getsignal(sig) == signal.SIG_DFL]

    def stop(signum: int, _frame: object) -> None:
        for sig in installed:
            signal.signal(sig, signal.SIG_IGN)
        print(f"{signal.Signals(signum).name}: stopping the running stages", file=sys.stderr)
        raise SystemExit(128 + signum)

    for sig in installed:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig in installed:
            signal.signal(sig, signal.SIG_DFL)


def run_stages(
    stages: Sequence[BundleStage],
    out_dir: Path,
    workers: int = 1,
    progress: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> list[StageResult]:
    """Run (or skip, when unchanged) every stage into ``out_dir / stage.name``, up to
    ``workers`` at once; return their results in the order of ``stages``.

    One line per finished stage (``<name>: done in 1m02s`` or ``<name>: unchanged, skipped``)
    goes to ``on_line`` (default: printed above the progress bars).

    Raises:
        ValueError, KeyError: the stages do not form a valid graph (names, ``after``, cycles).
        RuntimeError: a stage failed; the message is :func:`run_stage`'s, with its log.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: run at least 1 stage at a time.")
    _check_graph(stages)
    order = {s.name: i for i, s in enumerate(stages)}
    downstream = _downstream_counts(stages)
    threads = threads_per_stage(workers)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    pending = list(stages)
    hashes: dict[str, str] = {}
    results: dict[str, StageResult] = {}
    walls: dict[str, float] = {}
    running: dict[Future[StageResult], tuple[BundleStage, int]] = {}
    free_positions = list(range(1, workers + 1))
    errors: list[BaseException] = []
    cancel = threading.Event()

    with (
        _stop_on_signals(),
        tqdm(total=len(stages), desc="study", unit="stage", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stage") as pool,
    ):
        say = on_line or bar.write

        def start_ready() -> None:
            while free_positions and not errors:
                ready = [s for s in pending if all(a in hashes for a in s.after)]
                if not ready:
                    return
                stage = min(ready, key=lambda s: (-downstream[s.name], order[s.name]))
                pending.remove(stage)
                position = free_positions.pop(0)
                future = pool.submit(
                    run_stage, stage, Path(out_dir) / stage.name, dict(hashes), progress,
                    env, walls.get(_kind(stage)), position, cancel,
                )  # fmt: skip
                running[future] = (stage, position)

        try:
            start_ready()
            while running:
                # a timeout, so a KeyboardInterrupt is raised within 0.5 s even where no
                # signal interrupts the blocked wait (e.g. `_thread.interrupt_main`)
                finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    stage, position = running.pop(future)
                    free_positions.append(position)
                    try:
                        result = future.result()
                    except Exception as error:  # re-raised once the running stages finish
                        errors.append(error)
                        if running:
                            say(f"{stage.name}: failed; waiting for {len(running)} running "
                                "stage(s) to finish (Ctrl-C stops them)")  # fmt: skip
                        continue
                    if result.wall_s:  # a skipped stage's recorded time is as good an estimate
                        walls[_kind(stage)] = result.wall_s
                    hashes[stage.name] = result.content_hash
                    results[stage.name] = result
                    done = f"done in {_duration(result.wall_s)}" + (
                        ", resumed from its checkpoints" if result.resumed else ""
                    )
                    say(f"{stage.name}: {'unchanged, skipped' if result.skipped else done}")
                    bar.update()
                start_ready()
        except BaseException:
            cancel.set()  # Ctrl-C, SIGTERM (or a bug): terminate the running stages' processes
            raise
    if errors:
        raise errors[0]
    return [results[s.name] for s in stages]
