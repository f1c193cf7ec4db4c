"""How every figure shows a scan: radiological orientation, the slice to show, centring, picking.

One definition each, used by the handlers, the study report, the phantom previews and the
MONAI Label figure:

- :func:`reorient_pls`: a volume with its affine -> ``(C, P, L, S)``, whose axial slice
  ``[..., k]`` is displayed radiologically (anterior up, the patient's right on the viewer's
  left) as stored, row 0 at the top;
- :func:`radiological`: the same for 2D slices already in RAS (after ``Orientationd("RAS")``);
- :func:`load_pls`: a NIfTI file read and reoriented by :func:`reorient_pls`, with its voxel
  sizes;
- :func:`largest_area_slice`: the axial slice with the most tumour;
- :func:`pad_stack`: 2D slices of different sizes centred on the largest, as one array;
- :func:`evenly`: a few items spread evenly over many (which cases a grid shows).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation

__all__ = [
    "evenly",
    "largest_area_slice",
    "load_pls",
    "pad_stack",
    "radiological",
    "reorient_pls",
]

# labels=None: MONAI reads the MetaTensor's "space" (RAS or LPS) to name the world axes
_TO_PLS = Orientation(axcodes="PLS", labels=None)


def reorient_pls(x: torch.Tensor) -> MetaTensor:
    """``(C, H, W, D)`` with its affine -> ``(C, P, L, S)`` for radiological display.

    Axis 1 runs anterior -> posterior (rows top to bottom), axis 2 patient right -> left (the
    patient's right on the viewer's left), axis 3 inferior -> superior (axial slice index). A
    MetaTensor's ``"space"`` (RAS or LPS) is honoured; a plain tensor is taken as RAS identity.
    """
    x = x.detach().cpu()
    return _TO_PLS(x if isinstance(x, MetaTensor) else MetaTensor(x))


def radiological(slices: torch.Tensor) -> torch.Tensor:
    """RAS slices ``(..., x, y)`` (after ``Orientationd("RAS")``) -> ``(..., P, L)``: anterior up,
    the patient's right on the viewer's left (:func:`reorient_pls` of each slice)."""
    *lead, nx, ny = slices.shape
    volume = slices.detach().cpu().reshape(-1, nx, ny, 1)  # channels of one-slice volumes
    return reorient_pls(volume).as_tensor()[..., 0].reshape(*lead, ny, nx)


def load_pls(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The NIfTI volume at ``path`` as ``(P, L, S)`` (:func:`reorient_pls`) and its voxel sizes
    in mm in that order."""
    nii = nib.load(path)
    volume = MetaTensor(torch.as_tensor(np.asanyarray(nii.dataobj))[None], affine=nii.affine)
    pls = reorient_pls(volume)
    zooms = tuple(float(z) for z in pls.pixdim)
    return np.asarray(pls.as_tensor()[0]), zooms  # type: ignore[return-value]


def largest_area_slice(label: Any, prediction: Any | None = None) -> tuple[int, str]:
    """Axial slice index with the most tumour, and where it came from.

    Args:
        label: expert mask ``(X, Y, Z)`` or ``(1, X, Y, Z)``, slices along the last axis.
        prediction: predicted mask of the same shape, used when ``label`` is empty.

    Returns:
        ``(k, "expert")`` for the largest expert area (ties: lowest ``k``), ``(k, "prediction")``
        when the expert mask is empty, ``(Z // 2, "none")`` when both are empty.
    """
    for mask, source in ((label, "expert"), (prediction, "prediction")):
        if mask is None:
            continue
        arr = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask) > 0.5
        area = arr.reshape(-1, arr.shape[-1]).sum(axis=0)
        if area.any():
            return int(np.argmax(area)), source  # argmax: first of equal maxima
    n_slices = np.shape(label)[-1]
    return n_slices // 2, "none"


def pad_stack(slices: Sequence[np.ndarray], value: float) -> np.ndarray:
    """``(N, H, W)``: 2D slices centred on the largest, the margin filled with ``value``
    (an odd margin puts the extra row or column at the bottom or right); keeps the dtype."""
    h = max(s.shape[0] for s in slices)
    w = max(s.shape[1] for s in slices)
    dtype = np.result_type(*{np.asarray(s).dtype for s in slices})
    out = np.full((len(slices), h, w), value, dtype=dtype)
    for o, s in zip(out, slices, strict=True):
        top, left = (h - s.shape[0]) // 2, (w - s.shape[1]) // 2
        o[top : top + s.shape[0], left : left + s.shape[1]] = s
    return out


def evenly(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (first and last included), or all of them."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]
