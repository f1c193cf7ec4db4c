"""Hausdorff distance (HD95 by default) in millimetres, as an ignite / MONAI evaluator handler.

Written by hand because MONAI's handler :class:`monai.handlers.HausdorffDistance` drops the
voxel spacing: its ``update`` calls ``metric_fn(y_pred, y)`` only, so
:class:`monai.metrics.HausdorffDistanceMetric` measures in voxels. On our anisotropic CT / MRI
grids (e.g. 0.7 x 0.9 x 3.0 mm) a voxel count is not a distance, and HD95 in voxels is not
comparable between scans or with the paper's millimetres.

The only thing added here is the spacing: for each case it is read from the affine of the
label's MetaTensor (the prediction's when the label has none) with
:func:`monai.data.utils.affine_to_spacing` (column norms of the affine, so flipped, permuted and
rotated orientations such as LPS give the right spacing), and the metric is called once per
case with that spacing. Once per case because the metric, given a list, would pass one spacing
to all the cases of the list. Everything else (edges, distance transform, percentile,
reduction, ``engine.state.metric_details``) is MONAI's metric and handler unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.metrics import HausdorffDistanceMetric
from monai.utils import MetricReduction

__all__ = ["HausdorffDistanceMM"]

_FIX = (
    "Fix: load the images and labels with monai.transforms.LoadImaged and keep them MetaTensors "
    "through the post-transforms (monai.data.set_track_meta(True), the default), or wrap them "
    "yourself as monai.data.MetaTensor(x, affine=affine) with the affine of the image."
)


def _cases(x: Any, name: str) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(channel-first tensor (C, *spatial), affine (4, 4) or None)`` for every case of ``x``.

    ``x`` is a list of channel-first ``(C, *spatial)`` tensors (a decollated batch) or one
    batch-first ``(B, C, *spatial)`` tensor, whose MetaTensor affine may be ``(4, 4)`` (one for
    all cases) or ``(B, 4, 4)`` (a collated batch).
    """
    if isinstance(x, (list, tuple)):
        out = []
        for i, item in enumerate(x):
            if isinstance(item, np.ndarray):
                item = torch.as_tensor(item)
            if not isinstance(item, torch.Tensor) or item.ndim < 2:
                raise ValueError(
                    f"HausdorffDistanceMM: expected {name}[{i}] to be a channel-first tensor "
                    f"(C, *spatial), got {type(item).__name__} of shape "
                    f"{tuple(getattr(item, 'shape', ()))}. Fix: pass one-hot (C, H, W[, D]) "
                    "tensors, e.g. from monai.handlers.from_engine(['pred', 'label'])."
                )
            affine = item.affine if isinstance(item, MetaTensor) else None
            out.append((item.as_subclass(torch.Tensor), affine))
        return out
    if isinstance(x, np.ndarray):
        x = torch.as_tensor(x)
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        raise ValueError(
            f"HausdorffDistanceMM: expected {name} to be a batch-first tensor (B, C, *spatial) or "
            f"a list of channel-first tensors, got {type(x).__name__} of shape "
            f"{tuple(getattr(x, 'shape', ()))}. Fix: pass one-hot batches (B, C, H, W[, D]) or "
            "decollated lists, e.g. from monai.handlers.from_engine(['pred', 'label'])."
        )
    batch = len(x)
    affines: list[torch.Tensor | None] = [None] * batch
    if isinstance(x, MetaTensor):
        affine = x.affine
        if affine.ndim == 2:
            affines = [affine] * batch
        elif affine.ndim == 3 and affine.shape[0] == batch:
            affines = list(affine)
        else:
            raise ValueError(
                f"HausdorffDistanceMM: expected the affine of {name} to be (4, 4) or (B, 4, 4) "
                f"with B = {batch}, got {tuple(affine.shape)}. Fix: collate the batch with "
                "MONAI's collate (list_data_collate) or pass a decollated list of cases."
            )
    plain = x.as_subclass(torch.Tensor)
    return [(plain[i], affines[i]) for i in range(batch)]


class HausdorffDistanceMM(IgniteMetricHandler):
    """Hausdorff distance in mm (HD95 by default): MONAI's handler plus the voxel spacing.

    ``update`` takes ``(y_pred, y)`` (after ``output_transform``): binarised one-hot
    predictions and labels, each a list of channel-first ``(C, H, W[, D])`` tensors (a
    decollated batch, e.g. ``monai.handlers.from_engine(["pred", "label"])``) or a batch-first
    ``(B, C, H, W[, D])`` tensor. ``y`` (or else ``y_pred``) must be a MetaTensor whose affine
    (``(4, 4)``, or ``(B, 4, 4)`` for a collated batch) gives each case's spacing in mm.

    Args:
        include_background: also measure channel 0. Default ``False``.
        percentile: percentile of the surface distances (95 for HD95), ``None`` for the maximum
            (classic Hausdorff distance). Default 95.
        directed: directed (``y_pred`` to ``y``) instead of symmetric distance. Default ``False``.
        reduction: MONAI reduction over cases and channels. Default ``"mean"``.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
        save_details: keep the per-case ``(cases, channels)`` distances in
            ``engine.state.metric_details[name]``. Default ``True``.

    Raises:
        ValueError: in ``update``, when neither ``y`` nor ``y_pred`` of a case is a MetaTensor
            with an affine (the spacing is unknown), or the inputs are not shaped as above.
    """

    def __init__(
        self,
        include_background: bool = False,
        percentile: float | None = 95.0,
        directed: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = HausdorffDistanceMetric(
            include_background=include_background,
            distance_metric="euclidean",
            percentile=percentile,
            directed=directed,
            reduction=reduction,
        )
        super().__init__(
            metric_fn=metric_fn, output_transform=output_transform, save_details=save_details
        )

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add the distances of every case of ``(y_pred, y)``, each at its own spacing."""
        if not isinstance(output, Sequence) or len(output) != 2:
            got = f"length {len(output)}" if isinstance(output, Sequence) else type(output).__name__
            raise ValueError(
                f"HausdorffDistanceMM: expected output (y_pred, y), got {got}. Fix: set "
                "output_transform=monai.handlers.from_engine(['pred', 'label'])."
            )
        preds, labels = _cases(output[0], "y_pred"), _cases(output[1], "y")
        if len(preds) != len(labels):
            raise ValueError(
                f"HausdorffDistanceMM: expected as many predictions as labels, got {len(preds)} "
                f"and {len(labels)}. Fix: pass matching (y_pred, y) cases."
            )
        for i, ((p, p_affine), (t, t_affine)) in enumerate(zip(preds, labels, strict=True)):
            affine = t_affine if t_affine is not None else p_affine
            if affine is None:
                raise ValueError(
                    f"HausdorffDistanceMM: expected y or y_pred of case {i} to be a MetaTensor "
                    "with an affine (the voxel spacing in mm comes from it), got plain "
                    f"tensors or arrays for both, whose distance would be in voxels. {_FIX}"
                )
            spacing = affine_to_spacing(affine, r=p.ndim - 1)
            self.metric_fn(p[None], t[None], spacing=[[float(s) for s in spacing]])
