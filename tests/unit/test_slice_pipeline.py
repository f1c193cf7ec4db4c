"""RandBodySquareCropd and SliceCacheDataset: the 2D data path of the synthesis bundle."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, get_track_meta
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld
from torch.utils.data import ConcatDataset

from tumoraware.data.manifest import load_split
from tumoraware.data.slice_dataset import SliceCacheDataset
from tumoraware.transforms import RandBodySquareCropd, VolumeToSlicesd


def _slice(spacing: float = 1.5, size: int = 120) -> MetaTensor:
    """A (1, H, W) slice: air (-1) with a body rectangle whose value encodes the column."""
    img = -torch.ones(1, size, size)
    img[:, 30:90, 20:100] = torch.linspace(0.0, 1.0, 80)
    return MetaTensor(img, affine=torch.diag(torch.tensor([spacing, spacing, 1.0])))


@pytest.mark.parametrize("spacing", [0.75, 1.5])
def test_crop_has_the_physical_size_whatever_the_pixel_spacing(spacing):
    crop = RandBodySquareCropd(keys="image", size_mm=48.0, spatial_size=(32, 32))
    crop.set_random_state(0)
    out = crop({"image": _slice(spacing, size=int(180 / spacing))})["image"]
    assert tuple(out.shape) == (1, 32, 32)
    extent_mm = 32 * float(out.affine[0, 0])
    assert abs(extent_mm - 48.0) <= 2 * spacing  # whole pixels on each side


def test_crop_centres_lie_in_the_body_and_are_seeded():
    crop = RandBodySquareCropd(keys="image", size_mm=6.0, spatial_size=(4, 4))
    centres = []
    for seed in range(20):
        crop.set_random_state(seed)
        out = crop({"image": _slice()})["image"]
        centres.append(float(out[0, 2, 2]))
    assert min(centres) > -0.5, "a crop centred in air"
    crop.set_random_state(3)
    again = crop({"image": _slice()})["image"]
    crop.set_random_state(3)
    assert torch.equal(again, crop({"image": _slice()})["image"])
    assert len(set(np.round(centres, 3))) > 5


def test_crop_errors_name_the_problem():
    crop = RandBodySquareCropd(keys="image")
    with pytest.raises(ValueError, match="no body"):
        crop({"image": -torch.ones(1, 10, 10)})
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        crop({"image": torch.zeros(1, 10, 10, 3)})


def test_slice_cache_flattens_volumes_into_slices(tiny_world):
    _, manifest = tiny_world
    entries = load_split(manifest, "mri_week1")
    volume = Compose([LoadImaged(keys=("image", "label"), image_only=True),
                      EnsureChannelFirstd(keys=("image", "label")),
                      VolumeToSlicesd(keys=("image", "label"), tumour_free_share=0.5)])  # fmt: skip
    dataset = SliceCacheDataset(entries, volume, progress=False)
    expected = 0
    for entry in entries:
        label = np.asanyarray(nib.load(entry["label"]).dataobj)
        tumour = int((label.sum(axis=(0, 1)) > 0).sum())
        expected += tumour + min(tumour, int((label.sum(axis=(0, 1)) == 0).sum()))
    assert len(dataset) == expected
    assert dataset[0]["image"].shape[0] == 1 and dataset[0]["image"].ndim == 3


def test_slice_cache_refuses_an_empty_split():
    with pytest.raises(ValueError, match="at least one slice"):
        SliceCacheDataset([], lambda item: item, progress=False)


def test_slice_cache_unwraps_a_one_sample_cropper_so_datasets_concatenate():
    item = {"image": torch.arange(64.0).reshape(1, 8, 8), "label": torch.zeros(1, 8, 8)}
    item["label"][0, 2, 2] = 1
    crop = RandCropByPosNegLabeld(keys=("image", "label"), label_key="label",
                                  spatial_size=(4, 4), num_samples=1)  # fmt: skip
    cropped = SliceCacheDataset([item], lambda d: [d], transform=crop, progress=False)
    plain = SliceCacheDataset([item], lambda d: [d], progress=False)
    both = ConcatDataset([cropped, plain])
    assert isinstance(both[0], dict) and tuple(both[0]["image"].shape) == (1, 4, 4)
    assert isinstance(both[1], dict) and tuple(both[1]["image"].shape) == (1, 8, 8)
    two = SliceCacheDataset([item], lambda d: [d], transform=lambda d: [d, d], progress=False)
    with pytest.raises(ValueError, match="num_samples=1"):
        two[0]


@pytest.mark.parametrize("track_meta", [False, None])
def test_slice_cache_can_run_per_sample_transforms_without_meta_tracking(track_meta):
    item = {"image": MetaTensor(torch.zeros(1, 8, 8), affine=torch.diag(torch.tensor([2.0] * 4)))}
    seen = []
    dataset = SliceCacheDataset([item], lambda d: [d], progress=False, track_meta=track_meta,
                                transform=lambda d: seen.append(get_track_meta()) or d)  # fmt: skip
    dataset[0]
    assert seen == [track_meta is None]  # tracking is on by default, off only when asked
    assert get_track_meta(), "the global tracking flag was not restored"
