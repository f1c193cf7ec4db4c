"""Handlers that turn a plain MONAI evaluator into the synthesis validation (§3.3 of the paper).

The evaluator is a standard ``SupervisedEvaluator`` running the CT→MRI generator over CT
tumour-region slices (output ``pred`` = synthetic MRI, ``label`` = CT tumour mask). These
handlers add what the paper measures and shows:

- :class:`TumourKLHandler`: the pooled tumour-region KL divergence between synthetic and real
  MRI (recipe in :mod:`tumoraware.metrics.tumour_kl`), published in ``engine.state.metrics``;
- :class:`SynthesisGridHandler`: a PNG grid CT | synthetic MRI | reconstructed CT with the
  tumour contour, one per validation run;
- :class:`TumourNetworkCheck`: the position-leak probes of U_CT and U_MRI and how well each
  segments CT, synthetic MRI and real MRI (:mod:`tumoraware.metrics.position_leak`).
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

from tumoraware.atomic import json_ready, write_json_atomic
from tumoraware.metrics import TumourKLMetric, kl_divergence, tumour_histogram
from tumoraware.metrics.position_leak import position_probes, segmentation_quality
from tumoraware.visualize.display import radiological
from tumoraware.visualize.grids import save_synthesis_grid

__all__ = ["SynthesisGridHandler", "TumourKLHandler", "TumourNetworkCheck"]

logger = logging.getLogger(__name__)


def _batch_items(output: Any, key: str) -> torch.Tensor:
    """``key`` of an evaluator output (a batch dict or a decollated list) as ``(B, C, H, W)``."""
    if isinstance(output, list):
        return torch.stack([torch.as_tensor(item[key]) for item in output])
    return torch.as_tensor(output[key])


def _case_ids(batch: Any, n: int, key: str) -> list[str]:
    """The ``key`` entry of each of the ``n`` items of a collated batch (``"unknown"`` if none)."""
    ids = batch.get(key) if isinstance(batch, dict) else None
    if isinstance(ids, (list, tuple)) and len(ids) == n:
        return [str(i) for i in ids]
    return ["unknown"] * n


class TumourKLHandler:
    """Pool synthetic tumour intensities per iteration; real ones once per run; publish KL.

    Args:
        real_loader: batches of real MRI tumour-region slices with expert masks (dicts with
            ``real_image_key`` ``(B, 1, H, W)`` in [-1, 1] and ``real_mask_key``).
        prefix: metric names are ``{prefix}kl``, ``{prefix}kl_reverse``, ``{prefix}js``.
        output_json: also write the metrics (and voxel counts) to this file after each run.
        bins, eps: histogram bins over [-1, 1] and smoothing (see the recipe).
        case_key: batch key naming each slice's case (patient); the JSON also holds each
            case's KL against the pooled real histogram (``per_case``; all slices count as
            ``"unknown"`` when the batch has no such key).
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
        case_key: str = "patient",
    ) -> None:
        self.real_loader = real_loader
        self.synthetic_key, self.mask_key = synthetic_key, mask_key
        self.real_image_key, self.real_mask_key = real_image_key, real_mask_key
        self.prefix = prefix
        self.output_json = Path(output_json) if output_json else None
        self.metric = TumourKLMetric(bins=bins, eps=eps)
        self.case_key = case_key
        self._case_counts: dict[str, torch.Tensor] = {}
        self._real_counts: torch.Tensor | None = None  # the real side never changes: pool it once

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self.metric.reset()
        self._case_counts = {}
        if self._real_counts is None:
            for batch in self.real_loader:
                self.metric.update_real(batch[self.real_image_key], batch[self.real_mask_key])
            self._real_counts = self.metric.real_counts.clone()
        self.metric.real_counts = self._real_counts.clone()

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        images = _batch_items(output, self.synthetic_key)[:, :1].detach().float().cpu()
        masks = _batch_items(output, self.mask_key)[:, :1].detach().cpu()
        self.metric.update_synthetic(images, masks)  # channel 0: the masked baseline adds a mask
        for i, case in enumerate(_case_ids(engine.state.batch, len(images), self.case_key)):
            counts = tumour_histogram(images[i : i + 1], masks[i : i + 1], self.metric.bins)
            self._case_counts[case] = self._case_counts.get(case, 0) + counts.cpu()

    def completed(self, engine: Engine) -> None:
        result = self.metric.aggregate()
        real = self.metric.real_counts
        result["per_case"] = {  # for paired comparisons of models case by case
            case: kl_divergence(real, counts, self.metric.eps)
            for case, counts in sorted(self._case_counts.items())
            if float(counts.sum()) > 0
        }
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
        shown = (radiological(t) for t in (ct, fake, reconstructed, label))
        return save_synthesis_grid(path, *shown)


class TumourNetworkCheck:
    """Probe U_CT and U_MRI for a position prior; measure how well each segments, per validation.

    Collects up to ``max_slices`` CT slices, their synthetic MRI and labels from the evaluator's
    output (the synthesis validation: ``image`` CT, ``pred`` G(CT), ``label``) and, once, as many
    labelled real MRI crops from ``real_loader``. At the end of each run it writes
    ``output_json``::

        {"u_ct":  {"on_ct": quality, "probes": {"constant": excess, "rolled": excess}},
         "u_mri": {"on_synthetic": quality, "on_real_mri": quality,
                   "probes": {"constant": excess, "rolled": excess}},
         "max_excess": float, "tolerance": float, "leak": bool}

    (``quality`` and ``excess`` as in :mod:`tumoraware.metrics.position_leak`), publishes
    ``u_position_excess`` and ``u_mri_real_dice`` in ``engine.state.metrics``, and logs an
    error naming the probe when a network paints the crop centre (``leak``); with
    ``fail_on_leak`` it raises instead.

    Args:
        tumour_nets: the tied U-Nets, ``tumour_nets(x, domain="ct"|"mri") -> (logits, φ)``.
        real_loader: labelled real MRI crops (dicts with ``image``, ``label`` ``(B, 1, H, W)``).
        output_json: where the results go (atomic), or ``None``.
        tolerance: largest centre excess (probability) that is not a leak.
        fail_on_leak: raise ``RuntimeError`` on a leak (for a strict evaluation).
        max_slices: slices kept per domain (memory bound).
    """

    def __init__(
        self,
        tumour_nets: torch.nn.Module,
        real_loader: Iterable[dict[str, Any]],
        output_json: str | os.PathLike | None = None,
        tolerance: float = 0.1,
        fail_on_leak: bool = False,
        max_slices: int = 256,
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        self.tumour_nets = tumour_nets
        self.real_loader = real_loader
        self.output_json = Path(output_json) if output_json else None
        self.tolerance = float(tolerance)
        self.fail_on_leak = bool(fail_on_leak)
        self.max_slices = int(max_slices)
        self.keys = (image_key, pred_key, label_key)
        self.slices: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._real: tuple[torch.Tensor, torch.Tensor] | None = None
        self.result: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.slices.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def collect(self, engine: Engine) -> None:
        room = self.max_slices - sum(len(s[0]) for s in self.slices)
        if room <= 0:
            return
        ct, synthetic, label = (_batch_items(engine.state.output, k)[:room, :1] for k in self.keys)
        self.slices.append((ct.detach().float().cpu(), synthetic.detach().float().cpu(),
                            label.detach().float().cpu()))  # fmt: skip

    def _real_mri(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._real is None:
            images, labels, count = [], [], 0
            for batch in self.real_loader:
                images.append(torch.as_tensor(batch["image"])[:, :1].float())
                labels.append(torch.as_tensor(batch["label"])[:, :1].float())
                count += len(images[-1])
                if count >= self.max_slices:
                    break
            self._real = (
                torch.cat(images)[: self.max_slices],
                torch.cat(labels)[: self.max_slices],
            )
        return self._real

    @torch.no_grad()
    def check(self, engine: Engine) -> dict[str, Any] | None:
        if not self.slices:
            return None
        nets = self.tumour_nets
        device = next(nets.parameters()).device
        was_training = nets.training
        nets.eval()
        try:

            def u_ct(x: torch.Tensor) -> torch.Tensor:
                return nets(x.to(device), domain="ct")[0].cpu()

            def u_mri(x: torch.Tensor) -> torch.Tensor:
                return nets(x.to(device), domain="mri")[0].cpu()

            ct, synthetic, label = (torch.cat(parts) for parts in zip(*self.slices, strict=True))
            real, real_label = self._real_mri()
            result: dict[str, Any] = {
                "u_ct": {
                    "on_ct": segmentation_quality(u_ct, ct, label),
                    "probes": position_probes(u_ct, ct, label),
                },
                "u_mri": {
                    "on_synthetic": segmentation_quality(u_mri, synthetic, label),
                    "on_real_mri": segmentation_quality(u_mri, real, real_label),
                    "probes": position_probes(u_mri, synthetic, label),
                },
            }
        finally:
            nets.train(was_training)
        excesses = {
            f"{net} {probe}": values["excess"]
            for net in ("u_ct", "u_mri")
            for probe, values in result[net]["probes"].items()
        }
        worst = max(excesses, key=lambda k: excesses[k] if excesses[k] == excesses[k] else -1)
        result.update(
            max_excess=excesses[worst], tolerance=self.tolerance,
            leak=bool(excesses[worst] > self.tolerance), epoch=engine.state.epoch,
        )  # fmt: skip
        engine.state.metrics["u_position_excess"] = excesses[worst]
        engine.state.metrics["u_mri_real_dice"] = result["u_mri"]["on_real_mri"]["dice"]
        if self.output_json is not None:
            write_json_atomic(self.output_json, json_ready(result))
        self.result = result
        if result["leak"]:
            message = (
                f"POSITION LEAK: {worst} paints the crop centre (centre p "
                f"{result[worst.split()[0]]['probes'][worst.split()[1]]['centre_p']:.2f}, excess "
                f"{excesses[worst]:.2f} > tolerance {self.tolerance:.2f}): the tumour networks "
                "learned where the tumour sits in the crop, not what it looks like, so the "
                "tumour loss does not ask G to keep the tumour. Fix: train with crops that do not "
                "give the tumour's position away (configs/options/no_position_leak.json)."
            )
            if self.fail_on_leak:
                raise RuntimeError(message)
            logger.error(message)
        else:
            logger.info("tumour networks: no position leak (largest centre excess %.3f, %s)",
                        excesses[worst], worst)  # fmt: skip
        return result
