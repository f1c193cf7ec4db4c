"""``tumoraware prepare mri``: a manifest for your own T2-weighted lung MRI.

Put one scan per patient and week in one folder, as a NIfTI file (``.nii``/``.nii.gz``) or as a
folder holding one DICOM series, named by this rule:

    ``<patient>_week<N>``: the patient id, a separator (``_`` or ``-``), then ``week``, ``wk``
    or ``w`` (any case) and the week number; week 1 is pre-treatment. A name without a week part
    is week 1 of the patient named by the whole name.

    ``P001_week3.nii.gz`` -> (P001, 3); ``p001-wk3.nii`` -> (p001, 3); ``P001_w3/`` (a DICOM
    folder) -> (P001, 3); ``P002.nii.gz`` -> (P002, 1).

Tumour masks (NIfTI, 0/1, on the image's grid) go in a labels folder under the same name,
optionally suffixed ``_label``, ``_seg`` or ``_mask``: ``P001_week1_label.nii.gz`` labels
``P001_week1.nii.gz``. The labels folder may be the images folder itself; there masks must
carry one of the suffixes.

NIfTI images and masks are listed where they are. A DICOM series is converted once to
``OUT/<patient>/week<N>_image.nii.gz`` (an existing output is reused, so an interrupted run
resumes). Splits, as in the paper:

- ``mri_unlabelled``: every scan of the patients not held out (no labels; feeds the CT->MRI
  translation);
- ``mri_week1``: their labelled week-1 scans; ``mri_validation``: their labelled later scans;
- ``mri_test``: the labelled scans of the held-out ``test_patients``.

A labelled split with no entry is left out (the manifest format rejects an empty one).
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from tumoraware import __version__
from tumoraware.atomic import save_volume_atomic
from tumoraware.data.manifest import AFFINE_ATOL_MM

from ._common import (
    MissingInputError,
    PrepareError,
    base_dir_for,
    relative_posix,
    write_manifest_checked,
)

__all__ = ["NAMING_RULE", "MriScan", "parse_scan_name", "prepare_mri"]

logger = logging.getLogger(__name__)

NAMING_RULE = (
    "name each scan <patient>_week<N> (separator _ or -, then week, wk or w in any case, then "
    "the week number; week 1 = pre-treatment; a name without a week part is week 1), as a "
    ".nii/.nii.gz file or a DICOM-series folder, e.g. P001_week3.nii.gz, p001-wk3.nii, P001_w3/; "
    "name its mask the same, optionally suffixed _label, _seg or _mask "
    "(P001_week3_label.nii.gz)"
)
"""The naming rule, as the error messages state it."""

_WEEK = re.compile(r"^(?P<patient>.+)[_-](?:week|wk|w)[_-]?(?P<week>\d+)$", re.IGNORECASE)
_LABEL_SUFFIX = re.compile(r"^(?P<stem>.+)[_-](?:label|seg|mask)$", re.IGNORECASE)
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class MriScan:
    """One MRI scan found in the input folders.

    Args:
        patient: patient id from the name.
        week: week from the name (1 = pre-treatment).
        source: the NIfTI file or DICOM-series folder it came from.
        label: its mask (a NIfTI file), or ``None``.
    """

    patient: str
    week: int
    source: Path
    label: Path | None = None

    @property
    def is_dicom(self) -> bool:
        return self.source.is_dir()


def parse_scan_name(stem: str) -> tuple[str, int]:
    """``(patient, week)`` of a scan's name without its ``.nii``/``.nii.gz`` suffix.

    ``"P001_week3"`` -> ``("P001", 3)``, ``"p001-WK3"`` -> ``("p001", 3)``,
    ``"P001_w03"`` -> ``("P001", 3)``, ``"P002"`` -> ``("P002", 1)``. The last week part counts;
    the patient keeps its spelling. The week may be 0 here; :func:`prepare_mri` rejects it.
    """
    match = _WEEK.match(stem)
    if match is None:
        return stem, 1
    return match["patient"], int(match["week"])


def _nifti_stem(name: str) -> str | None:
    """The name without ``.nii``/``.nii.gz``, or ``None`` for a non-NIfTI name."""
    match = _NIFTI.search(name)
    return name[: match.start()] if match else None


def _label_stem(stem: str) -> str | None:
    """``P001_week1`` for ``P001_week1_label`` (also ``_seg``, ``_mask``); else ``None``."""
    match = _LABEL_SUFFIX.match(stem)
    return match["stem"] if match else None


def _is_dicom_folder(folder: Path, probe: int = 5) -> bool:
    """True when one of the first ``probe`` visible files under ``folder`` is a DICOM file."""
    from pydicom.misc import is_dicom

    files = (f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
    return any(is_dicom(f) for f in islice(files, probe))


def _shown(paths: Sequence[Path | str], limit: int = 20) -> str:
    lines = [f"  - {p}" for p in paths[:limit]]
    if len(paths) > limit:
        lines.append(f"  ... and {len(paths) - limit} more")
    return "\n".join(lines)


def _warn_ignored(ignored: list[str], folder: Path, what: str) -> None:
    """Log (once) the items of ``folder`` that are skipped because they are ``what``."""
    if ignored:
        shown = ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else "")
        logger.warning("prepare mri: ignoring %d item(s) in %s that are %s: %s",
                       len(ignored), folder, what, shown)  # fmt: skip


def _find_images(images: Path, labels_here: bool) -> list[MriScan]:
    """The scans in ``images`` (sorted by name); masks there are skipped when ``labels_here``."""
    scans, ignored, masks, bad_week = [], [], [], []
    for path in sorted(images.iterdir()):
        if path.name.startswith("."):
            continue  # hidden files and macOS resource forks (._P001_week1.nii.gz)
        stem = _nifti_stem(path.name) if path.is_file() else None
        if stem is not None and _label_stem(stem) is not None:
            if not labels_here:
                masks.append(path)
            continue
        if stem is None and path.is_dir() and _is_dicom_folder(path):
            stem = path.name
        if stem is None:
            ignored.append(path.name)
            continue
        patient, week = parse_scan_name(stem)
        if week < 1:
            bad_week.append(path)
            continue
        scans.append(MriScan(patient, week, path))
    _warn_ignored(ignored, images, "neither NIfTI files nor DICOM-series folders")
    if masks:
        raise PrepareError(
            f"{images} holds {len(masks)} mask(s) (named *_label, *_seg or *_mask) among the "
            f"images:\n{_shown(masks)}\nFix: pass that folder as the labels folder too "
            "(labels=images), or move the masks to the labels folder."
        )
    if bad_week:
        raise PrepareError(
            f"week 0 in {len(bad_week)} name(s):\n{_shown(bad_week)}\nFix: count weeks from 1 "
            "(1 = pre-treatment) and rename them."
        )
    if not scans:
        raise MissingInputError(
            f"{images}: no MRI scans found (no .nii/.nii.gz files or DICOM-series folders). "
            f"Fix: {NAMING_RULE}."
        )
    return scans


def _check_unique(scans: list[MriScan]) -> None:
    """Each (patient, week) once; each patient spelled one way (case-insensitively distinct)."""
    by_key: dict[tuple[str, int], list[Path]] = defaultdict(list)
    spellings: dict[str, dict[str, Path]] = defaultdict(dict)
    for scan in scans:
        by_key[(scan.patient, scan.week)].append(scan.source)
        spellings[scan.patient.casefold()].setdefault(scan.patient, scan.source)
    clashes = [
        f"  - patient {p!r}, week {w}: " + " and ".join(str(s) for s in sources)
        for (p, w), sources in by_key.items()
        if len(sources) > 1
    ]
    if clashes:
        raise PrepareError(
            f"{len(clashes)} (patient, week) pair(s) have more than one image:\n"
            + "\n".join(clashes)
            + f"\nFix: keep one image per patient and week, or rename the others ({NAMING_RULE})."
        )
    mixed = [
        "  - " + ", ".join(f"{name!r} ({source})" for name, source in sorted(names.items()))
        for names in spellings.values()
        if len(names) > 1
    ]
    if mixed:
        raise PrepareError(
            "patient ids that differ only in case:\n"
            + "\n".join(mixed)
            + "\nFix: spell each patient's id the same way in all its file names."
        )


def _attach_labels(scans: list[MriScan], labels: Path, labels_here: bool) -> list[MriScan]:
    """``scans`` with ``label`` set from the masks in ``labels`` (matched by name, any case)."""
    index = {(s.patient.casefold(), s.week): i for i, s in enumerate(scans)}
    found: dict[int, list[Path]] = defaultdict(list)
    orphans, ignored = [], []
    for path in sorted(labels.iterdir()):
        if path.name.startswith("."):
            continue
        stem = _nifti_stem(path.name) if path.is_file() else None
        if stem is None:
            if not labels_here:
                ignored.append(path.name)
            continue
        bare = _label_stem(stem)
        if bare is None and labels_here:
            continue  # an image, not a mask
        patient, week = parse_scan_name(bare if bare is not None else stem)
        i = index.get((patient.casefold(), week))
        if i is None:
            orphans.append(path)
        else:
            found[i].append(path)
    _warn_ignored(ignored, labels, "not NIfTI files")
    if orphans:
        raise PrepareError(
            f"{len(orphans)} mask(s) match no image:\n{_shown(orphans)}\nFix: name each mask "
            f"after its image ({NAMING_RULE}), add the missing image, or remove the mask."
        )
    doubles = [
        f"  - {scans[i].source}: " + " and ".join(str(p) for p in paths)
        for i, paths in found.items()
        if len(paths) > 1
    ]
    if doubles:
        raise PrepareError(
            f"{len(doubles)} image(s) have more than one mask:\n"
            + "\n".join(doubles)
            + "\nFix: keep one mask per image."
        )
    return [replace(s, label=found[i][0]) if i in found else s for i, s in enumerate(scans)]


def _test_patients(requested: Sequence[str] | str, scans: list[MriScan]) -> set[str]:
    """The held-out patients, spelled as in the file names (ids match in any case)."""
    if isinstance(requested, (str, int)):
        requested = [requested]
    names = [n for item in requested for n in re.split(r"[,\s]+", str(item)) if n]
    known = {s.patient.casefold(): s.patient for s in scans}
    unknown = [n for n in names if n.casefold() not in known]
    if unknown:
        raise PrepareError(
            f"test patient(s) {', '.join(repr(n) for n in unknown)} not found among the "
            f"{len(known)} patient(s) in the images: {', '.join(sorted(known.values()))}. "
            "Fix: pass ids as they appear in the file names."
        )
    return {known[n.casefold()] for n in names}


def _output_dtype(array: np.ndarray) -> np.ndarray:
    """int16 when every value is a whole number in int16's range, else float32."""
    if array.size and np.issubdtype(array.dtype, np.number) and np.all(np.isfinite(array)):
        lo, hi = float(array.min()), float(array.max())
        whole = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.mod(array, 1) == 0))
        if whole and -32768 <= lo <= hi <= 32767:
            return array.astype(np.int16)
    return array.astype(np.float32)


def _convert_dicom(folder: Path, destination: Path) -> None:
    """Convert the DICOM series in ``folder`` to a NIfTI file (RAS affine) at ``destination``."""
    from tumoraware.data.dicom import DicomError, read_dicom_series

    try:
        series = read_dicom_series(folder)
    except DicomError:
        raise  # its message already names the file and the fix
    except Exception as e:  # any other reader failure means the same thing to the user
        raise PrepareError(
            f"{folder}: cannot read it as one DICOM series ({type(e).__name__}: {e}). Fix: keep "
            "exactly one series per folder, or convert it to NIfTI (e.g. with dcm2niix) and put "
            "the .nii.gz in its place under the same name."
        ) from e
    save_volume_atomic(_output_dtype(np.asarray(series.array)), series.affine_ras, destination)


def _spatial(shape: Sequence[int]) -> tuple[int, ...]:
    """Drop trailing singleton dimensions beyond the third, as the manifest validator does."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _grid_problem(image: Path, label: Path) -> str | None:
    """A line naming both files if ``label`` is not on ``image``'s grid (headers only)."""
    try:
        img, lab = nib.load(image), nib.load(label)
    except Exception:
        return None  # the deep check before the manifest is written names the file and why
    if len(_spatial(img.shape)) != 3:
        return None  # not a 3D volume: the deep check says so, rather than "off the grid"
    if _spatial(img.shape) != _spatial(lab.shape):
        return (
            f"  - {label} has shape {_spatial(lab.shape)} but its image {image} has shape "
            f"{_spatial(img.shape)}"
        )
    if not np.allclose(img.affine, lab.affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        diff = float(np.max(np.abs(img.affine - lab.affine)))
        return f"  - {label} has an affine that differs from its image {image}'s by {diff:.4g} mm"
    return None


def prepare_mri(
    images: str | os.PathLike,
    out_dir: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    test_patients: Sequence[str] | str = (),
    manifest_name: str = "own_t2w_mri.json",
    progress: bool = True,
) -> Path:
    """Write a manifest for a folder of T2w MRI scans (and masks); convert DICOM series to NIfTI.

    Names follow :data:`NAMING_RULE` (see the module docstring). Every name-level problem is
    found before any conversion starts.

    Args:
        images: folder of ``.nii``/``.nii.gz`` files and/or DICOM-series folders, one per scan.
        out_dir: folder for the manifest and the converted DICOM series
            (``OUT/<patient>/week<N>_image.nii.gz``).
        labels: folder of NIfTI masks named after their images (may be ``images`` itself);
            ``None``: no masks, so only ``mri_unlabelled`` is written.
        test_patients: patients held out for testing (a sequence, or one string with ids
            separated by commas or spaces); their labelled scans form ``mri_test`` and none of
            their scans appears in another split.
        manifest_name: file name of the manifest inside ``out_dir``.
        progress: show a progress bar over the scans.

    Raises:
        MissingInputError: ``images`` or ``labels`` is not a folder, or ``images`` holds no scan.
        PrepareError: two images name the same (patient, week); a mask matches no image, or an
            image has two masks; a mask is not on its image's grid (shape, or affine beyond
            ``AFFINE_ATOL_MM``); a test patient is not among the images; a week is 0; masks sit
            among the images without ``labels`` pointing there; a DICOM series cannot be read;
            a scan or mask fails the manifest's deep checks (empty, truncated, 4D, constant,
            a copy of another scan, a mask not 0/1): then no manifest is written and a previous
            one is kept.

    Returns:
        the path of the manifest written.
    """
    images, out_dir = Path(images), Path(out_dir)
    if not images.is_dir():
        raise MissingInputError(f"{images}: no such folder. Fix: pass the folder of your scans.")
    labels = Path(labels) if labels is not None else None
    if labels is not None and not labels.is_dir():
        raise MissingInputError(
            f"{labels}: no such folder. Fix: pass the folder of your tumour masks, or leave "
            "labels out."
        )
    labels_here = labels is not None and labels.resolve() == images.resolve()
    scans = _find_images(images, labels_here)
    _check_unique(scans)
    if labels is not None:
        scans = _attach_labels(scans, labels, labels_here)
    held_out = _test_patients(test_patients, scans)

    manifest_path = out_dir / manifest_name
    manifest_dir = manifest_path.parent
    resolved: dict[Path, Path] = {}  # source -> the NIfTI file the manifest lists
    mismatches = []
    bar = tqdm(scans, desc="prepare mri", unit="scan", disable=not progress)
    for scan in bar:
        bar.set_postfix_str(scan.source.name)
        image = scan.source
        if scan.is_dicom:
            image = out_dir / scan.patient / f"week{scan.week}_image.nii.gz"
            if not image.exists():  # written atomically, so an existing file is complete
                _convert_dicom(scan.source, image)
        resolved[scan.source] = image
        if scan.label is not None:
            problem = _grid_problem(image, scan.label)
            if problem is not None:
                mismatches.append(problem)
    if mismatches:
        raise PrepareError(
            f"{len(mismatches)} mask(s) are not on their image's grid:\n"
            + "\n".join(mismatches)
            + "\nFix: resample each mask onto its image's grid (nearest neighbour; in 3D Slicer "
            "or ITK-SNAP, export the segmentation with the image as reference), or pair it with "
            "the image it was drawn on."
        )

    def entry(scan: MriScan, labelled: bool) -> dict[str, Any]:
        item = {"image": relative_posix(resolved[scan.source], manifest_dir)}
        if labelled:
            item["label"] = relative_posix(scan.label, manifest_dir)
        return {**item, "modality": "MR", "patient": scan.patient, "week": scan.week}

    ordered = sorted(scans, key=lambda s: (s.patient, s.week))
    train = [s for s in ordered if s.patient not in held_out]
    test = [s for s in ordered if s.patient in held_out]
    for patient in sorted(held_out):
        if not any(s.label is not None for s in test if s.patient == patient):
            logger.warning(
                "prepare mri: test patient %r has no labelled scan, so it appears in no split",
                patient,
            )
    splits = {
        "mri_unlabelled": [entry(s, labelled=False) for s in train],
        "mri_week1": [entry(s, True) for s in train if s.label is not None and s.week == 1],
        "mri_validation": [entry(s, True) for s in train if s.label is not None and s.week > 1],
        "mri_test": [entry(s, True) for s in test if s.label is not None],
    }
    files = [images, *resolved.values(), *(s.label for s in scans if s.label is not None)]
    manifest: dict[str, Any] = {
        "name": "Own T2w lung MRI",
        "description": (
            "T2-weighted lung MRI, one scan per patient and week (week 1 = pre-treatment), with "
            "tumour masks where contoured. Prepared by `tumoraware prepare mri`: NIfTI listed in "
            "place, DICOM series converted to <patient>/week<N>_image.nii.gz next to this "
            "manifest. Splits: mri_unlabelled (scans of the training patients, no masks), "
            "mri_week1 and mri_validation (their labelled week-1 and later scans), mri_test "
            "(labelled scans of held-out patients)."
        ),
        "licence": "set by the data owner; keep patient data out of the repository",
        "tensorImageSize": "3D",
        "labels": {"0": "background", "1": "tumor"},
        "base_dir": base_dir_for(manifest_dir, [manifest_dir, *files]),
        "generator": {
            "tool": "tumoraware prepare mri",
            "version": __version__,
            "test_patients": sorted(held_out),
        },
        **{
            name: entries for name, entries in splits.items() if entries or name == "mri_unlabelled"
        },
    }
    write_manifest_checked(manifest_path, manifest, progress=progress)
    n_dicom = sum(s.is_dicom for s in scans)
    logger.info(
        "prepare mri: %d scan(s) of %d patient(s) (%d from DICOM, %d labelled); manifest %s",
        len(scans),
        len({s.patient for s in scans}),
        n_dicom,
        sum(s.label is not None for s in scans),
        manifest_path,
    )
    return manifest_path
