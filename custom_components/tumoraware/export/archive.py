"""The exported bundle as files to publish: ``large_files.yml`` and a deterministic zip.

Model Zoo keeps files over 25 MB out of git and lists them in ``large_files.yml`` (path, URL,
hash), from which ``python -m monai.bundle download_large_files`` fetches them. We have no
hosting URL, so ``url`` is left empty and the file ships inside the zip; the sha256 lets anyone
check a copy (``download_large_files`` skips a file that exists with the right hash).

The zip is byte-identical for identical content: entries sorted, every timestamp 1980-01-01,
every mode 0644, one compression setting, so two exports of the same bundle can be compared with
``cmp`` and a release can be reproduced.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LARGE_FILE_BYTES",
    "bundle_files",
    "read_large_files",
    "sha256_of",
    "write_large_files",
    "write_zip",
]

LARGE_FILE_BYTES = 25 * 1024 * 1024
_EPOCH = (1980, 1, 1, 0, 0, 0)
_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(bundle: str | Path) -> Iterator[Path]:
    """Files of the bundle folder (relative paths, sorted), without caches and ``.pyc``."""
    bundle = Path(bundle)
    found = []
    for root, dirs, files in os.walk(bundle):
        dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS]
        for name in files:
            if not name.endswith(".pyc"):
                found.append((Path(root) / name).relative_to(bundle))
    yield from sorted(found, key=lambda p: p.as_posix())


def write_large_files(bundle: str | Path, threshold: int = LARGE_FILE_BYTES) -> list[dict]:
    """Write ``bundle/large_files.yml`` listing every file over ``threshold`` bytes with its
    sha256; returns the entries. The list is empty (``large_files: []``) when none is large."""
    bundle = Path(bundle)
    entries = []
    for rel in bundle_files(bundle):
        path = bundle / rel
        if rel.as_posix() != "large_files.yml" and path.stat().st_size > threshold:
            entries.append(
                {"path": rel.as_posix(), "url": "", "hash_val": sha256_of(path),
                 "hash_type": "sha256"}
            )  # fmt: skip
    lines = [
        f"# Files over {threshold // (1024 * 1024)} MB (Model Zoo keeps them out of git).",
        "# They ship inside this bundle's zip; no hosting URL exists yet, so `url` is empty:",
        "# fill it in when the file is published. `hash_val` is the sha256 of the shipped file.",
    ]
    if not entries:
        lines.append("large_files: []")
    else:
        lines.append("large_files:")
        for entry in entries:
            first = True
            for key, value in entry.items():
                lines.append(f"{'  - ' if first else '    '}{key}: {json.dumps(value)}")
                first = False
    (bundle / "large_files.yml").write_text("\n".join(lines) + "\n")
    return entries


def read_large_files(bundle: str | Path) -> list[dict]:
    """The entries of ``bundle/large_files.yml`` (read as MONAI reads it, with PyYAML)."""
    import yaml

    content = yaml.safe_load((Path(bundle) / "large_files.yml").read_text()) or {}
    return list(content.get("large_files") or [])


def write_zip(bundle: str | Path, destination: str | Path) -> Path:
    """Zip ``bundle`` so that it unzips to ``<bundle name>/``; deterministic (see module doc)."""
    bundle, destination = Path(bundle), Path(destination)
    with zipfile.ZipFile(destination, "w") as archive:
        for rel in bundle_files(bundle):
            info = zipfile.ZipInfo(f"{bundle.name}/{rel.as_posix()}", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the mode below is honoured
            info.external_attr = 0o100644 << 16
            archive.writestr(info, (bundle / rel).read_bytes(), compresslevel=9)
    return destination
