"""Axis-aligned sampling grids in patient world coordinates (RAS+, millimetres).

The phantom anatomy is defined in continuous world space, so the same patient can be
sampled on a CT grid (RAS, ~1×1×3 mm) and an MRI grid (LPS, ~1.5×1.5×5 mm) without any
resampling. Keeping grids axis-aligned makes the world coordinates separable: three 1-D
vectors instead of three full 3-D arrays, so shapes evaluate by cheap broadcasting and
small structures can be painted inside their bounding box only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Grid"]

# NIfTI affine column is +spacing; "LPS" storage flips x and y (DICOM's native order).


@dataclass(frozen=True)
class Grid:
    """A regular grid: ``shape`` voxels of ``spacing`` mm, centred on ``centre`` (world mm).

    Args:
        shape: voxels along the array axes ``(i, j, k)``; ``k`` is always the axial axis.
        spacing: voxel size in mm along ``(i, j, k)``.
        centre: world (RAS+) position of the grid centre, mm.
        axcodes: ``"RAS"`` (i → Right, j → Anterior) or ``"LPS"`` (i → Left, j → Posterior);
            ``k`` points Superior in both.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    axcodes: str = "RAS"

    def __post_init__(self) -> None:
        if self.axcodes not in ("RAS", "LPS"):
            raise ValueError(f"axcodes must be 'RAS' or 'LPS', got {self.axcodes!r}.")

    @property
    def _directions(self) -> np.ndarray:
        """+1/-1 per axis: the world direction each array axis steps in (RAS+ world)."""
        return np.array([1.0, 1.0, 1.0]) if self.axcodes == "RAS" else np.array([-1.0, -1.0, 1.0])

    @property
    def affine(self) -> np.ndarray:
        """4×4 voxel → RAS+ world (mm) matrix, as stored in the NIfTI header."""
        steps = self._directions * np.asarray(self.spacing, dtype=float)
        origin = np.asarray(self.centre, dtype=float) - steps * (np.asarray(self.shape) - 1) / 2.0
        affine = np.diag([*steps, 1.0])
        affine[:3, 3] = origin
        return affine

    def axis_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, z of the voxel centres along each array axis, as 1-D float32 vectors."""
        affine = self.affine
        return tuple(
            (affine[a, 3] + affine[a, a] * np.arange(self.shape[a])).astype(np.float32)
            for a in range(3)
        )

    def broadcast_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``X (n,1,1)``, ``Y (1,m,1)``, ``Z (1,1,k)``: world coordinates ready to broadcast."""
        x, y, z = self.axis_coordinates()
        return x[:, None, None], y[None, :, None], z[None, None, :]

    def index_box(self, lower: np.ndarray, upper: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Array slices covering the world box ``[lower, upper]`` (mm), or None if outside."""
        slices = []
        for coords, lo, hi in zip(self.axis_coordinates(), lower, upper, strict=True):
            inside = np.nonzero((coords >= lo) & (coords <= hi))[0]
            if inside.size == 0:
                return None
            slices.append(slice(int(inside[0]), int(inside[-1]) + 1))
        return tuple(slices)
