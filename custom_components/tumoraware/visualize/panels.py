"""One case's Fig. 4 slice (:class:`CasePanel`): cut from a volume, saved, loaded and drawn.

The segmentation report (:class:`~tumoraware.handlers.SegmentationPanelWriter`) cuts a panel
per evaluated case and saves it as ``.npz``; the study report loads the panels of every method
and puts them side by side (:func:`tumoraware.pipeline.figures.write_fig4`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice

from tumoraware.atomic import atomic_path
from tumoraware.visualize.display import largest_area_slice, pad_stack, reorient_pls
from tumoraware.visualize.grids import save_contour_grid

__all__ = [
    "CasePanel",
    "extract_case_panel",
    "load_case_panel",
    "save_case_panel",
    "save_panel_grid",
]

COLORS = {"expert": "red", "prediction": "yellow"}
COLUMN_TITLES = ("MRI", "MRI + contours")


@dataclass(frozen=True)
class CasePanel:
    """One case's Fig. 4 slice: 2D arrays ``(P, L)`` (anterior up, patient right on the left)."""

    case: str
    image: np.ndarray  # (P, L) float32 on [-1, 1]
    expert: np.ndarray  # (P, L) bool
    prediction: np.ndarray  # (P, L) bool
    slice_index: int  # axial index k in PLS orientation (counted from inferior)
    n_slices: int
    slice_source: str  # "expert", "prediction" (no expert tumour) or "none"
    dice: float  # 3D Dice of the whole case; NaN when the expert mask is empty

    @property
    def title(self) -> str:
        line = f"axial {self.slice_index}/{self.n_slices - 1}"
        if self.slice_source == "expert":
            return f"{self.case}\n{line}, DSC {self.dice:.2f}"
        return f"{self.case}\n{line}, no expert tumour"


def _tumour_channel(x: Any, name: str) -> torch.Tensor:
    """The tumour mask ``(1, H, W, D)`` uint8 of a one-hot ``(C>=2, ...)`` or binary ``(1, ...)``
    volume (channel 1, or channel 0 above 0.5), keeping the MetaTensor's affine."""
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if x.ndim != 4:
        raise ValueError(
            f"{name}: expected a channel-first 3D volume (C, H, W, D), got shape "
            f"{tuple(x.shape)}. Fix: evaluate whole volumes, not 2D slices."
        )
    channel = x[1:2] if x.shape[0] >= 2 else x[0:1]
    return (channel.detach().cpu() > 0.5).to(torch.uint8)


def _dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    """3D Dice of two ``(1, H, W, D)`` masks by MONAI's ``compute_dice``; NaN for an empty
    label (``ignore_empty``)."""
    p, g = (torch.as_tensor(x).float()[None] for x in (pred, label))
    return float(compute_dice(p, g, include_background=True, ignore_empty=True)[0, 0])


def extract_case_panel(
    image: Any, pred: Any, label: Any, case: str = "", *, use_prediction: bool = True
) -> CasePanel:
    """Reorient one case to PLS and keep the axial slice with the largest expert tumour.

    Args:
        image: MRI ``(1, H, W, D)`` MetaTensor (channel 0 is shown).
        pred: prediction ``(2, H, W, D)`` one-hot (or ``(1, H, W, D)`` binary).
        label: expert label, same layout as ``pred``.
        case: the case name for the title.
        use_prediction: when the expert mask is empty, take the slice with the largest
            predicted tumour (True, the default) or the middle slice (False: the slice then
            depends on the label only, the same for every method evaluated on the case).

    Returns:
        A :class:`CasePanel` holding only 2D ``(P, L)`` arrays.

    Raises:
        ValueError: volumes that are not ``(C, H, W, D)`` or do not share one grid after
            reorientation (e.g. a prediction left in the network's resampled space).
    """
    pred_mask = _tumour_channel(pred, "pred")
    label_mask = _tumour_channel(label, "label")
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(np.asarray(image))
    if image.ndim != 4:
        raise ValueError(
            f"image: expected a channel-first 3D volume (C, H, W, D), got shape "
            f"{tuple(image.shape)}. Fix: evaluate whole volumes, not 2D slices."
        )
    volumes = {
        "image": reorient_pls(image[0:1].float()),
        "pred": reorient_pls(pred_mask),
        "label": reorient_pls(label_mask),
    }
    shapes = {k: tuple(v.shape[1:]) for k, v in volumes.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"{case or 'case'}: expected image, pred and label on one grid, got PLS shapes "
            f"{shapes}. Fix: invert the preprocessing (Invertd) so pred and label are in the "
            "image file's geometry."
        )
    label_pls, pred_pls = volumes["label"][0], volumes["pred"][0]
    k, source = largest_area_slice(label_pls, pred_pls if use_prediction else None)
    return CasePanel(
        case=case,
        image=np.asarray(volumes["image"][0, :, :, k].as_tensor(), dtype=np.float32),
        expert=np.asarray(label_pls[:, :, k].as_tensor()) > 0,
        prediction=np.asarray(pred_pls[:, :, k].as_tensor()) > 0,
        slice_index=k,
        n_slices=int(label_pls.shape[-1]),
        slice_source=source,
        dice=_dice(pred_mask, label_mask),
    )


_PANEL_FIELDS = ("image", "expert", "prediction", "slice_index", "n_slices", "slice_source", "dice")


def save_case_panel(path: str | os.PathLike, panel: CasePanel) -> Path:
    """Save one case's slice arrays (``image``, ``expert``, ``prediction`` ``(P, L)``, the slice
    index and source, the 3D Dice) as a compressed ``.npz``, atomically; returns ``Path(path)``.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"path: expected a .npz file, got {str(path)!r}")
    fields = {name: np.asarray(getattr(panel, name)) for name in _PANEL_FIELDS}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, case=np.asarray(panel.case), **fields)
    return path


def load_case_panel(path: str | os.PathLike) -> CasePanel:
    """The :class:`CasePanel` that :func:`save_case_panel` wrote to ``path``."""
    with np.load(Path(path), allow_pickle=False) as data:
        missing = [k for k in ("case", *_PANEL_FIELDS) if k not in data.files]
        if missing:
            raise ValueError(
                f"{path}: expected the arrays of a case panel, missing {missing}. Fix: "
                "re-run the evaluation that wrote it."
            )
        return CasePanel(
            case=str(data["case"]),
            image=np.asarray(data["image"], dtype=np.float32),
            expert=np.asarray(data["expert"], dtype=bool),
            prediction=np.asarray(data["prediction"], dtype=bool),
            slice_index=int(data["slice_index"]),
            n_slices=int(data["n_slices"]),
            slice_source=str(data["slice_source"]),
            dice=float(data["dice"]),
        )


def save_panel_grid(path: str | os.PathLike, panels: Sequence[CasePanel]) -> Path:
    """One row per panel: MRI | MRI + contours (expert red, prediction yellow).

    Slices of different sizes are centred on the largest (padding black, no tumour).
    """
    image = pad_stack([p.image for p in panels], -1.0)[:, None]  # (N, 1, H, W)
    masks = {}
    for name in ("expert", "prediction"):
        shown = pad_stack([getattr(p, name) for p in panels], False)[:, None]
        masks[name] = np.concatenate([np.zeros_like(shown), shown], axis=1)  # (N, 2, H, W)
    return save_contour_grid(
        path,
        [image, image],
        masks,
        COLORS,
        column_titles=COLUMN_TITLES,
        row_titles=[p.title for p in panels],
    )
