"""The DICOM series a result is written against, and the checks a mask must pass on it.

DICOM outputs (SEG, RTSTRUCT) reference the source series instance by instance, so they need
the source's headers in slice order, not its pixels: :func:`load_source_series` reads headers
only (a folder, or datasets already in memory), checks that they form one series in one frame
of reference, and stacks them with the reader's own :func:`.series.sorted_stack`. :func:`check_mask`
turns a mask (numpy or torch, NIfTI voxel order) into the uint8 array both writers take, or
says why it cannot be written.

Voxel order, as everywhere in :mod:`tumoraware.data.dicom`: ``mask[i, j, k]`` = column ``i``,
row ``j``, sorted slice ``k``, so one slice as DICOM lays it out is ``mask[:, :, k].T``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from .series import DicomError, SeriesFixes, dataset_name, select_series, sorted_stack

__all__ = ["SourceSeries", "check_mask", "load_source_series", "series_description"]

_UNIFORM_TOLERANCE = 0.05  # a step more than 5 % off the mean one is a gap or uneven spacing
_LO_LENGTH = 64  # DICOM Long String (SeriesDescription, ManufacturerModelName, AlgorithmName)


@dataclass(frozen=True)
class SourceSeries:
    """One image series' headers in slice order, with the geometry the writers need.

    Attributes:
        datasets: headers (no pixel data) of the slices, sorted along the slice normal.
        origins: ``(K, 3)`` ImagePositionPatient of each slice, LPS mm.
        col_dir: ``r = IOP[0:3]``, the direction of increasing column index ``i``.
        row_dir: ``c = IOP[3:6]``, the direction of increasing row index ``j``.
        col_spacing: PixelSpacing[1], mm between columns (along ``col_dir``).
        row_spacing: PixelSpacing[0], mm between rows (along ``row_dir``).
        n_rows, n_cols: Rows and Columns.
        where: the folder it was read from, for messages ("datasets" when given in memory).
    """

    datasets: tuple[pydicom.Dataset, ...]
    origins: np.ndarray
    col_dir: np.ndarray
    row_dir: np.ndarray
    col_spacing: float
    row_spacing: float
    n_rows: int
    n_cols: int
    where: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_cols, n_rows, n_slices)``: the voxel order a mask must have."""
        return (self.n_cols, self.n_rows, len(self.datasets))

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.col_dir, self.row_dir)

    @property
    def sop_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)

    def patient_points(self, k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(N, 3)`` LPS mm of (fractional) pixel positions ``(rows, cols)`` on slice ``k``."""
        return (
            self.origins[k]
            + np.asarray(cols, dtype=float)[:, None] * (self.col_spacing * self.col_dir)
            + np.asarray(rows, dtype=float)[:, None] * (self.row_spacing * self.row_dir)
        )

    @property
    def affine_lps(self) -> np.ndarray:
        """4×4 voxel ``(i, j, k)`` → LPS mm, as :func:`.series.read_dicom_series` builds it.

        Raises:
            DicomError: slices not evenly spaced along one direction (a missing slice), which no
                affine, so no NIfTI grid, can describe.
        """
        affine = np.eye(4)
        affine[:3, 0] = self.col_dir * self.col_spacing
        affine[:3, 1] = self.row_dir * self.row_spacing
        affine[:3, 3] = self.origins[0]
        count = len(self.origins)
        if count == 1:
            thickness = float(self.datasets[0].get("SliceThickness", 1.0) or 1.0)
            affine[:3, 2] = self.normal * thickness
            return affine
        step = (self.origins[-1] - self.origins[0]) / (count - 1)
        off = np.linalg.norm(self.origins - (self.origins[0] + np.arange(count)[:, None] * step),
                             axis=1)  # fmt: skip
        k = int(np.argmax(off))
        if off[k] > _UNIFORM_TOLERANCE * float(np.linalg.norm(step)):
            raise DicomError(
                f"{self.where}: the slices are not evenly spaced (slice {k}, "
                f"{dataset_name(self.datasets[k])}, lies {off[k]:.3f} mm off the even grid): a "
                "slice is missing or the spacing varies, so no NIfTI grid matches the series. Fix: "
                "re-download the complete series, or pass the mask as an array on the acquired "
                "slices (tumoraware.data.dicom.seg_writer / rtstruct_writer)."
            )
        affine[:3, 2] = step
        return affine


_SOURCE_FIXES = SeriesFixes(
    none="pass the folder of the series the mask was made on.",
    unknown="pass one of these SeriesInstanceUIDs.",
    several="a SEG or RTSTRUCT references exactly one series: pass --series_uid with the one "
    "the mask was made on, or a folder holding only that series.",
)


def _one_value(datasets: Sequence[pydicom.Dataset], keyword: str, where: str) -> str:
    """The value every dataset has for ``keyword``; an error when missing or mixed."""
    values: dict[str, pydicom.Dataset] = {}
    for ds in datasets:
        value = str(ds.get(keyword, "") or "")
        if not value:
            raise DicomError(
                f"{dataset_name(ds)}: no {keyword}; a SEG or RTSTRUCT cannot reference the series "
                "without it. Fix: re-export the series from the scanner or PACS."
            )
        values.setdefault(value, ds)
    if len(values) > 1:
        (a, first), (b, other) = list(values.items())[:2]
        raise DicomError(
            f"{where}: mixed {keyword}s: {dataset_name(first)} has {a}, {dataset_name(other)} has "
            f"{b} ({len(values)} in all). A SEG or RTSTRUCT references one series in one frame of "
            "reference. Fix: pass the slices of one series only."
        )
    return next(iter(values))


def _source_series(datasets: Sequence[pydicom.Dataset], where: str) -> SourceSeries:
    """Check one series, one frame of reference, one orientation and size; sort the slices."""
    if not datasets:
        raise DicomError(f"{where}: no datasets given. Fix: pass the slices of the series.")
    _one_value(datasets, "SeriesInstanceUID", where)
    _one_value(datasets, "FrameOfReferenceUID", where)
    for tag in ("SOPInstanceUID", "SOPClassUID"):
        missing = [ds for ds in datasets if tag not in ds]
        if missing:
            raise DicomError(
                f"{dataset_name(missing[0])}: missing {tag}, which a SEG or RTSTRUCT needs to "
                "reference the slice. Fix: re-export the series."
            )
    datasets, stack = sorted_stack(datasets)
    return SourceSeries(
        datasets=tuple(datasets), origins=stack.origins, col_dir=stack.col_dir,
        row_dir=stack.row_dir, col_spacing=stack.col_spacing, row_spacing=stack.row_spacing,
        n_rows=stack.n_rows, n_cols=stack.n_cols, where=where,
    )  # fmt: skip


def load_source_series(
    source: str | os.PathLike | Sequence[pydicom.Dataset] | SourceSeries,
    series_uid: str | None = None,
) -> SourceSeries:
    """The source series of a mask, from a folder (headers only) or datasets in memory.

    Args:
        source: a folder with the series (sub-folders are searched; other DICOM objects such as
            RTSTRUCTs are skipped), a list of the slices' datasets, or a loaded series.
        series_uid: which series, when the folder holds several.

    Raises:
        DicomError: a missing folder, no series, several series without ``series_uid``, mixed
            SeriesInstanceUIDs or FrameOfReferenceUIDs, mixed orientations or sizes, duplicate
            slice positions, a header the outputs need (e.g. FrameOfReferenceUID) missing.
    """
    if isinstance(source, SourceSeries):
        return source
    if isinstance(source, (str, os.PathLike)):
        _, datasets = select_series(source, series_uid, _SOURCE_FIXES)
        return _source_series(datasets, str(Path(source)))
    return _source_series(list(source), "the given datasets")


def check_mask(mask: Any, source: SourceSeries, name: str = "mask") -> np.ndarray:
    """``mask`` as a uint8 0/1 array of ``source.shape``, or an error saying what is wrong.

    Args:
        mask: numpy array or torch tensor, ``(n_cols, n_rows, n_slices)`` (NIfTI voxel order on
            the source's slices), optionally with a leading channel of 1 (MONAI's layout);
            bool or 0/1 values.
        source: the series it was made on.
        name: how messages call it (e.g. its file name).

    Raises:
        DicomError: another shape, values other than 0 and 1, or no voxel set.
    """
    if hasattr(mask, "detach"):  # a torch tensor (or MONAI MetaTensor)
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.shape != source.shape:
        raise DicomError(
            f"{name}: shape {tuple(array.shape)}, but series {source.series_uid} in "
            f"{source.where} has (columns, rows, slices) = {source.shape}: the mask is not on "
            "this series' grid. Fix: pass the mask made on this series, in NIfTI voxel order "
            "(as read_dicom_series and MONAI's LoadImage give it); a NIfTI file is mapped by its "
            "affine with `tumoraware dicom_out`."
        )
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise DicomError(
            f"{name}: values {shown}, not a binary mask (0 and 1). Fix: pass the thresholded "
            "or argmax mask, not probabilities or a multi-label map."
        )
    if not values.any():
        raise DicomError(
            f"{name}: the mask is empty (no tumour voxel), so there is no GTV to write as SEG or "
            "RTSTRUCT. Fix: check that it is the prediction for this series (not its "
            "background channel); a scan without tumour needs no DICOM output."
        )
    return array.astype(np.uint8)


def series_description(kind: str, model_name: str, model_version: str) -> str:
    """``"GTV <kind> by <model> <version>"`` within DICOM's 64 characters; the model name is
    shortened, never the version, so two versions' outputs stay apart."""
    head, tail = f"GTV {kind} by ", f" {model_version}"
    room = _LO_LENGTH - len(head) - len(tail)
    name = model_name if len(model_name) <= room else model_name[: max(room - 1, 0)] + "~"
    return (head + name + tail)[:_LO_LENGTH]
