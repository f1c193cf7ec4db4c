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
``.nii``/``.nii.gz``/``.dcm`` suffix, made unique in iteration order (``_1``, ``_2``, ...), so the
two writers name the same case the same way.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch
from monai.metrics import compute_dice
from monai.transforms import Orientation
from monai.utils import string_list_all_gather

from tumoraware.atomic import atomic_path, write_json_atomic, write_text_atomic
from tumoraware.visualize import save_contour_grid

__all__ = [
    "CasePanel",
    "SegmentationPanelWriter",
    "SegmentationSummaryWriter",
    "case_name",
    "extract_case_panel",
    "largest_area_slice",
    "load_case_panel",
    "reorient_pls",
    "save_case_panel",
]

logger = logging.getLogger(__name__)

_SUFFIXES = (".nii.gz", ".nii", ".dcm")
# labels=None: MONAI reads the MetaTensor's "space" (RAS or LPS) to name the world axes
_TO_PLS = Orientation(axcodes="PLS", labels=None)
COLORS = {"expert": "red", "prediction": "yellow"}
COLUMN_TITLES = ("MRI", "MRI + contours")


def case_name(source: Any) -> str:
    """File name of ``source`` without ``.nii``/``.nii.gz``/``.dcm``; ``""`` for no source.

    ``"/data/mri_t000_w1_image.nii.gz"`` -> ``"mri_t000_w1_image"``; a DICOM series folder keeps
    its folder name.
    """
    if isinstance(source, (list, tuple)):  # a collated batch of one
        source = source[0] if len(source) == 1 else ""
    name = Path(str(source or "")).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class _CaseNamer:
    """Unique case names in iteration order: ``a``, ``a_1``, ``a_2``; ``case0003`` for none."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seen: set[str] = set()
        self.count = 0

    def __call__(self, source: Any) -> str:
        base = case_name(source) or f"case{self.count:04d}"
        name, i = base, 0
        while name in self.seen:
            i += 1
            name = f"{base}_{i}"
        self.seen.add(name)
        self.count += 1
        return name


def _cases(output: Any) -> list[Mapping[str, Any]]:
    """Per-case dicts from an evaluator output: a decollated list, or one batch dict."""
    if isinstance(output, Mapping):
        return list(decollate_batch(output))
    if isinstance(output, (list, tuple)) and all(isinstance(c, Mapping) for c in output):
        return list(output)
    raise ValueError(
        "engine.state.output: expected a list of per-case dicts (SupervisedEvaluator with "
        f"decollate=True) or a batch dict, got {type(output).__name__}. Fix: attach this "
        "handler to an evaluator whose output holds the image, pred and label."
    )


def _item(case: Mapping[str, Any], key: str, handler: str) -> Any:
    if key not in case:
        raise KeyError(
            f"{handler}: expected key {key!r} in each case of engine.state.output, got keys "
            f"{sorted(map(str, case))}. Fix: pass the evaluator's key names (image_key, "
            "pred_key, label_key)."
        )
    return case[key]


def _source(case: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``meta["filename_or_obj"]`` of the first of ``keys`` that has one, else ``""``."""
    for key in keys:
        meta = getattr(case.get(key), "meta", None) or {}
        source = meta.get("filename_or_obj")
        if isinstance(source, (list, tuple)):
            source = source[0] if len(source) == 1 else None
        if source:
            return str(source)
    return ""


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


def reorient_pls(x: torch.Tensor) -> torch.Tensor:
    """``(C, H, W, D)`` with its affine -> ``(C, P, L, S)`` for radiological display.

    Axis 1 runs anterior -> posterior (rows top to bottom), axis 2 patient right -> left (the
    patient's right on the viewer's left), axis 3 inferior -> superior (axial slice index). A
    MetaTensor's ``"space"`` (RAS or LPS) is honoured; a plain tensor is taken as RAS identity.
    """
    return _TO_PLS(x.detach().cpu())


def largest_area_slice(label: Any, prediction: Any | None = None) -> tuple[int, str]:
    """Axial slice index with the most tumour, and where it came from.

    Args:
        label: expert mask ``(X, Y, Z)`` or ``(1, X, Y, Z)``, slices along the last axis.
        prediction: predicted mask of the same shape, used when ``label`` is empty.

    Returns:
        ``(k, "expert")`` for the largest expert area (ties: lowest ``k``), ``(k, "prediction")``
        when the expert mask is empty, ``(Z // 2, "none")`` when both are empty.
    """
    for mask, source in ((label, "expert"), (prediction, "prediction")):
        if mask is None:
            continue
        arr = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask) > 0.5
        area = arr.reshape(-1, arr.shape[-1]).sum(axis=0)
        if area.any():
            return int(np.argmax(area)), source  # argmax: first of equal maxima
    n_slices = np.shape(label)[-1]
    return n_slices // 2, "none"


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


def _pad(arr: np.ndarray, shape: tuple[int, int], value: float) -> np.ndarray:
    """Centre ``arr`` ``(h, w)`` in an ``shape`` array filled with ``value``."""
    out = np.full(shape, value, dtype=arr.dtype)
    top, left = (shape[0] - arr.shape[0]) // 2, (shape[1] - arr.shape[1]) // 2
    out[top : top + arr.shape[0], left : left + arr.shape[1]] = arr
    return out


def save_panel_grid(path: str | os.PathLike, panels: Sequence[CasePanel]) -> Path:
    """One row per panel: MRI | MRI + contours (expert red, prediction yellow).

    Slices of different sizes are centred on the largest (padding black, no tumour).
    """
    h = max(p.image.shape[0] for p in panels)
    w = max(p.image.shape[1] for p in panels)
    image = np.stack([_pad(p.image, (h, w), -1.0) for p in panels])[:, None]  # (N, 1, H, W)
    masks = {}
    for name, attr in (("expert", "expert"), ("prediction", "prediction")):
        shown = np.stack([_pad(getattr(p, attr), (h, w), False) for p in panels])[:, None]
        masks[name] = np.concatenate([np.zeros_like(shown), shown], axis=1)  # (N, 2, H, W)
    return save_contour_grid(
        path,
        [image, image],
        masks,
        COLORS,
        column_titles=COLUMN_TITLES,
        row_titles=[p.title for p in panels],
    )


def _evenly(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (first and last included), or all of them."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


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
        self._namer = _CaseNamer()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.panels.clear()
        self._namer.reset()

    def iteration_completed(self, engine: Engine) -> None:
        name = type(self).__name__
        for case in _cases(engine.state.output):
            volumes = (
                _item(case, self.image_key, name),
                _item(case, self.pred_key, name),
                _item(case, self.label_key, name),
            )
            panel = extract_case_panel(
                *volumes, self._namer(_source(case, (self.pred_key, self.image_key)))
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
        chosen = _evenly(sorted(self.panels, key=lambda p: p.case), self.max_rows)
        path = save_panel_grid(self.output_dir / self.filename, chosen)
        logger.info("segmentation panels: %d cases, grid of %d at %s", len(self.panels),
                    len(chosen), path)  # fmt: skip
        return path


def _json_number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


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
        for case in _cases(engine.state.output):
            self.sources.append(_source(case, (self.pred_key, self.image_key)))

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
        namer = _CaseNamer()
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
                | {name: _json_number(float(v[i])) for name, v in values.items()}
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
