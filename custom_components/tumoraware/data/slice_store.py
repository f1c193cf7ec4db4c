"""Prepared 2D slices kept on disk once, read back one sample at a time.

The 2D networks train on slices cut from 3D volumes by a volume transform (load, orient,
window, resample, crop, :class:`~tumoraware.transforms.VolumeToSlicesd`). Cutting is slow and its
result is what every run of the same data and transform needs, so it is done once and stored:

- **memory does not grow with the cohort**: a sample is read with ``os.preadv`` into a fresh
  array on every access; the process keeps only a small index (no memory map whose pages would
  count against the process as they are touched), DataLoader workers share the file descriptor;
- **compact and lossless**: each array is stored in the smallest dtype that holds its values
  exactly (0/1 labels as ``uint8``, voxel indices as ``int32``) and restored to its own dtype on
  reading, so a sample read back equals the sample cut, bit for bit (images stay float32: their
  values need it);
- **same results as cutting in memory**: the deterministic head of the volume transform (up to
  its first random transform, as MONAI's ``CacheDataset`` splits it) runs in parallel worker
  processes; the random tail (which tumour-free slices are drawn) runs in the main process in
  data order, with the random state after every volume stored beside it, so a build resumed
  after a crash continues the same random stream;
- **reused and invalidated by content**: the store's folder is named by a hash of the
  transform (classes, parameters, random states) and of every input file's bytes (remembered by
  path, size, mtime and inode so an unchanged file is not read again);
- **crash-safe**: volumes are appended in order and each is committed by an fsynced index file
  written by rename; a build resumed after a crash truncates the payload to its last committed
  volume; an exclusive file lock lets one process build while others (``torchrun`` ranks, a
  second run) wait and then read.

Written here because MONAI's ``PersistentDataset`` / ``LMDBDataset`` store one item per input (a
whole volume's list of slices, unpickled in full to read one slice), keep no random state
across a resumed build and have no compact dtypes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Randomizable, apply_transform
from monai.transforms.traits import RandomizableTrait
from tqdm.auto import tqdm

from tumoraware.atomic import fsync_folder, write_json_atomic

__all__ = ["SliceStore", "describe", "file_digest", "split_at_first_random"]

SCHEMA = 1
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# what the store is keyed by
# ---------------------------------------------------------------------------------------------
def _array_digest(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def describe(obj: Any, _seen: set[int] | None = None) -> Any:
    """A JSON-able description of a transform (class names, parameters, random states), stable
    across processes: the part of the store's key that says *how* slices were cut.

    Object addresses never enter it (an object without parameters is named by its class), so
    the same config gives the same description in every run.
    """
    seen = set() if _seen is None else _seen
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.random.RandomState):
        state = obj.get_state()
        return ["RandomState", _array_digest(state[1]), int(state[2])]
    if isinstance(obj, np.random.Generator):
        return ["Generator", json.dumps(obj.bit_generator.state, default=str, sort_keys=True)]
    if isinstance(obj, torch.Tensor):
        array = obj.detach().cpu().numpy()
        return ["tensor", str(array.dtype), list(array.shape), _array_digest(array)]
    if isinstance(obj, np.ndarray):
        return ["array", str(obj.dtype), list(obj.shape), _array_digest(obj)]
    if isinstance(obj, (torch.dtype, np.dtype, type)):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [describe(item, seen) for item in obj]
    if isinstance(obj, dict):
        return {
            str(k): describe(v, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))
        }
    if id(obj) in seen:
        return ["cycle", type(obj).__qualname__]
    if isinstance(obj, _FUNCTIONS) or (callable(obj) and not hasattr(obj, "__dict__")):
        return ["callable", getattr(obj, "__module__", ""), getattr(obj, "__qualname__", "")]
    if isinstance(obj, functools.partial):
        return [
            "partial",
            describe(obj.func, seen),
            describe(obj.args, seen),
            describe(obj.keywords, seen),
        ]
    if isinstance(obj, logging.Logger):
        return ["logger", obj.name]
    if hasattr(obj, "__dict__"):
        seen.add(id(obj))
        members = {k: v for k, v in vars(obj).items() if not k.startswith("__")}
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        return [name, describe(members, seen)]
    text = repr(obj)
    return type(obj).__qualname__ if " at 0x" in text else text


@dataclass
class _DigestMemo:
    """File digests remembered by (size, mtime, inode), in ``<cache_dir>/file_digests.json``."""

    path: Path
    entries: dict[str, list]

    @classmethod
    def load(cls, path: Path) -> _DigestMemo:
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    def save(self) -> None:
        write_json_atomic(self.path, self.entries)


def _stat_key(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def file_digest(path: str | os.PathLike) -> str:
    """blake2b of a file's bytes; of a folder (a DICOM series), of its files' names and digests."""
    path = Path(path)
    if path.is_dir():
        parts = [
            f"{p.relative_to(path)}:{file_digest(p)}"
            for p in sorted(path.rglob("*"))
            if p.is_file()
        ]
        return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _item_paths(item: dict[str, Any]) -> list[Path]:
    return [
        Path(v) for v in item.values() if isinstance(v, (str, os.PathLike)) and os.path.exists(v)
    ]


def _data_key(data: Sequence[dict[str, Any]], memo: _DigestMemo, workers: int) -> list[str]:
    """One key per item: its values, with every existing file replaced by its content digest."""
    paths = sorted({str(p.resolve()) for item in data for p in _item_paths(item)})
    stale = [p for p in paths if memo.entries.get(p, [None])[:3] != _stat_key(Path(p))]
    if stale:
        with ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib releases the GIL
            for path, digest in zip(stale, pool.map(file_digest, stale), strict=True):
                memo.entries[path] = [*_stat_key(Path(path)), digest]
        memo.save()
    keys = []
    for item in data:
        parts = []
        for name, value in sorted(item.items()):
            if isinstance(value, (str, os.PathLike)) and os.path.exists(value):
                value = memo.entries[str(Path(value).resolve())][3]
            parts.append(f"{name}={value!r}")
        keys.append("|".join(parts))
    return keys


def split_at_first_random(transform: Callable) -> tuple[Callable | None, Callable | None]:
    """``(head, tail)`` of a ``Compose``: the transforms before its first random one, and the
    rest (MONAI ``CacheDataset``'s split), as calls of the same ``Compose`` with ``end`` and
    ``start`` (a new ``Compose`` would reseed its members). A transform that is not a
    ``Compose`` is all tail."""
    if not isinstance(transform, Compose):
        return None, transform
    first = transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait))
    if first is None:
        return transform, None
    if first == 0:
        return None, transform
    return functools.partial(transform, end=first), functools.partial(transform, start=first)


def _random_members(transform: Callable | None) -> list[Randomizable]:
    """Every ``Randomizable`` inside ``transform`` (nested ``Compose`` flattened), in order."""
    if isinstance(transform, functools.partial):
        compose = transform.func
        start, end = transform.keywords.get("start", 0), transform.keywords.get("end")
        return [r for t in compose.transforms[start:end] for r in _random_members(t)]
    if isinstance(transform, Compose):
        return [r for t in transform.transforms for r in _random_members(t)]
    return [transform] if isinstance(transform, Randomizable) else []


# ---------------------------------------------------------------------------------------------
# samples <-> bytes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Blob:
    """Where one array of one sample lies in the payload file, and how to restore it."""

    offset: int
    stored: str  # numpy dtype on disk
    dtype: str  # numpy dtype restored
    shape: tuple[int, ...]
    kind: str  # "ndarray", "tensor" or "meta"
    meta: dict | None = None  # MetaTensor's meta dict

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.stored).itemsize


def _compact_dtype(array: np.ndarray) -> np.dtype:
    """The smallest dtype that holds ``array``'s values exactly: ``uint8`` for integer values in
    0..255 (float or int), ``int32`` for integers in its range; otherwise its own dtype."""
    if array.size == 0 or array.dtype == np.bool_:
        return array.dtype
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            return array.dtype
    elif array.dtype.kind not in "iu":
        return array.dtype
    low, high = array.min(), array.max()
    if low >= 0 and high <= 255:
        return np.dtype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize > 4 and low >= -(2**31) and high < 2**31:
        return np.dtype(np.int32)
    return array.dtype


def _encode(sample: dict, offset: int, chunks: list[bytes]) -> tuple[dict, int]:
    """``sample`` with every array replaced by a :class:`_Blob`; their bytes appended to
    ``chunks``. Returns the skeleton and the offset after it."""
    skeleton = {}
    for key, value in sample.items():
        if isinstance(value, (torch.Tensor, np.ndarray)):
            kind = "meta" if isinstance(value, MetaTensor) else "tensor"
            if isinstance(value, np.ndarray):
                kind, array = "ndarray", value
            else:
                array = value.detach().cpu().numpy() if kind == "tensor" else value.array
            meta = dict(value.meta) if isinstance(value, MetaTensor) else None
            stored = _compact_dtype(array)
            raw = np.ascontiguousarray(array.astype(stored, copy=False)).tobytes()
            skeleton[key] = _Blob(
                offset, stored.str, array.dtype.str, tuple(array.shape), kind, meta
            )
            chunks.append(raw)
            offset += len(raw)
        else:
            skeleton[key] = value
    return skeleton, offset


def _read_blob(fd: int, blob: _Blob) -> Any:
    stored = np.empty(blob.shape, dtype=np.dtype(blob.stored))
    if blob.nbytes:
        view = memoryview(stored.reshape(-1).view(np.uint8))
        got = os.preadv(fd, [view], blob.offset)
        if got != blob.nbytes:
            raise OSError(
                f"slice store payload is shorter than its index ({got} of {blob.nbytes} bytes)"
            )
    array = stored.astype(np.dtype(blob.dtype), copy=False)
    if blob.kind == "ndarray":
        return array
    if blob.kind == "meta":
        return MetaTensor(torch.from_numpy(array), meta=dict(blob.meta or {}))
    return torch.from_numpy(array)


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
_HEAD: Callable | None = None  # the head transform in a build worker (set before the fork)


def _run_head(item: dict) -> Any:
    torch.set_num_threads(1)
    return apply_transform(_HEAD, item) if _HEAD is not None else item


@contextlib.contextmanager
def _locked(path: Path, waiting: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block; says so when it has to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log.info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SliceStore(Sequence):
    """The slices of ``data`` cut by ``volume_transform``, on disk under ``cache_dir``.

    ``store[i]`` is sample ``i`` as the volume transform returned it (dict of tensors, arrays
    and plain values), read from disk on every access.

    Args:
        data: volume items (e.g. a manifest split with absolute paths).
        volume_transform: transform from one item to a list of 2D samples (or one sample).
        cache_dir: folder of the stores (one sub-folder per transform and data).
        workers: processes running the deterministic head of the transform (``None``: all
            CPUs; 0: in this process).
        progress: progress bar while volumes are cut.

    Raises:
        ValueError: the volume transform returned no sample at all.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        volume_transform: Callable,
        cache_dir: str | os.PathLike,
        workers: int | None = None,
        progress: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.workers = (os.cpu_count() or 1) if workers is None else max(0, int(workers))
        self.head, self.tail = split_at_first_random(volume_transform)
        data = list(data)
        with _locked(self.cache_dir / ".digests.lock", "waiting for another run hashing files"):
            memo = _DigestMemo.load(self.cache_dir / "file_digests.json")
            self.item_keys = _data_key(data, memo, self.workers)
        key = {
            "schema": SCHEMA,
            "transform": describe(volume_transform),
            "data": self.item_keys,
            "versions": _versions(),
        }
        digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12)
        self.folder = self.cache_dir / digest.hexdigest()
        self.folder.mkdir(exist_ok=True)
        with _locked(
            self.folder / "build.lock", f"waiting for another process building {self.folder}"
        ):
            index = self._build(data, progress)
        self.samples: list[dict] = [s for entry in index for s in entry["samples"]]
        if not self.samples:
            raise ValueError(
                f"SliceStore: expected at least one slice, got none from {len(data)} volume(s). "
                "Fix: check the manifest split is not empty."
            )
        self._fd: int | None = None
        self._fd_pid = -1

    # -- layout -----------------------------------------------------------------------------
    @property
    def payload_path(self) -> Path:
        return self.folder / "payload.bin"

    def _index_path(self, volume: int) -> Path:
        return self.folder / f"volume_{volume:06d}.pkl"

    def _read_index(self, volume: int) -> dict | None:
        """The committed index of ``volume`` (None when it was never committed or is damaged)."""
        try:
            with open(self._index_path(volume), "rb") as handle:
                entry = pickle.load(handle)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("schema") == SCHEMA else None

    # -- build ------------------------------------------------------------------------------
    def _committed(self, n: int) -> list[dict]:
        """The index entries of the volumes, from the first, that are committed and covered by
        the payload (the first missing, damaged or stale one ends the list)."""
        size = self.payload_path.stat().st_size if self.payload_path.exists() else 0
        entries: list[dict] = []
        for volume in range(n):
            entry = self._read_index(volume)
            if entry is None or entry["end"] > size or entry["key"] != self.item_keys[volume]:
                break
            entries.append(entry)
        return entries

    def _build(self, data: list[dict], progress: bool) -> list[dict]:
        """Cut the volumes not yet committed; returns the index entry of every volume."""
        index = self._committed(len(data))
        done = len(index)
        if done == len(data):
            return index
        start = time.perf_counter()
        end = index[-1]["end"] if index else 0
        randoms = _random_members(self.tail)
        if index:  # continue the random stream where the last committed volume left it
            for member, state in zip(randoms, index[-1]["random_states"], strict=True):
                member.R.set_state(state)
        for stale in range(done, len(data)):
            self._index_path(stale).unlink(missing_ok=True)
        with open(self.payload_path, "ab") as payload:
            payload.truncate(end)
        todo = data[done:]
        bar = tqdm(
            total=len(data), initial=done, desc="cut slices", unit="volume", disable=not progress
        )
        with self._heads(todo) as heads, open(self.payload_path, "r+b") as payload:
            for volume, head_out in enumerate(heads, start=done):
                out = apply_transform(self.tail, head_out) if self.tail is not None else head_out
                samples = out if isinstance(out, list) else [out]
                chunks: list[bytes] = []
                skeletons = []
                offset = end
                for sample in samples:
                    skeleton, offset = _encode(sample, offset, chunks)
                    skeletons.append(skeleton)
                payload.seek(end)
                for chunk in chunks:
                    payload.write(chunk)
                payload.flush()
                os.fsync(payload.fileno())
                entry = {
                    "schema": SCHEMA,
                    "key": self.item_keys[volume],
                    "start": end,
                    "end": offset,
                    "samples": skeletons,
                    "random_states": [m.R.get_state() for m in randoms],
                }
                self._commit_index(volume, entry)
                index.append(entry)
                end = offset
                bar.update(1)
        bar.close()
        write_json_atomic(self.folder / "store.json", {
            "schema": SCHEMA, "volumes": len(data), "bytes": end,
            "samples": sum(len(entry["samples"]) for entry in index),
            "build_s": round(time.perf_counter() - start, 3), "resumed_from_volume": done,
        })  # fmt: skip
        return index

    def _commit_index(self, volume: int, entry: dict) -> None:
        path = self._index_path(volume)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            pickle.dump(entry, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(self.folder)

    @contextlib.contextmanager
    def _heads(self, todo: list[dict]) -> Iterator[Iterator[Any]]:
        """The head transform's outputs for ``todo``, in order; in worker processes when asked."""
        if self.head is None or self.workers <= 1 or len(todo) <= 1:
            yield (
                apply_transform(self.head, item) if self.head is not None else item for item in todo
            )
            return
        global _HEAD
        _HEAD = self.head
        context = multiprocessing.get_context("fork")  # as torch's DataLoader does on Linux
        try:
            with context.Pool(min(self.workers, len(todo))) as pool:
                yield pool.imap(_run_head, todo, chunksize=1)
        finally:
            _HEAD = None

    # -- reading ----------------------------------------------------------------------------
    def _descriptor(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.payload_path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return self._fd

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        fd = self._descriptor()
        return {
            key: _read_blob(fd, value) if isinstance(value, _Blob) else value
            for key, value in self.samples[index].items()
        }

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"], state["_fd_pid"] = None, -1
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _versions() -> dict[str, str]:
    import monai

    from tumoraware import __version__

    return {"tumoraware": __version__, "monai": monai.__version__, "numpy": np.__version__}
