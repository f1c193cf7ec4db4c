"""Handlers that turn a MONAI segmentation evaluator into the paper's Fig. 4 and Table 1.

The evaluator is a ``SupervisedEvaluator`` (``decollate=True``) whose postprocessing returns,
per case, MetaTensors in the case's original file geometry: ``image`` ``(1, H, W, D)`` (MRI on
``[-1, 1]``), ``pred`` and ``label`` ``(2, H, W, D)`` one-hot (background, tumour).

- :class:`SegmentationPanelWriter`: per case, the axial slice with the largest expert tumour,
  shown radiologically with the expert contour in red and the prediction in yellow
  (``panels/<case>.png``), the arrays of that slice (``panels/<case>.npz``, chosen from the
  expert label alone, so every method's file shows the same slice and the study's Fig. 4 can
  put the methods side by side), and at the end one grid of up to ``max_rows`` cases (Fig. 4).
- :class:`SegmentationSummaryWriter`: per-case metric values (from MONAI metric handlers with
  ``save_details=True``) with mean ± std, median, range and NaN count (``summary.json``), and a
  Table 1 style markdown row (``summary.md``).

Case names come from the source image file (``meta["filename_or_obj"]``) without its
``.nii``/``.nii.gz``/``.dcm`` suffix, made unique in iteration order (``_1``, ``_2``, ...) by
:class:`~tumoraware.handlers.cases.CaseNamer`, so the two writers name the same case the same
way. The slices themselves are cut, saved and drawn by :mod:`tumoraware.visualize.panels`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import string_list_all_gather

from tumoraware.atomic import json_ready, write_json_atomic, write_text_atomic
from tumoraware.handlers.cases import CaseNamer, case_item, case_source, output_cases
from tumoraware.visualize.display import evenly
from tumoraware.visualize.panels import (
    CasePanel,
    extract_case_panel,
    save_case_panel,
    save_panel_grid,
)

__all__ = ["SegmentationPanelWriter", "SegmentationSummaryWriter"]

logger = logging.getLogger(__name__)


class SegmentationPanelWriter:
    """Fig. 4: per case the largest-tumour axial slice, expert red, prediction yellow.

    Each iteration writes ``output_dir/panels/<case>.png`` and ``<case>.npz`` (the slice's
    arrays, :func:`save_case_panel`) and keeps only the 2D slices. The ``.npz`` slice depends on
    the expert label alone (the middle slice when it is empty, never the prediction), so the
    files of different methods on one case show the same slice; at
    ``COMPLETED`` ``output_dir/<filename>`` gets up to ``max_rows`` cases chosen evenly over
    the cases sorted by name (a stable picture), one row each: MRI | MRI + contours.

    Args:
        output_dir: destination folder (created).
        image_key, pred_key, label_key: keys of the MRI ``(1, H, W, D)``, the one-hot prediction
            and the one-hot expert label ``(2, H, W, D)`` in each case of the evaluator output.
        max_rows: cases in the grid.
        filename: grid file name (``.png``).
        save_arrays: also write ``panels/<case>.npz``. Default True.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str = "label",
        max_rows: int = 8,
        filename: str = "fig4_panels.png",
        save_arrays: bool = True,
    ) -> None:
        if int(max_rows) < 1:
            raise ValueError(f"max_rows: expected at least 1 case in the grid, got {max_rows}")
        if not str(filename).lower().endswith(".png"):
            raise ValueError(f"filename: expected a .png file name, got {filename!r}")
        self.output_dir = Path(output_dir)
        self.image_key, self.pred_key, self.label_key = image_key, pred_key, label_key
        self.max_rows = int(max_rows)
        self.filename = str(filename)
        self.save_arrays = bool(save_arrays)
        self.panels: list[CasePanel] = []
        self._namer = CaseNamer()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.panels.clear()
        self._namer.reset()

    def iteration_completed(self, engine: Engine) -> None:
        name = type(self).__name__
        for case in output_cases(engine.state.output):
            volumes = (
                case_item(case, self.image_key, name),
                case_item(case, self.pred_key, name),
                case_item(case, self.label_key, name),
            )
            panel = extract_case_panel(
                *volumes, self._namer(case_source(case, (self.pred_key, self.image_key)))
            )
            save_panel_grid(self.output_dir / "panels" / f"{panel.case}.png", [panel])
            if self.save_arrays:
                same = panel  # the expert slice, or no expert tumour: the middle slice
                if panel.slice_source == "prediction":
                    same = extract_case_panel(*volumes, panel.case, use_prediction=False)
                save_case_panel(self.output_dir / "panels" / f"{panel.case}.npz", same)
            self.panels.append(panel)

    def completed(self, engine: Engine) -> Path | None:
        if idist.get_rank() != 0:
            return None
        if not self.panels:
            logger.warning("%s: no cases were evaluated, no grid written", type(self).__name__)
            return None
        chosen = evenly(sorted(self.panels, key=lambda p: p.case), self.max_rows)
        path = save_panel_grid(self.output_dir / self.filename, chosen)
        logger.info("segmentation panels: %d cases, grid of %d at %s", len(self.panels),
                    len(chosen), path)  # fmt: skip
        return path


def _stats(values: np.ndarray) -> dict[str, Any]:
    """n, n_nan (NaN or inf), and mean/std (ddof=0)/median/min/max over the finite values."""
    finite = values[np.isfinite(values)]
    stats: dict[str, Any] = {"n": int(values.size), "n_nan": int(values.size - finite.size)}
    for key, op in (("mean", np.mean), ("std", np.std), ("median", np.median),
                    ("min", np.min), ("max", np.max)):  # fmt: skip
        stats[key] = float(op(finite)) if finite.size else None
    return stats


def _mean_std(stats: Mapping[str, Any]) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


class SegmentationSummaryWriter:
    """Table 1: per-case metrics and their mean ± std, as ``summary.json`` and ``summary.md``.

    At ``COMPLETED`` the per-case values of each metric are read from
    ``engine.state.metric_details[name]`` ``(n_cases, n_classes)`` (first class column), which
    MONAI metric handlers fill when ``save_details=True``. Case names are collected per
    iteration from ``pred`` (else ``image``) ``meta["filename_or_obj"]``, in iteration order,
    which is the row order of ``metric_details``. NaN and inf (e.g. HD95 of an empty prediction)
    are counted in ``n_nan`` and left out of mean, std (numpy, ``ddof=0``), median, min and max.

    Args:
        output_dir: where ``summary.json`` and ``summary.md`` go (created).
        metric_names: metric handler names, in table column order.
        labels: column headings per metric name (the name itself when missing).
        title: the method's name, the table row heading.
        image_key, pred_key: output keys whose metadata names the case.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metric_names: Iterable[str] = ("val_mean_dice", "val_hd95"),
        labels: Mapping[str, str] | None = None,
        title: str = "",
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metric_names = [metric_names] if isinstance(metric_names, str) else list(metric_names)
        if not self.metric_names:
            raise ValueError("metric_names: expected at least one metric name, got none")
        default = {"val_mean_dice": "DSC", "val_hd95": "HD95 (mm)"}
        self.labels = dict(default if labels is None else labels)
        self.title = str(title)
        self.image_key, self.pred_key = image_key, pred_key
        self.sources: list[str] = []
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.sources.clear()

    def iteration_completed(self, engine: Engine) -> None:
        for case in output_cases(engine.state.output):
            self.sources.append(case_source(case, (self.pred_key, self.image_key)))

    def _values(self, engine: Engine, name: str, n_cases: int) -> np.ndarray:
        """Per-case values ``(n_cases,)`` of metric ``name`` (first class column)."""
        details = getattr(engine.state, "metric_details", None) or {}
        if name not in details:
            raise KeyError(
                f"{type(self).__name__}: expected per-case values "
                f"engine.state.metric_details[{name!r}], got only {sorted(details)}. Fix: attach "
                f"a MONAI metric handler named {name!r} with save_details=True (e.g. "
                "MeanDice(..., save_details=True) as the evaluator's key_metric or "
                "additional_metrics), or pass metric_names that are attached."
            )
        details = torch.as_tensor(details[name]).detach().cpu().double()
        if details.ndim not in (1, 2) or details.shape[0] != n_cases:
            raise ValueError(
                f"{type(self).__name__}: expected {n_cases} per-case values of {name!r} (one per "
                f"case seen, shape (n_cases, n_classes)), got metric_details of shape "
                f"{tuple(details.shape)}. Fix: attach this handler to the evaluator that "
                "computes the metric."
            )
        return (details[:, 0] if details.ndim == 2 else details).numpy()

    def completed(self, engine: Engine) -> dict[str, Any] | None:
        sources = string_list_all_gather(self.sources)  # rank-major, as MONAI gathers details
        namer = CaseNamer()
        cases = [namer(s) for s in sources]
        values = {name: self._values(engine, name, len(cases)) for name in self.metric_names}
        if idist.get_rank() != 0:
            return None
        metrics = {
            name: {"label": self.labels.get(name, name), **_stats(v)} for name, v in values.items()
        }
        summary = {
            "title": self.title,
            "n_cases": len(cases),
            "statistics": "mean, std (numpy, ddof=0), median, min, max over finite per-case "
            "values; n_nan counts NaN and inf, which are excluded",
            "metrics": metrics,
            "cases": [
                {"case": case, "source": source}
                | {name: json_ready(float(v[i])) for name, v in values.items()}
                for i, (case, source) in enumerate(zip(cases, sources, strict=True))
            ],
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "summary.json", summary)
        write_text_atomic(self.output_dir / "summary.md", self._markdown(metrics, len(cases)))
        means = ", ".join(
            f"{m['label']} {_mean_std(m)}" + (f" ({m['n_nan']} NaN/inf)" if m["n_nan"] else "")
            for m in metrics.values()
        )
        logger.info("%s: n=%d, %s", self.title or "segmentation", len(cases), means)
        self.summary = summary
        return summary

    def _markdown(self, metrics: Mapping[str, Mapping[str, Any]], n_cases: int) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        header = ["Method", *(cell(m["label"]) for m in metrics.values())]
        row = [cell(self.title or "model"), *(_mean_std(m) for m in metrics.values())]
        nans = [f"{m['label']} {m['n_nan']} of {m['n']}" for m in metrics.values() if m["n_nan"]]
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
            "| " + " | ".join(row) + " |",
            "",
            f"n = {n_cases} cases; mean ± std (numpy std, ddof=0) over finite per-case values.",
            f"NaN/inf excluded: {', '.join(nans)}." if nans else "No NaN/inf values.",
        ]
        return "\n".join(lines) + "\n"
