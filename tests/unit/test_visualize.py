"""Figure writers (valid PNGs, one row per case, red contours, atomic writes, clear errors) and
the shared display helpers (radiological orientation, centring, picking)."""

from __future__ import annotations

import math
import struct

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from tumoraware.visualize import (
    evenly,
    load_pls,
    pad_stack,
    radiological,
    save_contour_grid,
    save_synthesis_grid,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    """``(width, height)`` from the IHDR chunk, after checking the PNG signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _cases(n: int, size: int = 32):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= 36).float()[None, None]
    masks = mask.repeat(n, 1, 1, 1)
    g = torch.Generator().manual_seed(n)
    ct = (torch.rand(n, 1, size, size, generator=g) * 0.4 - 0.6) + 0.5 * masks
    return ct, -ct, ct.clone(), masks


def _red_fraction(rgb: np.ndarray) -> float:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float(((r > 0.8) & (g < 0.3) & (b < 0.3)).mean())


def test_synthesis_grid_is_a_png_with_a_row_per_case(tmp_path):
    sizes = {}
    for n in (1, 3):
        ct, synth, rec, masks = _cases(n)
        out = save_synthesis_grid(tmp_path / f"grid{n}.png", ct, synth, rec, masks)
        assert out == tmp_path / f"grid{n}.png"
        sizes[n] = _png_size(out)
    (w1, h1), (w3, h3) = sizes[1], sizes[3]
    assert w1 == w3 == 750  # three 2.5-inch panels at 100 dpi
    assert abs((h3 - h1) - 2 * 250) <= 1  # two more 250-pixel rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid1.png", "grid3.png"]  # no temps


def test_tumour_contour_is_red_on_every_panel(tmp_path):
    ct, synth, rec, masks = _cases(1)
    rgb = imread(save_synthesis_grid(tmp_path / "with.png", ct, synth, rec, masks))
    third = rgb.shape[1] // 3
    for column in range(3):
        panel = rgb[: int(rgb.shape[0] * 0.8), column * third : (column + 1) * third]
        assert _red_fraction(panel) > 1e-3, column
    empty = imread(save_synthesis_grid(tmp_path / "none.png", ct, synth, rec, 0 * masks))
    assert _red_fraction(empty[: int(empty.shape[0] * 0.8)]) == 0  # no tumour: no red on panels


def test_contour_grid_columns_masks_and_inputs(tmp_path):
    ct, synth, _, masks = _cases(2)
    shifted = torch.roll(masks, shifts=4, dims=-1)
    columns = torch.cat([ct, synth, synth, synth], dim=1).requires_grad_()  # (N, K=4, H, W)
    out = save_contour_grid(
        tmp_path / "fig4.png",
        columns,
        masks={"expert": masks, "prediction": torch.cat([masks, shifted, shifted, masks], 1)},
        colors={"expert": "red", "prediction": "yellow"},
        column_titles=["CT", "CycleGAN", "masked", "tumour-aware"],
        row_titles=["case 1", "case 2"],
    )
    width, _ = _png_size(out)
    assert width == 1000
    # a list of (N, 1, H, W) numpy columns is the same grid; no masks at all is allowed
    out = save_contour_grid(tmp_path / "plain.png", [ct.numpy(), synth.numpy()], {}, {})
    assert _png_size(out)[0] == 500


def test_nan_image_raises_and_leaves_existing_file(tmp_path):
    ct, synth, rec, masks = _cases(2)
    destination = tmp_path / "grid.png"
    destination.write_bytes(b"previous")
    synth[1, 0, 3, 5] = math.nan
    with pytest.raises(
        ValueError, match=r"synthetic_mri: expected finite values, got 1 NaN.*row 1"
    ):
        save_synthesis_grid(destination, ct, synth, rec, masks)
    columns = torch.cat([ct, synth], 1)
    with pytest.raises(ValueError, match=r"images: expected finite .* row 1, column 1"):
        save_contour_grid(destination, columns, {}, {})
    assert destination.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_input_errors_say_expected_and_given(tmp_path):
    ct, synth, rec, masks = _cases(2)
    with pytest.raises(ValueError, match=r"reconstructed_ct: expected shape \(N, 1, H, W\) like"):
        save_synthesis_grid(tmp_path / "a.png", ct, synth, rec[:1], masks)
    with pytest.raises(ValueError, match=r"masks\['tumour'\]: expected shape \(2, 1, 32, 32\)"):
        save_synthesis_grid(tmp_path / "a.png", ct, synth, rec, masks[..., :16])
    with pytest.raises(ValueError, match=r"colors: expected a colour .* none for \['pred'\]"):
        save_contour_grid(tmp_path / "a.png", ct, {"pred": masks}, {"expert": "red"})
    with pytest.raises(ValueError, match=r"column_titles: expected 3 titles .* got 2"):
        save_synthesis_grid(tmp_path / "a.png", ct, synth, rec, masks, titles=("CT", "MRI"))
    with pytest.raises(ValueError, match=r"path: expected a \.png file"):
        save_synthesis_grid(tmp_path / "a.jpg", ct, synth, rec, masks)
    with pytest.raises(ValueError, match=r"images: expected shape \(N, K, H, W\).*got \(32, 32\)"):
        save_contour_grid(tmp_path / "a.png", np.zeros((32, 32)), {}, {})
    assert list(tmp_path.iterdir()) == []


def test_panel_text_is_drawn_and_checked(tmp_path):
    images = np.full((1, 2, 16, 16), -1.0, dtype=np.float32)
    plain = save_contour_grid(tmp_path / "plain.png", images, {}, {})
    noted = save_contour_grid(tmp_path / "noted.png", images, {}, {}, panel_text=[["not run", ""]])
    a, b = imread(plain)[..., :3], imread(noted)[..., :3]
    assert a.shape == b.shape
    half = a.shape[1] // 2
    assert (b[:, :half] > 0.9).all(-1).sum() > 20  # white letters on the first panel
    np.testing.assert_array_equal(a[:, half:], b[:, half:])  # the second panel unchanged
    with pytest.raises(ValueError, match="panel_text"):
        save_contour_grid(tmp_path / "bad.png", images, {}, {}, panel_text=[["one"]])


# ----------------------------------------------------------------------------- display helpers
def test_radiological_puts_anterior_up_and_patient_right_on_the_left():
    ras = torch.zeros(2, 1, 5, 7)  # (N, C, x: toward patient right, y: toward anterior)
    ras[:, :, 4, 6] = 1.0  # the most right, most anterior voxel
    shown = radiological(ras)
    assert shown.shape == (2, 1, 7, 5) and type(shown) is torch.Tensor
    assert torch.nonzero(shown[0, 0]).tolist() == [[0, 0]]  # top row, leftmost column
    assert torch.equal(radiological(ras[0, 0]), shown[0, 0])


@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, -1, 1)])  # RAS- and LPS-stored grids
def test_load_pls_reorients_by_the_affine_and_orders_the_zooms(tmp_path, signs):
    volume = np.zeros((6, 8, 4), dtype=np.float32)
    right_anterior = (5, 7, 2) if signs[0] > 0 else (0, 0, 2)
    volume[right_anterior] = 1.0
    affine = np.diag([signs[0] * 1.5, signs[1] * 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "v.nii.gz")
    pls, zooms = load_pls(tmp_path / "v.nii.gz")
    assert pls.shape == (8, 6, 4) and zooms == (2.0, 1.5, 3.0)
    assert np.argwhere(pls).tolist() == [[0, 0, 2]]  # anterior row 0, patient right column 0


def test_pad_stack_centres_keeps_the_dtype_and_evenly_spreads():
    small, big = np.ones((2, 3), dtype=bool), np.zeros((5, 4), dtype=bool)
    out = pad_stack([small, big], False)
    assert out.dtype == bool and out.shape == (2, 5, 4)
    assert np.argwhere(out[0]).min(0).tolist() == [1, 0] and out[0].sum() == 6  # odd: extra below
    assert (
        pad_stack([np.zeros((1, 1), np.float32), np.zeros((3, 3), np.float32)], -1.0)[0, 1, 1] == 0
    )
    assert evenly(list(range(10)), 4) == [0, 3, 6, 9] and evenly([1, 2], 5) == [1, 2]
