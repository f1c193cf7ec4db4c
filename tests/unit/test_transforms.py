"""Unit tests of tumoraware.transforms on synthetic MetaTensors with a real anisotropic affine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, ScaleIntensityd

from tumoraware.transforms import (
    CTWindowd,
    RobustMRINormalized,
    TumourRegionCropd,
    ValueRangeCheckd,
    VolumeToSlicesd,
)
from tumoraware.transforms.crop import square_tumour_box

SPACING = (0.8, 1.2, 3.0)


def affine(spacing=SPACING, origin=(120.0, 90.0, -40.0)) -> torch.Tensor:
    """LPS-like affine: in-plane axes flipped, as DICOM-derived NIfTI often are."""
    a = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    a[:3, 3] = origin
    return torch.as_tensor(a, dtype=torch.float64)


def meta_tensor(array, filename: str, spacing=SPACING) -> MetaTensor:
    t = torch.as_tensor(np.asarray(array), dtype=torch.float32)
    return MetaTensor(t, affine=affine(spacing), meta={"filename_or_obj": filename})


def world(aff: torch.Tensor, ijk: np.ndarray) -> np.ndarray:
    """World coordinates (N, 3) of voxel indices (N, 3)."""
    a = np.asarray(aff, dtype=float)
    return ijk @ a[:3, :3].T + a[:3, 3]


def voxel(aff: torch.Tensor, xyz: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (N, 3) of world coordinates (N, 3)."""
    inv = np.linalg.inv(np.asarray(aff, dtype=float))
    return xyz @ inv[:3, :3].T + inv[:3, 3]


def tumour_voxels(label) -> np.ndarray:
    return np.argwhere(np.asarray(label)[0] > 0.5).astype(float)


# --------------------------------------------------------------------------------- CTWindowd


def test_ct_window_maps_the_hu_window_linearly_and_clips():
    values = [-1000.0, 500.0, -250.0, -1500.0, 2000.0, -3024.0, 0.0]
    img = meta_tensor(np.array(values).reshape(1, 7, 1, 1), "ct.nii.gz")
    out = CTWindowd(keys="image")({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    expected = [-1.0, 1.0, 0.0, -1.0, 1.0, -1.0, 1000.0 / 750.0 - 1.0]
    np.testing.assert_allclose(out.numpy().ravel(), expected, atol=1e-6)
    assert torch.equal(out.affine, img.affine)


@pytest.mark.parametrize(
    ("values", "hint"),
    [
        ([-1000.0, float("nan"), 40.0], "NaN/Inf"),
        ([-1000.0, float("inf"), 40.0], "NaN/Inf"),
        ([0.0, 1024.0, 4095.0], "RescaleSlope/RescaleIntercept"),
        ([-1.0, 0.3, 1.0], "supply raw HU"),
        ([0.0, 0.5, 1.0], "supply raw HU"),
        ([-5000.0, -1000.0, 40.0], "outside the Hounsfield range"),
        ([-1000.0, 40.0, 9000.0], "outside the Hounsfield range"),
    ],
)
def test_ct_window_rejects_what_is_not_hounsfield_units(values, hint):
    img = meta_tensor(np.array(values).reshape(1, 3, 1, 1), "/data/case_007_ct.nii.gz")
    with pytest.raises(ValueError, match=hint) as err:
        CTWindowd(keys="image")({"image": img})
    assert str(err.value).startswith("/data/case_007_ct.nii.gz: ")
    assert "Fix:" in str(err.value)


def test_ct_window_check_can_be_switched_off_and_names_the_key_without_a_file():
    already = torch.linspace(-1, 1, 8).reshape(1, 2, 2, 2)
    out = CTWindowd(keys="image", check_hu=False)({"image": already})["image"]
    # scaled as if it were HU (all about 0 HU -> 1/3), which is why the check is on by default
    np.testing.assert_allclose(out.numpy(), 1000.0 / 750.0 - 1.0, atol=2e-3)
    with pytest.raises(ValueError, match=r"^data\['image'\]: "):
        CTWindowd(keys="image")({"image": already})


# ----------------------------------------------------------------------- RobustMRINormalized


def mri(seed: int = 0, shape=(1, 24, 20, 6)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 150.0, size=shape)


def test_mri_normalisation_maps_percentiles_to_minus_one_one():
    x = mri()
    out = RobustMRINormalized(keys="image")({"image": meta_tensor(x, "t2.nii.gz")})["image"]
    assert isinstance(out, MetaTensor) and out.shape == x.shape
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0
    p1, p99 = np.percentile(x, [1.0, 99.0])
    expected = np.clip(2.0 * (x - p1) / (p99 - p1) - 1.0, -1.0, 1.0)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    inside = (x > p1) & (x < p99)
    assert inside.mean() > 0.97  # the mapping is linear, not a clip of everything


@pytest.mark.parametrize("channel_wise", [True, False])
def test_mri_normalisation_keeps_metadata_and_matches_monai(channel_wise):
    from monai.transforms import ScaleIntensityRangePercentilesd

    rng = np.random.default_rng(1)
    img = meta_tensor(rng.gamma(2.0, 300.0, (2, 12, 10, 4)), "/mri/p01_week1.nii.gz")
    out = RobustMRINormalized(keys="image", channel_wise=channel_wise)({"image": img})["image"]
    ref = ScaleIntensityRangePercentilesd(
        "image", 1.0, 99.0, -1.0, 1.0, clip=True, channel_wise=channel_wise, dtype=np.float32
    )({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out.affine, img.affine)
    assert out.meta["filename_or_obj"] == "/mri/p01_week1.nii.gz"
    torch.testing.assert_close(out.as_tensor(), ref.as_tensor())


def test_mri_normalisation_is_invariant_to_scanner_gain():
    x = mri(seed=3)
    t = RobustMRINormalized(keys="image")
    a = t({"image": meta_tensor(x, "a.nii.gz")})["image"]
    b = t({"image": meta_tensor(7.3 * x, "b.nii.gz")})["image"]
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_mri_normalisation_is_channel_wise():
    x = np.concatenate([mri(1), 50.0 * mri(2)], axis=0)
    out = RobustMRINormalized(keys="image")({"image": meta_tensor(x, "two.nii.gz")})["image"]
    for c in range(2):
        p1, p99 = np.percentile(x[c], [1.0, 99.0])
        expected = np.clip(2.0 * (x[c] - p1) / (p99 - p1) - 1.0, -1.0, 1.0)
        np.testing.assert_allclose(out[c].numpy(), expected, atol=1e-5)


def test_mri_normalisation_rejects_nan_and_constant_images():
    x = mri()
    x[0, 3, 4, 2] = np.nan
    t = RobustMRINormalized(keys="image")
    with pytest.raises(ValueError, match=r"^/mri/p01\.nii\.gz: .*1 NaN/Inf") as err:
        t({"image": meta_tensor(x, "/mri/p01.nii.gz")})
    assert "Fix:" in str(err.value)
    with pytest.raises(ValueError, match=r"^/mri/p02\.nii\.gz: .*percentiles both 5") as err:
        t({"image": meta_tensor(np.full((1, 8, 8, 3), 5.0), "/mri/p02.nii.gz")})
    assert "Fix:" in str(err.value)
    one_flat = np.concatenate([mri(shape=(1, 8, 8, 3)), np.zeros((1, 8, 8, 3))])
    with pytest.raises(ValueError, match=r"^/mri/p03\.nii\.gz: .*channel 1 .*percentiles both 0"):
        t({"image": meta_tensor(one_flat, "/mri/p03.nii.gz")})


def test_value_range_check_passes_normalised_images_through_unchanged():
    x = meta_tensor(np.linspace(-1.0, 1.0, 8 * 8 * 3).reshape(1, 8, 8, 3), "/syn/c01.nii.gz")
    out = ValueRangeCheckd(keys="image")({"image": x})
    assert out["image"] is x


def test_value_range_check_names_the_file_for_raw_or_nan_images():
    check = ValueRangeCheckd(keys="image")
    with pytest.raises(ValueError, match=r"^/syn/raw\.nii\.gz: .*got \[0, 900\].*Fix:"):
        check(
            {"image": meta_tensor(np.linspace(0, 900, 64).reshape(1, 4, 4, 4), "/syn/raw.nii.gz")}
        )
    x = np.zeros((1, 4, 4, 4))
    x[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"^/syn/nan\.nii\.gz: .*1 NaN/Inf"):
        check({"image": meta_tensor(x, "/syn/nan.nii.gz")})
    with pytest.raises(ValueError, match="low < high"):
        ValueRangeCheckd(keys="image", value_range=(1.0, -1.0))


# ------------------------------------------------------------------------- TumourRegionCropd

SHAPE = (96, 80, 6)


def case(rows=(40, 52), cols=(30, 38), slices=(2, 5), spacing=SPACING, shape=SHAPE):
    """Image (bright tumour on a 100..200 background, no zeros) and label with a box tumour."""
    rng = np.random.default_rng(0)
    lab = np.zeros((1, *shape))
    lab[0, rows[0] : rows[1], cols[0] : cols[1], slices[0] : slices[1]] = 1
    img = rng.uniform(100.0, 200.0, size=(1, *shape)) + 300.0 * lab
    return {
        "image": meta_tensor(img, "/ct/case_1.nii.gz", spacing),
        "label": meta_tensor(lab, "/ct/case_1_gtv.nii.gz", spacing),
    }


def crop_extent_mm(out_affine: torch.Tensor, size=(256, 256)) -> np.ndarray:
    a = np.asarray(out_affine, dtype=float)
    return np.array([np.linalg.norm(a[:3, i]) * size[i] for i in range(2)])


def assert_whole_tumour_inside(before, after, size):
    """Every input tumour voxel centre lies strictly inside the output grid; border ring is 0."""
    ijk = voxel(after.affine, world(before.affine, tumour_voxels(before)))
    for axis in range(2):
        assert ijk[:, axis].min() > 0.5 and ijk[:, axis].max() < size[axis] - 1.5
    lab = np.asarray(after)[0]
    ring = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    assert ring.sum() == 0
    assert lab.sum() > 0


def test_crop_shape_and_whole_tumour_inside():
    data = case()
    out = TumourRegionCropd(keys=("image", "label"))(data)
    assert out["image"].shape == (1, 256, 256, 6) and out["label"].shape == (1, 256, 256, 6)
    assert_whole_tumour_inside(data["label"], out["label"], (256, 256))
    # Tumour voxels scale with the in-plane area ratio (input pixel / output pixel).
    ratio = np.prod(np.array(SPACING[:2]) / (crop_extent_mm(out["label"].affine) / 256))
    assert float(out["label"].sum()) == pytest.approx(float(data["label"].sum()) * ratio, rel=0.05)
    # The slice axis is untouched: tumour only in slices 2..4, slice spacing unchanged.
    per_slice = np.asarray(out["label"])[0].sum(axis=(0, 1))
    assert np.flatnonzero(per_slice).tolist() == [2, 3, 4]
    assert float(torch.linalg.norm(out["label"].affine[:3, 2])) == pytest.approx(SPACING[2])


def test_crop_box_is_the_union_over_slices():
    data = case()
    lab = data["label"].clone()
    lab[..., 4] = 0
    lab[0, 20:30, 60:70, 4] = 1  # a second part of the tumour, on another slice only
    data["label"] = lab
    out = TumourRegionCropd(keys=("image", "label"))(data)
    assert_whole_tumour_inside(lab, out["label"], (256, 256))


def test_crop_is_physically_square_with_anisotropic_pixels():
    data = case(rows=(40, 52), cols=(30, 34))  # 9.6 mm x 4.8 mm tumour
    out = TumourRegionCropd(keys=("image", "label"))(data)
    ext = crop_extent_mm(out["image"].affine)
    assert abs(ext[0] - ext[1]) <= max(SPACING[:2]) + 1e-6
    # the side is the longer tumour side (9.6 mm) + 25 % margin on each side, to one pixel
    assert ext.min() >= 9.6 * 1.5 - 1e-6 and ext.max() < 9.6 * 1.5 + max(SPACING[:2])
    # not square in pixels: the square comes from the spacing
    px = ext / np.array(SPACING[:2])
    assert abs(px[0] - px[1]) >= 3


def test_crop_affine_keeps_the_tumour_at_its_world_position():
    data = case(rows=(10, 31), cols=(50, 57))
    out = TumourRegionCropd(keys=("image", "label"))(data)
    before = world(data["label"].affine, tumour_voxels(data["label"]).mean(0, keepdims=True))
    after = world(out["label"].affine, tumour_voxels(out["label"]).mean(0, keepdims=True))
    out_pixel = np.asarray(torch.linalg.norm(out["label"].affine[:3, :2], dim=0)).max()
    assert np.linalg.norm(before - after) <= out_pixel


def test_crop_keeps_image_and_label_aligned():
    """The bilinear image of the label and the nearest-exact label share a centroid."""
    data = case(rows=(41, 50), cols=(31, 36))
    data["image"] = data["label"].clone()
    out = TumourRegionCropd(keys=("image", "label"))(data)
    c_img = tumour_voxels(out["image"]).mean(0)
    c_lab = tumour_voxels(out["label"]).mean(0)
    np.testing.assert_allclose(c_img, c_lab, atol=0.25)


def test_crop_near_the_image_edge_pads_image_with_edge_values_and_label_with_zero():
    data = case(rows=(0, 9), cols=(72, 80))
    out = TumourRegionCropd(keys=("image", "label"))(data)
    assert_whole_tumour_inside(data["label"], out["label"], (256, 256))
    # The crop leaves the image (its corner voxel lies outside), yet no 0 came in from padding.
    corner = voxel(data["image"].affine, world(out["image"].affine, np.zeros((1, 3))))[0]
    assert corner[0] < -0.5
    assert float(out["image"].min()) >= 100.0 - 1e-3
    ratio = np.prod(np.array(SPACING[:2]) / (crop_extent_mm(out["label"].affine) / 256))
    assert float(out["label"].sum()) == pytest.approx(float(data["label"].sum()) * ratio, rel=0.05)


def test_crop_min_size_mm():
    data = case(rows=(47, 50), cols=(38, 40))
    out = TumourRegionCropd(keys=("image", "label"), min_size_mm=60.0)(data)
    ext = crop_extent_mm(out["image"].affine)
    assert ext.min() >= 60.0 - 1e-6 and ext.max() < 60.0 + max(SPACING[:2]) + 1e-6
    small = TumourRegionCropd(keys=("image", "label"))(case(rows=(47, 50), cols=(38, 40)))
    assert crop_extent_mm(small["image"].affine).max() < 20.0


def test_crop_empty_label_names_the_label_file():
    data = case()
    data["label"] = data["label"] * 0
    with pytest.raises(ValueError, match=r"^/ct/case_1_gtv\.nii\.gz: empty label") as err:
        TumourRegionCropd(keys=("image", "label"))(data)
    assert "Fix: check the label or move the case to an unlabelled split" in str(err.value)


def test_crop_inverse_returns_to_the_input_grid():
    data = case()
    t = TumourRegionCropd(keys=("image", "label"), spatial_size=(64, 64))
    back = t.inverse(t(data))
    assert back["label"].shape == data["label"].shape
    np.testing.assert_allclose(back["label"].affine, data["label"].affine, atol=1e-6)
    assert torch.equal(back["label"].as_tensor() > 0.5, data["label"].as_tensor() > 0.5)


@settings(max_examples=60, deadline=None)
@given(
    start=st.tuples(st.integers(-5, 60), st.integers(-5, 60)),
    length=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    spacing=st.tuples(st.floats(0.5, 2.0), st.floats(0.5, 2.0)),
    margin=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    min_size_mm=st.sampled_from([0.0, 30.0]),
)
def test_square_box_property_contains_every_tumour(start, length, spacing, margin, min_size_mm):
    """The box itself contains the tumour, however thin (1-pixel lines included)."""
    end = (start[0] + length[0], start[1] + length[1])
    lo, hi = square_tumour_box(start, end, spacing, margin, min_size_mm)
    assert (lo <= np.asarray(start)).all() and (hi >= np.asarray(end)).all()
    side_mm = (hi - lo) * np.asarray(spacing)
    assert abs(side_mm[0] - side_mm[1]) <= max(spacing) + 1e-6  # square to within one pixel
    assert side_mm.min() >= min_size_mm - max(spacing)


@settings(max_examples=25, deadline=None)
@given(
    r0=st.integers(0, 47),
    c0=st.integers(0, 39),
    # >= 2 pixels, and (see the test) at least one output pixel wide: nearest-neighbour
    # downsampling (any library's) can skip a thinner line.
    length=st.tuples(st.integers(2, 20), st.integers(2, 20)),
    spacing=st.sampled_from([(0.8, 1.2, 3.0), (1.2, 0.7, 2.5), (0.9, 0.9, 5.0)]),
    margin=st.sampled_from([0.1, 0.25, 0.5]),
)
def test_crop_property_whole_tumour_inside(r0, c0, length, spacing, margin):
    shape = (48, 40, 3)
    rows = (r0, min(r0 + length[0], shape[0]))
    cols = (c0, min(c0 + length[1], shape[1]))
    data = case(rows=rows, cols=cols, slices=(1, 2), spacing=spacing, shape=shape)
    out = TumourRegionCropd(keys=("image", "label"), spatial_size=(32, 32), margin=margin)(data)
    assert out["label"].shape == (1, 32, 32, 3)
    # Nearest-neighbour resampling with step s (output / input pixel size) is sure to hit a run
    # of L input pixels only when L >= s; thinner tumours are the box property's domain above.
    step = np.linalg.norm(out["label"].affine[:3, :2].numpy(), axis=0) / np.array(spacing[:2])
    assume(rows[1] - rows[0] >= step[0] and cols[1] - cols[0] >= step[1])
    assert_whole_tumour_inside(data["label"], out["label"], (32, 32))


# --------------------------------------------------------------------------- VolumeToSlicesd


def slice_case(depth: int = 10, tumour=(3, 4, 5), single_voxel=(7,)):
    img = np.zeros((1, 16, 12, depth))
    img[...] = np.arange(depth)  # each slice holds its own index
    lab = np.zeros((1, 16, 12, depth))
    for k in tumour:
        lab[0, 5:7, 4:7, k] = 1
    for k in single_voxel:
        lab[0, 2, 2, k] = 1
    return {
        "image": meta_tensor(img, "/mri/v.nii.gz"),
        "label": meta_tensor(lab, "/mri/v_label.nii.gz"),
        "subject": "p01",
    }


def run_slices(data, seed=0, **kwargs):
    t = VolumeToSlicesd(keys=("image", "label"), **kwargs)
    t.set_random_state(seed=seed)
    return t(data)


def test_slices_each_tumour_slice_once_plus_tumour_free_share():
    data = slice_case()
    out = run_slices(data, tumour_free_share=0.5)
    tumour = [s["slice_index"] for s in out if s["has_tumour"]]
    free = [s["slice_index"] for s in out if not s["has_tumour"]]
    assert tumour == [3, 4, 5, 7]
    assert len(free) == 4 and len(set(free)) == 4 and not set(free) & {3, 4, 5, 7}
    assert [s["slice_index"] for s in out] == sorted(tumour + free)
    for s in out:
        assert s["image"].shape == (1, 16, 12) and s["label"].shape == (1, 16, 12)
        assert float(s["image"].mean()) == s["slice_index"]  # the right slice
        assert (float(s["label"].sum()) > 0) == s["has_tumour"]
        assert s["subject"] == "p01" and s["image"].affine.shape == (3, 3)
        np.testing.assert_allclose(s["image"].affine[:2, :2], affine()[:2, :2])
        assert s["image"].meta["filename_or_obj"] == "/mri/v.nii.gz"


@pytest.mark.parametrize(("share", "n_free"), [(0.0, 0), (0.2, 1), (0.4, 3), (0.5, 4), (0.9, 6)])
def test_slices_tumour_free_count(share, n_free):
    out = run_slices(slice_case(), tumour_free_share=share)
    free = [s["slice_index"] for s in out if not s["has_tumour"]]
    assert len(free) == n_free  # 0.4 wants 2.67 -> 3; 0.9 wants 36, only 6 exist
    assert len(set(free)) == n_free and set(free) <= {0, 1, 2, 6, 8, 9}
    assert sum(s["has_tumour"] for s in out) == 4


def test_slices_min_tumour_voxels_drops_small_slices_from_both_groups():
    out = run_slices(slice_case(), tumour_free_share=0.9, min_tumour_voxels=2)
    assert [s["slice_index"] for s in out if s["has_tumour"]] == [3, 4, 5]
    # 0.9 wants 27 tumour-free slices: all 6 truly tumour-free ones, never slice 7
    assert [s["slice_index"] for s in out if not s["has_tumour"]] == [0, 1, 2, 6, 8, 9]
    assert all(float(s["label"].sum()) == 0 for s in out if not s["has_tumour"])


def test_slices_are_deterministic_per_seed():
    data = slice_case(depth=40)

    def free(seed):
        return [
            s["slice_index"]
            for s in run_slices(data, seed=seed, tumour_free_share=0.5)
            if not s["has_tumour"]
        ]

    assert free(0) == free(0)
    assert free(0) != free(1)


def test_slices_unlabelled_volume_gives_every_slice():
    data = slice_case()
    del data["label"]
    out = VolumeToSlicesd(keys="image")(data)
    assert [s["slice_index"] for s in out] == list(range(10))
    assert all(s.get("has_tumour") is None for s in out)
    batch = list_data_collate(out)
    assert batch["image"].shape == (10, 1, 16, 12)


def test_slices_empty_label_names_the_file():
    data = slice_case(tumour=(), single_voxel=())
    with pytest.raises(ValueError, match=r"^/mri/v_label\.nii\.gz: .*empty label"):
        run_slices(data)


def test_slices_inside_compose_are_flattened_for_the_next_transform():
    pipeline = Compose(
        [
            VolumeToSlicesd(keys=("image", "label"), tumour_free_share=0.5),
            ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
        ]
    )
    pipeline.set_random_state(seed=0)
    out = pipeline(slice_case())
    assert isinstance(out, list) and len(out) == 8
    assert all(s["image"].shape == (1, 16, 12) for s in out)
    batch = list_data_collate(out)
    assert batch["image"].shape == (8, 1, 16, 12)
    assert batch["has_tumour"].tolist().count(True) == 4
