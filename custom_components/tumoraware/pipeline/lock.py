"""A run folder's lock: one live process at a time writes into a stage's folder.

Why: two runs of one study (a re-run started while a killed run's stage still finishes, or two
terminals) would interleave checkpoints, logs and ``stage.json`` in one folder. The lock is a
file created atomically (``O_CREAT | O_EXCL``) that names its holders: the process running the
stage and, once started, the stage's own process, with the host and each process's start time
(so a PID reused by an unrelated process does not count as the holder). It is removed on exit;
a lock whose holders are all gone (a killed run) is stale and taken over with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from tumoraware.pipeline.layout import LOCK

__all__ = ["FolderBusyError", "FolderLock", "StaleLockWarning", "process_alive"]

_CREATING_S = 10.0
"""A lock file younger than this without readable content is still being written."""


class FolderBusyError(RuntimeError):
    """Another live process holds the run folder."""


class StaleLockWarning(UserWarning):
    """A run folder's lock was left by processes that are gone; it is taken over."""


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, after "pid (comm)"
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, when ``start_ticks`` is given and readable,
    is the process that started then (not a later one given the same PID)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] in "ZX":
            return False  # exited, not yet reaped: it writes nothing any more
    except (OSError, ValueError, IndexError):
        return True
    now = _start_ticks(pid)
    return start_ticks is None or now is None or now == start_ticks


def _holder(pid: int) -> dict[str, Any]:
    return {"pid": pid, "start_ticks": _start_ticks(pid)}


class FolderLock:
    """``folder/stage.lock`` while a stage runs there; a context manager.

    Args:
        folder: the run folder (created if missing).
        what: what holds it, for messages (e.g. the stage's name).
    """

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.what = what
        self.token = uuid.uuid4().hex
        self.content: dict[str, Any] = {}

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Create the lock, or take over a stale one.

        Raises:
            FolderBusyError: a live process holds the folder (or one on another host, whose
                liveness cannot be checked from here).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self.content = {
            "what": self.what,
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "token": self.token,
            "holders": [_holder(os.getpid())],
        }
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            try:
                os.write(fd, json.dumps(self.content).encode())
            finally:
                os.close(fd)
            return
        raise FolderBusyError(
            f"{self.folder}: could not take its lock {self.path} (other processes keep taking "
            "it). Fix: run one study per folder at a time."
        )

    def add_holder(self, pid: int) -> None:
        """Name ``pid`` (the stage's process) as a holder too, so the lock stays live while it
        runs even if this process is killed."""
        self.content["holders"].append(_holder(pid))
        tmp = self.path.with_name(f"{LOCK}.{self.token}")
        tmp.write_text(json.dumps(self.content))
        os.replace(tmp, self.path)  # ours: replacing it keeps it held throughout

    def release(self) -> None:
        """Remove the lock if it is still this one's."""
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()

    def _take_over_if_stale(self) -> None:
        """Remove the existing lock if its holders are all gone (with a warning), else raise."""
        try:
            raw = self.path.read_bytes()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try to create it again
        try:
            held = json.loads(raw)
            holders = [(int(h["pid"]), h.get("start_ticks")) for h in held["holders"]]
            host = str(held.get("host", ""))
        except (ValueError, KeyError, TypeError):
            if age < _CREATING_S:  # its creator is between creating and writing it
                time.sleep(0.2)
                return
            held, holders, host = {}, [], socket.gethostname()
        pids = ", ".join(str(pid) for pid, _ in holders) or "unknown"
        if host != socket.gethostname():
            raise FolderBusyError(
                f"{self.folder} is held by PID {pids} on host {host} since "
                f"{held.get('started', '?')} ({held.get('what', '?')}); its lock is {self.path}. "
                f"Fix: wait for that run to end, or, if no process {pids} runs on {host} any "
                "more, delete the lock file."
            )
        live = [pid for pid, ticks in holders if process_alive(pid, ticks)]
        if live:
            raise FolderBusyError(
                f"{self.folder} is in use by PID {', '.join(map(str, live))} (since "
                f"{held.get('started', '?')}, {held.get('what', '?')}); a second run must not "
                f"write into it. Fix: wait for that run to end or stop it (kill "
                f"{' '.join(map(str, live))}), then run again. Its lock is {self.path}."
            )
        # All holders are gone. Move the lock aside atomically, so that of two processes
        # taking it over at once only one removes it; put back a lock that turned out fresh.
        aside = self.path.with_name(f"{LOCK}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_bytes() != raw:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink()
            return
        aside.unlink()
        warnings.warn(
            f"{self.folder}: took over a stale lock of PID {pids} (started "
            f"{held.get('started', '?')}), which no longer run(s); an earlier run was killed "
            "there.",
            StaleLockWarning,
            stacklevel=4,
        )
