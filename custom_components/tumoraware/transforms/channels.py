"""The masked-CycleGAN baseline's input: image and tumour mask as two channels."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from tumoraware.transforms.intensity import source_name

__all__ = ["AppendMaskChanneld"]


class AppendMaskChanneld(MapTransform):
    """Append ``mask_key`` (0/1 → −1/1, the generators' range) as a channel of each key.

    The masked CycleGAN (the paper's ref. [8]) feeds the tumour mask as an extra input channel
    of both generators; MONAI's ``ConcatItemsd`` concatenates but does not rescale the mask to
    the image range, so this does both.

    Shapes: ``(C, ...)`` image and ``(1, ...)`` mask → ``(C + 1, ...)``.
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "label",
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        mask = torch.as_tensor(d[self.mask_key]).to(torch.float32) * 2.0 - 1.0
        for key in self.key_iterator(d):
            if tuple(d[key].shape[1:]) != tuple(mask.shape[1:]):
                raise ValueError(
                    f"{source_name(d[key], key)}: expected the image and its mask "
                    f"{source_name(d[self.mask_key], self.mask_key)} on one grid, got shapes "
                    f"{tuple(d[key].shape)} and {tuple(mask.shape)}. Fix: crop both together "
                    "(list both keys in TumourRegionCropd), or resample the mask onto the image."
                )
            d[key] = torch.cat([d[key], mask.to(d[key].dtype)], dim=0)
        return d
