"""A segmentation's DICOM outputs beside its NIfTI: which ones, their names, and writing them.

Both the ``tumoraware dicom_out`` command (a saved NIfTI mask) and the inference handler
(:class:`tumoraware.handlers.dicom_writer.DicomOutputWriter`, a mask in memory) come through
here, so the two name and write their files the same way: ``<case>_seg.dcm`` (DICOM SEG) and
``<case>_rtstruct.dcm`` (RTSTRUCT), where ``<case>`` is the NIfTI's name without ``.nii.gz`` and
without the ``_seg`` postfix the bundle's SaveImaged adds, so ``series1_seg.nii.gz`` gets
``series1_seg.dcm`` and ``series1_rtstruct.dcm`` next to it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from tumoraware.data.names import case_name

from .align import mask_onto_series
from .rtstruct_writer import write_rtstruct
from .seg_writer import write_seg
from .series import DicomError
from .source import SourceSeries, check_mask, load_source_series

__all__ = ["FORMATS", "dicom_out", "output_paths", "parse_formats", "write_dicom_outputs"]

FORMATS = ("seg", "rtstruct")
"""The DICOM outputs there are, in the order they are written."""


def parse_formats(formats: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"seg,rtstruct"``, ``["seg"]``, ``""`` or None → the known format names, in order.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if formats is None:
        return ()
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ValueError(
            f"unknown DICOM output format(s) {unknown}; the formats are {', '.join(FORMATS)}. "
            "Fix: pass e.g. --formats seg,rtstruct (or [] / '' for none)."
        )
    return tuple(name for name in FORMATS if name in names)


def output_paths(out_dir: str | os.PathLike, case: str, formats: Sequence[str]) -> dict[str, Path]:
    """``{format: out_dir/<case>_<format>.dcm}``, ``case`` stripped of a trailing ``_seg``."""
    base = case[: -len("_seg")] if case.endswith("_seg") and len(case) > 4 else case
    return {name: Path(out_dir) / f"{base}_{name}.dcm" for name in formats}


def write_dicom_outputs(
    mask: Any,
    source: str | os.PathLike | Sequence[pydicom.Dataset] | SourceSeries,
    out_dir: str | os.PathLike,
    case: str,
    formats: str | Sequence[str] = FORMATS,
    model_name: str = "lung_mri_tumor_segmentation",
    model_version: str = "unknown",
    name: str = "mask",
) -> dict[str, Path]:
    """Write ``formats`` of ``mask`` (already on ``source``'s grid) as ``out_dir/<case>_*.dcm``.

    The mask is checked once, before anything is written, so a bad mask leaves no output.

    Args:
        mask: 0/1, ``(n_cols, n_rows, n_slices)`` in the series' voxel order (see
            :func:`~.source.check_mask`).
        source: the series the mask was made on (folder, datasets or loaded).
        out_dir: where the files go (created).
        case: the case name the files are named after (see :func:`output_paths`).
        formats: which outputs, ``seg`` and/or ``rtstruct``.
        model_name, model_version: the model named in the outputs.
        name: how messages call the mask.

    Returns:
        ``{format: path written}``.
    """
    series = load_source_series(source)
    array = check_mask(mask, series, name)
    paths = output_paths(out_dir, case, parse_formats(formats))
    writers = {"seg": write_seg, "rtstruct": write_rtstruct}
    for kind, path in paths.items():
        writers[kind](array, series, path, model_name, model_version)
    return paths


def dicom_out(
    mask: str | os.PathLike,
    series: str | os.PathLike,
    out_dir: str | os.PathLike,
    formats: str | Sequence[str] = FORMATS,
    model_name: str = "lung_mri_tumor_segmentation",
    model_version: str = "unknown",
    series_uid: str | None = None,
    resample: bool = False,
) -> dict[str, Path]:
    """Write a NIfTI mask's DICOM outputs against the DICOM series it was made on.

    The mask is mapped onto the series' voxel grid through the two affines (NIfTI RAS, DICOM
    LPS; see :func:`~.align.mask_onto_series`): on the same grid in any axis order it is
    reordered exactly; a grid that differs is an error unless ``resample``.

    Args:
        mask: the ``.nii``/``.nii.gz`` mask (0/1), e.g. what the bundle's inference saved.
        series: the folder of the source DICOM series.
        out_dir: where ``<case>_seg.dcm`` / ``<case>_rtstruct.dcm`` go.
        formats: ``seg`` and/or ``rtstruct`` (comma-separated or a list).
        model_name, model_version: the model named in the outputs.
        series_uid: which series, when the folder holds several.
        resample: sample the mask onto the series' grid (nearest neighbour) if the grids differ.

    Returns:
        ``{format: path written}``.

    Raises:
        DicomError: no or an unreadable mask file, a mask that is not 3D, on another grid,
            empty or not 0/1; see also :func:`~.source.load_source_series`.
    """
    mask = Path(mask)
    kinds = parse_formats(formats)
    if not kinds:
        raise ValueError(f"dicom_out: no format to write. Fix: pass --formats {','.join(FORMATS)}.")
    if not mask.is_file():
        raise DicomError(
            f"{mask}: no such file. Fix: pass the NIfTI mask (e.g. the bundle's "
            "runs/inference/<case>_seg.nii.gz)."
        )
    source = load_source_series(series, series_uid)
    try:
        image = nib.load(str(mask))
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises several types for unreadable files
        raise DicomError(
            f"{mask}: not a readable NIfTI mask ({type(error).__name__}: {error}). Fix: pass the "
            ".nii/.nii.gz mask the segmentation wrote; re-save it if it was cut off."
        ) from error
    if array.ndim == 4 and array.shape[3] == 1:  # a trailing singleton channel
        array = array[..., 0]
    on_grid = mask_onto_series(array, image.affine, source, name=str(mask), resample=resample)
    return write_dicom_outputs(on_grid, source, out_dir, case_name(mask), kinds, model_name,
                               model_version, name=str(mask))  # fmt: skip
