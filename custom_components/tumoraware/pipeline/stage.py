"""One pipeline stage: a bundle run with fixed configs and overrides, skipped when unchanged.

A stage is what a user would type, ``python -m monai.bundle run --config_file [...] --id value``
in a bundle folder, plus what it depends on. Its *content hash* covers everything that decides
its result: the bytes of its config files, its overrides, the bytes of the input files it
names (e.g. manifests) and the hashes of the stages it consumes. A finished stage writes
``stage.json`` (:class:`~tumoraware.pipeline.layout.StageRecord`: hash, wall time, bundle, config
files, overrides and the stage's address in the study) into its run folder last, atomically; a
re-run with the same hash, a record of the current schema and all declared outputs present is
skipped, so an interrupted study continues where it stopped and a changed config re-runs
exactly the stages downstream of the change.

The bundle runs in its own process, with its own memory, exactly as ``python -m monai.bundle
run`` runs it (same module, same ``argv``), but forked from a *forkserver* that has already
imported torch and MONAI: a fresh interpreter spends seconds importing them, a large share of
every short evaluation stage and of the tiny end-to-end demo. The forkserver never
runs a torch op, so forking it is safe (no OpenMP pool to inherit), and each stage still starts
from the same clean state. Its log goes to ``<run_dir>/log.txt`` and drives a progress bar
from MONAI's ``StatsHandler`` lines (``Epoch: e/E, Iter: i/I``). Evaluation and inference runs
print no iteration lines, so their bar counts seconds against an expected duration (a previous
run of the same stage or kind), which gives them an ETA too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import re
import runpy
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tumoraware.pipeline.layout import (
    MARKER,
    StageAddress,
    StageRecord,
    write_stage_record,
)

__all__ = ["BundleStage", "StageResult", "run_stage"]

_TRAIN_PROGRESS = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")


@dataclass(frozen=True)
class BundleStage:
    """One bundle run.

    Args:
        name: unique stage name, e.g. ``"seed0/synthesis/tumour_aware/train"`` (also the run
            folder below the study folder); ``address.name`` for a study stage.
        bundle: the bundle folder (``cwd`` of the run; its configs are relative to it).
        configs: config files relative to ``bundle``, later ones override earlier ones.
        overrides: ``--id value`` pairs (values are passed as ``str``; paths should be absolute).
        inputs: files whose bytes the result depends on (manifests, weights of earlier stages
            are covered by ``after`` instead).
        after: names of the stages whose results this one consumes.
        outputs: files (relative to the run folder) a successful run must leave.
        address: what the stage is in a study (:class:`~tumoraware.pipeline.layout.StageAddress`),
            recorded in its ``stage.json``; None for a stage outside a study layout.
    """

    name: str
    bundle: Path
    configs: Sequence[str]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    inputs: Sequence[Path] = ()
    after: Sequence[str] = ()
    outputs: Sequence[str] = ()
    address: StageAddress | None = None

    def __post_init__(self) -> None:
        if self.address is not None and self.name != self.address.name:
            raise ValueError(
                f"stage {self.name}: its address {self.address} names the folder "
                f"{self.address.name}. Fix: name a study stage by its address."
            )

    def bundle_args(self) -> list[str]:
        """The arguments after ``python -m monai.bundle``: ``run --config_file [...] --id v``."""
        files = "[" + ",".join(f"'{c}'" for c in self.configs) + "]"
        args = ["run", "--config_file", files]
        for key, value in self.overrides.items():
            args += [f"--{key}", str(value)]
        return args

    def command(self) -> list[str]:
        """The ``python -m monai.bundle run`` command line of this stage (what a user types)."""
        return [sys.executable, "-m", "monai.bundle", *self.bundle_args()]

    def content_hash(self, upstream: Mapping[str, str]) -> str:
        """sha256 of configs, overrides, input files and the hashes of ``after`` stages."""
        h = hashlib.sha256()
        for config in self.configs:
            path = Path(self.bundle) / config
            if not path.is_file():
                raise FileNotFoundError(
                    f"stage {self.name}: config {path} does not exist. Fix: check the bundle "
                    "folder and the config names of the stage."
                )
            h.update(config.encode() + b"\0" + path.read_bytes() + b"\0")
        h.update(
            json.dumps({k: str(v) for k, v in self.overrides.items()}, sort_keys=True).encode()
        )
        for item in self.inputs:
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(
                    f"stage {self.name}: input {path} does not exist. Fix: run the stage that "
                    "writes it first, or correct the path."
                )
            h.update(str(path).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        for name in self.after:
            if name not in upstream:
                raise KeyError(
                    f"stage {self.name}: needs stage {name!r} first, which has not run. Fix: "
                    "order the stages so that each comes after the ones it consumes."
                )
            h.update(name.encode() + b"\0" + upstream[name].encode())
        return h.hexdigest()


@dataclass(frozen=True)
class StageResult:
    """What :func:`run_stage` did: ``skipped`` (hash unchanged) or ran for ``wall_s`` seconds."""

    name: str
    content_hash: str
    skipped: bool
    wall_s: float
    run_dir: Path


def _previous_record(run_dir: Path) -> dict[str, Any] | None:
    """The ``stage.json`` of the last finished run in ``run_dir`` (any hash), or None."""
    try:
        record = json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _is_done(record: StageRecord | None, run_dir: Path, stage: BundleStage, digest: str) -> bool:
    """Whether ``record`` is a finished run of exactly this stage, at this address, whose
    outputs still exist (None, e.g. a record of an older schema, counts as changed: it lacks
    fields readers need)."""
    return (
        record is not None
        and record.content_hash == digest
        and record.address == stage.address
        and all((run_dir / out).exists() for out in stage.outputs)
    )


class _SecondsTicker:
    """Advances ``bar`` by wall seconds towards ``expected_s`` until iteration lines take over.

    A daemon thread, so the bar moves between the log reader's polls.
    """

    def __init__(self, bar: tqdm, expected_s: float | None) -> None:
        self.bar = bar
        self.stopped = threading.Event()
        if expected_s:
            bar.unit, bar.total = "s", max(1, round(expected_s))
            self.start = time.perf_counter()
            threading.Thread(target=self._tick, daemon=True).start()
        else:
            self.stopped.set()

    def _tick(self) -> None:
        while not self.stopped.wait(1.0):
            elapsed = time.perf_counter() - self.start
            self.bar.n = min(round(elapsed), self.bar.total - 1)
            self.bar.refresh()

    def stop(self) -> None:
        self.stopped.set()


def _advance(bar: tqdm, line: str, ticker: _SecondsTicker) -> None:
    match = _TRAIN_PROGRESS.search(line)
    if match:
        if not ticker.stopped.is_set():
            ticker.stop()
            bar.unit = "it"
        epoch, epochs, it, iters = (int(g) for g in match.groups())
        bar.total = epochs * iters
        bar.n = (epoch - 1) * iters + it
        bar.refresh()


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*")


def _failure_summary(log_path: Path, tail_lines: int = 15) -> str:
    """The exception lines of a failed run's log (MONAI chains the root cause far above the
    last lines of the traceback) and its last lines."""
    lines = log_path.read_text(errors="replace").splitlines()
    errors = list(dict.fromkeys(line for line in lines if _EXCEPTION_LINE.match(line)))[-5:]
    tail = "\n".join(lines[-tail_lines:])
    return f"Errors: {' | '.join(errors) or 'none found'}. Log ({log_path}), last lines:\n{tail}"


# Imported once by the forkserver, so a stage's process starts with them in sys.modules.
_PRELOAD = ("torch", "monai", "monai.bundle", "monai.engines", "monai.handlers", "ignite.engine")


@functools.cache
def _stage_context() -> multiprocessing.context.BaseContext:
    """A forkserver context preloading :data:`_PRELOAD` (spawn where there is no forkserver)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(_PRELOAD))
    return context


def _bundle_main(args: list[str], cwd: str, log_path: str, env: dict[str, str]) -> None:
    """Child process: ``python -m monai.bundle *args`` in ``cwd`` with environment ``env``,
    stdout and stderr to the log.

    An exception or ``SystemExit`` leaves through multiprocessing, which prints the traceback
    to stderr (the log) and sets the exit code.
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    os.environ.clear()  # the caller's environment now, not the forkserver's at its start
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        # OpenMP read the variable when the forkserver loaded torch; a new value needs this.
        import torch

        torch.set_num_threads(int(threads))
    os.chdir(cwd)
    sys.argv = ["monai.bundle", *args]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


def _follow(
    log_path: Path,
    proc: multiprocessing.process.BaseProcess,
    on_line: Callable[[str], None],
    cancel: threading.Event | None = None,
) -> None:
    """Call ``on_line`` for each complete line the running ``proc`` appends to ``log_path``;
    return when ``proc`` ends or ``cancel`` is set."""
    pending = ""
    with open(log_path, errors="replace") as log:
        while True:
            alive = proc.is_alive() and not (cancel is not None and cancel.is_set())
            pending += log.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                on_line(line)
            if not alive:
                break
            proc.join(0.25)
    if pending:
        on_line(pending)


def run_stage(
    stage: BundleStage,
    run_dir: Path,
    upstream: Mapping[str, str],
    progress: bool = True,
    env: Mapping[str, str] | None = None,
    expected_s: float | None = None,
    position: int | None = None,
    cancel: threading.Event | None = None,
) -> StageResult:
    """Run ``stage`` into ``run_dir`` unless an identical run already finished there.

    The bar shows an ETA before, or without, MONAI's iteration lines: the wall time of the
    last run in ``run_dir`` (even of another hash), else ``expected_s`` (e.g. the last stage of
    the same kind); ``position`` is its tqdm line when several stages run at once. The stage's
    process gets this process's environment plus ``env`` (``OMP_NUM_THREADS`` included: it
    sets torch's thread count). Setting ``cancel`` (from another thread) terminates the run.

    As with any multiprocessing code, a script that calls this needs an
    ``if __name__ == "__main__":`` guard (the stage's process imports the main module).

    Raises:
        RuntimeError: the bundle run failed; the message has the last lines of its log and
            the log's path. ``stage.json`` is then not written, so the next call runs it again.
    """
    run_dir = Path(run_dir)
    digest = stage.content_hash(upstream)
    record = _previous_record(run_dir)
    done = StageRecord.from_json(record)
    if done is not None and _is_done(done, run_dir, stage, digest):
        return StageResult(stage.name, digest, True, done.wall_s, run_dir)
    with contextlib.suppress(KeyError, TypeError, ValueError):  # no usable wall time: keep ours
        expected_s = float(record["wall_s"]) if record is not None else expected_s
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).unlink(missing_ok=True)  # a stale marker must not survive a failed rerun
    log_path = run_dir / "log.txt"
    log_path.write_text("")  # exists before the child opens it, so the reader can follow it
    start = time.perf_counter()
    with tqdm(
        desc=stage.name, unit="it", disable=not progress, leave=False, position=position
    ) as bar:
        proc = _stage_context().Process(
            target=_bundle_main,
            args=(
                stage.bundle_args(),
                str(stage.bundle),
                str(log_path),
                {**os.environ, **(env or {})},
            ),
            name=f"stage {stage.name}",
        )
        ticker = _SecondsTicker(bar, expected_s if progress else None)
        try:
            proc.start()
            _follow(log_path, proc, lambda line: _advance(bar, line, ticker), cancel)
            if cancel is None or not cancel.is_set():
                proc.join()
        finally:
            ticker.stop()
            if proc.is_alive():  # Ctrl-C or an error in the parent: do not leave it running
                proc.terminate()
                proc.join()
    code = proc.exitcode
    wall = time.perf_counter() - start
    if code != 0 and cancel is not None and cancel.is_set():
        raise RuntimeError(f"stage {stage.name} cancelled after {wall:.0f} s; run it again.")
    if code != 0:
        raise RuntimeError(
            f"stage {stage.name} failed (exit {code}) after {wall:.0f} s. "
            + _failure_summary(log_path)
        )
    missing = [out for out in stage.outputs if not (run_dir / out).exists()]
    if missing:
        raise RuntimeError(
            f"stage {stage.name} finished but did not write {missing} in {run_dir}. Fix: check "
            f"the stage's output overrides; its log is {log_path}."
        )
    write_stage_record(
        run_dir,
        StageRecord(
            name=stage.name,
            content_hash=digest,
            wall_s=round(wall, 3),
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            bundle=str(stage.bundle),
            configs=tuple(stage.configs),
            overrides=dict(stage.overrides),
            address=stage.address,
            command=tuple(stage.command()[1:]),
        ),
    )
    return StageResult(stage.name, digest, False, wall, run_dir)
