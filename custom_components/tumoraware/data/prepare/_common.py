"""What the ``tumoraware prepare`` commands share: error types, manifest paths, the checked write.

Paths follow :func:`monai.data.load_decathlon_datalist`: a manifest path is joined to the
manifest's folder *as written* (``os.path.abspath``, not resolved) and normalised, so relative
paths are computed the same lexical way here. ``base_dir`` is the fence the validator checks
after resolving symlinks, so it is chosen among the manifest folder's lexical ancestors as the
deepest one whose resolved location holds every resolved data file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tumoraware.atomic import atomic_path, write_json_atomic
from tumoraware.data.manifest import ManifestError, check_manifest

__all__ = [
    "MissingInputError",
    "PrepareError",
    "base_dir_for",
    "relative_posix",
    "write_manifest_checked",
]


class PrepareError(ValueError):
    """The input data cannot be turned into a manifest; the message names the file and the fix."""


class MissingInputError(FileNotFoundError):
    """A file or folder the command needs does not exist; the message names it and the fix."""


def relative_posix(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """``path`` relative to the folder ``start``, with ``/`` separators (both made absolute)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(start))).as_posix()


def base_dir_for(manifest_dir: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> str:
    """The ``base_dir`` value (relative to ``manifest_dir``) that fences every one of ``paths``.

    Without symlinks this is the common folder of ``manifest_dir`` and ``paths``; a symlinked
    data folder or file widens it to the folder that holds its target.
    """
    start = Path(os.path.abspath(manifest_dir))
    targets = [Path(p).resolve() for p in paths]
    for ancestor in (start, *start.parents):
        fence = ancestor.resolve()
        if all(t.is_relative_to(fence) for t in targets):
            return relative_posix(ancestor, start)
    return relative_posix(start.anchor, start)  # unreachable on POSIX: "/" holds everything


def write_manifest_checked(
    destination: str | os.PathLike,
    manifest: dict[str, Any],
    progress: bool = False,
    deep: bool = True,
) -> Path:
    """Write ``manifest`` atomically, after :func:`check_manifest` (deep: every volume) passes.

    The check runs on the temporary file next to ``destination`` (same folder, so paths resolve
    the same way); on any problem nothing is written and a previous manifest survives, so a
    manifest never lists an unreadable, truncated, constant or mislabelled volume. The passed
    check is remembered (see :func:`check_manifest`), so training on the manifest right after
    does not read every volume again. ``deep=False`` is for callers that have already run
    :func:`~tumoraware.data.manifest.volume_problems` on every case and compared their digests.

    Raises:
        PrepareError: listing every problem the validator found, each with its file and fix.
    """
    destination = Path(destination)
    with atomic_path(destination) as tmp:
        write_json_atomic(tmp, manifest)
        try:
            check_manifest(tmp, deep=deep, progress=progress)
        except ManifestError as error:
            lines = "\n".join(
                f"  - {p}".replace(str(tmp), str(destination)) for p in error.problems
            )
            count = len(error.problems)
            raise PrepareError(
                f"{destination}: the prepared manifest would not validate ({count} "
                f"problem{'s' if count != 1 else ''}), so it was not written (a previous one is "
                f"kept):\n{lines}\nFix: correct or remove the files named above (each line "
                "gives its fix), then run the command again."
            ) from None
    return destination
