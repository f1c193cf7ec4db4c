"""Put a mask saved as NIfTI (or a MONAI MetaTensor) onto its DICOM series' voxel grid.

A mask carries its geometry in a RAS affine (NIfTI, MONAI); the series in LPS headers. The
writers need the mask in the series' own voxel order (:mod:`.source`), so the two affines
decide how: ``T = inv(A_mask) · A_series`` maps a series voxel to a mask voxel. When ``T`` is a
signed permutation with whole-voxel offsets (the mask was saved on the series' grid, in any axis
order and flips, as ``Orientationd`` + ``Invertd`` leave it), the array is transposed and
flipped: nothing is interpolated. Any other ``T`` means another grid; that is an error unless
``resample=True``, which samples the mask at the series' voxel centres (nearest neighbour).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .series import LPS_TO_RAS, DicomError
from .source import SourceSeries

__all__ = ["mask_onto_series"]


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    """``(4, 8)`` homogeneous voxel coordinates of the grid's corner voxels."""
    axes = [(0, n - 1) for n in shape]
    grid = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).astype(float)
    return np.vstack([grid, np.ones((1, grid.shape[1]))])


def _signed_permutation(matrix: np.ndarray) -> np.ndarray | None:
    """``matrix`` rounded to a signed permutation (one ±1 per row and column), else None."""
    rounded = np.round(matrix)
    is_permutation = (
        np.all(np.isin(rounded, (-1.0, 0.0, 1.0)))
        and np.all(np.abs(rounded).sum(axis=0) == 1)
        and np.all(np.abs(rounded).sum(axis=1) == 1)
    )
    return rounded if is_permutation else None


def mask_onto_series(
    array: np.ndarray,
    affine_ras: np.ndarray,
    source: SourceSeries,
    name: str = "mask",
    tolerance: float = 0.1,
    resample: bool = False,
) -> np.ndarray:
    """``array`` (3D, voxel → RAS mm by ``affine_ras``) in ``source``'s voxel order.

    Args:
        array: the mask, ``(X, Y, Z)``, any axis order of the series' grid.
        affine_ras: its 4×4 voxel → RAS affine (``nibabel.load(f).affine``, ``MetaTensor.affine``).
        source: the series the mask was made on.
        name: how messages call the mask.
        tolerance: how far (in voxels, at the grid's corners) the two grids may disagree and
            still count as one grid (NIfTI stores affines in float32; readers differ in the
            last digits of direction cosines).
        resample: sample the mask at the series' voxel centres (nearest neighbour) when the
            grids differ, instead of raising.

    Returns:
        the mask, ``source.shape`` = ``(n_cols, n_rows, n_slices)``, same dtype.

    Raises:
        DicomError: the grids differ (rotated, scaled, shifted by a fraction of a voxel, or
            covering another extent) and ``resample`` is False; the series is unevenly spaced.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise DicomError(
            f"{name}: {array.ndim} dimensions {tuple(array.shape)}, expected a 3D mask. Fix: "
            "pass the single-channel mask volume (as SaveImaged writes it)."
        )
    series_ras = LPS_TO_RAS @ source.affine_lps
    to_mask = np.linalg.inv(np.asarray(affine_ras, dtype=float)) @ series_ras
    if source.shape[2] == 1:  # one slice has no spacing: readers guess it (SliceThickness, 1 mm)
        step = to_mask[:3, 2].copy()
        axis = int(np.argmax(np.abs(step)))
        to_mask[:3, 2] = 0.0
        to_mask[axis, 2] = np.sign(step[axis])
    if resample:
        return ndimage.affine_transform(array, to_mask[:3, :3], offset=to_mask[:3, 3],
                                        output_shape=source.shape, order=0, mode="constant",
                                        cval=0)  # fmt: skip
    corners = _corners(source.shape)
    mapped = to_mask @ corners
    permutation = _signed_permutation(to_mask[:3, :3])
    if permutation is None:
        problem = "its axes are rotated or scaled against the series' axes"
    else:
        snapped = permutation @ corners[:3] + np.round(to_mask[:3, 3:4])
        off = np.asarray(affine_ras, dtype=float)[:3, :3] @ (mapped[:3] - snapped)
        off_mm = float(np.linalg.norm(off, axis=0).max())
        off_voxels = float(np.abs(mapped[:3] - snapped).max())
        problem = f"its voxel centres lie up to {off_mm:.3f} mm off the series' voxel centres"
    if permutation is None or off_voxels > tolerance:
        spacing = np.linalg.norm(np.asarray(affine_ras)[:3, :3], axis=0).round(3).tolist()
        raise DicomError(
            f"{name}: its grid (voxel size {spacing} mm) is not the grid of series "
            f"{source.series_uid} in {source.where}: {problem}. Fix: pass the mask saved on "
            "this series' grid (the bundle's inference does, with Invertd), or --resample to "
            "sample it onto the series (nearest neighbour)."
        )
    offsets = np.round(to_mask[:3, 3]).astype(int)
    axes = [int(np.argmax(np.abs(permutation[:, a]))) for a in range(3)]
    signs = [int(permutation[axes[a], a]) for a in range(3)]
    wanted = [0 if signs[a] > 0 else source.shape[a] - 1 for a in range(3)]
    reordered = tuple(array.shape[m] for m in axes)
    if reordered != source.shape or [offsets[m] for m in axes] != wanted:
        raise DicomError(
            f"{name}: on the grid of series {source.series_uid} in {source.where}, but covering "
            f"another part of it (shape {tuple(array.shape)} in its own axis order, the series "
            f"is {source.shape} as (columns, rows, slices)): it was cropped or padded. Fix: pass "
            "the uncropped mask, or --resample to sample it onto the series."
        )
    out = np.transpose(array, axes)
    flips = tuple(a for a in range(3) if signs[a] < 0)
    return np.ascontiguousarray(np.flip(out, axis=flips) if flips else out)
