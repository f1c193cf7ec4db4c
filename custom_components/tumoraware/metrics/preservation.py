"""Tumour-preservation score: does an independent reader still find the CT tumour in G(CT)?

The paper's claim (Jiang et al., MICCAI 2018, §2.1, Fig. 1) is that the tumour-aware loss makes
G_CT→MRI *keep* tumours. The tumour KL (§3.3) compares intensity histograms inside the CT mask and
cannot tell a kept tumour from a bright smear in the right place; the segmentation DSC of Table 1
mixes synthesis with segmentation training. The preservation score asks the question directly:
a *reader*, a segmenter trained only on real labelled MRI (never on synthetic images, never
co-trained with G), reads the synthetic MRI of labelled CT, and its prediction is scored against
the CT label.

Per case (one synthetic volume, or a real MRI volume for the reader's own ceiling):

- ``dice``: 3D Dice of the reader's prediction against the label;
- ``tumours`` / ``detected``: 3D connected components of the label, and how many of them the
  prediction covers by at least ``detection_coverage`` of their voxels;
- ``free_slices`` / ``false_slices``: slices without any label voxel, and how many of them hold a
  predicted voxel: a tumour the reader sees where the CT has none (the hallucination that Cohen
  et al., MICCAI 2018, warn about for CycleGAN-style translation);
- ``false_components``: 3D predicted components that touch no label voxel;
- ``tumour_voxels``, ``pred_voxels``.

Connected components are :func:`scipy.ndimage.label` (full connectivity); the counting around
them is written by hand because no library scores detection and per-slice hallucination this
way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, compute_dice
from scipy import ndimage

__all__ = [
    "PRESERVATION_FIELDS",
    "TumourPreservationMetric",
    "preservation_counts",
    "summarise_preservation",
]

PRESERVATION_FIELDS = (
    "dice",
    "tumours",
    "detected",
    "free_slices",
    "false_slices",
    "false_components",
    "tumour_voxels",
    "pred_voxels",
)
"""Columns of one case's scores, in the order :class:`TumourPreservationMetric` buffers them."""


def _binary(x: Any, name: str) -> np.ndarray:
    """A 3D bool array ``(H, W, D)`` from ``(H, W, D)``, ``(1, H, W, D)`` or one-hot ``(C, ...)``
    (the last channel is the tumour)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 4:
        arr = arr[-1]
    if arr.ndim != 3:
        raise ValueError(
            f"tumour preservation: expected {name} of shape (H, W, D), (1, H, W, D) or one-hot "
            f"(C, H, W, D), got {arr.shape}. Fix: pass one case's channel-first volume."
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"tumour preservation: {name} holds NaN or inf values.")
    return arr > 0.5


def preservation_counts(
    pred: Any, label: Any, detection_coverage: float = 0.1, source: str = "case"
) -> dict[str, float]:
    """The preservation scores of one case (see the module docstring for each field).

    Args:
        pred: the reader's binary prediction, ``(H, W, D)``, ``(1, H, W, D)`` or one-hot
            ``(2, H, W, D)``; ``D`` is the slice axis.
        label: the CT (or real MRI) tumour label, same shape rules and the same grid.
        detection_coverage: share of a label component's voxels the prediction must cover for
            the tumour to count as detected, in ``(0, 1]``.
        source: the case's name, for error messages.

    Returns:
        ``{field: value}`` for every field of :data:`PRESERVATION_FIELDS`.

    Raises:
        ValueError: shapes differ, an input is not 3D, holds NaN, or the label is empty (there
            is no tumour to preserve).
    """
    if not 0.0 < detection_coverage <= 1.0:
        raise ValueError(f"detection_coverage must lie in (0, 1], got {detection_coverage}.")
    p, t = _binary(pred, "pred"), _binary(label, "label")
    if p.shape != t.shape:
        raise ValueError(
            f"tumour preservation ({source}): prediction {p.shape} and label {t.shape} are not on "
            "one grid. Fix: score the prediction on the label's grid (invert the crop first)."
        )
    n_label, n_pred = int(t.sum()), int(p.sum())
    if n_label == 0:
        raise ValueError(
            f"tumour preservation ({source}): empty label, there is no tumour to preserve. Fix: "
            "score only labelled cases with at least one tumour voxel."
        )
    dice = compute_dice(torch.as_tensor(p)[None, None], torch.as_tensor(t)[None, None])
    components, n_tumours = ndimage.label(t, structure=np.ones((3, 3, 3), bool))
    covered = ndimage.sum_labels(p, components, index=np.arange(1, n_tumours + 1))
    sizes = ndimage.sum_labels(t, components, index=np.arange(1, n_tumours + 1))
    detected = int(np.sum(np.asarray(covered) >= detection_coverage * np.asarray(sizes)))
    free = ~t.any(axis=(0, 1))
    false_slices = int(np.sum(free & p.any(axis=(0, 1))))
    pred_components, n_pred_components = ndimage.label(p, structure=np.ones((3, 3, 3), bool))
    touching = np.unique(pred_components[t & p])
    false_components = n_pred_components - int(np.count_nonzero(touching))
    return {
        "dice": float(dice),
        "tumours": float(n_tumours),
        "detected": float(detected),
        "free_slices": float(free.sum()),
        "false_slices": float(false_slices),
        "false_components": float(false_components),
        "tumour_voxels": float(n_label),
        "pred_voxels": float(n_pred),
    }


def summarise_preservation(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Pool per-case counts: mean Dice, detection rate, false-tumour rate.

    ``detection_rate`` = detected / tumours over all cases; ``false_tumour_rate`` = slices with
    a false tumour / tumour-free slices over all cases (``nan`` when there are none);
    ``false_components_per_case`` = their mean; ``cases``.
    """
    if not rows:
        return {"cases": 0}

    def total(key: str) -> float:
        return float(sum(float(r[key]) for r in rows))

    free = total("free_slices")
    return {
        "cases": len(rows),
        "dice": float(np.mean([float(r["dice"]) for r in rows])),
        "dice_std": float(np.std([float(r["dice"]) for r in rows])),
        "detection_rate": total("detected") / max(total("tumours"), 1.0),
        "false_tumour_rate": total("false_slices") / free if free else float("nan"),
        "false_components_per_case": total("false_components") / len(rows),
    }


class TumourPreservationMetric(CumulativeIterationMetric):
    """MONAI cumulative metric: per-case :func:`preservation_counts`, pooled by ``aggregate``.

    Use as any MONAI metric: ``metric(y_pred=preds, y=labels)`` per batch (lists of
    channel-first ``(C, H, W, D)`` tensors or batch-first ``(B, C, H, W, D)``; binary, one-hot
    with the tumour in the last channel), then ``metric.aggregate()``.

    Args:
        detection_coverage: see :func:`preservation_counts`.

    Shapes:
        ``_compute_tensor``: ``(B, C, H, W, D)`` twice → ``(B, len(PRESERVATION_FIELDS))``.
        ``aggregate()``: a dict of :func:`summarise_preservation`.
    """

    def __init__(self, detection_coverage: float = 0.1) -> None:
        super().__init__()
        self.detection_coverage = float(detection_coverage)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("TumourPreservationMetric needs the label y.")
        rows = [
            [
                preservation_counts(p, t, self.detection_coverage, f"case {i}")[k]
                for k in PRESERVATION_FIELDS
            ]
            for i, (p, t) in enumerate(zip(y_pred, y, strict=True))
        ]
        return torch.tensor(rows, dtype=torch.float64)

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        buffer = self.get_buffer()
        if buffer is None or len(buffer) == 0:
            return summarise_preservation([])
        data = torch.as_tensor(buffer).reshape(-1, len(PRESERVATION_FIELDS)).tolist()
        return summarise_preservation(
            [dict(zip(PRESERVATION_FIELDS, r, strict=True)) for r in data]
        )
