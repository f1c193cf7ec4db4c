"""Write files so a crash or Ctrl-C never leaves a half-written file behind.

Every writer in tumoraware goes through :func:`atomic_path`: the content is written to a
temporary sibling (same folder, so ``os.replace`` is an atomic rename on POSIX and Windows),
and only a complete file is moved over the destination. What was there before survives
any failure untouched.

Checkpoints and model files are also written *durably* (``durable=True``,
:func:`save_torch_atomic`): the temporary file is fsynced before the rename and the folder after
it, so a power cut or a killed node cannot leave the new name pointing at data that never
reached the disk.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "atomic_path",
    "fsync_folder",
    "json_ready",
    "save_nifti_atomic",
    "save_torch_atomic",
    "save_volume_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def _full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz`` (nibabel picks the format from the whole suffix)."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk (writers such as ``torch.save`` close their own handle)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # read-only file: fsync through a read handle (enough on POSIX)
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush ``folder``'s entries (a rename, a removal) to the disk; a no-op where folders cannot
    be opened (Windows) or the file system does not support it."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL on some network file systems
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(destination: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it over ``destination`` on success.

    The temporary name (``.<name>.<random>.tmp<suffix>``, hidden, so no glob for ``<name>``-like
    files picks it up) keeps the destination's suffix (``.nii.gz``, ``.png``, ...) because
    writers such as nibabel and matplotlib choose the format from it. On any exception the
    temporary file is removed and ``destination`` is left as it was. A process killed while
    writing leaves at most that hidden temporary file. ``durable=True`` fsyncs the file before
    the rename and the folder after it (checkpoints: the rename must not reach the disk before
    the data does).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{destination.name}.",
        suffix=f".tmp{_full_suffix(destination)}",
        dir=destination.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, destination)
        if durable:
            fsync_folder(destination.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(destination: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``destination`` atomically and return the path."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(destination)


def save_torch_atomic(obj: Any, destination: str | os.PathLike, **kwargs: Any) -> Path:
    """``torch.save(obj, destination, **kwargs)`` atomically and durably: the file under
    ``destination`` is always a complete checkpoint, the previous one until the new one is on
    the disk."""
    import torch

    with atomic_path(destination, durable=True) as tmp:
        torch.save(obj, tmp, **kwargs)
    return Path(destination)


def json_ready(data: Any) -> Any:
    """``data`` with every NaN and inf float as ``None``, recursively through dicts, lists and
    tuples, so :func:`write_json_atomic` writes valid JSON (``json`` would write ``NaN``)."""
    if isinstance(data, dict):
        return {k: json_ready(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_ready(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_json_atomic(destination: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, key-stable JSON (one trailing newline) atomically."""
    return write_text_atomic(destination, json.dumps(data, indent=2) + "\n")


def save_nifti_atomic(image: nib.Nifti1Image, destination: str | os.PathLike) -> Path:
    """Save a NIfTI image atomically (``.nii`` or ``.nii.gz``, chosen by the destination)."""
    with atomic_path(destination) as tmp:
        nib.save(image, tmp)
    return Path(destination)


def _is_rigid(affine) -> bool:
    """True when the 3×3 part is orthogonal columns (rotation × zooms × flip, no shear)."""
    columns = np.asarray(affine, dtype=float)[:3, :3]
    gram = columns.T @ columns
    return bool(np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * np.abs(gram).max()))


def save_volume_atomic(array, affine, destination: str | os.PathLike) -> Path:
    """Save ``array`` with its RAS ``affine`` as NIfTI: scanner sform, mm units.

    The qform (a rotation, zooms and a flip, no shear) is set too when it can hold the affine
    exactly. A sheared grid (gantry-tilted CT) gets ``qform_code = 0``: otherwise readers that
    prefer the qform (ITK, so 3D Slicer, ITK-SNAP and MONAI's ITKReader) would place voxels mm
    away from where the sform says.
    """
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)  # scanner coordinates
    image.set_qform(affine, code=1 if _is_rigid(affine) else 0)
    image.header.set_xyzt_units("mm", "sec")
    return save_nifti_atomic(image, destination)
