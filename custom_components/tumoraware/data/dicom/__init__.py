"""DICOM in: image series with their true geometry, RTSTRUCT ROIs rasterised exactly."""

from .convert import rtstruct_to_nifti
from .rtstruct import DicomWarning, list_rois, rasterise_roi, read_rtstruct, referenced_series_uid
from .scanline import fill_polygons
from .series import DicomError, DicomSeries, find_series, read_dicom_series

__all__ = [
    "DicomError",
    "DicomSeries",
    "DicomWarning",
    "fill_polygons",
    "find_series",
    "list_rois",
    "rasterise_roi",
    "read_dicom_series",
    "read_rtstruct",
    "referenced_series_uid",
    "rtstruct_to_nifti",
]
