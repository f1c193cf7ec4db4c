"""Does a tumour network read the image, or only where the tumour usually sits in the crop?

Synthesis training shows U_CT and U_MRI tumour-region crops (paper §3.2: "Image regions enclosing
the tumors were extracted"), so the tumour always sits near the crop centre. A network can
satisfy the tumour loss (eq. 3) by painting the centre whatever the image holds, and then the loss
gives G no reason to keep the tumour. Two probes expose that *position prior*:

- **constant images** (every pixel one grey level): nothing to read, so a network that reads
  content gives one probability everywhere; a centre-prior network paints the centre;
- **rolled crops**: real crops circularly shifted by half their size, which moves the tumour to
  the corners and puts tumour-free anatomy at the centre.

On each probe the *centre excess* is the mean tumour probability over tumour-free pixels of the
central disc minus that over tumour-free pixels of the outer ring. A network leaks position when
an excess exceeds ``tolerance``. Also here: Dice at p = 0.5 and ROC AUC of a network on labelled
crops (AUC from :func:`monai.metrics.compute_roc_auc`), to tell "cannot find the tumour" from
"finds it but is under-confident".

The probe design is written by hand; no library tests a segmenter for a positional prior.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.metrics import compute_dice, compute_roc_auc

__all__ = ["CONSTANT_LEVELS", "centre_excess", "position_probes", "segmentation_quality"]

CONSTANT_LEVELS = (-1.0, -0.5, 0.0, 0.5, 1.0)
"""Grey levels of the constant probe images (inputs live on [-1, 1])."""


def _rings(height: int, width: int, centre_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(H, W)`` masks: the central disc (radius ``centre_fraction`` x half the shorter
    side) and the outer ring (beyond 0.75 x half the shorter side)."""
    rows = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    radius = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)
    half = min(height, width) / 2
    return radius <= centre_fraction * half, radius >= 0.75 * half


def centre_excess(
    probabilities: torch.Tensor, mask: torch.Tensor | None = None, centre_fraction: float = 0.25
) -> dict[str, float]:
    """Mean p over the tumour-free centre disc minus mean p over the tumour-free outer ring.

    Args:
        probabilities: tumour probabilities ``(N, 1, H, W)``.
        mask: tumour labels ``(N, 1, H, W)`` (pixels > 0 are left out), or ``None``.
        centre_fraction: radius of the centre disc as a fraction of half the shorter side.

    Returns:
        ``{"centre_p", "border_p", "excess"}`` (``nan`` when a region has no tumour-free pixel).
    """
    if probabilities.ndim != 4 or probabilities.shape[1] != 1:
        raise ValueError(
            f"centre_excess: expected probabilities (N, 1, H, W), got {tuple(probabilities.shape)}."
        )
    centre, border = _rings(*probabilities.shape[-2:], centre_fraction)
    free = torch.ones_like(probabilities, dtype=torch.bool) if mask is None else mask <= 0
    p = probabilities.float()

    def mean_over(region: torch.Tensor) -> float:
        keep = free & region.to(free.device)
        return float(p[keep].mean()) if keep.any() else float("nan")

    centre_p, border_p = mean_over(centre), mean_over(border)
    return {"centre_p": centre_p, "border_p": border_p, "excess": centre_p - border_p}


@torch.no_grad()
def position_probes(
    network: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    levels: Sequence[float] = CONSTANT_LEVELS,
    centre_fraction: float = 0.25,
) -> dict[str, dict[str, float]]:
    """The constant and the rolled probe of one tumour network.

    Args:
        network: maps images ``(N, 1, H, W)`` to tumour logits ``(N, 1, H, W)``.
        images: real crops of the network's domain ``(N, 1, H, W)`` on [-1, 1].
        labels: their tumour labels ``(N, 1, H, W)``.
        levels: grey levels of the constant images.
        centre_fraction: see :func:`centre_excess`.

    Returns:
        ``{"constant": centre_excess(...), "rolled": centre_excess(...)}``.
    """
    height, width = images.shape[-2:]
    constant = torch.stack([torch.full((1, height, width), float(v)) for v in levels])
    constant = constant.to(images.device, images.dtype)
    shift = (height // 2, width // 2)
    rolled = torch.roll(images, shifts=shift, dims=(-2, -1))
    rolled_labels = torch.roll(labels, shifts=shift, dims=(-2, -1))
    return {
        "constant": centre_excess(torch.sigmoid(network(constant)), None, centre_fraction),
        "rolled": centre_excess(torch.sigmoid(network(rolled)), rolled_labels, centre_fraction),
    }


@torch.no_grad()
def segmentation_quality(
    network: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Dice at p = 0.5 (pooled over all pixels), ROC AUC, mean p inside and outside the tumour.

    Args:
        network: maps ``(N, 1, H, W)`` images to tumour logits ``(N, 1, H, W)``.
        images: ``(N, 1, H, W)``; labels: ``(N, 1, H, W)`` binary.
    """
    p = torch.sigmoid(network(images)).float().cpu()
    truth = (labels > 0).float().cpu()
    pooled = compute_dice((p > 0.5).float().reshape(1, 1, -1), truth.reshape(1, 1, -1))
    has_both = 0 < truth.sum() < truth.numel()
    auc = compute_roc_auc(p.flatten(), truth.flatten()) if has_both else float("nan")
    inside = float(p[truth > 0].mean()) if truth.any() else float("nan")
    outside = float(p[truth == 0].mean()) if (truth == 0).any() else float("nan")
    return {"dice": float(pooled), "auc": float(auc), "p_tumour": inside, "p_background": outside}
