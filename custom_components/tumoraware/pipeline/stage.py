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

A killed or failed *training* resumes: its stage declares its checkpoint folder
(:attr:`BundleStage.checkpoints`), each run notes its content hash in ``stage.started.json``
first, and a re-run of the same hash that finds checkpoints there passes ``--resume True`` (the
bundle's ``CheckpointLoader`` then continues from the newest one) instead of training from
scratch. The override is not part of the hash: a resumed stage is the same stage. Any other
stage, and a training whose hash changed, starts afresh (its declared outputs and checkpoints
removed first).

A stage's process never outlives the run that started it: it runs in its own session (a
terminal's Ctrl-C or hang-up reaches only the study, which then stops its stages in order), and
it dies with its parent, the forkserver, which exits as soon as the study's process is gone
(``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread checking the parent and the study's PID
everywhere). While it runs, its folder is locked (:class:`~tumoraware.pipeline.lock.FolderLock`),
so a second run cannot write into it.

Before a run, every override id is looked up in the stage's merged configs: MONAI defines an
unknown ``--id`` as a new id, so a typo (``--max_epoch``) would be silently ignored; it gets a
warning, with the closest defined id, on the console and in the stage's log.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import functools
import hashlib
import json
import multiprocessing
import os
import re
import runpy
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tumoraware.atomic import write_json_atomic
from tumoraware.bundle_helpers import checkpoint_problem, latest_checkpoint
from tumoraware.errors import innermost_error
from tumoraware.pipeline.layout import (
    INTERRUPTED_LOG,
    LOG,
    MARKER,
    STARTED,
    StageAddress,
    StageRecord,
    write_stage_record,
)
from tumoraware.pipeline.lock import FolderLock

__all__ = ["BundleStage", "OverrideWarning", "StageResult", "check_overrides", "run_stage"]

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
        checkpoints: a training's checkpoint folder (its ``ckpt_dir``) relative to the run
            folder, for a bundle whose config has a ``resume`` id; an interrupted run of the
            same hash resumes from there. None: the stage always reruns from scratch.
        run_args: further ``--key value`` pairs that do not change the stage's result (e.g.
            ``tracking``, ``run_name``): passed on, left out of its content hash.
    """

    name: str
    bundle: Path
    configs: Sequence[str]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    inputs: Sequence[Path] = ()
    after: Sequence[str] = ()
    outputs: Sequence[str] = ()
    address: StageAddress | None = None
    checkpoints: str | None = None
    run_args: Mapping[str, Any] = field(default_factory=dict)

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
        for key, value in {**self.overrides, **self.run_args}.items():
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
    """What :func:`run_stage` did: ``skipped`` (hash unchanged) or ran for ``wall_s`` seconds,
    ``resumed`` from the checkpoints of an interrupted run."""

    name: str
    content_hash: str
    skipped: bool
    wall_s: float
    run_dir: Path
    resumed: bool = False


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


class OverrideWarning(UserWarning):
    """A bundle override names an id that the stage's configs do not define."""


_RUN_ARGS = frozenset(
    {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
     "args_file"}
)  # fmt: skip
"""``monai.bundle run``'s own arguments: not config ids."""


def _closest_id(config: Any, parts: list[str]) -> str | None:
    """The defined id closest to ``parts`` (an id split at ``#``): the longest defined prefix
    and, below it, the most similar key; None when nothing is similar."""
    node, prefix = config, []
    for part in parts:
        if isinstance(node, dict):
            keys = [str(k) for k in node]
        elif isinstance(node, list):
            keys = [str(i) for i in range(len(node))]
        else:
            return "#".join(prefix) or None  # a value, not a container: nothing below it
        if part in keys:
            node = node[part] if isinstance(node, dict) else node[int(part)]
            prefix.append(part)
            continue
        match = difflib.get_close_matches(part, keys, n=1)
        return "#".join([*prefix, match[0]]) if match else None
    return None


def check_overrides(
    bundle: str | Path, configs: Sequence[str], overrides: Mapping[str, Any] | Sequence[str]
) -> list[str]:
    """One message per override id that the merged ``configs`` (relative to ``bundle``) do
    not define, naming the closest id that they do; ``[]`` when all are defined.

    MONAI adds an unknown id to the config without a word, so ``--max_epoch 1`` trains the
    default number of epochs; the caller warns. Ids may be nested (``train#trainer#max_epochs``
    or ``::``).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files([str(Path(bundle) / c) for c in configs]))
    messages = []
    for key in overrides:
        key = str(key)
        if key in _RUN_ARGS or key.startswith("_meta_") or key in parser:
            continue
        closest = _closest_id(parser.get(), key.replace("::", "#").split("#"))
        hint = f"did you mean --{closest}? " if closest else ""
        messages.append(
            f"--{key} is not an id of {', '.join(configs)} in {bundle}: {hint}MONAI defines "
            "it as a new id, so a misspelt override is silently ignored."
        )
    return messages


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
    text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    errors = list(dict.fromkeys(line for line in lines if _EXCEPTION_LINE.match(line)))[-5:]
    tail = "\n".join(lines[-tail_lines:])
    cause = innermost_error(text)  # ours, not MONAI's "Failed to evaluate ConfigExpression"
    return (
        f"Cause: {cause}\nFull traceback: {log_path}\n"
        f"Errors: {' | '.join(errors) or 'none found'}. Log ({log_path}), last lines:\n{tail}"
    )


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


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(study_pid: int) -> None:
    """End this process (SIGKILL) once its parent (the forkserver, or the study with spawn)
    or the study's process ``study_pid`` is gone: an orphaned stage would go on writing into
    a folder that a re-run may already use."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def orphaned() -> bool:
        if os.getppid() != parent:
            return True
        try:
            os.kill(study_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def watch() -> None:
        while not orphaned():
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    if orphaned():  # gone before the death signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="orphan watchdog", daemon=True).start()


def _bundle_main(
    args: list[str], cwd: str, log_path: str, env: dict[str, str], study_pid: int
) -> None:
    """Child process: ``python -m monai.bundle *args`` in ``cwd`` with environment ``env``,
    stdout and stderr appended to the log, in its own session, dying with ``study_pid``.

    An exception or ``SystemExit`` leaves through multiprocessing, which prints the traceback
    to stderr (the log) and sets the exit code.
    """
    with contextlib.suppress(OSError):  # its own group: signals reach it through the study
        os.setsid()
    _die_with(study_pid)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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


def _resumable_checkpoint(folder: Path) -> Path | None:
    """The checkpoint the bundle's ``--resume`` will read (the bundles' own rule,
    :func:`~tumoraware.bundle_helpers.latest_checkpoint`), or None when none reads completely."""
    newest = Path(latest_checkpoint(folder))
    return newest if newest.is_file() and checkpoint_problem(newest) is None else None


def _started_hash(run_dir: Path) -> str | None:
    """The content hash of the run that started in ``run_dir`` and did not finish, or None."""
    try:
        return str(json.loads((run_dir / STARTED).read_text())["content_hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prepare(stage: BundleStage, run_dir: Path, digest: str) -> Path | None:
    """Make ``run_dir`` ready for a run of hash ``digest``: the newest checkpoint of an
    interrupted training of the same hash to resume from, or None after clearing what an
    earlier run left (declared outputs, checkpoints), so this run starts from scratch."""
    folder = run_dir / stage.checkpoints if stage.checkpoints else None
    if folder is not None and _started_hash(run_dir) == digest:
        newest = _resumable_checkpoint(folder)
        if newest is not None:
            return newest
    for out in stage.outputs:
        path = run_dir / out
        if path.is_file() or path.is_symlink():
            path.unlink()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    return None


def _stop(proc: multiprocessing.process.BaseProcess, grace_s: float = 10.0) -> None:
    """Terminate the stage's process group (SIGTERM, then SIGKILL after ``grace_s``)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # type: ignore[arg-type]
    except (ProcessLookupError, PermissionError):  # before its setsid: the process alone
        proc.terminate()
    proc.join(grace_s)
    if proc.is_alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.kill()
        proc.join()


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
    A training interrupted earlier with the same hash resumes from its checkpoints
    (``StageResult.resumed``). Overrides the configs do not define give an
    :class:`OverrideWarning`.

    As with any multiprocessing code, a script that calls this needs an
    ``if __name__ == "__main__":`` guard (the stage's process imports the main module).

    Raises:
        RuntimeError: the bundle run failed; the message has the last lines of its log and
            the log's path. ``stage.json`` is then not written, so the next call runs it again.
        tumoraware.pipeline.lock.FolderBusyError: another live process runs in ``run_dir``.
    """
    run_dir = Path(run_dir)
    digest = stage.content_hash(upstream)
    record = _previous_record(run_dir)
    done = StageRecord.from_json(record)
    if done is not None and _is_done(done, run_dir, stage, digest):
        return StageResult(stage.name, digest, True, done.wall_s, run_dir)
    with contextlib.suppress(KeyError, TypeError, ValueError):  # no usable wall time: keep ours
        expected_s = float(record["wall_s"]) if record is not None else expected_s
    with FolderLock(run_dir, f"stage {stage.name}") as lock:
        done = StageRecord.from_json(_previous_record(run_dir))
        if done is not None and _is_done(done, run_dir, stage, digest):  # finished meanwhile
            return StageResult(stage.name, digest, True, done.wall_s, run_dir)
        (run_dir / MARKER).unlink(missing_ok=True)  # a stale marker must not survive a rerun
        resume_from = _prepare(stage, run_dir, digest)
        write_json_atomic(
            run_dir / STARTED,
            {"content_hash": digest, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "resumed_from": str(resume_from) if resume_from else None},
        )  # fmt: skip
        args = stage.bundle_args()
        try:
            ids = [*stage.overrides, *(["resume"] if resume_from else [])]
            unknown = check_overrides(stage.bundle, stage.configs, ids)
        except Exception as error:  # an unreadable config: the bundle run reports it in full
            unknown = [f"could not check the overrides ({type(error).__name__}: {error})."]
        notes = [f"stage {stage.name}: {message}" for message in unknown]
        for note in notes:
            warnings.warn(note, OverrideWarning, stacklevel=2)
        log_path = run_dir / LOG
        if resume_from is not None:
            args += ["--resume", "True"]
            if log_path.exists():
                log_path.replace(run_dir / INTERRUPTED_LOG)
            notes.append(
                f"stage {stage.name}: resuming an interrupted training (same content hash) from "
                f"its checkpoints in {resume_from.parent} (newest: {resume_from.name}); the "
                f"interrupted run's log is {INTERRUPTED_LOG}."
            )
        # exists before the child opens it, so the reader can follow it
        log_path.write_text("".join(f"tumoraware: {note}\n" for note in notes))
        wall = _run_in_lock(
            stage, run_dir, digest, args, log_path, lock, env, expected_s, progress, position,
            cancel,
        )  # fmt: skip
        (run_dir / STARTED).unlink(missing_ok=True)
    return StageResult(stage.name, digest, False, wall, run_dir, resume_from is not None)


def _run_in_lock(
    stage: BundleStage,
    run_dir: Path,
    digest: str,
    args: list[str],
    log_path: Path,
    lock: FolderLock,
    env: Mapping[str, str] | None,
    expected_s: float | None,
    progress: bool,
    position: int | None,
    cancel: threading.Event | None,
) -> float:
    """The bundle run of :func:`run_stage` in its locked ``run_dir``; its wall time."""
    start = time.perf_counter()
    with tqdm(
        desc=stage.name, unit="it", disable=not progress, leave=False, position=position
    ) as bar:
        proc = _stage_context().Process(
            target=_bundle_main,
            args=(args, str(stage.bundle), str(log_path), {**os.environ, **(env or {})},
                  os.getpid()),
            name=f"stage {stage.name}",
        )  # fmt: skip
        ticker = _SecondsTicker(bar, expected_s if progress else None)
        try:
            proc.start()
            lock.add_holder(proc.pid)  # type: ignore[arg-type]
            _follow(log_path, proc, lambda line: _advance(bar, line, ticker), cancel)
            if cancel is None or not cancel.is_set():
                proc.join()
        finally:
            ticker.stop()
            if proc.is_alive():  # cancelled, Ctrl-C or an error in the parent: stop it
                _stop(proc)
            with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
                os.killpg(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]  # leftovers
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
    return wall
