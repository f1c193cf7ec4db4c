"""SafeSpacingd: MONAI 1.6's Spacingd bug with MONAI Label's ``image_path``, and the workaround.

The bug half runs only under MONAI 1.6.x (the version that has the loop); the rest holds on any.
"""

from __future__ import annotations

from pathlib import Path

import monai
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Spacingd

from tumoraware.transforms import SafeSpacingd

PIXDIM = (1.0, 1.0, 0.0)  # in-plane resampling, slices kept: as the segmentation bundle does
AFFINE = np.diag([1.5, 1.25, 3.0, 1.0])


@pytest.fixture
def nifti(tmp_path) -> Path:
    """A small 3D NIfTI volume with anisotropic voxels."""
    volume = np.random.default_rng(0).random((12, 10, 4)).astype(np.float32)
    path = tmp_path / "mri_image.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINE), path)
    return path


def _load(path: Path, image_only: bool = True) -> dict:
    load = Compose([LoadImaged("image", image_only=image_only), EnsureChannelFirstd("image")])
    return load({"image": str(path)})


@pytest.mark.skipif(
    not monai.__version__.startswith("1.6."), reason="the loop is in MONAI 1.6.x only"
)
def test_plain_spacingd_fails_on_monai_labels_image_path(nifti):
    data = {**_load(nifti), "image_path": str(nifti)}  # what MONAI Label's /infer passes
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):
        Spacingd("image", pixdim=PIXDIM, mode="bilinear")(data)


def test_safe_spacingd_gives_spacingds_output_and_keeps_the_strings(nifti):
    reference = Spacingd("image", pixdim=PIXDIM, mode="bilinear")(_load(nifti))
    data = {**_load(nifti), "image_path": str(nifti), "image_source": "scanner 2", 7: "seven"}
    out = SafeSpacingd("image", pixdim=PIXDIM, mode="bilinear")(data)

    assert torch.equal(out["image"], reference["image"])
    assert out["image"].shape[1:] == (18, 12, 4)  # 11 x 1.5 + 1, 9 x 1.25 + 1; slices kept
    np.testing.assert_allclose(out["image"].affine, reference["image"].affine)
    assert out["image_path"] == str(nifti) and out["image_source"] == "scanner 2"
    assert out[7] == "seven"
    assert list(out) == list(data), "entries come back in their places"


def test_meta_dicts_are_still_updated_as_spacingd_updates_them(nifti):
    reference = Spacingd("image", pixdim=PIXDIM)(_load(nifti, image_only=False))
    data = {**_load(nifti, image_only=False), "image_path": str(nifti)}
    out = SafeSpacingd("image", pixdim=PIXDIM)(data)
    assert isinstance(out["image_meta_dict"], dict)
    np.testing.assert_allclose(
        out["image_meta_dict"]["affine"], reference["image_meta_dict"]["affine"]
    )


def test_safe_spacingd_inverts_to_the_input_grid(nifti):
    preprocessing = Compose([
        LoadImaged("image", image_only=True),
        EnsureChannelFirstd("image"),
        SafeSpacingd("image", pixdim=PIXDIM, mode="bilinear"),
    ])  # fmt: skip
    original = _load(nifti)["image"]
    data = preprocessing({"image": str(nifti), "image_path": str(nifti)})
    assert data["image"].shape != original.shape

    spacing = preprocessing.transforms[-1]
    back = spacing.inverse({"image": data["image"].clone()})  # the parent's inverse
    assert back["image"].shape == original.shape

    data["pred"] = data["image"].clone()  # a prediction on the resampled grid, as the bundle's
    inverted = Invertd("pred", transform=preprocessing, orig_keys="image")(data)
    assert inverted["pred"].shape == original.shape
    np.testing.assert_allclose(inverted["pred"].affine, original.affine, atol=1e-5)
    assert inverted["image_path"] == str(nifti)
