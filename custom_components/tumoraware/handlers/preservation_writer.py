"""Evaluator handler: the tumour-preservation score per case, by site and size, on disk.

Attach to a ``SupervisedEvaluator`` (``decollate=True``) whose postprocessing gives, per case,
the reader's binarised prediction ``pred`` and the tumour ``label`` on one grid (one-hot
``(2, H, W, D)`` or binary ``(1, H, W, D)`` MetaTensors). At completion it writes

- ``preservation_cases.csv``: one row per case: case, patient, tumour site, tumour volume (cc),
  size class, and every field of :data:`~tumoraware.metrics.preservation.PRESERVATION_FIELDS`;
- ``preservation.json``: the pooled scores (:func:`summarise_preservation`) overall, by tumour
  site and by size class, plus the per-case rows;

and publishes ``preservation_dice``, ``preservation_detection_rate`` and
``preservation_false_tumour_rate`` in ``engine.state.metrics``. With ``panels`` it also draws
what the reader read (``preservation_panels.png``): per case, the slice with the largest tumour
and the tumour-free slice where the reader marked most, the image with the label (red) and the
reader's prediction (yellow), shown radiologically.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from tumoraware.atomic import json_ready, write_json_atomic, write_text_atomic
from tumoraware.handlers.cases import CaseNamer, case_item, case_source, output_cases
from tumoraware.metrics.preservation import (
    PRESERVATION_FIELDS,
    preservation_counts,
    summarise_preservation,
)
from tumoraware.visualize.display import evenly, radiological
from tumoraware.visualize.grids import save_contour_grid

__all__ = ["TumourPreservationWriter", "size_class"]

logger = logging.getLogger(__name__)

CSV_NAME, JSON_NAME = "preservation_cases.csv", "preservation.json"


def size_class(volume_cc: float, bins_cc: Sequence[float]) -> str:
    """``"<10 cc"``, ``"10-50 cc"``, ``">=50 cc"`` for ``bins_cc = (10, 50)``."""
    edges = sorted(float(b) for b in bins_cc)
    if not edges:
        return "all"
    if volume_cc < edges[0]:
        return f"<{edges[0]:g} cc"
    for low, high in itertools.pairwise(edges):
        if volume_cc < high:
            return f"{low:g}-{high:g} cc"
    return f">={edges[-1]:g} cc"


def _voxel_cc(x: Any) -> float:
    """Volume of one voxel of ``x`` in cc, from its MetaTensor affine (1 mm³ without one)."""
    affine = x.affine if isinstance(x, MetaTensor) else torch.eye(4)
    return abs(float(torch.linalg.det(torch.as_tensor(affine, dtype=torch.float64)[:3, :3]))) / 1e3


def _batch_items(engine: Engine, n: int) -> list[Mapping[str, Any]]:
    batch = engine.state.batch
    if isinstance(batch, (list, tuple)) and len(batch) == n:
        return [b if isinstance(b, Mapping) else {} for b in batch]
    return [{}] * n


def _text(value: Any, default: str) -> str:
    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) == 1 else None
    return str(value) if value not in (None, "") else default


class TumourPreservationWriter:
    """Per-case tumour-preservation scores, pooled overall, by site and by size.

    Args:
        output_dir: where ``preservation_cases.csv`` and ``preservation.json`` go.
        title: what was read (e.g. ``"tumour_aware on ct_test"``), stored in the JSON.
        detection_coverage: see :func:`~tumoraware.metrics.preservation.preservation_counts`.
        size_bins_cc: tumour-volume class edges in cc.
        pred_key, label_key, image_key: output keys of the prediction, label and the image the
            reader read (the synthetic MRI; shown in the panels).
        panels: path of the PNG of reader panels, or ``None`` for none.
        max_panel_cases: cases shown in the panels (evenly spread over all cases).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        title: str = "",
        detection_coverage: float = 0.1,
        size_bins_cc: Sequence[float] = (10.0, 50.0),
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        panels: str | os.PathLike | None = None,
        max_panel_cases: int = 8,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.panels = Path(panels) if panels else None
        self.max_panel_cases = int(max_panel_cases)
        self._panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, str]] = []
        self.title = str(title)
        self.detection_coverage = float(detection_coverage)
        self.size_bins_cc = tuple(float(b) for b in size_bins_cc)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.rows: list[dict[str, Any]] = []
        self._namer = CaseNamer()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows.clear()
        self._panels.clear()
        self._namer.reset()

    def iteration_completed(self, engine: Engine) -> None:
        cases = output_cases(engine.state.output)
        for case, data in zip(cases, _batch_items(engine, len(cases)), strict=True):
            pred = case_item(case, self.pred_key, type(self).__name__)
            label = case_item(case, self.label_key, type(self).__name__)
            name = self._namer(case_source(case, (self.image_key, self.label_key, self.pred_key)))
            counts = preservation_counts(pred, label, self.detection_coverage, source=name)
            if self.panels is not None and self.image_key in case:
                self._panels.append((name, *_panel_slices(case[self.image_key], pred, label),
                                     f"Dice {counts['dice']:.2f}"))  # fmt: skip
            volume = counts["tumour_voxels"] * _voxel_cc(label)
            self.rows.append(
                {
                    "case": name,
                    "patient": _text(data.get("patient"), name),
                    "tumour_site": _text(data.get("tumour_site"), "unknown"),
                    "tumour_cc": round(volume, 3),
                    "size_class": size_class(volume, self.size_bins_cc),
                    **counts,
                }
            )

    def _grouped(self, key: str) -> dict[str, dict[str, float]]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault(str(row[key]), []).append(row)
        return {name: summarise_preservation(rows) for name, rows in sorted(groups.items())}

    def _save_panels(self) -> None:
        chosen = evenly(self._panels, self.max_panel_cases)
        images = np.stack([c[1] for c in chosen])
        save_contour_grid(
            self.panels,
            images,
            {"CT label": np.stack([c[2] for c in chosen]),
             "reader": np.stack([c[3] for c in chosen])},
            {"CT label": "red", "reader": "yellow"},
            column_titles=["largest tumour slice", "tumour-free slice"],
            row_titles=[c[0] for c in chosen],
            panel_text=[[c[4], ""] for c in chosen],
        )  # fmt: skip

    def completed(self, engine: Engine) -> dict[str, Any]:
        overall = summarise_preservation(self.rows)
        summary = {
            "title": self.title,
            "detection_coverage": self.detection_coverage,
            "size_bins_cc": list(self.size_bins_cc),
            "overall": overall,
            "by_site": self._grouped("tumour_site"),
            "by_size": self._grouped("size_class"),
            "cases": self.rows,
        }
        columns = ["case", "patient", "tumour_site", "tumour_cc", "size_class"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*columns, *PRESERVATION_FIELDS])
        writer.writeheader()
        writer.writerows(self.rows)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.output_dir / CSV_NAME, buffer.getvalue())
        write_json_atomic(self.output_dir / JSON_NAME, json_ready(summary))
        for key in ("dice", "detection_rate", "false_tumour_rate"):
            if key in overall:
                engine.state.metrics[f"preservation_{key}"] = overall[key]
        if self.panels is not None and self._panels:
            self._save_panels()
        if self.rows:
            logger.info(
                "tumour preservation%s: n=%d, Dice %.3f, detected %.0f%%, false tumours on "
                "%.1f%% of tumour-free slices",
                f" ({self.title})" if self.title else "",
                overall["cases"],
                overall["dice"],
                100 * overall["detection_rate"],
                100 * overall["false_tumour_rate"],
            )
        return summary


def _slice(x: Any, index: int) -> np.ndarray:
    """Slice ``index`` (last axis) of the last channel of ``(C, H, W, D)``, displayed
    radiologically (as the synthesis validation grid shows RAS slices)."""
    plane = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x))
    return radiological(plane[-1, :, :, index].float()).numpy()


def _panel_slices(image: Any, pred: Any, label: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, label, pred)`` arrays ``(2, H', W')``: the largest-tumour slice, and the
    tumour-free slice with the most predicted voxels (the largest tumour slice again if none)."""
    t = (label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else label)[-1] > 0.5
    p = (pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else pred)[-1] > 0.5
    areas = t.sum((0, 1))
    tumour = int(np.argmax(areas))
    free = np.flatnonzero(areas == 0)
    other = int(free[np.argmax(p.sum((0, 1))[free])]) if free.size else tumour
    picks = (tumour, other)
    return tuple(np.stack([_slice(x, i) for i in picks]) for x in (image, label, pred))  # type: ignore[return-value]
