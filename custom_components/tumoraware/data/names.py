"""Case names from image files: the one place a ``.nii``/``.nii.gz``/``.dcm`` suffix is stripped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SUFFIXES", "case_name"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".dcm")  # longest first: "a.nii.gz" loses ".nii.gz"


def case_name(source: Any) -> str:
    """File name of ``source`` without ``.nii``/``.nii.gz``/``.dcm``; ``""`` for no source.

    ``"/data/mri_t000_w1_image.nii.gz"`` -> ``"mri_t000_w1_image"``; a DICOM series folder keeps
    its folder name. A collated batch of one source (``[path]``) names that source.
    """
    if isinstance(source, (list, tuple)):  # a collated batch of one
        source = source[0] if len(source) == 1 else ""
    name = Path(str(source or "")).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
