"""A map-style dataset of 2D slices, cut once from 3D volumes and kept on disk or in memory.

The 2D networks train on slices, but volumes are what is on disk, and a volume yields a
variable number of slices (every tumour slice, a share of tumour-free ones). MONAI's
``CacheDataset`` caches one item per input, so a volume → slices transform would come back as
one list per volume (a variable batch size after collation). This dataset runs the
deterministic volume pipeline once, flattens the lists, and then applies only the cheap random
2D transforms per sample: loading never bounds the training step (on a 2-core CPU any competing
worker process slows the step itself).

A per-sample transform may end in one of MONAI's ``RandCropBy*d`` croppers with
``num_samples=1``, which return a one-item list: the dataset returns that item, so a dataset of
cropped samples and one of plain samples concatenate (``torch.utils.data.ConcatDataset``) into
one stream of dicts.

With ``cache_dir`` the slices are kept in a :class:`~tumoraware.data.slice_store.SliceStore`
on disk (built once in parallel, reused by every later run of the same data and transform, read
one sample at a time), so memory does not grow with the cohort; without it they are kept in
memory, each as a compact copy of its own (a slice cut from a volume is a view that would keep
the whole volume alive).

``track_meta=False`` runs the per-sample transforms with MONAI's metadata tracking off (restored
after each call): when nothing downstream inverts or reads a sample's affine, tracking is pure
overhead, and for a small 2D sample it is most of the cost of a random crop
(``RandCropByPosNegLabeld``, ``RandSpatialCropd``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import Dataset, get_track_meta, set_track_meta
from monai.transforms import apply_transform
from tqdm.auto import tqdm

from tumoraware.data.slice_store import SliceStore

__all__ = ["SliceCacheDataset"]


class SliceCacheDataset(Dataset):
    """Slices of every volume in ``data``, cached; ``transform`` applied per access.

    Args:
        data: volume items (e.g. a manifest split with absolute paths).
        volume_transform: deterministic transform from one item to a list of 2D samples
            (ending in :class:`~tumoraware.transforms.VolumeToSlicesd`); a single dict is also
            accepted as one sample.
        transform: random transform applied to a 2D sample on every access (or None); a
            one-item list it returns is unwrapped.
        progress: show a progress bar while the volumes are cut.
        track_meta: MONAI metadata tracking while ``transform`` runs (``None``: as it is). Set
            False when the per-sample transforms need no affine (samples then come back as
            plain tensors); the volume transform always runs with tracking as it is.
        cache_dir: folder of on-disk slice stores (``None``: keep the slices in memory).
        cache_workers: processes cutting volumes into the store (``None``: one per CPU).

    Shapes:
        each cached sample holds ``(C, H, W)`` tensors, as ``volume_transform`` returns them.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        volume_transform: Callable,
        transform: Callable | None = None,
        progress: bool = True,
        track_meta: bool | None = None,
        cache_dir: str | None = None,
        cache_workers: int | None = None,
    ) -> None:
        self.track_meta = track_meta
        if cache_dir and str(cache_dir).strip().lower() not in ("none", "null"):  # CLI strings
            store = SliceStore(data, volume_transform, cache_dir, cache_workers, progress)
            super().__init__(data=store, transform=transform)
            return
        samples: list[dict[str, Any]] = []
        for item in tqdm(data, desc="cut slices", unit="volume", disable=not progress):
            out = apply_transform(volume_transform, item)
            samples.extend(_own_copy(s) for s in (out if isinstance(out, list) else [out]))
        if not samples:
            raise ValueError(
                f"SliceCacheDataset: expected at least one slice, got none from {len(data)} "
                "volume(s). Fix: check the manifest split is not empty."
            )
        super().__init__(data=samples, transform=transform)

    def _transform(self, index: int) -> Any:
        """The transformed sample ``index``; a one-item list (``num_samples=1``) is unwrapped."""
        tracking = get_track_meta()
        if self.track_meta is not None:
            set_track_meta(self.track_meta)
        try:
            out = super()._transform(index)
        finally:
            set_track_meta(tracking)
        if isinstance(out, list):
            if len(out) != 1:
                raise ValueError(
                    f"SliceCacheDataset: the per-sample transform returned {len(out)} samples; "
                    "expected one. Fix: set num_samples=1 on the random cropper."
                )
            return out[0]
        return out


def _own_copy(sample: dict[str, Any]) -> dict[str, Any]:
    """``sample`` with every array that is a view into a larger buffer copied to its own."""
    out = dict(sample)
    for key, value in sample.items():
        if isinstance(value, torch.Tensor):
            if value.untyped_storage().nbytes() > value.numel() * value.element_size():
                out[key] = value.clone()
        elif isinstance(value, np.ndarray) and value.base is not None:
            out[key] = value.copy()
    return out
