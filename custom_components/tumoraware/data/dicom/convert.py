"""DICOM CT + RTSTRUCT ROI → ``image.nii.gz`` (HU, int16) + ``label.nii.gz`` (uint8) on one grid."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from tumoraware import __version__
from tumoraware.atomic import save_volume_atomic, write_json_atomic

from .rtstruct import rasterise_roi, read_rtstruct, referenced_series_uid
from .series import DicomError, read_dicom_series

__all__ = ["rtstruct_to_nifti"]


def _series_uid_for(rtstruct, dicom_dir: Path) -> str | None:
    """The series the RTSTRUCT references; if it names none, the folder's only series."""
    uid = referenced_series_uid(rtstruct)
    if uid is None:
        warnings.warn(
            f"{rtstruct.filename}: names no referenced series; using the only series in "
            f"{dicom_dir}.",
            stacklevel=3,
        )
    return uid


def rtstruct_to_nifti(
    dicom_dir: str | os.PathLike,
    rtstruct: str | os.PathLike,
    roi: str = "GTV-1",
    out_dir: str | os.PathLike = ".",
    allow_gaps: bool = False,
) -> tuple[Path, Path]:
    """Convert the series ``rtstruct`` references in ``dicom_dir`` and its ``roi``.

    Writes ``out_dir/image.nii.gz`` (CT in HU, int16, RAS affine of the true geometry),
    ``out_dir/label.nii.gz`` (uint8 0/1, same grid and affine) and ``out_dir/conversion.json``
    (what was read, matched and skipped). Files are written atomically; the label first and the
    image last, so an existing image means a finished conversion.

    Raises:
        DicomError: see :func:`read_dicom_series` and :func:`rasterise_roi`; also an empty mask.
    """
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    ds = read_rtstruct(rtstruct)
    series_uid = _series_uid_for(ds, dicom_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = read_dicom_series(dicom_dir, series_uid=series_uid, allow_gaps=allow_gaps)
        label = rasterise_roi(ds, series, roi)
    for warning in caught:  # show them, and keep them in the provenance record
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if not label.any():
        raise DicomError(
            f"{ds.filename}: ROI {roi!r} rasterises to an empty mask on {dicom_dir}. Fix: check "
            "the contours (they may lie outside the image) or choose another ROI."
        )
    if series.frame_of_reference_uid and ds.get("ReferencedFrameOfReferenceSequence"):
        frame = str(ds.ReferencedFrameOfReferenceSequence[0].get("FrameOfReferenceUID", ""))
        if frame and frame != series.frame_of_reference_uid:
            raise DicomError(
                f"{ds.filename}: FrameOfReferenceUID {frame} differs from the series' "
                f"{series.frame_of_reference_uid}: the contours are in another coordinate "
                "system. Fix: pass the RTSTRUCT made on this CT."
            )
    image_path, label_path = out_dir / "image.nii.gz", out_dir / "label.nii.gz"
    save_volume_atomic(label, series.affine_ras, label_path)
    write_json_atomic(
        out_dir / "conversion.json",
        {
            "tool": f"tumoraware {__version__} rtstruct_to_nifti",
            "dicom_dir": str(dicom_dir),
            "rtstruct": str(rtstruct),
            "roi": roi,
            "series_uid": series.series_uid,
            "modality": series.modality,
            "shape": list(series.array.shape),
            "spacing_mm": np.sqrt((series.affine_lps[:3, :3] ** 2).sum(axis=0)).round(4).tolist(),
            "resampled_onto_uniform_grid": series.resampled,
            "tumour_voxels": int(label.sum()),
            "warnings": [str(w.message) for w in caught],
        },
    )
    save_volume_atomic(series.array, series.affine_ras, image_path)
    return image_path, label_path
