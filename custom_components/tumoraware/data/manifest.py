"""Read and validate data manifests: MONAI datalists that list the volumes every stage trains on.

A manifest is a JSON object that :func:`monai.data.load_decathlon_datalist` reads unchanged:
metadata keys (``name``, ``labels``, ``base_dir``, ...) plus *splits*, lists of entries such as
``{"image": "...", "label": "...", "modality": "CT", "patient": "LUNG1-001"}``. The JSON Schema
shipped next to this module (``manifest_schema.json``) is the source of truth for the format;
``data_manifests/README.md`` explains it for people.

Validation reports *every* problem at once, each naming the file it is about and a concrete fix,
because a data set that fails on entry 3 of 400, then on entry 17 after the next attempt, wastes
an afternoon. The cheap checks (schema, paths exist, paths stay inside ``base_dir``, no image
listed twice, no test patient in a training split) run by default; ``deep=True`` opens every
volume and checks what would otherwise surface hours into training, or never: image/label grids
that disagree, non-binary or empty masks, CT that is not in Hounsfield units, constant, 4D or
NaN-filled images, empty or truncated files, DICOM folders with two series or a lost slice, the
same scan listed under two names. :func:`check_manifest` is the gate ``prepare``, ``reproduce``
and ``demo`` pass through before they write a manifest or train.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import nibabel as nib
import numpy as np
from tqdm import tqdm

from tumoraware.hounsfield import diagnose_hu

__all__ = [
    "METADATA_KEYS",
    "SCHEMA_PATH",
    "VALIDATION_CACHE",
    "ManifestError",
    "ManifestProblem",
    "check_manifest",
    "is_test_split",
    "load_manifest",
    "load_schema",
    "load_split",
    "run_validate",
    "splits",
    "validate_manifest",
    "volume_problems",
]

SCHEMA_PATH = Path(__file__).with_name("manifest_schema.json")
"""The JSON Schema of a manifest (``data_manifests/schema.json`` is a byte-identical copy)."""

NIFTI_SUFFIXES = (".nii", ".nii.gz")
AFFINE_ATOL_MM = 1e-3
"""Image and label affines may differ by this much (mm) and still count as the same grid."""
MRI_PERCENTILES = (1.0, 99.0)
"""The percentiles :class:`~tumoraware.transforms.RobustMRINormalized` scales MRI by (its
defaults, which the bundles use): an MRI where they coincide cannot be normalised."""
VALIDATION_CACHE = ".tumoraware_validated.json"
"""File in the data's common folder that remembers passed deep validations (see
:func:`check_manifest`); delete it to force a fresh check."""
_DEEP_CHECKS_VERSION = 2  # bump when the deep checks change, so remembered verdicts expire
_CACHE_ABOUT = (
    "tumoraware: fingerprints of manifests whose deep validation passed (manifest bytes + data "
    "files' paths, sizes, mtimes); safe to delete."
)


_UNLABELLED_SPLIT = re.compile(r"unlabell?ed")
_TEST_SPLIT = re.compile(r"(^|_)test$")
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
               dict: "object", type(None): "null"}  # fmt: skip
_REQUIRED_FIXES = {
    "image": 'add "image": "<path to a .nii.gz file or a DICOM-series folder, relative to the '
    "manifest's folder>\".",
    "modality": 'add "modality": "CT" or "modality": "MR".',
    "patient": 'add "patient": "<patient id>", e.g. "LUNG1-001".',
    "name": 'add "name": "<data set name>" at the top level.',
    "labels": 'add "labels": {"0": "background", "1": "tumor"} at the top level.',
}


@dataclass(frozen=True)
class ManifestProblem:
    """One thing wrong with a manifest or with a file it lists.

    Args:
        file: the file the problem is about: the manifest itself, or the data file (as an absolute,
            normalised path, the way :func:`monai.data.load_decathlon_datalist` resolves it).
        problem: what is wrong, with the value found and the value expected; ends in a full stop.
        fix: a concrete action that removes the problem.
        split: the split the problem belongs to, or ``None`` for manifest-wide problems.
    """

    file: str
    problem: str
    fix: str
    split: str | None = None

    def __str__(self) -> str:
        where = f" [{self.split}]" if self.split is not None else ""
        return f"{self.file}:{where} {self.problem} Fix: {self.fix}"


class ManifestError(ValueError):
    """A manifest could not be used; ``problems`` holds every reason, not just the first.

    Args:
        problems: the problems found (at least one).
        manifest: the manifest file, named in the message when given (the problems name the
            data files, which alone do not say which manifest to edit).
    """

    def __init__(self, problems: Sequence[ManifestProblem], manifest: str | None = None) -> None:
        self.problems: list[ManifestProblem] = list(problems)
        self.manifest = manifest
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        where = f" {manifest}" if manifest else ""
        super().__init__(
            f"{count} problem{'s' if count != 1 else ''} in the manifest{where}:\n{lines}"
        )


def load_schema() -> dict[str, Any]:
    """Return the manifest JSON Schema (a fresh dict, so callers may modify it)."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema())


METADATA_KEYS: frozenset[str] = frozenset(load_schema()["properties"])
"""Top-level keys that are metadata; every other top-level key is a split."""

_RELATIVE_PATH = re.compile(load_schema()["$defs"]["relative_path"]["pattern"])


# ------------------------------------------------------------------------------------ reading


def _read_json(path: str | os.PathLike) -> tuple[Any, list[ManifestProblem]]:
    """Parse ``path``; on failure return ``(None, [problem])`` instead of raising."""
    file, path = os.fspath(path), Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        fix = "pass the path of a manifest .json file (see data_manifests/ for examples)."
        return None, [ManifestProblem(file, f"The manifest {what}.", fix)]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        fix = "save the manifest as UTF-8 JSON."
        return None, [ManifestProblem(file, f"Cannot read the manifest ({e}).", fix)]
    try:
        return json.loads(text), []
    except json.JSONDecodeError as e:
        problem = f"Invalid JSON at line {e.lineno}:{e.colno}: {e.msg}."
        fix = (
            "correct the JSON syntax there (a trailing comma, a missing quote or bracket are "
            "the usual causes); `python -m json.tool FILE` shows the same position."
        )
        return None, [ManifestProblem(file, problem, fix)]


def _where(path: Iterable[Any]) -> str:
    """``["ct_train", 0, "modality"]`` -> ``ct_train[0].modality`` (empty -> ``top level``)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "top level"


def _error_split(path: Sequence[Any]) -> str | None:
    first = path[0] if path else None
    return first if isinstance(first, str) and first not in METADATA_KEYS else None


def _snake_case(name: str) -> str:
    snake = re.sub(r"[^0-9a-zA-Z]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name))
    snake = snake.strip("_").lower()
    return snake if snake and snake[0].isalpha() else f"split_{snake}".rstrip("_")


def _path_fix(value: str, manifest_dir: Path) -> str:
    """A concrete fix for a path that breaks the relative-POSIX pattern."""
    if "\\" in value and not re.match(r"^[A-Za-z]:", value):
        return f'use "/" separators: "{value.replace(chr(92), "/")}".'
    if value.startswith("/"):
        suggestion = os.path.relpath(value, manifest_dir)
        return f'write it relative to the manifest\'s folder {manifest_dir}, e.g. "{suggestion}".'
    return f'write it relative to the manifest\'s folder {manifest_dir}, with "/" separators.'


def _schema_problem(
    error: jsonschema.ValidationError, file: str, manifest_dir: Path
) -> list[ManifestProblem]:
    """Turn one jsonschema error into problems that say what was expected and how to fix it."""
    path = list(error.absolute_path)
    where, split = _where(path), _error_split(path)
    kind, instance, expected = error.validator, error.instance, error.validator_value
    described = error.schema.get("description", "") if isinstance(error.schema, dict) else ""

    if "propertyNames" in error.schema_path:
        if path == ["labels"]:
            problem = f"labels key {instance!r} is not a label value."
            fix = 'key labels by their integer value as a string, e.g. "1": "tumor".'
        else:
            metadata = ", ".join(sorted(METADATA_KEYS))
            problem = (
                f"Top-level key {instance!r} is neither a metadata key ({metadata}) nor a "
                "lower-case snake_case split name."
            )
            fix = f'rename the split to "{_snake_case(str(instance))}".'
        return [ManifestProblem(file, problem, fix, split)]
    if kind == "required":
        missing = [key for key in expected if isinstance(instance, dict) and key not in instance]
        return [
            ManifestProblem(
                file,
                f'{where} has no "{key}" (required).',
                _REQUIRED_FIXES.get(key, f'add "{key}".'),
                split,
            )
            for key in missing
        ]
    if kind == "pattern" and isinstance(instance, str):
        problem = (
            f'{where} "{instance}" is not a relative path with "/" separators; paths are '
            "relative to the manifest's folder."
        )
        return [ManifestProblem(file, problem, _path_fix(instance, manifest_dir), split)]
    if kind in ("enum", "const"):
        allowed = " or ".join(repr(v) for v in (expected if kind == "enum" else [expected]))
        problem = f"{where} is {instance!r}; expected {allowed}."
        return [ManifestProblem(file, problem, f"set {where} to {allowed}.", split)]
    if kind == "minimum":
        problem = f"{where} is {instance!r}; expected a value >= {expected}."
        fix = f"set {where} to a value >= {expected}."
        if path and path[-1] == "week":
            fix = f"count weeks from 1 (1 = pre-treatment): set {where} to {expected} or more."
        return [ManifestProblem(file, problem, fix, split)]
    if kind == "type":
        found = _JSON_TYPES.get(type(instance), type(instance).__name__)
        problem = f"{where} is a JSON {found} ({json.dumps(instance)[:60]}); expected {expected}."
        fix = f"make {where} a JSON {expected}" + (f": {described}" if described else ".")
        if split is not None and len(path) == 1:
            fix = f'make split "{split}" a list of entry objects, or remove the key.'
        return [ManifestProblem(file, problem, fix, split)]
    if kind in ("minLength", "minProperties"):
        fix = f"give {where} a value" + (f": {described}" if described else ".")
        return [ManifestProblem(file, f"{where} is empty.", fix, split)]
    fix = f"make {where} match the schema" + (f": {described}" if described else ".")
    return [ManifestProblem(file, f"{where}: {error.message}.", fix, split)]


def _error_sort_key(error: jsonschema.ValidationError) -> tuple[Any, ...]:
    # (is_str, value) keeps list indices numeric and never compares an int with a str.
    return (
        tuple((isinstance(p, str), p) for p in error.absolute_path),
        tuple(str(p) for p in error.schema_path),
        error.message,
    )


def _schema_problems(manifest: Any, file: str, manifest_dir: Path) -> list[ManifestProblem]:
    errors = sorted(_validator().iter_errors(manifest), key=_error_sort_key)
    problems: list[ManifestProblem] = []
    for error in errors:
        for problem in _schema_problem(error, file, manifest_dir):
            if problem not in problems:
                problems.append(problem)
    return problems


def _read_manifest(path: str | os.PathLike) -> tuple[Any, list[ManifestProblem]]:
    """Read and schema-check ``path``; return the parsed JSON (or ``None``) and the problems."""
    manifest, problems = _read_json(path)
    if problems:
        return None, problems
    return manifest, _schema_problems(manifest, os.fspath(path), _manifest_dir(path))


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read a manifest and check it against the schema.

    Only the JSON is checked here (cheap, no data is touched); :func:`validate_manifest` also
    checks the files it lists.

    Args:
        path: the manifest ``.json`` file.

    Raises:
        ManifestError: when the file is missing, is not valid JSON (the message gives line:column),
            or breaks the schema; ``problems`` lists every schema violation, sorted by location.

    Returns:
        the manifest as a dict, exactly as stored (paths stay relative).
    """
    manifest, problems = _read_manifest(path)
    if problems:
        raise ManifestError(problems)
    return manifest


def splits(manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Return the splits of a loaded manifest: every top-level key that is not metadata.

    Args:
        manifest: a manifest dict, e.g. from :func:`load_manifest`.

    Returns:
        split name -> list of entries, in file order (entries are the manifest's own dicts).
    """
    return {
        key: value
        for key, value in manifest.items()
        if key not in METADATA_KEYS and isinstance(value, list)
    }


# ------------------------------------------------------------------------------------ paths


def _manifest_dir(path: str | os.PathLike) -> Path:
    # abspath, not resolve: like load_decathlon_datalist, a symlinked manifest's paths are
    # relative to the folder of the link.
    return Path(os.path.abspath(path)).parent


def _base_dir(manifest: dict[str, Any], manifest_dir: Path) -> tuple[str, Path] | None:
    """The manifest's ``base_dir`` as written and as a resolved absolute folder.

    ``None`` when ``base_dir`` is malformed: the schema check reports it, and fencing at a guess
    would only bury that one problem under a false one per path.
    """
    value = manifest.get("base_dir", ".")
    if not isinstance(value, str) or not value or not _RELATIVE_PATH.match(value):
        return None
    return value, Path(os.path.normpath(manifest_dir / value)).resolve()


def _data_path(manifest_dir: Path, value: str) -> str:
    """Where ``load_decathlon_datalist`` points ``value`` (joined and normalised, not resolved)."""
    return os.path.normpath(os.path.join(manifest_dir, value))


def _is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _escape_problem(
    key: str, where: str, value: str, file: str, base: tuple[str, Path] | None, split: str
) -> ManifestProblem | None:
    """A problem if ``file`` (symlinks and ``..`` resolved) lies outside the base folder."""
    resolved = Path(file).resolve()
    if base is None or resolved.is_relative_to(base[1]):
        return None
    problem = (
        f'{where}.{key} "{value}" resolves to {resolved}, outside base_dir "{base[0]}" ({base[1]}).'
    )
    fix = (
        "keep data inside base_dir: move the file there and list it by a path that does not climb "
        'out with ".." or through a symlink, or set "base_dir" (relative to the manifest\'s '
        "folder) to the data folder that holds it."
    )
    return ManifestProblem(file, problem, fix, split)


def _path_problems(
    entry: dict[str, Any],
    where: str,
    split: str,
    manifest_dir: Path,
    base: tuple[str, Path] | None,
    is_template: bool,
) -> tuple[dict[str, str], list[ManifestProblem]]:
    """Check ``image``/``label`` of one entry; return the usable absolute paths and problems."""
    usable: dict[str, str] = {}
    problems: list[ManifestProblem] = []
    for key in ("image", "label"):
        value = entry.get(key)
        if not isinstance(value, str) or not value or not _RELATIVE_PATH.match(value):
            continue  # missing or malformed: the schema check has reported it
        file = _data_path(manifest_dir, value)
        escape = _escape_problem(key, where, value, file, base, split)
        if escape is not None:
            problems.append(escape)
            continue
        if not os.path.exists(file):
            if is_template:
                fix = (
                    "this manifest is a template: download and prepare the data as its "
                    '"description" says, then list your own files and drop "template": true.'
                )
            else:
                fix = (
                    f"correct the path (relative to the manifest's folder {manifest_dir}) or "
                    "create the file (see the manifest's description for the command that "
                    "prepares it)."
                )
            problems.append(
                ManifestProblem(file, f'{where}.{key} "{value}" does not exist.', fix, split)
            )
            continue
        if key == "label" and not (os.path.isfile(file) and _is_nifti(file)):
            problem = f'{where}.label "{value}" is not a NIfTI file (.nii/.nii.gz).'
            fix = (
                "rasterise the tumour contour to a NIfTI mask on the image's grid "
                "(`tumoraware prepare nsclc` does this for RTSTRUCT) and list that file."
            )
            problems.append(ManifestProblem(file, problem, fix, split))
            continue
        if key == "image" and os.path.isfile(file) and not _is_nifti(file):
            problem = (
                f'{where}.image "{value}" is neither a NIfTI file (.nii/.nii.gz) nor a folder '
                "holding a DICOM series."
            )
            fix = "convert it to NIfTI (e.g. with dcm2niix) or list the DICOM series' folder."
            problems.append(ManifestProblem(file, problem, fix, split))
            continue
        usable[key] = file
    return usable, problems


def _split_problems(file: str, name: str, entries: list[Any]) -> list[ManifestProblem]:
    """Split-level problems: empty labelled splits, splits where only some entries are labelled."""
    if not entries:
        if _UNLABELLED_SPLIT.search(name):
            return []  # an empty unlabelled split is a valid "no such data" answer
        problem = f'Split "{name}" is empty; a labelled split needs at least one entry.'
        fix = (
            "add image/label entries, delete the key, or, if it is meant to hold unlabelled "
            'images, give it a name containing "unlabelled" (e.g. mri_unlabelled).'
        )
        return [ManifestProblem(file, problem, fix, name)]
    dicts = [(i, e) for i, e in enumerate(entries) if isinstance(e, dict)]
    unlabelled = [i for i, e in dicts if "label" not in e]
    if 0 < len(unlabelled) < len(dicts):
        shown = ", ".join(f"{name}[{i}]" for i in unlabelled[:5])
        more = f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else ""
        problem = (
            f'Split "{name}" is labelled but {len(unlabelled)} of its {len(dicts)} entries have '
            f'no "label": {shown}{more}.'
        )
        fix = 'add a "label" to each of them, or move them to an unlabelled split.'
        return [ManifestProblem(file, problem, fix, name)]
    return []


# ------------------------------------------------------------------------------------ deep checks


@dataclass
class _Volume:
    shape: tuple[int, ...]
    affine: np.ndarray
    data: np.ndarray


def _spatial(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop trailing singleton dimensions beyond the third (``(X, Y, Z, 1)`` -> ``(X, Y, Z)``)."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _read_volume(file: str) -> _Volume:
    """Read a NIfTI file with nibabel, or a DICOM-series folder with our series reader.

    The series reader (not ITK) so that a folder holding two series, a slice without pixel data
    or a missing slice is an error here, as in ``tumoraware prepare``, instead of ITK silently
    reading one series or stacking across the gap.
    """
    if os.path.isdir(file):
        from tumoraware.data.dicom.series import read_dicom_series  # lazy: pydicom import

        series = read_dicom_series(file)
        data = np.asarray(series.array)
        return _Volume(_spatial(data.shape), series.affine_ras, data)
    nifti = nib.load(file)
    # The header gives shape and affine; reading the data also proves the file decompresses.
    return _Volume(_spatial(nifti.shape), np.asarray(nifti.affine), np.asanyarray(nifti.dataobj))


def _format_affine(affine: np.ndarray) -> str:
    rows = ("[" + ", ".join(f"{v:.4g}" for v in row) + "]" for row in affine[:3])
    return "[" + ", ".join(rows) + "]"


def _format_values(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit].tolist())
    return shown + (f", ... ({values.size} distinct values)" if values.size > limit else "")


def _format_vector(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _sample(data: np.ndarray, size: int = 1_000_000) -> np.ndarray:
    """Every k-th voxel, about ``size`` of them: percentiles of a whole volume without sorting
    all of it (enough to tell an image whose 1st and 99th percentiles coincide)."""
    flat = data.ravel(order="K")  # a view for a contiguous volume, in either order
    return flat[:: max(1, flat.size // size)]


def _distinct(data: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a label: a mask holds a few small integers, so testing
    each value of its range beats sorting every voxel (``np.unique``)."""
    flat = data.ravel(order="K")
    if flat.size and (flat.dtype == np.bool_ or np.issubdtype(flat.dtype, np.integer)):
        lo, hi = int(flat.min()), int(flat.max())
        if hi - lo <= 16:
            return np.array([v for v in range(lo, hi + 1) if np.any(flat == v)], flat.dtype)
    return np.unique(flat)


def _finite_range(data: np.ndarray) -> tuple[float, float, int]:
    """Minimum and maximum over finite voxels, and the count of NaN/Inf voxels."""
    if not np.issubdtype(data.dtype, np.floating):
        return float(data.min()), float(data.max()), 0
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad == data.size:
        return float("nan"), float("nan"), n_bad
    lo = float(np.min(data, where=finite, initial=np.inf))
    hi = float(np.max(data, where=finite, initial=-np.inf))
    return lo, hi, n_bad


def _dimension_problem(
    volume: _Volume, key: str, where: str, file: str, split: str | None
) -> ManifestProblem | None:
    """A problem unless the volume is 3D (trailing singleton dimensions allowed)."""
    if len(volume.shape) == 3:
        return None
    problem = (
        f"{where}.{key} has shape {volume.shape} ({len(volume.shape)}D); expected one 3D volume "
        "(X, Y, Z)."
    )
    if len(volume.shape) > 3:
        fix = (
            "split the 4D file into one 3D file per scan (e.g. nibabel.funcs.four_to_three or "
            "`fslsplit`) and list each scan as its own entry (with its week), or keep only the "
            "T2w volume you mean."
        )
    else:
        fix = "list the whole 3D volume, not a single 2D slice (re-export the series as NIfTI)."
    return ManifestProblem(file, problem, fix, split)


def _intensity_problems(
    volume: _Volume, modality: Any, file: str, where: str, split: str | None
) -> list[ManifestProblem]:
    """NaN/Inf and constant images; for CT, Hounsfield units; for MR, enough contrast to scale."""
    problems: list[ManifestProblem] = []
    lo, hi, n_bad = _finite_range(volume.data)
    if n_bad:
        n_nan = int(np.count_nonzero(np.isnan(volume.data)))
        problem = (
            f"{where}.image has {n_bad} NaN/Inf voxels ({n_nan} NaN, {n_bad - n_nan} Inf) of "
            f"{volume.data.size}."
        )
        fix = (
            "re-export it with finite values (replace NaN/Inf, e.g. outside the field of view, "
            "with the background value); NaN spreads through normalisation and training."
        )
        problems.append(ManifestProblem(file, problem, fix, split))
    if n_bad == volume.data.size:
        return problems
    if lo == hi:
        what = "all zero" if lo == 0 else f"constant: every voxel is {lo:g}"
        problem = f"{where}.image is {what}; expected a scan with contrast."
        fix = (
            "re-export the scan: a constant volume means a failed conversion, an empty export "
            "or the wrong series (a localizer, a mask); remove the entry if the scan is lost."
        )
        return [*problems, ManifestProblem(file, problem, fix, split)]
    if modality == "CT":
        diagnosis = diagnose_hu(lo, hi, require_air=True)
        if diagnosis is not None:
            problem, fix = diagnosis
            problem = f"{where}.image is CT but its values span [{lo:g}, {hi:g}]: {problem}."
            problems.append(ManifestProblem(file, problem, f"{fix}.", split))
    elif modality == "MR" and not n_bad:
        low, high = np.percentile(_sample(volume.data), MRI_PERCENTILES)
        if high <= low:
            problem = (
                f"{where}.image (MR) has its {MRI_PERCENTILES[0]:g}th and "
                f"{MRI_PERCENTILES[1]:g}th percentiles both {float(low):g}: nearly every voxel "
                "shares one value, so the per-volume MRI normalisation (RobustMRINormalized) "
                "cannot scale it."
            )
            fix = (
                "check that the file holds the intended T2w series (not a mask, a localizer or "
                "a mostly empty volume) and re-export it."
            )
            problems.append(ManifestProblem(file, problem, fix, split))
    return problems


def _grid_difference(image: np.ndarray, label: np.ndarray) -> str:
    """What differs between two affines, in words: spacing, direction, origin."""
    image_zooms = np.sqrt((image[:3, :3] ** 2).sum(axis=0))
    label_zooms = np.sqrt((label[:3, :3] ** 2).sum(axis=0))
    parts = []
    if not np.allclose(image_zooms, label_zooms, rtol=0.0, atol=AFFINE_ATOL_MM):
        parts.append(
            f"voxel spacing {_format_vector(label_zooms)} mm vs the image's "
            f"{_format_vector(image_zooms)} mm"
        )
    directions = image[:3, :3] / image_zooms, label[:3, :3] / label_zooms
    if not np.allclose(*directions, rtol=0.0, atol=1e-4):
        parts.append("axis directions (orientation or a flip) differ")
    shift = float(np.linalg.norm(label[:3, 3] - image[:3, 3]))
    if shift > AFFINE_ATOL_MM:
        parts.append(f"origin shifted by {shift:.4g} mm")
    return "; ".join(parts) or "the affines differ"


def _label_problems(
    image: _Volume | None, label: _Volume, image_file: str, file: str, where: str, split: str | None
) -> list[ManifestProblem]:
    """The label lies on the image's grid, is binary {0, 1} and marks at least one voxel."""
    problems: list[ManifestProblem] = []
    if image is not None and image.shape != label.shape:
        problem = (
            f"{where}.label has shape {label.shape} but the image {image_file} has shape "
            f"{image.shape}."
        )
        fix = "resample the mask onto the image's grid (nearest neighbour) or list the right pair."
        problems.append(ManifestProblem(file, problem, fix, split))
    elif image is not None and not np.allclose(
        image.affine, label.affine, rtol=0.0, atol=AFFINE_ATOL_MM
    ):
        diff = float(np.max(np.abs(image.affine - label.affine)))
        difference = _grid_difference(image.affine, label.affine)
        problem = (
            f"{where}.label is not on its image's grid ({difference}): "
            f"label affine {_format_affine(label.affine)} differs from the image's "
            f"{_format_affine(image.affine)} by up to {diff:.4g} mm "
            f"(tolerance {AFFINE_ATOL_MM:g} mm); image: {image_file}."
        )
        fix = (
            "write the mask with the image's affine (it must lie on the same grid; in 3D Slicer "
            "or ITK-SNAP export the segmentation with the image as reference); if it was saved "
            "from an array, reuse the image's header."
        )
        problems.append(ManifestProblem(file, problem, fix, split))
    values = _distinct(label.data)
    if not np.isin(values, (0, 1)).all():
        problem = f"{where}.label values are {_format_values(values)}; expected binary 0/1."
        fix = (
            "relabel it to 0 = background, 1 = tumour (threshold a probability map; map the "
            "tumour class of a multi-class mask to 1) and resample masks with nearest neighbour."
        )
        problems.append(ManifestProblem(file, problem, fix, split))
    elif not np.any(values == 1):
        problem = f"{where}.label has no tumour voxels (every voxel is 0)."
        fix = (
            "check the contour conversion (e.g. the RTSTRUCT ROI name or a mask on another grid) "
            "or move the image to an unlabelled split."
        )
        problems.append(ManifestProblem(file, problem, fix, split))
    return problems


def _gzip_ends_early(file: str) -> bool:
    """Whether ``file`` is gzip-compressed and its stream stops before its end marker (a cut
    download): nibabel then reports an unreadable header or an EOFError, never "truncated"."""
    if not file.lower().endswith(".gz") or not os.path.isfile(file):
        return False
    try:
        with gzip.open(file, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except EOFError:
        return True
    except (OSError, ValueError):
        return False
    return False


def _read_problem(file: str, where: str, split: str | None, error: Exception) -> ManifestProblem:
    """Why ``file`` could not be read, with the fix that fits the failure."""
    from tumoraware.data.dicom.series import DicomError  # lazy: pydicom import

    if isinstance(error, DicomError):
        problem, _, fix = str(error).partition(" Fix: ")
        if "series in one folder" in problem:
            fix = (
                "move each series into its own folder and list the one you mean (a DICOM-series "
                "folder must hold exactly one series)."
            )
        elif "missing" in problem and "--allow_gaps" in fix:
            fix = (
                "re-download the series; if the gap is genuine, convert it to NIfTI with "
                "`tumoraware rtstruct_to_nifti --allow_gaps` (resamples onto a uniform grid) "
                "and list that file."
            )
        problem = f"{where} DICOM series could not be read: {problem.rstrip('.')}."
        return ManifestProblem(file, problem, fix or "re-export the series.", split)
    what = "DICOM series" if os.path.isdir(file) else "file"
    if os.path.isfile(file) and os.path.getsize(file) == 0:
        problem = f"{where} file could not be read: it is empty (0 bytes)."
    elif _gzip_ends_early(file):
        problem = f"{where} file could not be read: it is truncated (its gzip stream ends early)."
    elif isinstance(error, EOFError) or ("Expected" in str(error) and "bytes" in str(error)):
        problem = (
            f"{where} file could not be read: it is truncated ({type(error).__name__}: {error})."
        )
    else:
        problem = f"{where} {what} could not be read ({type(error).__name__}: {error})."
    fix = (
        "re-export or re-download it (it may be truncated or corrupt: a .nii.gz must decompress "
        "completely; a DICOM folder must hold the slices of exactly one series)."
    )
    return ManifestProblem(file, problem.replace("\n", " "), fix, split)


def _open(file: str, where: str, split: str | None) -> tuple[_Volume | None, list[ManifestProblem]]:
    try:
        return _read_volume(file), []
    except Exception as e:  # any reader failure means the same thing: the file cannot be used
        return None, [_read_problem(file, where, split, e)]


def _content_digest(data: np.ndarray) -> str:
    """sha256 of the voxel values (shape and dtype included): the same scan saved twice, under
    two names or with another compression, has the same digest."""
    # NIfTI and DICOM volumes load Fortran-ordered: hash that memory as it lies, no copy.
    ordered = data.T if data.flags.f_contiguous and not data.flags.c_contiguous else data
    h = hashlib.sha256(f"{ordered.shape}{ordered.dtype}".encode())
    h.update(memoryview(np.ascontiguousarray(ordered)).cast("B"))
    return h.hexdigest()


def _deep_problems(
    entry: dict[str, Any], paths: dict[str, str], where: str, split: str | None
) -> tuple[list[ManifestProblem], str | None]:
    """Problems of one entry's volumes, and the digest of its image's voxels (None if unread)."""
    problems: list[ManifestProblem] = []
    image, digest = None, None
    if "image" in paths:
        image, opened = _open(paths["image"], f"{where}.image", split)
        problems += opened
        if image is not None:
            digest = _content_digest(image.data)
            wrong_shape = _dimension_problem(image, "image", where, paths["image"], split)
            if wrong_shape is not None:
                problems.append(wrong_shape)
            else:
                problems += _intensity_problems(
                    image, entry.get("modality"), paths["image"], where, split
                )
    if "label" in paths:
        label, opened = _open(paths["label"], f"{where}.label", split)
        problems += opened
        if label is not None:
            problems += _label_problems(
                image, label, paths.get("image", ""), paths["label"], where, split
            )
    return problems, digest


def volume_problems(
    image: str | os.PathLike,
    label: str | os.PathLike | None = None,
    modality: str = "CT",
    where: str = "entry",
    split: str | None = None,
) -> tuple[list[ManifestProblem], str | None]:
    """The deep checks of one image (and its label), before it is listed in a manifest.

    For converters that check each case as it is made, so one broken case can be left out
    of a batch instead of failing the whole manifest.

    Args:
        image: a NIfTI file or a DICOM-series folder.
        label: its NIfTI mask, if any.
        modality: ``"CT"`` (checked for Hounsfield units) or ``"MR"``.
        where: how the problems name the case, e.g. the patient id.
        split: the split the case is meant for, if known.

    Returns:
        the problems found (empty when the case is usable) and the sha256 of the image's
        voxels (``None`` if it could not be read), to spot the same scan under two names.
    """
    paths = {"image": os.fspath(image)}
    if label is not None:
        paths["label"] = os.fspath(label)
    return _deep_problems({"modality": modality}, paths, where, split)


# ------------------------------------------------------------------------------- across entries


@dataclass
class _Listed:
    """One entry as the checks across entries see it."""

    split: str
    index: int
    entry: dict[str, Any]
    image: str | None  # the image's path (as the other problems name it), if it exists
    digest: str | None = None  # sha256 of its voxels (deep checks only)

    @property
    def where(self) -> str:
        return f"{self.split}[{self.index}]"


def is_test_split(name: str) -> bool:
    """Whether split ``name`` is held out (``test``, ``ct_test``, ``mri_test``, ...).

    A held-out split must share no patient with any other split of the same modality; the
    training splits (``mri_unlabelled``, ``mri_week1``, ``mri_validation``, ``ct_train``) may
    share patients among themselves, as the paper's week-1 and on-treatment scans do.
    """
    return _TEST_SPLIT.search(name) is not None


def _patient_problems(file: str, listed: list[_Listed]) -> list[ManifestProblem]:
    """Patients of a held-out split that also appear in another split of the same modality."""
    patients: dict[str, dict[tuple[Any, str], list[_Listed]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for item in listed:
        patient = item.entry.get("patient")
        if isinstance(patient, str) and patient:
            patients[item.split][(item.entry.get("modality"), patient)].append(item)
    problems = []
    for test in (s for s in patients if is_test_split(s)):
        for other in (s for s in patients if s != test and not is_test_split(s)):
            shared = sorted(set(patients[test]) & set(patients[other]), key=str)
            if not shared:
                continue
            names = ", ".join(p for _, p in shared[:10]) + (" ..." if len(shared) > 10 else "")
            first = shared[0]
            example = f"e.g. {patients[test][first][0].where} and {patients[other][first][0].where}"
            problem = (
                f'{len(shared)} patient(s) of the held-out split "{test}" also appear in '
                f'"{other}": {names} ({example}); test results would be inflated by patients '
                "seen in training."
            )
            fix = (
                f'keep every scan of a test patient in "{test}" only: remove these patients '
                f'from "{other}" or from "{test}" (`tumoraware prepare mri --test_patients` '
                "splits by patient), or correct a mistyped patient id."
            )
            problems.append(ManifestProblem(file, problem, fix, test))
    return problems


def _may_share(a: _Listed, b: _Listed) -> bool:
    """Whether two entries may list the same image: an unlabelled split lists the scans of the
    labelled training splits again (``mri_unlabelled`` holds every training scan), for the
    same patient."""
    one_unlabelled = bool(_UNLABELLED_SPLIT.search(a.split)) != bool(
        _UNLABELLED_SPLIT.search(b.split)
    )
    return (
        a.split != b.split
        and one_unlabelled
        and a.entry.get("patient") == b.entry.get("patient")
        and a.entry.get("week") == b.entry.get("week")
    )


def _duplicate_problems(listed: list[_Listed]) -> list[ManifestProblem]:
    """Entries that list the same image file, or the same voxel data under another name."""
    groups: dict[tuple[str, str], list[_Listed]] = defaultdict(list)
    for item in listed:
        if item.digest is not None:
            groups[("voxels", item.digest)].append(item)
        elif item.image is not None:
            groups[("file", os.path.realpath(item.image))].append(item)
    problems = []
    for items in groups.values():
        clashes = [
            (a, b) for i, a in enumerate(items) for b in items[i + 1 :] if not _may_share(a, b)
        ]
        if not clashes:
            continue
        a, b = clashes[0]
        same_file = os.path.realpath(a.image or "") == os.path.realpath(b.image or "")
        what = "the same file" if same_file else f"the same voxel data as {a.image}"
        others = len({id(x) for pair in clashes for x in pair}) - 2
        more = f" ({others} more entries too)" if others > 0 else ""
        problem = (
            f"{b.where}.image is {what}, already listed as {a.where} (patient "
            f"{a.entry.get('patient')!r}){more}; a duplicated scan counts twice in training and "
            "can leak into evaluation."
        )
        fix = (
            "remove the duplicate entry, or point it at the scan it was meant to be (a copy "
            "under another name is still the same scan). Only an unlabelled split may list a "
            "training scan again, for the same patient and week."
        )
        problems.append(ManifestProblem(b.image or a.image or "", problem, fix, b.split))
    return problems


# ------------------------------------------------------------------------------------ public


@dataclass
class _Report:
    manifest: dict[str, Any] | None
    problems: list[ManifestProblem]
    files: list[str]  # every data file or DICOM folder that exists and is listed


def _validate(path: str | os.PathLike, deep: bool, progress: bool) -> _Report:
    manifest, problems = _read_manifest(path)
    if not isinstance(manifest, dict):
        return _Report(None, problems, [])  # unreadable or not an object: nothing else to check
    file, manifest_dir = os.fspath(path), _manifest_dir(path)
    base = _base_dir(manifest, manifest_dir)
    if base is not None and not base[1].is_dir():
        problem = f'base_dir "{base[0]}" ({base[1]}) is not an existing folder.'
        fix = 'set "base_dir" to the data folder, relative to the manifest\'s folder.'
        problems.append(ManifestProblem(file, problem, fix))
        base = None  # one problem, not one more per path; the paths are still checked to exist
    is_template = manifest.get("template") is True
    tasks = []
    for name, entries in splits(manifest).items():
        problems += _split_problems(file, name, entries)
        tasks += [(name, i, e) for i, e in enumerate(entries) if isinstance(e, dict)]
    listed: list[_Listed] = []
    files: list[str] = []
    for name, i, entry in tqdm(
        tasks, desc="validate", unit="entry", file=sys.stderr, disable=not progress
    ):
        where = f"{name}[{i}]"
        paths, found = _path_problems(entry, where, name, manifest_dir, base, is_template)
        problems += found
        files += paths.values()
        item = _Listed(name, i, entry, paths.get("image"))
        if deep:
            found, item.digest = _deep_problems(entry, paths, where, name)
            problems += found
        listed.append(item)
    problems += _duplicate_problems(listed)
    problems += _patient_problems(file, listed)
    return _Report(manifest, problems, list(dict.fromkeys(files)))


def validate_manifest(
    path: str | os.PathLike, deep: bool = False, progress: bool = False
) -> list[ManifestProblem]:
    """Check a manifest and the files it lists; report every problem, never just the first.

    Always checked: the JSON and the schema; every ``image``/``label`` path exists and resolves
    (``..`` and symlinks followed) inside ``base_dir``; labels are NIfTI files; labelled splits are
    non-empty and label all their entries; no entry lists an image another entry lists (only an
    unlabelled split may repeat a training scan, for the same patient and week); no patient of a
    held-out split (:func:`is_test_split`) appears in another split of the same modality.
    With ``deep=True`` every volume is opened as well: it must read completely (an empty or
    truncated file, a DICOM folder with two series, a slice without pixel data or a missing
    slice are reported); images must be 3D, not constant, without NaN/Inf, CT in Hounsfield
    units, MR with contrast the per-volume normalisation can scale; no two entries may hold the
    same voxel data under different names; a label must match its image's shape and affine
    (within ``AFFINE_ATOL_MM``), hold only 0/1 and mark at least one tumour voxel.

    Args:
        path: the manifest ``.json`` file.
        deep: also open every volume (slow on real data: it reads every voxel).
        progress: show a progress bar over the entries on stderr.

    Returns:
        the problems found, in manifest order; an empty list means the manifest is usable.
    """
    return _validate(path, deep, progress).problems


def _fingerprint(path: str | os.PathLike, files: Sequence[str]) -> str:
    """What a deep validation's verdict depends on: the checks' version, the manifest's bytes
    and folder, and the path, size and modification time of every data file it lists."""
    h = hashlib.sha256(f"{_DEEP_CHECKS_VERSION}\0{_manifest_dir(path)}\0".encode())
    h.update(Path(path).read_bytes())
    for file in sorted(files):
        members = (
            sorted(p for p in Path(file).rglob("*") if p.is_file())
            if os.path.isdir(file)
            else [Path(file)]
        )
        for member in members:
            stat = member.stat()
            h.update(f"\0{member}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return h.hexdigest()


def _cache_file(files: Sequence[str]) -> Path | None:
    """Where deep-validation verdicts are remembered: the data's common folder (never the
    manifest's folder, which is usually under version control)."""
    folders = [f if os.path.isdir(f) else os.path.dirname(f) for f in files]
    if not folders:
        return None
    return Path(os.path.commonpath(folders)) / VALIDATION_CACHE


def _cached(cache: Path | None, fingerprint: str) -> bool:
    try:
        return fingerprint in json.loads(cache.read_text())["passed"]  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        return False


def _remember(cache: Path | None, fingerprint: str) -> None:
    """Record a passed deep validation; a read-only data folder just means no cache."""
    if cache is None:
        return
    from tumoraware.atomic import write_json_atomic

    try:
        passed = json.loads(cache.read_text()).get("passed", [])
    except (OSError, ValueError, AttributeError):
        passed = []
    passed = [p for p in passed if isinstance(p, str) and p != fingerprint][-63:]
    with contextlib.suppress(OSError):
        write_json_atomic(cache, {"about": _CACHE_ABOUT, "passed": [*passed, fingerprint]})


def check_manifest(
    path: str | os.PathLike, deep: bool = True, progress: bool = False, cache: bool = True
) -> None:
    """Raise unless ``path`` passes :func:`validate_manifest`: the gate before any training.

    ``tumoraware prepare``, ``reproduce`` and ``demo`` call it so that bad data is stopped
    before hours of training, not inside them. A passed deep validation is remembered in the
    data's common folder (:data:`VALIDATION_CACHE`), keyed by the manifest's bytes and every
    listed file's path, size and modification time, so an unchanged data set is not read again;
    any change to a file or to the manifest validates it afresh.

    Args:
        path: the manifest ``.json`` file.
        deep: open every volume (see :func:`validate_manifest`).
        progress: show a progress bar over the entries on stderr.
        cache: use and update the record of passed deep validations.

    Raises:
        ManifestError: naming the manifest and listing every problem, each with its file and fix.
    """
    report = _validate(path, deep=False, progress=False)
    if report.problems or not deep:
        if report.problems:
            raise ManifestError(report.problems, manifest=os.fspath(path))
        return
    store = _cache_file(report.files) if cache else None
    fingerprint = _fingerprint(path, report.files) if store is not None else ""
    if store is not None and _cached(store, fingerprint):
        return
    report = _validate(path, deep=True, progress=progress)
    if report.problems:
        raise ManifestError(report.problems, manifest=os.fspath(path))
    if store is not None:
        _remember(store, fingerprint)


def _check_inside_base(path: str | os.PathLike, manifest: dict[str, Any], split: str) -> None:
    manifest_dir = _manifest_dir(path)
    base = _base_dir(manifest, manifest_dir)
    problems = []
    for i, entry in enumerate(manifest[split]):
        for key in ("image", "label"):
            if isinstance(entry.get(key), str):
                file = _data_path(manifest_dir, entry[key])
                problem = _escape_problem(key, f"{split}[{i}]", entry[key], file, base, split)
                problems += [problem] if problem is not None else []
    if problems:
        raise ManifestError(problems)


def load_split(path: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """Return the entries of one split with absolute ``image``/``label`` paths.

    Paths resolve exactly as :func:`monai.data.load_decathlon_datalist` resolves them (relative to
    the manifest's folder), so bundle configs that call it directly see the same files. Files are
    not opened and need not exist; run :func:`validate_manifest` for that.

    Args:
        path: the manifest ``.json`` file.
        split: the split to load, e.g. ``"ct_train"``.

    Raises:
        ManifestError: when the manifest breaks the schema, ``split`` is not one of its splits
            (the message lists those that exist), or a path leaves ``base_dir``.

    Returns:
        a list of entry dicts; ``image`` and ``label`` are absolute paths.
    """
    manifest = load_manifest(path)
    available = splits(manifest)
    if split not in available:
        names = ", ".join(f'"{s}"' for s in available) or "none"
        problem = f'The manifest has no split "{split}"; its splits are: {names}.'
        fix = "pass one of those split names, or add the split to the manifest."
        raise ManifestError([ManifestProblem(os.fspath(path), problem, fix, split)])
    _check_inside_base(path, manifest, split)
    if not available[split]:
        return []  # load_decathlon_datalist indexes [0] of a "test" split, so skip it when empty
    # Imported here: monai takes seconds to import, and the cheap checks (the CLI's default) and
    # everything else in this module run without it.
    from monai.data import load_decathlon_datalist

    # An absolute manifest path makes MONAI join absolute data paths; labels are always paths.
    return load_decathlon_datalist(os.path.abspath(path), is_segmentation=True, data_list_key=split)


def run_validate(file: str, deep: bool = False) -> int:
    """Validate ``file`` and print the outcome; the body of ``tumoraware manifest validate``.

    Args:
        file: the manifest ``.json`` file.
        deep: also open every volume (see :func:`validate_manifest`); shows a progress bar on an
            interactive terminal.

    Returns:
        0 when the manifest is usable (prints ``OK: ...`` to stdout), 2 otherwise (prints every
        problem on its own line and a count to stderr): the CLI's exit code.
    """
    report = _validate(file, deep, progress=deep and sys.stderr.isatty())
    manifest, problems = report.manifest, report.problems
    if not problems and manifest is not None:
        groups = splits(manifest)
        n = sum(len(entries) for entries in groups.values())
        checks = ", deep checks passed" if deep else ""
        entries = "entry" if n == 1 else "entries"
        names = "split" if len(groups) == 1 else "splits"
        print(f"OK: {file} ({n} {entries} in {len(groups)} {names}{checks})")
        return 0
    for problem in problems:
        print(problem, file=sys.stderr)
    count = len(problems)
    note = ""
    if isinstance(manifest, dict) and manifest.get("template") is True:
        note = " This is a template: missing data files are expected until you prepare the data."
    print(f"FAILED: {file}: {count} problem{'s' if count != 1 else ''}.{note}", file=sys.stderr)
    return 2
