"""Random square crops of a fixed physical size inside the body, for unlabelled MRI slices.

The CycleGAN sees CT as tumour-region crops (:class:`~tumoraware.transforms.TumourRegionCropd`,
at least ``min_size_mm`` wide). Unlabelled MRI has no tumour label to centre on, so its crops
are drawn at random inside the body at the same physical size: both domains then show anatomy
at one scale, and tumours stay as rare in the MRI crops as they are in the slices, which is the
condition under which a plain CycleGAN drops them (the paper's problem).

MONAI's random croppers (``RandSpatialCropd``, ``RandWeightedCropd``) take sizes in pixels and
do not resize; this composes MONAI's ``CropForeground.crop_pad`` and ``Resize`` with a centre
drawn from the body mask and a side in millimetres from each slice's own pixel spacing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import CropForeground, MapTransform, Randomizable, Resize
from monai.utils import ensure_tuple_rep

from .intensity import source_name

__all__ = ["RandBodySquareCropd"]


class RandBodySquareCropd(Randomizable, MapTransform):
    """Crop a ``size_mm`` square centred on a random body pixel, resize to ``spatial_size``.

    Args:
        keys: keys to crop (the first is used to find the body).
        size_mm: side of the square in millimetres (use the CT crops' ``min_size_mm``).
        spatial_size: output ``(H', W')``.
        body_threshold: pixels of the first key above this value are body (after
            normalisation to [-1, 1], air and lung lie near -1).
        mode: resize interpolation per key. Default bilinear.
        allow_missing_keys: don't raise an exception if a key is missing.

    Shapes:
        input: each key ``(C, H, W)`` (one slice, e.g. from :class:`VolumeToSlicesd`).
        output: each key ``(C, H', W')``.

    Raises:
        ValueError: a key is not ``(C, H, W)``, or the slice has no body pixel.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size_mm: float = 96.0,
        spatial_size: Sequence[int] = (256, 256),
        body_threshold: float = -0.6,
        mode: Sequence[str] | str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if size_mm <= 0:
            raise ValueError(f"RandBodySquareCropd: expected size_mm > 0, got {size_mm}.")
        self.size_mm = float(size_mm)
        self.body_threshold = float(body_threshold)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.cropper = CropForeground()
        self.resizer = Resize(spatial_size=tuple(int(s) for s in spatial_size))
        self._centre = np.zeros(2, dtype=int)

    def randomize(self, body: np.ndarray) -> None:
        """Pick the crop centre among the ``(row, col)`` indices of ``body`` pixels."""
        rows, cols = np.nonzero(body)
        pick = self.R.randint(len(rows))
        self._centre = np.array([rows[pick], cols[pick]])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = next(iter(self.key_iterator(d)), None)
        if first is None:
            return d
        reference = d[first]
        if reference.ndim != 3:
            raise ValueError(
                f"{source_name(reference, first)}: expected one slice (C, H, W), got shape "
                f"{tuple(reference.shape)}. Fix: apply VolumeToSlicesd first."
            )
        body = np.asarray(torch.as_tensor(reference[0]).detach().cpu()) > self.body_threshold
        if not body.any():
            raise ValueError(
                f"{source_name(reference, first)}: no pixel above {self.body_threshold} (no body "
                "in this slice). Fix: normalise the MRI to [-1, 1] first, or lower body_threshold."
            )
        self.randomize(body)
        affine = reference.affine if isinstance(reference, MetaTensor) else torch.eye(3)
        spacing = np.asarray(affine_to_spacing(affine, r=2), dtype=float)
        half = np.ceil(self.size_mm / spacing / 2.0).astype(int)
        start, end = self._centre - half, self._centre + half
        for key, mode in self.key_iterator(d, self.mode):
            cropped = self.cropper.crop_pad(d[key], start, end, mode="edge")
            d[key] = self.resizer(cropped, mode=mode)
        return d
