"""Dice and HD95 known answers on hand-made masks; HD95 in mm through :class:`HausdorffDistanceMM`.

Masks are one-hot float ``(2, X, Y, Z)`` volumes (background, tumour), as MONAI's metrics expect.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import from_engine
from monai.metrics import DiceMetric

from tumoraware.metrics import HausdorffDistanceMM

pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

SPACING = (0.7, 0.9, 3.0)  # mm along voxel axes x, y, z
SHAPE = (24, 20, 12)


def _one_hot(tumour: torch.Tensor) -> torch.Tensor:
    """``(X, Y, Z)`` bool tumour mask -> one-hot float ``(2, X, Y, Z)``."""
    t = tumour.float()
    return torch.stack([1.0 - t, t])


def _box(shape: tuple[int, ...], slices: tuple[slice, ...]) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    m[slices] = True
    return _one_hot(m)


def _affine(spacing: tuple[float, ...], rotation: np.ndarray | None = None) -> torch.Tensor:
    """4x4 affine ``R @ diag(spacing)`` plus an origin: its column norms are ``spacing``."""
    r = np.eye(3) if rotation is None else rotation
    a = np.eye(4)
    a[:3, :3] = r @ np.diag(spacing)
    a[:3, 3] = (-12.5, 40.0, 7.25)  # an origin, which must not matter
    return torch.as_tensor(a, dtype=torch.float64)


def _rot(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


LPS = np.diag([-1.0, -1.0, 1.0])
# voxel x -> world y, voxel y -> world z (flipped), voxel z -> world x: row norms would give
# (3.0, 0.7, 0.9), so reading spacing from rows instead of columns fails these tests.
PERMUTED = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
ROTATIONS = {
    "ras": None,
    "lps": LPS,
    "permuted": PERMUTED,
    "oblique": _rot(0, 30.0) @ _rot(2, -50.0) @ PERMUTED,
}


def _plates(axis: int, k: int, shape: tuple[int, ...] = SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1-voxel-thick plates across ``axis``, ``k`` voxels apart, same in-plane extent.

    Every surface voxel of one plate has its nearest neighbour on the other straight across,
    so all surface distances, hence HD95 and HD100, are ``k * spacing[axis]`` exactly.
    """
    inner = [slice(3, n - 3) for n in shape]
    a, b = list(inner), list(inner)
    a[axis], b[axis] = slice(2, 3), slice(2 + k, 3 + k)
    return _box(shape, tuple(b)), _box(shape, tuple(a))  # (pred, label)


def _hd(handler: HausdorffDistanceMM, y_pred: object, y: object) -> float:
    handler.reset()
    handler.update((y_pred, y))
    return float(handler.metric_fn.aggregate())


# ----------------------------------------------------------------------------- Dice
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_dice_of_a_shifted_box_is_overlap_over_length(axis: int, k: int) -> None:
    """A box of length L = 10 along ``axis`` shifted by k voxels: Dice = (L - k) / L."""
    shape, length = (18, 15, 16), 10  # room for the shifted box on every axis
    a = [slice(1, 6), slice(2, 9), slice(1, 12)]
    b = list(a)
    a[axis], b[axis] = slice(1, 1 + length), slice(1 + k, 1 + k + length)
    label, pred = _box(shape, tuple(a)), _box(shape, tuple(b))
    dice = DiceMetric(include_background=False)
    dice(pred[None], label[None])
    assert float(dice.aggregate()) == pytest.approx((length - k) / length, abs=1e-6)


# ----------------------------------------------------------------------------- HD95 in mm
@pytest.mark.parametrize("orientation", list(ROTATIONS))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_of_plates_apart_in_z_is_k_slices_in_mm(orientation: str, k: int) -> None:
    pred, label = _plates(axis=2, k=k)
    affine = _affine(SPACING, ROTATIONS[orientation])
    y_pred, y = [MetaTensor(pred, affine=affine)], [MetaTensor(label, affine=affine)]
    expected = k * SPACING[2]
    assert _hd(HausdorffDistanceMM(), y_pred, y) == pytest.approx(expected, rel=1e-5)
    assert _hd(HausdorffDistanceMM(percentile=None), y_pred, y) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("orientation", list(ROTATIONS))
@pytest.mark.parametrize("k", [1, 3, 5])
def test_hd95_of_plates_apart_in_x_is_k_columns_in_mm(orientation: str, k: int) -> None:
    pred, label = _plates(axis=0, k=k)
    affine = _affine(SPACING, ROTATIONS[orientation])
    y_pred, y = [MetaTensor(pred, affine=affine)], [MetaTensor(label, affine=affine)]
    assert _hd(HausdorffDistanceMM(), y_pred, y) == pytest.approx(k * SPACING[0], rel=1e-5)


def test_spacing_comes_from_the_label_then_from_the_prediction() -> None:
    pred, label = _plates(axis=2, k=2)
    label_affine, pred_affine = _affine((1.0, 1.0, 2.5)), _affine(SPACING)
    both = _hd(
        HausdorffDistanceMM(),
        [MetaTensor(pred, affine=pred_affine)],
        [MetaTensor(label, affine=label_affine)],
    )
    assert both == pytest.approx(2 * 2.5, rel=1e-5)  # the label's affine wins
    pred_only = _hd(HausdorffDistanceMM(), [MetaTensor(pred, affine=pred_affine)], [label])
    assert pred_only == pytest.approx(2 * 3.0, rel=1e-5)


# ----------------------------------------------------------------------------- sphere
def _sphere(center_mm: np.ndarray, shape: tuple[int, ...], radius_mm: float = 6.0) -> torch.Tensor:
    """One-hot ball of ``radius_mm`` around ``center_mm``, rasterised at voxel centres."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    inside = (((grid * np.asarray(SPACING)) - center_mm) ** 2).sum(-1) <= radius_mm**2
    return _one_hot(torch.from_numpy(inside))


@pytest.mark.parametrize(
    "shift_mm",
    [(2.1, -1.8, 12.0), (1.5, -2.3, 10.0), (-2.8, 1.8, -9.0)],
    ids=["whole-voxels", "sub-voxel", "mixed-sign"],
)
def test_hd_of_a_shifted_sphere_is_the_shift_in_mm(shift_mm: tuple[float, ...]) -> None:
    """HD100 within one voxel diagonal of |shift| (rasterisation), and HD95 <= HD100.

    Each shift is chosen so that a handler ignoring the spacing fails: e.g. the first is
    (3, -2, 4) voxels, length 5.4, against 12.3 mm, off by more than the 3.2 mm tolerance.
    """
    shape, center = (48, 40, 24), np.array([14.0, 16.0, 33.0])
    label, pred = _sphere(center, shape), _sphere(center + np.asarray(shift_mm), shape)
    affine = _affine(SPACING, LPS)
    y_pred, y = [MetaTensor(pred, affine=affine)], [MetaTensor(label, affine=affine)]
    hd100 = _hd(HausdorffDistanceMM(percentile=None), y_pred, y)
    hd95 = _hd(HausdorffDistanceMM(), y_pred, y)
    voxel_diagonal = math.hypot(*SPACING)
    assert abs(hd100 - math.hypot(*shift_mm)) <= voxel_diagonal
    assert 0 < hd95 <= hd100


# ----------------------------------------------------------------------------- batches
CASES = [  # (spacing, plate axis, k, HD in mm)
    ((0.7, 0.9, 3.0), 2, 2, 6.0),
    ((1.0, 1.0, 1.5), 2, 2, 3.0),
    ((0.5, 0.5, 5.0), 0, 3, 1.5),
]


def _case_tensors() -> tuple[list[MetaTensor], list[MetaTensor]]:
    preds, labels = [], []
    for spacing, axis, k, _ in CASES:
        pred, label = _plates(axis, k)
        preds.append(MetaTensor(pred, affine=_affine(spacing)))
        labels.append(MetaTensor(label, affine=_affine(spacing)))
    return preds, labels


def test_engine_with_decollated_cases_of_different_spacings() -> None:
    """One iteration with three cases (ignite hands each case to its own update, as for MONAI's
    handlers): one detail row each, at its own spacing, and their mean as the value."""
    preds, labels = _case_tensors()
    handler = HausdorffDistanceMM(output_transform=from_engine(["pred", "label"]))
    calls = []
    original_update = handler.update

    def counting_update(output: object) -> None:
        calls.append(len(output[0]))
        original_update(output)

    handler.update = counting_update  # type: ignore[method-assign]
    engine = Engine(
        lambda e, b: [{"pred": p, "label": t} for p, t in zip(preds, labels, strict=True)]
    )
    handler.attach(engine, "val_hd95")
    engine.run([0], max_epochs=1)

    expected = [hd for *_, hd in CASES]
    assert sum(calls) == len(CASES)  # every case went through an update, none twice
    assert engine.state.metrics["val_hd95"] == pytest.approx(np.mean(expected), rel=1e-5)
    details = engine.state.metric_details["val_hd95"]
    assert tuple(details.shape) == (len(CASES), 1)  # one row per case, one tumour channel
    assert details[:, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_batch_first_metatensor_with_one_or_per_case_affines() -> None:
    preds, labels = _case_tensors()
    per_case = torch.stack([a.affine for a in labels])  # (B, 4, 4), as MONAI's collate makes
    pred_batch = MetaTensor(torch.stack([p.as_tensor() for p in preds]), affine=per_case)
    label_batch = MetaTensor(torch.stack([t.as_tensor() for t in labels]), affine=per_case)
    handler = HausdorffDistanceMM(reduction="none")
    handler.update((pred_batch, label_batch))
    expected = [hd for *_, hd in CASES]
    assert handler.metric_fn.aggregate()[:, 0].tolist() == pytest.approx(expected, rel=1e-5)

    one = _affine(SPACING)  # (4, 4): the same spacing for every case
    handler.reset()
    handler.update((MetaTensor(pred_batch.as_tensor(), affine=one), label_batch.as_tensor()))
    at_one_spacing = [k * SPACING[axis] for _, axis, k, _ in CASES]
    assert handler.metric_fn.aggregate()[:, 0].tolist() == pytest.approx(at_one_spacing, rel=1e-5)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("batch_first", [False, True])
def test_plain_tensors_raise_with_the_fix(batch_first: bool) -> None:
    pred, label = _plates(axis=2, k=1)
    output = (pred[None], label[None]) if batch_first else ([pred], [label])
    with pytest.raises(ValueError, match=r"MetaTensor with an affine.*LoadImaged"):
        HausdorffDistanceMM().update(output)


def test_batched_affine_of_the_wrong_length_raises() -> None:
    pred, label = _plates(axis=2, k=1)
    affines = torch.stack([_affine(SPACING)] * 3)
    batch = MetaTensor(torch.stack([label, label]), affine=affines)
    with pytest.raises(ValueError, match=r"\(4, 4\) or \(B, 4, 4\) with B = 2, got \(3, 4, 4\)"):
        HausdorffDistanceMM().update((torch.stack([pred, pred]), batch))
