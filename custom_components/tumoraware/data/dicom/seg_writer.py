"""Write a tumour mask as a DICOM Segmentation (SEG) of its source series, with highdicom.

highdicom builds the SEG from the source headers: patient and study identity, frame of
reference, per-frame plane positions and the reference to each source instance are copied from
them, and it checks the result against the standard as it builds it. What this module decides:
one BINARY segment labelled ``GTV`` (category "Morphologically Abnormal Structure", type
"Neoplasm", region "Lung"), segmented AUTOMATIC by an algorithm named after the model and its
version, new UIDs for the series and the instance, and a SeriesDescription naming the
model and version. Frames without tumour are left out (highdicom's default, which the standard
allows); a reader returns them as empty (highdicom's ``get_pixels_by_source_instance`` does).

highdicom is imported on use, so the rest of :mod:`tumoraware.data.dicom` works without it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from tumoraware import __version__
from tumoraware.atomic import atomic_path

from .source import SourceSeries, check_mask, load_source_series, series_description

__all__ = ["write_seg"]

_MANUFACTURER = "tumoraware"
_DEVICE_SERIAL = "0"  # software, no device: Enhanced General Equipment still requires a value


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as error:
        raise ImportError(
            f"writing DICOM SEG needs highdicom ({error}). Fix: pip install 'highdicom>=0.23' "
            "(tumoraware lists it in its dependencies)."
        ) from error
    return highdicom


def write_seg(
    mask: Any,
    source: str | os.PathLike | Sequence[pydicom.Dataset] | SourceSeries,
    path: str | os.PathLike,
    model_name: str,
    model_version: str,
    segment_label: str = "GTV",
    series_number: int = 901,
) -> Path:
    """Write ``mask`` on ``source``'s grid to ``path`` as a BINARY DICOM SEG (atomically).

    Args:
        mask: uint8/bool 0/1, ``(n_cols, n_rows, n_slices)`` in NIfTI voxel order on the source
            series' sorted slices (a leading channel of 1 is allowed); numpy or torch.
        source: the series the mask was made on: its folder, its datasets, or a
            :class:`~.source.SourceSeries`.
        path: the ``.dcm`` file to write (parents created).
        model_name, model_version: the algorithm identification and the SeriesDescription.
        segment_label: the segment's label.
        series_number: SeriesNumber of the new series.

    Returns:
        ``path``.

    Raises:
        DicomError: see :func:`~.source.load_source_series` and :func:`~.source.check_mask`.
        ImportError: highdicom is not installed.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    series = load_source_series(source)
    array = check_mask(mask, series)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64], family=codes.cid7162.ArtificialIntelligence, version=model_version
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Lung],
    )
    with warnings.catch_warnings():
        # the patient's name is copied as the source has it; highdicom's advice on how a
        # name should be written is about the source, not about this output
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        seg = hd.seg.Segmentation(
            source_images=list(series.datasets),
            pixel_array=np.ascontiguousarray(array.transpose(2, 1, 0)),  # (slices, rows, cols)
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=_MANUFACTURER,
            manufacturer_model_name=model_name[:64],
            software_versions=[f"tumoraware {__version__}", str(model_version)[:64]],
            device_serial_number=_DEVICE_SERIAL,
            series_description=series_description("SEG", model_name, model_version),
            content_label=segment_label.upper().replace(" ", "_")[:16],
            content_description=f"{segment_label} by {model_name}"[:64],
        )
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)
