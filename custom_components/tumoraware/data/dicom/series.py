"""Read one DICOM image series into a volume with its true geometry.

Slices are ordered by ImagePositionPatient projected on the slice normal, never by file name or
InstanceNumber (both are unreliable in real exports), and any ImageOrientationPatient works:
axial, prone, oblique, coronal. Geometry follows the standard (as dcm2niix and ITK read it):

- ``r = IOP[0:3]`` is the direction of increasing column index, ``c = IOP[3:6]`` of increasing
  row index, ``n = r × c`` the slice normal;
- ``PixelSpacing = [row spacing, column spacing]``: the distance between rows (along ``c``) and
  between columns (along ``r``);
- the volume is stored in NIfTI voxel order ``array[i, j, k]`` = column ``i``, row ``j``, sorted
  slice ``k`` (``pixel_array.T`` per slice), and ``affine_lps`` maps ``(i, j, k)`` to DICOM
  patient coordinates (LPS mm). NIfTI stores RAS: ``affine_ras = diag(-1, -1, 1) · affine_lps``.

A missing slice or non-uniform spacing is an error that says where the gap is, unless
``allow_gaps=True``, which resamples onto a uniform grid along the normal (linear for the image)
and records it (``resampled``). Pixel data and headers come from pydicom; hand-written is only
the geometry bookkeeping, which no library exposes with these checks.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

__all__ = [
    "LPS_TO_RAS",
    "DicomError",
    "DicomSeries",
    "SeriesFixes",
    "dataset_name",
    "dcmread_lenient",
    "find_series",
    "read_dicom_series",
    "select_series",
    "sorted_stack",
]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (LPS) to NIfTI world coordinates (RAS)."""

_IOP_TOLERANCE = 1e-4  # direction cosines that differ more than this mean another orientation
_GAP_TOLERANCE = 0.05  # a spacing more than 5 % off the median is a gap or non-uniform spacing
_DUPLICATE_MM = 1e-3


class DicomError(ValueError):
    """A DICOM input we cannot convert correctly; the message names the file and the fix."""


@dataclass(frozen=True)
class SliceStack:
    """The acquired slices, sorted along the normal: what contours are matched against.

    ``positions`` are distances (mm) along ``normal``; ``origins`` the ImagePositionPatient of
    each slice ``(K, 3)``; ``row_dir``/``col_dir`` are IOP's ``c`` and ``r``.
    """

    origins: np.ndarray
    positions: np.ndarray
    sop_uids: tuple[str, ...]
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    row_spacing: float
    col_spacing: float
    n_rows: int
    n_cols: int


@dataclass
class DicomSeries:
    """A volume in NIfTI voxel order with its geometry.

    Attributes:
        array: ``(n_cols, n_rows, n_slices)``; CT in HU (int16), other modalities float32 with
            RescaleSlope/Intercept applied.
        affine_lps: 4×4 voxel ``(i, j, k)`` → patient LPS mm.
        sop_uids: SOPInstanceUID of each slice ``k`` ("" for a slice made by resampling).
        series_uid, frame_of_reference_uid, modality: from the headers.
        files: the files of the series, in slice order.
        resampled: True when ``allow_gaps`` resampled the slices onto a uniform grid.
        stack: the acquired slices (differs from the grid only when ``resampled``).
    """

    array: np.ndarray
    affine_lps: np.ndarray
    sop_uids: list[str]
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    files: list[Path]
    resampled: bool = False
    stack: SliceStack | None = field(default=None, repr=False)

    @property
    def affine_ras(self) -> np.ndarray:
        """The affine NIfTI stores (RAS world)."""
        return LPS_TO_RAS @ self.affine_lps

    @property
    def grid_positions(self) -> np.ndarray:
        """Position (mm along the slice normal) of every slice of ``array``."""
        origin = self.affine_lps[:3, 3]
        step = self.affine_lps[:3, 2]
        normal = self.stack.normal if self.stack is not None else step / np.linalg.norm(step)
        return float(origin @ normal) + np.arange(self.array.shape[2]) * float(step @ normal)


def dcmread_lenient(path: str | os.PathLike, **kwargs) -> pydicom.Dataset:
    """``pydicom.dcmread``, also for files without the 128-byte preamble and file meta.

    Older exports (and pydicom's own ``rtstruct.dcm``) lack them; forcing is accepted only when
    the result is recognisably DICOM (it has a SOPClassUID or a Modality).
    """
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a forced read of a non-DICOM file warns; we decide
            ds = pydicom.dcmread(path, force=True, **kwargs)
        if "SOPClassUID" not in ds and "Modality" not in ds:
            raise
        return ds


def _dicom_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise DicomError(f"{folder}: no such folder. Fix: pass the folder that holds the series.")
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder. Fix: pass the folder that holds the series.")
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


@dataclass
class _FolderScan:
    """What :func:`_scan` found: image slices by series, and files that cannot be slices.

    ``no_pixels`` holds, per series, the files that carry a slice position but no PixelData (a
    slice whose pixels were lost); ``broken`` the files that start like DICOM but do not parse
    (truncated downloads). Both would otherwise be skipped silently and show up, at best, as a
    missing slice somewhere else. ``multi_frame`` holds the multi-frame images (Enhanced CT/MR:
    a whole series in one file, geometry per frame), which this reader does not take: they are
    named in the "no series" error instead of being called broken.
    """

    groups: dict[str, list[pydicom.Dataset]]
    no_pixels: dict[str, list[Path]]
    broken: list[tuple[Path, str]]
    multi_frame: list[tuple[Path, str]]


def _scan(folder: Path) -> _FolderScan:
    from pydicom.misc import is_dicom

    groups: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    no_pixels: dict[str, list[Path]] = defaultdict(list)
    broken: list[tuple[Path, str]] = []
    multi_frame: list[tuple[Path, str]] = []
    for path in _dicom_files(folder):
        try:
            ds = dcmread_lenient(path, defer_size="1 KB")
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as error:
            if is_dicom(path):  # has the DICM preamble, so it was meant to be read
                broken.append((path, f"{type(error).__name__}: {error}"))
            continue
        if "ImagePositionPatient" in ds and "SeriesInstanceUID" in ds:
            if "PixelData" in ds:
                ds.filename = str(path)
                groups[str(ds.SeriesInstanceUID)].append(ds)
            else:  # a slice whose pixels are gone, or a file cut off before them
                no_pixels[str(ds.SeriesInstanceUID)].append(path)
        elif "PixelData" in ds and int(ds.get("NumberOfFrames", 1) or 1) > 1:
            sop_class = getattr(ds.get("SOPClassUID"), "name", "an unknown SOP class")
            multi_frame.append((path, f"{sop_class}, {int(ds.NumberOfFrames)} frames"))
        elif "Image Storage" in str(getattr(ds.get("SOPClassUID"), "name", "")):
            reason = "an image file without SeriesInstanceUID, ImagePositionPatient or PixelData"
            broken.append((path, reason))
    return _FolderScan(dict(groups), dict(no_pixels), broken, multi_frame)


def _and_more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def find_series(folder: str | os.PathLike) -> dict[str, list[pydicom.Dataset]]:
    """Image datasets under ``folder`` grouped by SeriesInstanceUID (pixel data deferred).

    Files that are not DICOM, and DICOM objects without pixels and geometry (RTSTRUCT, RTPLAN,
    SR, ...), are skipped.
    """
    return _scan(Path(folder)).groups


def _no_series_error(scan: _FolderScan, folder: Path, fix: str) -> DicomError:
    """The error for a folder without a single-frame image series, naming what it does hold.

    A multi-frame (Enhanced) image is the usual surprise: a modern scanner's whole series in one
    file, which this single-frame reader does not take, so the fix names the export to ask for.
    """
    if scan.multi_frame:
        path, what = scan.multi_frame[0]
        return DicomError(
            f"{path}: a multi-frame image ({what}){_and_more(scan.multi_frame)}; tumoraware reads "
            "classic single-frame CT/MR series (one file per slice, each with "
            "ImagePositionPatient), not multi-frame Enhanced images. Fix: export the series from "
            "the scanner or PACS as single-frame (classic) images, or convert it to NIfTI (e.g. "
            "dcm2niix) and run on the NIfTI."
        )
    return DicomError(
        f"{folder}: no DICOM image series found (no file with pixel data and "
        f"ImagePositionPatient). Fix: {fix}"
    )


def _check_complete(scan: _FolderScan, series_uid: str, folder: Path) -> None:
    """Refuse a series with a slice that lost its pixels, or a folder with a truncated file."""
    lost = scan.no_pixels.get(series_uid, [])
    if lost:
        shown = ", ".join(str(p) for p in lost[:5]) + (" ..." if len(lost) > 5 else "")
        raise DicomError(
            f"{lost[0]}: {len(lost)} slice(s) of series {series_uid} in {folder} have no pixel "
            f"data (PixelData missing; a file cut off early looks the same): {shown}. Fix: "
            "re-download or re-export the series; a slice without pixels would leave a hole in "
            "the volume."
        )
    if scan.broken:
        path, reason = scan.broken[0]
        raise DicomError(
            f"{path}: a DICOM file that cannot be read ({reason}){_and_more(scan.broken)}; it is "
            "probably truncated. Fix: re-download it, or remove it if it does not belong to the "
            "series."
        )


def _describe(groups: dict[str, list[pydicom.Dataset]]) -> str:
    return "; ".join(
        f"{uid} ({ds[0].get('Modality', '?')}, {len(ds)} files, "
        f"{ds[0].get('SeriesDescription', 'no description')!s})"
        for uid, ds in groups.items()
    )


@dataclass(frozen=True)
class SeriesFixes:
    """What to tell the user when a folder does not give exactly one series: the reader and the
    DICOM writers are driven by different options, so each names its own fix."""

    none: str
    unknown: str
    several: str


_READ_FIXES = SeriesFixes(
    none="point to the folder holding the CT/MR slices.",
    unknown="pass the folder of the series the RTSTRUCT references, or one of these "
    "SeriesInstanceUIDs.",
    several="pass series_uid, or an RTSTRUCT (its referenced series is used).",
)


def select_series(
    folder: str | os.PathLike, series_uid: str | None, fixes: SeriesFixes = _READ_FIXES
) -> tuple[_FolderScan, list[pydicom.Dataset]]:
    """The one image series in ``folder`` (the one ``series_uid`` names, if several), with the
    scan it came from (for :func:`_check_complete`); pixel data deferred.

    Raises:
        DicomError: a missing folder, no single-frame series (naming a multi-frame file if one
            is there), an unknown ``series_uid``, several series and no ``series_uid``.
    """
    folder = Path(folder)
    scan = _scan(folder)
    groups = scan.groups
    if not groups:
        raise _no_series_error(scan, folder, fixes.none)
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomError(
                f"{folder}: series {series_uid} is not in this folder; found: "
                f"{_describe(groups)}. Fix: {fixes.unknown}"
            )
        return scan, groups[series_uid]
    if len(groups) > 1:
        raise DicomError(
            f"{folder}: {len(groups)} series in one folder: {_describe(groups)}. Fix: "
            f"{fixes.several}"
        )
    return scan, next(iter(groups.values()))


def dataset_name(ds: pydicom.Dataset) -> str:
    """The file a dataset was read from, or its SOPInstanceUID when it was built in memory."""
    return str(getattr(ds, "filename", None) or f"SOPInstanceUID {ds.get('SOPInstanceUID', '?')}")


def sorted_stack(
    slices: Sequence[pydicom.Dataset],
) -> tuple[list[pydicom.Dataset], SliceStack]:
    """The slices sorted along their normal, and their geometry, checked to form one stack.

    Shared by the reader (pixels follow) and the DICOM writers (headers only), so both refuse
    the same things: a missing geometry tag, mixed orientations or sizes, two slices at one
    position. Gaps are not checked here: the writers reference the acquired slices as they are.

    Raises:
        DicomError: naming the offending file and the fix.
    """
    first = slices[0]
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                "Columns"):  # fmt: skip
        missing = [ds for ds in slices if tag not in ds]
        if missing:
            raise DicomError(
                f"{dataset_name(missing[0])}: missing {tag}, which places the slice in the "
                "patient. Fix: re-export the series."
            )
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    for ds in slices[1:]:
        other = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if np.abs(other - iop).max() > _IOP_TOLERANCE:
            raise DicomError(
                f"{dataset_name(ds)}: ImageOrientationPatient {other.tolist()} differs from "
                f"{dataset_name(first)}'s {iop.tolist()}: the series mixes images of different "
                "orientations (e.g. a scout or a reformat). Fix: remove the odd files or export "
                "one orientation."
            )
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomError(
                f"{dataset_name(ds)}: {ds.Rows}×{ds.Columns} pixels, but {dataset_name(first)} "
                f"has {first.Rows}×{first.Columns}: the series mixes images of different sizes. "
                "Fix: remove files that belong to another series."
            )
    col_dir, row_dir = iop[:3], iop[3:]
    normal = np.cross(col_dir, row_dir)
    origins = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in slices])
    order = np.argsort(origins @ normal, kind="stable")
    slices, origins = [slices[k] for k in order], origins[order]
    positions = origins @ normal
    for k in np.nonzero(np.diff(positions) < _DUPLICATE_MM)[0]:
        raise DicomError(
            f"{dataset_name(slices[k + 1])}: same slice position ({positions[k]:.3f} mm along "
            f"the normal) as {dataset_name(slices[k])}. Fix: the series holds two acquisitions; "
            "keep one."
        )
    spacing = np.asarray(first.PixelSpacing, dtype=float)
    stack = SliceStack(
        origins, positions, tuple(str(ds.get("SOPInstanceUID", "")) for ds in slices), row_dir,
        col_dir, normal, float(spacing[0]), float(spacing[1]), int(first.Rows),
        int(first.Columns),
    )  # fmt: skip
    return slices, stack


def _check_spacing(positions: np.ndarray, files: list[str], folder: Path) -> None:
    """Refuse missing slices or uneven spacing (positions sorted, no duplicates)."""
    steps = np.diff(positions)
    regular = float(np.median(steps))
    for k in np.nonzero(np.abs(steps - regular) > _GAP_TOLERANCE * regular)[0]:
        missing = round(steps[k] / regular) - 1
        kind = (
            f"{missing} slice(s) missing"
            if missing >= 1 and abs(steps[k] - (missing + 1) * regular) < _GAP_TOLERANCE * regular
            else "non-uniform slice spacing"
        )
        raise DicomError(
            f"{folder}: {kind}: gap of {steps[k]:.3f} mm between slices at {positions[k]:.3f} mm "
            f"and {positions[k + 1]:.3f} mm along the slice normal (regular spacing "
            f"{regular:.3f} mm; files {Path(files[k]).name}, {Path(files[k + 1]).name}). Fix: "
            "re-download the series, or pass --allow_gaps to resample onto a uniform grid."
        )


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    """One slice's stored values as DICOM lays them out, ``(rows, cols)``."""
    try:
        return ds.pixel_array
    except Exception as error:  # pydicom raises several types for unreadable pixel data
        raise DicomError(
            f"{ds.filename}: pixel data cannot be decoded ({error}). Fix: re-export it "
            "uncompressed, or install the pydicom pixel-data plugin for its transfer syntax."
        ) from error


def _rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))


def _volume(slices: list[pydicom.Dataset], as_hu: bool) -> np.ndarray:
    """Stack slices into ``(cols, rows, K)`` with RescaleSlope/Intercept applied.

    Slices are written contiguously into a ``(K, rows, cols)`` buffer and returned as its
    transposed view, which is Fortran-ordered ``(cols, rows, K)``: NIfTI's own on-disk order,
    so nibabel writes it without another copy. CT with integral rescale (the usual slope 1,
    intercept -1024) stays in integer arithmetic straight into int16.
    """
    shape = (len(slices), int(slices[0].Rows), int(slices[0].Columns))
    integral = as_hu and all(
        slope == 1.0 and intercept.is_integer() for slope, intercept in map(_rescale, slices)
    )
    buffer = np.empty(shape, dtype=np.int16 if integral else np.float32)
    for k, ds in enumerate(slices):
        slope, intercept = _rescale(ds)
        if integral:
            np.clip(_pixels(ds).astype(np.int32) + int(intercept), -32768, 32767, out=buffer[k],
                    casting="unsafe")  # fmt: skip
        else:
            buffer[k] = _pixels(ds).astype(np.float32) * slope + intercept
    return buffer.transpose(2, 1, 0)


def _resample(array: np.ndarray, positions: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of slices (last axis) from ``positions`` onto ``grid`` (mm)."""
    upper = np.clip(np.searchsorted(positions, grid, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = ((grid - positions[lower]) / (positions[upper] - positions[lower])).astype(np.float32)
    return array[..., lower] * (1 - weight) + array[..., upper] * weight


def uniform_grid(positions: np.ndarray) -> np.ndarray:
    """Evenly spaced positions from the first to the last slice at the median spacing."""
    regular = float(np.median(np.diff(positions)))
    count = round((positions[-1] - positions[0]) / regular) + 1
    return positions[0] + np.arange(count) * regular


def read_dicom_series(
    folder: str | os.PathLike, series_uid: str | None = None, allow_gaps: bool = False
) -> DicomSeries:
    """Read the image series in ``folder`` (the one ``series_uid`` names, if several).

    Args:
        folder: a folder with the slices (sub-folders are searched too).
        series_uid: which series to read when the folder holds several.
        allow_gaps: resample a series with missing slices or uneven spacing onto a uniform grid
            instead of raising.

    Returns:
        the :class:`DicomSeries`, ``array`` of shape ``(n_cols, n_rows, n_slices)``.

    Raises:
        DicomError: no series, several series and no ``series_uid``, mixed orientations or sizes,
            duplicate positions, gaps (without ``allow_gaps``), undecodable pixel data, a slice
            without pixel data, a DICOM file in the folder that cannot be parsed.
    """
    folder = Path(folder)
    scan, slices = select_series(folder, series_uid)
    _check_complete(scan, str(slices[0].SeriesInstanceUID), folder)
    slices, stack = sorted_stack(slices)
    origins, positions, normal = stack.origins, stack.positions, stack.normal
    files = [str(ds.filename) for ds in slices]
    modality = str(slices[0].get("Modality", ""))
    if len(slices) > 1:
        try:
            _check_spacing(positions, files, folder)
        except DicomError as gap:
            if not allow_gaps:
                raise
            logger.warning("%s; resampling onto a uniform grid (--allow_gaps).", gap)
    as_hu = modality == "CT"
    array = _volume(slices, as_hu)
    step = (
        (origins[-1] - origins[0]) / (len(slices) - 1)
        if len(slices) > 1
        else normal * float(slices[0].get("SliceThickness", 1.0) or 1.0)
    )
    sop_uids, resampled = list(stack.sop_uids), False
    if allow_gaps and len(slices) > 2:
        grid = uniform_grid(positions)
        if len(grid) != len(positions) or not np.allclose(grid, positions, atol=_DUPLICATE_MM):
            array = _resample(array.astype(np.float32), positions, grid)
            step = step * (grid[1] - grid[0]) / float(step @ normal)
            lookup = dict(zip(np.round(positions, 3), stack.sop_uids, strict=True))
            sop_uids = [lookup.get(round(float(p), 3), "") for p in grid]
            resampled = True
    if as_hu and array.dtype != np.int16:
        array = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    affine = np.eye(4)
    affine[:3, 0] = stack.col_dir * stack.col_spacing
    affine[:3, 1] = stack.row_dir * stack.row_spacing
    affine[:3, 2], affine[:3, 3] = step, origins[0]
    return DicomSeries(
        array=array,
        affine_lps=affine,
        sop_uids=sop_uids,
        series_uid=str(slices[0].SeriesInstanceUID),
        frame_of_reference_uid=str(slices[0].get("FrameOfReferenceUID", "")),
        modality=modality,
        files=[Path(f) for f in files],
        resampled=resampled,
        stack=stack,
    )
