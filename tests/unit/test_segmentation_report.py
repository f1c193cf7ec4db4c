"""Fig. 4 panels and Table 1 summary from a MONAI-style segmentation evaluator.

A real ignite ``Engine`` returns decollated per-case dicts of MetaTensors (LPS-stored grid,
anisotropic spacing) with box tumours and predictions shifted by a known number of voxels, so
the Dice of each case is known: a box of length 10 shifted by s along one axis has Dice
``(10 - s) / 10``.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from matplotlib.image import imread
from monai.data import MetaTensor
from monai.handlers import HausdorffDistance, MeanDice, from_engine

from tumoraware.data.names import case_name
from tumoraware.handlers import SegmentationPanelWriter, SegmentationSummaryWriter
from tumoraware.visualize.display import largest_area_slice
from tumoraware.visualize.panels import extract_case_panel, load_case_panel

SHAPE = (20, 16, 12)  # (x: toward patient left, y: toward posterior, z: superior)
# RAS-world affine of an LPS-stored grid: axis 0 runs to the left, axis 1 to posterior
LPS_AFFINE = torch.tensor(
    [[-0.8, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]], dtype=torch.float64
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _box(x0: int, x1: int, y0: int = 4, y1: int = 10, z0: int = 3, z1: int = 8) -> torch.Tensor:
    mask = torch.zeros(SHAPE)
    mask[x0:x1, y0:y1, z0:z1] = 1
    return mask


def _meta(x: torch.Tensor, path: str) -> MetaTensor:
    return MetaTensor(x, affine=LPS_AFFINE.clone(), meta={"filename_or_obj": path})


def _case(image_path: str, label: torch.Tensor, pred: torch.Tensor) -> dict[str, MetaTensor]:
    """One decollated evaluator output: image (1, X, Y, Z), one-hot pred/label (2, X, Y, Z)."""
    g = torch.Generator().manual_seed(len(image_path))
    image = torch.rand((1, *SHAPE), generator=g) * 1.6 - 0.8
    onehot = lambda m: torch.stack([1 - m, m])  # noqa: E731
    label_path = image_path.replace("_image", "_label")
    return {
        "image": _meta(image, image_path),
        "pred": _meta(onehot(pred), image_path),
        "label": _meta(onehot(label), label_path),
    }


# case -> (expert box, predicted box): Dice 0.8, 0.5, NaN (no expert tumour), 0 (empty pred)
CASES = [
    _case("/data/a/mri_a_image.nii.gz", _box(4, 14), _box(6, 16)),
    _case("/data/a/mri_b_image.nii.gz", _box(5, 15), _box(10, 20)),
    _case("/data/a/mri_c_image.nii.gz", torch.zeros(SHAPE), _box(2, 8, z0=6, z1=8)),
    _case("/data/b/mri_a_image.nii.gz", _box(4, 14), torch.zeros(SHAPE)),
]
NAMES = ["mri_a_image", "mri_b_image", "mri_c_image", "mri_a_image_1"]
DICE = [0.8, 0.5, math.nan, 0.0]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Run the engine once (two batches of two cases) with both metrics and both writers."""
    out = tmp_path_factory.mktemp("eval")
    engine = Engine(lambda e, batch: batch)
    transform = from_engine(["pred", "label"])
    MeanDice(include_background=False, output_transform=transform, save_details=True).attach(
        engine, "val_mean_dice"
    )
    HausdorffDistance(
        include_background=False, percentile=95, output_transform=transform, save_details=True
    ).attach(engine, "val_hd95")
    panels = SegmentationPanelWriter(out, max_rows=2)
    summary = SegmentationSummaryWriter(out, title="test method")
    panels.attach(engine)
    summary.attach(engine)
    with warnings.catch_warnings():  # MONAI warns about the empty masks (NaN/inf distances)
        warnings.simplefilter("ignore")
        engine.run([CASES[:2], CASES[2:]], max_epochs=1)
    return out, engine, panels, summary


def test_case_names():
    assert case_name("/x/mri_t000_w1_image.nii.gz") == "mri_t000_w1_image"
    assert case_name("/x/scan.NII") == "scan"
    assert case_name("/x/series/slice.dcm") == "slice"
    assert case_name(None) == ""


def test_largest_area_slice_ties_and_fallbacks():
    label = np.zeros((10, 10, 8))
    label[:2, :2, 2] = 1  # area 4
    label[:3, :3, 5] = 1  # area 9
    label[4:7, 4:7, 6] = 1  # area 9 too: the lower index wins
    assert largest_area_slice(label) == (5, "expert")
    assert largest_area_slice(torch.as_tensor(label)[None]) == (5, "expert")
    pred = np.zeros_like(label)
    pred[:1, :1, 1] = 1
    pred[:4, :4, 3] = 1
    assert largest_area_slice(np.zeros_like(label), pred) == (3, "prediction")
    assert largest_area_slice(np.zeros_like(label), np.zeros_like(label)) == (4, "none")


@pytest.mark.parametrize(
    ("affine", "space", "anterior", "right"),
    [
        # RAS-stored grid: axis 1 runs to anterior (last row), axis 0 to right (last column)
        (torch.diag(torch.tensor([0.8, 0.9, 2.5, 1.0], dtype=torch.float64)), "RAS", -1, -1),
        # LPS-stored grid (RAS-world affine): anterior and right are index 0
        (LPS_AFFINE, "RAS", 0, 0),
        # the same grid with an LPS-world affine, as a MetaTensor in LPS space
        (torch.diag(torch.tensor([0.8, 0.9, 2.5, 1.0], dtype=torch.float64)), "LPS", 0, 0),
    ],
)
def test_panel_is_radiological(affine, space, anterior, right):
    """Anterior at the top row, patient right in the left column, whatever the stored grid."""
    image = torch.full((1, *SHAPE), -1.0)
    image[0, right, :, :] = 0.5  # the patient's right side
    image[0, :, anterior, :] = 1.0  # the anterior side
    label = _box(4, 14)[None]
    meta = lambda x: MetaTensor(x, affine=affine.clone(), meta={"space": space})  # noqa: E731
    panel = extract_case_panel(meta(image), meta(label), meta(label), "lps")
    assert panel.image.shape == (SHAPE[1], SHAPE[0])  # (P, L)
    assert np.all(panel.image[0] == 1.0)
    assert np.all(panel.image[1:, 0] == 0.5)
    assert np.all(panel.image[1:, 1:] == -1.0)
    assert panel.slice_index == 3 and panel.slice_source == "expert"  # first of the 5 slices
    assert panel.expert.sum() == 10 * 6 and panel.dice == 1.0


def test_panel_pngs_and_titles(evaluated):
    out, _, panels, _ = evaluated
    for name in NAMES:
        data = (out / "panels" / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    grid = imread(out / "fig4_panels.png")
    assert grid.shape[:2] == (540, 500)  # 2 rows x 2 columns of 250 px plus the legend

    rgb = imread(out / "panels" / "mri_a_image.png")[..., :3]
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.25) & (rgb[..., 2] < 0.25)
    yellow = (rgb[..., 0] > 0.8) & (rgb[..., 1] > 0.8) & (rgb[..., 2] < 0.25)
    assert red.any() and yellow.any()

    by_name = {p.case: p for p in panels.panels}
    assert list(by_name) == NAMES
    assert by_name["mri_a_image"].dice == pytest.approx(0.8)
    assert by_name["mri_b_image"].dice == pytest.approx(0.5)
    assert "DSC 0.80" in by_name["mri_a_image"].title
    assert "axial 3/11" in by_name["mri_a_image"].title
    empty = by_name["mri_c_image"]
    assert "no expert tumour" in empty.title and empty.slice_source == "prediction"
    assert empty.slice_index == 6  # the predicted box covers slices 6 and 7
    assert all(p.image.ndim == 2 for p in panels.panels)  # only 2D slices are kept


def test_panel_arrays_use_the_expert_slice(evaluated):
    """panels/<case>.npz: the PNG's slice when the expert has a tumour; without one, the
    middle slice (never the prediction's), so every method's file shows the same slice."""
    out, _, panels, _ = evaluated
    by_name = {p.case: p for p in panels.panels}
    for name in NAMES:
        saved = load_case_panel(out / "panels" / f"{name}.npz")
        assert saved.case == name and saved.image.dtype == np.float32
        shown = by_name[name]
        if shown.slice_source == "expert":
            assert saved.slice_index == shown.slice_index and saved.slice_source == "expert"
            np.testing.assert_array_equal(saved.image, shown.image)
            np.testing.assert_array_equal(saved.expert, shown.expert)
            np.testing.assert_array_equal(saved.prediction, shown.prediction)
            assert saved.dice == pytest.approx(shown.dice)
    empty = load_case_panel(out / "panels" / "mri_c_image.npz")
    assert (empty.slice_source, empty.slice_index) == ("none", SHAPE[2] // 2)
    assert not empty.expert.any() and math.isnan(empty.dice)


def test_summary_matches_known_dice(evaluated):
    out, engine, _, summary = evaluated
    data = json.loads((out / "summary.json").read_text())
    assert [c["case"] for c in data["cases"]] == NAMES
    assert data["cases"][0]["source"] == "/data/a/mri_a_image.nii.gz"
    assert data["n_cases"] == 4 and data == summary.summary

    finite = np.array([d for d in DICE if math.isfinite(d)])
    dsc = data["metrics"]["val_mean_dice"]
    assert dsc["label"] == "DSC" and dsc["n"] == 4 and dsc["n_nan"] == 1
    assert dsc["mean"] == pytest.approx(finite.mean())
    assert dsc["std"] == pytest.approx(np.sqrt(np.mean((finite - finite.mean()) ** 2)))
    assert dsc["median"] == pytest.approx(0.5)
    assert (dsc["min"], dsc["max"]) == pytest.approx((0.0, 0.8))
    assert dsc["mean"] == pytest.approx(engine.state.metrics["val_mean_dice"])
    for case, dice in zip(data["cases"], DICE, strict=True):
        assert case["val_mean_dice"] == (pytest.approx(dice) if math.isfinite(dice) else None)

    # HD95: no expert tumour and an empty prediction give NaN/inf, counted and left out
    hd = data["metrics"]["val_hd95"]
    per_case = [c["val_hd95"] for c in data["cases"]]
    assert per_case[2] is None and per_case[3] is None
    assert hd["n_nan"] == 2 and hd["n"] == 4
    assert hd["mean"] == pytest.approx(np.mean(per_case[:2]))
    assert hd["std"] == pytest.approx(np.std(per_case[:2]))
    assert per_case[:2] == pytest.approx([2.0, 5.0])  # in voxels: the shifts of the boxes

    md = (out / "summary.md").read_text()
    assert "| Method | DSC | HD95 (mm) |" in md
    assert f"| test method | {finite.mean():.2f} ± {finite.std():.2f} | " in md
    assert "0.43 ± 0.33" in md  # (0.8 + 0.5 + 0) / 3, population std
    assert "n = 4 cases" in md and "DSC 1 of 4" in md and "HD95 (mm) 2 of 4" in md


def test_missing_metric_names_the_handler(tmp_path):
    engine = Engine(lambda e, batch: batch)
    SegmentationSummaryWriter(tmp_path, metric_names=("val_dice",)).attach(engine)
    with pytest.raises(KeyError, match=r"val_dice.*save_details=True"):
        engine.run([CASES[:1]], max_epochs=1)
    assert not (tmp_path / "summary.json").exists()


def test_mismatched_grids_are_rejected():
    case = CASES[0]
    small = MetaTensor(case["pred"].as_tensor()[:, :10], affine=LPS_AFFINE.clone())
    with pytest.raises(ValueError, match="Invertd"):
        extract_case_panel(case["image"], small, case["label"], "bad")
