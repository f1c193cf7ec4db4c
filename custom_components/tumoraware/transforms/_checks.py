"""Input checks shared by the transforms that take an image with its tumour label.

A label with values other than 0/1 or one that is not on its image's grid does not fail in
MONAI: it crops or slices the wrong region and training goes on. The manifest validator
(``tumoraware manifest validate --deep``) catches both before a study starts; these checks catch
them where a bundle is run directly, and name both files and the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = ["GRID_ATOL_MM", "check_binary_label", "check_same_grid"]

GRID_ATOL_MM = 1e-3
"""Image and label affines may differ by this much (mm): the manifest validator's tolerance."""


def check_binary_label(label: Any, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless every value of ``label`` is 0 or 1."""
    t = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
    other = (t != 0) & (t != 1)
    if bool(other.any()):
        values = torch.unique(t[other])[:6].tolist()
        raise ValueError(
            f"{name}: expected a binary tumour label (0 = background, 1 = tumour), got other "
            f"values too: {', '.join(f'{v:g}' for v in values)}. Fix: relabel it to 0/1 (map "
            "the tumour class of a multi-class mask to 1; resample masks with nearest "
            "neighbour); `tumoraware manifest validate MANIFEST --deep` lists every such file."
        )


def check_same_grid(image: Any, label: Any, image_name: str, label_name: str) -> None:
    """Raise ``ValueError`` naming both files if two MetaTensors' affines differ (beyond
    :data:`GRID_ATOL_MM`): a mask drawn on another grid, or shifted, marks the wrong voxels."""
    if not (isinstance(image, MetaTensor) and isinstance(label, MetaTensor)):
        return
    a = np.asarray(image.affine, dtype=np.float64)
    b = np.asarray(label.affine, dtype=np.float64)
    if a.shape != b.shape or np.allclose(a, b, rtol=0.0, atol=GRID_ATOL_MM):
        return
    shift = float(np.linalg.norm(a[:3, 3] - b[:3, 3])) if a.shape == (4, 4) else float("nan")
    diff = float(np.max(np.abs(a - b)))
    raise ValueError(
        f"{label_name}: expected the label on its image's grid ({image_name}), got an affine "
        f"that differs by up to {diff:.4g} mm (origin shifted by {shift:.4g} mm; tolerance "
        f"{GRID_ATOL_MM:g} mm). Fix: write the mask with the image's affine (export the "
        "segmentation with the image as reference, or resample it onto the image's grid with "
        "nearest neighbour), or pair it with the image it was drawn on."
    )
