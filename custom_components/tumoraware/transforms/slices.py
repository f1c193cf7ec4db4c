"""Volume to 2D axial slices for the 2D networks (CycleGAN generators, U-Nets)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, SpatialCrop, SqueezeDim
from monai.transforms.traits import MultiSampleTrait
from monai.utils import convert_to_tensor

from tumoraware.transforms._checks import check_binary_label, check_same_grid
from tumoraware.transforms.intensity import source_name

__all__ = ["VolumeToSlicesd"]


class VolumeToSlicesd(Randomizable, MapTransform, MultiSampleTrait):
    """Split a volume into 2D axial slice samples: every tumour slice once, plus tumour-free ones.

    ``__call__`` returns a ``list[dict]``, one dict per selected slice; MONAI's ``Compose``
    applies the following transforms to each (as after ``RandCropByPosNegLabeld``) and
    ``list_data_collate`` batches them. Each dict keeps every entry of the input; the ``keys``
    entries become the slice ``(C, H, W)`` (MONAI's ``SpatialCrop`` of one slice, then
    ``SqueezeDim``, so each slice is a :class:`~monai.data.MetaTensor` whose 3 x 3 affine is the
    in-plane part of the slice's affine), and two entries are added:

    - ``"slice_index"`` (int): the slice's index along ``D``;
    - ``"has_tumour"`` (bool): whether it is a tumour slice (only when a label is present).

    Selection, with a label: each slice with at least ``min_tumour_voxels`` tumour voxels
    (label > 0) exactly once, plus ``n_free = round(n_tumour * share / (1 - share))`` slices
    (rounded half up, capped by what exists) drawn without replacement from the slices with no
    tumour voxel at all, so that tumour-free slices make up ``tumour_free_share`` of the output.
    Slices with fewer than ``min_tumour_voxels`` but some tumour voxels are neither and are left
    out. Samples come back in slice order. Without ``label_key`` in the data (unlabelled MRI):
    every slice, without ``"has_tumour"`` (``d.get("has_tumour")`` is ``None``; the key is
    left out rather than set to ``None`` because ``list_data_collate`` cannot batch ``None``).

    Why not :class:`monai.transforms.RandCropByPosNegLabeld` with a ``(H, W, 1)`` ROI: it samples
    centres with replacement, so a tumour slice can come twice and another never; and a
    "negative" centre is a background voxel, which can lie in a tumour slice, so it cannot
    guarantee tumour-free slices nor each tumour slice once. The selection is written by hand;
    the slicing is MONAI's.

    Args:
        keys: keys of the volumes to slice, e.g. ``("image", "label")``.
            See also: :py:class:`monai.transforms.MapTransform`.
        label_key: key of the binary tumour label ``(1, H, W, D)`` used for selection.
        tumour_free_share: share of tumour-free slices in the output, ``0 <= share < 1``.
            Default 0 (tumour slices only).
        min_tumour_voxels: tumour voxels a slice needs to count as a tumour slice (>= 1).
            Default 1.
        allow_missing_keys: don't raise an exception if a key is missing.

    Shapes:
        input: each key ``(C, H, W, D)``, ``D`` the slice axis.
        output: list of dicts, each key ``(C, H, W)``.

    Raises:
        ValueError: a key is not 4-D, the keys disagree on ``D`` or lie on different grids
            (affines); a label is present but is not 0/1 or has no slice with
            ``min_tumour_voxels`` tumour voxels. Each message names the file and the fix.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        tumour_free_share: float = 0.0,
        min_tumour_voxels: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= tumour_free_share < 1.0:
            raise ValueError(
                f"VolumeToSlicesd: expected 0 <= tumour_free_share < 1, got {tumour_free_share}."
            )
        if int(min_tumour_voxels) < 1:
            raise ValueError(
                f"VolumeToSlicesd: expected min_tumour_voxels >= 1, got {min_tumour_voxels}."
            )
        self.label_key = label_key
        self.tumour_free_share = float(tumour_free_share)
        self.min_tumour_voxels = int(min_tumour_voxels)
        self._free_pick: np.ndarray = np.zeros(0, dtype=int)

    def randomize(self, free_slices: np.ndarray, n_free: int) -> None:
        """Draw ``n_free`` of ``free_slices`` without replacement (into ``self._free_pick``)."""
        if n_free <= 0:
            self._free_pick = np.zeros(0, dtype=int)
            return
        self._free_pick = np.sort(self.R.choice(free_slices, size=n_free, replace=False))

    def select(self, label: torch.Tensor) -> tuple[list[int], list[int]]:
        """Tumour slices and the drawn tumour-free slices of ``label`` ``(C, H, W, D)``."""
        check_binary_label(label, source_name(label, self.label_key))
        tumour_voxels = convert_to_tensor(label, track_meta=False) > 0
        per_slice = tumour_voxels.reshape(-1, label.shape[-1]).sum(0).cpu().numpy()
        tumour = np.flatnonzero(per_slice >= self.min_tumour_voxels)
        if tumour.size == 0:
            raise ValueError(
                f"{source_name(label, self.label_key)}: expected at least one slice with "
                f">= {self.min_tumour_voxels} tumour voxel(s), got a maximum of "
                f"{int(per_slice.max(initial=0))} in {label.shape[-1]} slices (empty label). "
                "Fix: check the label or move the case to an unlabelled split."
            )
        free = np.flatnonzero(per_slice == 0)
        share = self.tumour_free_share
        wanted = math.floor(tumour.size * share / (1.0 - share) + 0.5)
        self.randomize(free, min(wanted, free.size))
        return tumour.tolist(), self._free_pick.tolist()

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:  # type: ignore[override]
        d = dict(data)
        depths = {}
        for key in self.key_iterator(d):
            if d[key].ndim != 4:
                raise ValueError(
                    f"{source_name(d[key], key)}: expected a channel-first volume (C, H, W, D), "
                    f"got shape {tuple(d[key].shape)}. Fix: load it with LoadImaged + "
                    "EnsureChannelFirstd."
                )
            depths[key] = int(d[key].shape[-1])
        if len(set(depths.values())) > 1:
            named = {source_name(d[k], k): depth for k, depth in depths.items()}
            raise ValueError(
                f"VolumeToSlicesd: expected the volumes to share the slice count D, got {named}. "
                "Fix: resample the label onto its image's grid (nearest neighbour), or pair it "
                "with the image it was drawn on."
            )
        if self.label_key in d:
            label = d[self.label_key]
            for key in self.key_iterator(d):
                if key != self.label_key:
                    check_same_grid(
                        d[key], label, source_name(d[key], key), source_name(label, self.label_key)
                    )
            tumour, free = self.select(d[self.label_key])
            picks = sorted([(i, True) for i in tumour] + [(i, False) for i in free])
        else:
            depth = next(iter(depths.values()), None)
            if depth is None:
                raise ValueError(
                    f"VolumeToSlicesd: expected at least one of the keys {list(self.keys)} in the "
                    f"data, got keys {list(d)}."
                )
            picks = [(i, None) for i in range(depth)]
        squeeze = SqueezeDim(dim=3)
        out: list[dict[Hashable, Any]] = []
        for index, has_tumour in picks:
            sample = dict(d)
            crop = SpatialCrop(roi_slices=[slice(None), slice(None), slice(index, index + 1)])
            for key in self.key_iterator(d):
                sample[key] = squeeze(crop(d[key]))
            sample["slice_index"] = int(index)
            if has_tumour is not None:
                sample["has_tumour"] = bool(has_tumour)
            out.append(sample)
        return out
