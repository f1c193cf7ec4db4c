"""Write a tumour mask as an RT Structure Set (RTSTRUCT) with one ROI, ``GTV``, built by hand.

Neither pydicom (a DICOM file library) nor highdicom (SEG, SR, presentation states, ... but no
RT objects) builds an RT Structure Set, so this module fills in its modules itself: Patient and
General Study copied from the source, its Frame of Reference, a new RT Series and Structure Set
(new UIDs, the model and version in SeriesDescription and ROIGenerationDescription,
ApprovalStatus UNAPPROVED: nobody has reviewed it), the referenced frame of reference, study,
series and every slice, one ROI with its contours and its RT ROI Observation (GTV).

Contours are traced so that :mod:`.rtstruct` (the reader) gives back the mask voxel for voxel:

- per slice, ``skimage.measure.find_contours`` at level 0.5 on the 0/1 slice, padded by one
  pixel so every contour closes. On a binary image a contour runs through the midpoints
  between inside and outside pixel centres, so no pixel centre lies closer to it than √2/4 of
  a pixel: each is strictly inside or outside, and the pixel-centre rule of :mod:`.scanline`
  decides it as the mask does;
- every boundary is its own CLOSED_PLANAR contour: an outer boundary, a hole's boundary, an
  island in the hole. Our reader combines the contours of a slice by XOR (even-odd), as most
  planning systems do, so holes stay holes without nesting bookkeeping. A reader that unions
  contours instead fills the holes; the SEG carries them unambiguously;
- points that lie on a straight run are dropped (the shape is unchanged), the first point is not
  repeated, and points are written in mm (LPS) to 0.1 µm with the slice's own origin and
  orientation; each contour references its slice's SOPInstanceUID (ContourImageSequence).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from skimage import measure

from tumoraware import __version__
from tumoraware.atomic import atomic_path

from .source import SourceSeries, check_mask, load_source_series, series_description

__all__ = ["mask_contours", "write_rtstruct"]

_STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # the SOP class RT objects cite a study by
_COPIED = (  # Patient and General Study modules, and the character set their text is in
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)  # fmt: skip
_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
           "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")  # fmt: skip


def _drop_collinear(polygon: np.ndarray) -> np.ndarray:
    """Vertices where the boundary turns; those on a straight run add nothing to the shape."""
    before, after = np.roll(polygon, 1, axis=0), np.roll(polygon, -1, axis=0)
    turn = (polygon[:, 0] - before[:, 0]) * (after[:, 1] - polygon[:, 1]) - (
        polygon[:, 1] - before[:, 1]
    ) * (after[:, 0] - polygon[:, 0])
    return polygon[turn != 0]


def mask_contours(slice_mask: np.ndarray) -> list[np.ndarray]:
    """Closed boundaries of a 2D 0/1 mask, XOR-exact at pixel centres.

    Args:
        slice_mask: ``(rows, cols)``, as DICOM lays a slice out.

    Returns:
        ``(N, 2)`` ``(row, col)`` vertices (pixel centres at integers) per boundary, outer
        boundaries and holes alike, the first vertex not repeated; filling them together with
        the even-odd rule gives ``slice_mask`` back.
    """
    padded = np.pad(np.asarray(slice_mask, dtype=np.float32), 1)
    contours = []
    for contour in measure.find_contours(padded, 0.5):
        points = _drop_collinear(contour[:-1] - 1.0)  # find_contours closes by repetition
        if len(points) >= 3:
            contours.append(points)
    return contours


def _contour_data(points: np.ndarray) -> str:
    return "\\".join(f"{v:.4f}" for v in points.ravel())


def _image_ref(ds: pydicom.Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return ref


def _contour_sequence(array: np.ndarray, series: SourceSeries) -> list[Dataset]:
    items = []
    for k in np.nonzero(array.any(axis=(0, 1)))[0]:
        for polygon in mask_contours(array[:, :, k].T):
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_image_ref(series.datasets[k])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(polygon)
            item.ContourNumber = len(items) + 1
            points = series.patient_points(int(k), polygon[:, 0], polygon[:, 1])
            item.ContourData = _contour_data(points)
            items.append(item)
    return items


def _references(series: SourceSeries) -> DicomSequence:
    """ReferencedFrameOfReferenceSequence: frame → study → series → every slice."""
    first = series.datasets[0]
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = series.series_uid
    series_ref.ContourImageSequence = DicomSequence([_image_ref(ds) for ds in series.datasets])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_COMPONENT
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([study_ref])
    return DicomSequence([frame])


def _header(series: SourceSeries, model_name: str, model_version: str, number: int) -> Dataset:
    """Identity copied from the source; a new RT series, instance and structure set."""
    source = series.datasets[0]
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in _COPIED:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
        elif keyword in _TYPE_2:
            setattr(ds, keyword, "")
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = series_description("RTSTRUCT", model_name, model_version)
    ds.OperatorsName = ""
    ds.Manufacturer = "tumoraware"
    ds.ManufacturerModelName = model_name[:64]
    ds.SoftwareVersions = [f"tumoraware {__version__}", str(model_version)[:64]]
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "GTV"
    ds.StructureSetName = f"{model_name} {model_version}"[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def write_rtstruct(
    mask: Any,
    source: str | os.PathLike | Sequence[pydicom.Dataset] | SourceSeries,
    path: str | os.PathLike,
    model_name: str,
    model_version: str,
    roi_name: str = "GTV",
    color: tuple[int, int, int] = (255, 0, 0),
    series_number: int = 902,
) -> Path:
    """Write ``mask`` on ``source``'s grid to ``path`` as an RTSTRUCT with one ROI (atomically).

    Args:
        mask, source, path: as for :func:`~.seg_writer.write_seg`: the 0/1 mask
            ``(n_cols, n_rows, n_slices)`` on the series' sorted slices, the series (folder,
            datasets or loaded), the ``.dcm`` file.
        model_name, model_version: named in SeriesDescription, StructureSetName,
            ROIGenerationDescription and SoftwareVersions.
        roi_name: the ROI's name (RTROIInterpretedType is GTV whatever the name).
        color: ROIDisplayColor, RGB 0-255.
        series_number: SeriesNumber of the new series.

    Returns:
        ``path``.

    Raises:
        DicomError: see :func:`~.source.load_source_series` and :func:`~.source.check_mask`.
    """
    series = load_source_series(source)
    array = check_mask(mask, series)
    ds = _header(series, model_name, model_version, series_number)
    ds.ReferencedFrameOfReferenceSequence = _references(series)

    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
    roi.ROIName = roi_name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{model_name} {model_version}"[:64]
    ds.StructureSetROISequence = DicomSequence([roi])

    contours = Dataset()
    contours.ROIDisplayColor = list(color)
    contours.ContourSequence = DicomSequence(_contour_sequence(array, series))
    contours.ReferencedROINumber = 1
    ds.ROIContourSequence = DicomSequence([contours])

    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = "GTV"
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence = DicomSequence([observation])

    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)
