"""Handlers that turn a plain MONAI evaluator into the synthesis validation (§3.3 of the paper).

The evaluator is a standard ``SupervisedEvaluator`` running the CT→MRI generator over CT
tumour-region slices (output ``pred`` = synthetic MRI, ``label`` = CT tumour mask). These
handlers add what the paper measures and shows:

- :class:`TumourKLHandler`: the pooled tumour-region KL divergence between synthetic and real
  MRI (recipe in :mod:`tumoraware.metrics.tumour_kl`), published in ``engine.state.metrics``;
- :class:`SynthesisGridHandler`: a PNG grid CT | synthetic MRI | reconstructed CT with the
  tumour contour, one per validation run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from tumoraware.atomic import write_json_atomic
from tumoraware.metrics import TumourKLMetric
from tumoraware.visualize import save_synthesis_grid

__all__ = ["SynthesisGridHandler", "TumourKLHandler"]

logger = logging.getLogger(__name__)


def _batch_items(output: Any, key: str) -> torch.Tensor:
    """``key`` of an evaluator output (a batch dict or a decollated list) as ``(B, C, H, W)``."""
    if isinstance(output, list):
        return torch.stack([torch.as_tensor(item[key]) for item in output])
    return torch.as_tensor(output[key])


def _radiological(slices: torch.Tensor) -> torch.Tensor:
    """RAS slices ``(N, C, x, y)`` (after ``Orientationd("RAS")``) to display order ``(N, C, y, x)``
    with the patient's right on the viewer's left and anterior up (radiological convention)."""
    return slices.flip(-2, -1).transpose(-2, -1)


class TumourKLHandler:
    """Pool synthetic tumour intensities per iteration; real ones once per run; publish KL.

    Args:
        real_loader: batches of real MRI tumour-region slices with expert masks (dicts with
            ``real_image_key`` ``(B, 1, H, W)`` in [-1, 1] and ``real_mask_key``).
        prefix: metric names are ``{prefix}kl``, ``{prefix}kl_reverse``, ``{prefix}js``.
        output_json: also write the metrics (and voxel counts) to this file after each run.
        bins, eps: histogram bins over [-1, 1] and smoothing (see the recipe).
    """

    def __init__(
        self,
        real_loader: Iterable[dict[str, Any]],
        synthetic_key: str = "pred",
        mask_key: str = "label",
        real_image_key: str = "image",
        real_mask_key: str = "label",
        prefix: str = "tumour_",
        output_json: str | os.PathLike | None = None,
        bins: int = 64,
        eps: float = 1e-6,
    ) -> None:
        self.real_loader = real_loader
        self.synthetic_key, self.mask_key = synthetic_key, mask_key
        self.real_image_key, self.real_mask_key = real_image_key, real_mask_key
        self.prefix = prefix
        self.output_json = Path(output_json) if output_json else None
        self.metric = TumourKLMetric(bins=bins, eps=eps)
        self._real_counts: torch.Tensor | None = None  # the real side never changes: pool it once

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self.metric.reset()
        if self._real_counts is None:
            for batch in self.real_loader:
                self.metric.update_real(batch[self.real_image_key], batch[self.real_mask_key])
            self._real_counts = self.metric.real_counts.clone()
        self.metric.real_counts = self._real_counts.clone()

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        self.metric.update_synthetic(  # channel 0: the image (the masked baseline adds a mask)
            _batch_items(output, self.synthetic_key)[:, :1].detach().float().cpu(),
            _batch_items(output, self.mask_key)[:, :1].detach().cpu(),
        )

    def completed(self, engine: Engine) -> None:
        result = self.metric.aggregate()
        metrics = {
            f"{self.prefix}kl": result["kl_real_synth"],
            f"{self.prefix}kl_reverse": result["kl_synth_real"],
            f"{self.prefix}js": result["js"],
        }
        engine.state.metrics.update(metrics)
        logger.info("tumour-region divergences: %s", json.dumps(metrics))
        if self.output_json is not None:
            write_json_atomic(self.output_json, {**metrics, **result, "epoch": engine.state.epoch})


class SynthesisGridHandler:
    """Save CT | synthetic MRI | reconstructed CT for the first ``n_cases`` tumour slices.

    Args:
        g_mri2ct: the MRI→CT generator (reconstructs CT from the synthetic MRI).
        output_dir: where ``synthesis_epoch{epoch:04d}.png`` is written (atomic).
        image_key, pred_key, label_key: evaluator output keys of CT, synthetic MRI and mask.
    """

    def __init__(
        self,
        g_mri2ct: torch.nn.Module,
        output_dir: str | os.PathLike,
        n_cases: int = 4,
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        self.g_mri2ct = g_mri2ct
        self.output_dir = Path(output_dir)
        self.n_cases = n_cases
        self.keys = (image_key, pred_key, label_key)
        self.cases: list[tuple[torch.Tensor, ...]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def collect(self, engine: Engine) -> None:
        if len(self.cases) >= self.n_cases:
            return
        image, pred, label = (_batch_items(engine.state.output, k) for k in self.keys)
        for i in range(image.shape[0]):
            if label[i].sum() > 0 and len(self.cases) < self.n_cases:
                self.cases.append((image[i, :1], pred[i, :1], label[i, :1]))

    @torch.no_grad()
    def save(self, engine: Engine) -> Path | None:
        if not self.cases:
            return None
        ct, fake, label = (torch.stack(parts).float() for parts in zip(*self.cases, strict=True))
        device = next(self.g_mri2ct.parameters()).device
        generator_input = fake.to(device)
        network = getattr(self.g_mri2ct, "module", self.g_mri2ct)  # unwrap DDP
        channels = getattr(network, "in_channels", generator_input.shape[1])
        if channels == 2:  # masked baseline: the MRI side carries a "no tumour" mask channel
            generator_input = torch.cat([generator_input, -torch.ones_like(generator_input)], 1)
        was_training = self.g_mri2ct.training
        self.g_mri2ct.eval()
        reconstructed = self.g_mri2ct(generator_input)[:, :1].cpu()
        self.g_mri2ct.train(was_training)
        path = self.output_dir / f"synthesis_epoch{engine.state.epoch:04d}.png"
        shown = (_radiological(t) for t in (ct, fake, reconstructed, label))
        return save_synthesis_grid(path, *shown)
