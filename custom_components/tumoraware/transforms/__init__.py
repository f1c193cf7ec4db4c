"""MONAI dictionary transforms for the tumour-aware CT to MRI pipeline.

- :class:`CTWindowd`: CT window [-1000, 500] HU to [-1, 1], with a Hounsfield-unit check.
- :class:`RobustMRINormalized`: per-volume percentile scaling of MRI to [-1, 1].
- :class:`TumourRegionCropd`: square (in mm) tumour-region crop, resized to 256 x 256.
- :class:`VolumeToSlicesd`: volume to 2D axial slice samples (tumour slices + tumour-free share).
- :class:`AppendMaskChanneld`: the masked-CycleGAN input (image + mask as channels).
- :class:`ValueRangeCheckd`: a check that already-normalised images are finite and in range.
- :class:`RandBodySquareCropd`: random fixed-size (mm) square crop inside the body of a slice.
- :class:`SafeSpacingd`: MONAI's ``Spacingd`` that works with MONAI Label's ``image_path`` on 1.6.
"""

from tumoraware.transforms.channels import AppendMaskChanneld
from tumoraware.transforms.crop import TumourRegionCropd, square_tumour_box
from tumoraware.transforms.intensity import (
    CTWindowd,
    RobustMRINormalized,
    ValueRangeCheckd,
    source_name,
)
from tumoraware.transforms.random_crop import RandBodySquareCropd
from tumoraware.transforms.slices import VolumeToSlicesd
from tumoraware.transforms.spacing import SafeSpacingd

__all__ = [
    "AppendMaskChanneld",
    "CTWindowd",
    "RandBodySquareCropd",
    "RobustMRINormalized",
    "SafeSpacingd",
    "TumourRegionCropd",
    "ValueRangeCheckd",
    "VolumeToSlicesd",
    "source_name",
    "square_tumour_box",
]
