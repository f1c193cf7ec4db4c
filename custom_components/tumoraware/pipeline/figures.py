"""The paper's figures for the study report, drawn from what the study's stages wrote.

- :func:`write_fig3`: CT | CycleGAN | masked CycleGAN | tumour-aware synthetic MRI of a few CT
  cases, the CT tumour contour in red: what each synthesis model keeps of the tumour (Fig. 3).
- :func:`write_fig4`: a few MRI of one evaluation split, one column per Table-1 method, the
  expert contour in red and the method's segmentation in yellow on one slice (Fig. 4).
- :func:`write_loss_curves`: the synthesis training losses of the three models, read from their
  TensorBoard event files (or, without events, from their ``log.txt``), one panel per term.

Slices are shown radiologically (anterior up, the patient's right on the viewer's left; see
:func:`~tumoraware.visualize.display.reorient_pls`), on the normalised ``[-1, 1]``
scale of :mod:`tumoraware.visualize`. A model or method that was not run gets an empty panel
marked "not run" instead of an error, so a partial study still shows what exists; nothing at
all to draw raises ``FileNotFoundError``. Every PNG is written atomically.
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    ResampleToMatchd,
    Resize,
)

from tumoraware.atomic import atomic_path
from tumoraware.data.manifest import load_manifest, load_split, splits
from tumoraware.data.names import case_name
from tumoraware.engines.cyclegan_trainer import LOSS_KEYS
from tumoraware.pipeline.layout import SYNTHESIS, StudyLayout, read_stage_record
from tumoraware.pipeline.study import METHODS, SYNTHESIS_MODELS
from tumoraware.transforms import CTWindowd
from tumoraware.visualize.display import evenly, largest_area_slice, pad_stack, reorient_pls
from tumoraware.visualize.grids import save_contour_grid
from tumoraware.visualize.panels import CasePanel, load_case_panel

__all__ = [
    "FIG3_FILENAME",
    "LOSSES_FILENAME",
    "fig4_filename",
    "read_losses",
    "write_fig3",
    "write_fig4",
    "write_loss_curves",
]

logger = logging.getLogger(__name__)

FIG3_FILENAME = "fig3_synthesis.png"
LOSSES_FILENAME = "synthesis_losses.png"
NOT_RUN = "not run"
NO_ARRAYS = "no panel arrays\n(evaluated by an\nolder version)"
SYNTHESIS_TITLES = {
    "cyclegan": "CycleGAN",
    "masked_cyclegan": "masked CycleGAN",
    "tumour_aware": "tumour-aware",
}
MODEL_COLORS = {
    "cyclegan": "tab:blue",
    "masked_cyclegan": "tab:orange",
    "tumour_aware": "tab:green",
}
LOSS_TITLES = {
    "loss_G": "generators, total (loss_G)",
    "adv_G": "generators, adversarial (adv_G)",
    "cycle": "cycle consistency (cycle)",
    "tumour": "tumour loss (tumour)",
    "feature": "feature loss (feature)",
    "identity": "identity (identity)",
    "loss_D": "discriminators (loss_D)",
    "loss_U": "tumour networks U (loss_U)",
}
_LOG_LINE = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+) -- (.*)")
_LOG_TERM = re.compile(r"(\w+): (\S+)")


def fig4_filename(split: str) -> str:
    """``fig4_<split>.png``, e.g. ``fig4_mri_test.png``."""
    return f"fig4_{split}.png"


def _stage_override(stage_dir: Path, key: str) -> str | None:
    """The override ``key`` a stage ran with (its ``stage.json``), or None (not overridden, or
    no record of the current schema)."""
    record = read_stage_record(stage_dir)
    value = record.overrides.get(key) if record is not None else None
    return None if value is None else str(value)


def _manifest_entries(manifest: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Entries (absolute paths) of ``split``, or of every split when ``split`` is None."""
    names = [split] if split else list(splits(load_manifest(manifest)))
    return [entry for name in names for entry in load_split(manifest, name)]


def _title(text: str, width: int = 20) -> str:
    return textwrap.fill(text, width)


# ---------------------------------------------------------------------------------- Fig. 3


def _fig3_row(
    ref: Mapping[str, str],
    models: Mapping[str, str | None],
    ct_image: str | None,
    window: tuple[float, float],
) -> tuple[list[np.ndarray | None], np.ndarray, int, int]:
    """One CT case: the CT and every model's synthetic MRI on the reference grid (PLS).

    Args:
        ref: ``{"image", "label"}`` of the reference synthetic MRI and its cropped CT label,
            ``(X, Y, Z)`` files: the grid everything is resampled onto.
        models: model -> its synthetic MRI file of this case (None: not run); the reference
            model's entry is ``ref["image"]``.
        ct_image: the original CT in HU (any grid), or None.
        window: CT display window in HU, mapped to ``[-1, 1]``.

    Returns:
        ``(columns, tumour, k, n_slices)``: K = 1 + len(models) ``(P, L)`` slices (None where
        missing), the tumour mask ``(P, L)``, the axial index and the slice count.
    """
    data: dict[str, str] = {"ref": ref["image"], "label": ref["label"]}
    if ct_image:
        data["ct"] = ct_image
    data.update({m: path for m, path in models.items() if path and path != ref["image"]})
    moving = [key for key in data if key not in ("ref", "label")]
    load = Compose(
        [
            LoadImaged(list(data), image_only=True),
            EnsureChannelFirstd(list(data)),
            CTWindowd("ct", a_min=window[0], a_max=window[1], allow_missing_keys=True),
            # the CT's own grid -> the synthetic MRI's cropped, resized grid (by the affines)
            ResampleToMatchd(moving, key_dst="ref", mode="bilinear", allow_missing_keys=True),
        ]
    )
    volumes = {key: reorient_pls(v.float())[0] for key, v in load(data).items()}  # (P, L, S)
    tumour = volumes["label"] > 0.5
    k, _ = largest_area_slice(tumour)  # the label is never empty: the crop is around it

    def cut(key: str) -> np.ndarray | None:
        return np.asarray(volumes[key][:, :, k], dtype=np.float32) if key in volumes else None

    by_model = {m: cut("ref" if path == ref["image"] else m) for m, path in models.items()}
    columns = [cut("ct"), *(by_model.get(m) for m in SYNTHESIS_MODELS)]
    return columns, np.asarray(tumour[:, :, k]), k, int(tumour.shape[-1])


def write_fig3(
    out_dir: str | Path,
    seed: int,
    ct_manifest: str | Path | None = None,
    n_cases: int = 3,
    ct_window: tuple[float, float] = (-1000.0, 500.0),
) -> Path:
    """Fig. 3: per CT case, CT | CycleGAN | masked CycleGAN | tumour-aware synthetic MRI.

    Reads each model's inference stage (``synthetic_mri.json``, the synthetic MRI
    and the cropped CT label, both on the crop grid ``(H', W', D)``). ``n_cases`` CT cases are
    spread evenly over the sorted case names; each row shows the axial slice with the largest
    tumour area and the tumour contour in red on every panel. The CT is the original volume
    (from the CT manifest) windowed to ``ct_window`` HU (the generator's input window: lung to
    dense soft tissue) and resampled onto the synthetic MRI's grid by MONAI's
    ``ResampleToMatchd``, so CT and synthetic MRI are aligned voxel for voxel.

    Args:
        out_dir: the study folder; the figure is ``out_dir/fig3_synthesis.png``.
        seed: the seed whose models are shown.
        ct_manifest: the CT manifest; default: the ``--ct_manifest`` the inference ran with.
        n_cases: rows.
        ct_window: CT display window ``(low, high)`` in HU.

    Raises:
        FileNotFoundError: no synthesis model of ``seed`` has inference outputs. A missing
            model, or CT, gives a panel marked "not run" (or "CT not found") instead.
    """
    out = Path(out_dir)
    layout = StudyLayout(out)
    infer = {m: layout.inference(seed, m) for m in SYNTHESIS_MODELS}
    synthetic: dict[str, dict[str, dict[str, Any]]] = {}
    for model, folder in infer.items():
        if (folder / "synthetic_mri.json").is_file():
            entries = _manifest_entries(folder / "synthetic_mri.json")
            synthetic[model] = {
                case_name(e["image"]).removesuffix("_synthetic_mri"): e for e in entries
            }
    if not synthetic:
        raise FileNotFoundError(
            f"fig3: no synthetic MRI (synthetic_mri.json) in {', '.join(map(str, infer.values()))}"
            ". Fix: run the study's synthesis inference stages."
        )
    ref_model = next(iter(synthetic))  # the first model (study order) that was run
    manifest = ct_manifest or _stage_override(infer[ref_model], "ct_manifest")
    ct_split = _stage_override(infer[ref_model], "ct_split") or "ct_train"
    ct: dict[str, str] = {}
    try:
        if manifest:
            ct = {case_name(e["image"]): e["image"] for e in _manifest_entries(manifest, ct_split)}
    except (OSError, ValueError) as error:  # ManifestError is a ValueError
        logger.warning("fig3: cannot read the CT manifest %s (%s); CT column left empty",
                       manifest, error)  # fmt: skip
    cases = evenly(sorted(synthetic[ref_model]), n_cases)
    columns, tumours, titles, notes = [], [], [], []
    for case in cases:
        ref = synthetic[ref_model][case]
        models = {
            m: synthetic[m][case]["image"] if case in synthetic.get(m, {}) else None
            for m in SYNTHESIS_MODELS
        }
        row, tumour, k, n_slices = _fig3_row(ref, models, ct.get(case), ct_window)
        columns.append(row)
        tumours.append(tumour)
        titles.append(f"{case}\naxial {k}/{n_slices - 1}")
        notes.append(
            ["" if c is not None else ("CT not found" if j == 0 else NOT_RUN)
             for j, c in enumerate(row)]
        )  # fmt: skip
    shape = next(c for row in columns for c in row if c is not None).shape
    blank = np.full(shape, -1.0, dtype=np.float32)
    images = pad_stack([c if c is not None else blank for row in columns for c in row], -1.0)
    images = images.reshape(len(cases), -1, *images.shape[1:])  # (N, K, H, W)
    masks = pad_stack([t.astype(np.float32) for t in tumours], 0.0)[:, None]  # (N, 1, H, W)
    present = np.array([[c is not None for c in row] for row in columns])[..., None, None]
    masks = masks * present  # (N, K, H, W): no contour on an empty panel
    window = f"CT [{ct_window[0]:g}, {ct_window[1]:g}] HU"
    column_titles = [window, *(f"{SYNTHESIS_TITLES.get(m, m)}" for m in SYNTHESIS_MODELS)]
    return save_contour_grid(
        out / FIG3_FILENAME, images, {"CT tumour": masks}, {"CT tumour": "red"},
        column_titles=column_titles, row_titles=titles, panel_text=notes,
    )  # fmt: skip


# ---------------------------------------------------------------------------------- Fig. 4


def _zoom_window(mask: np.ndarray, context: float, min_fraction: float) -> tuple[slice, slice]:
    """A square window ``(rows, cols)`` of a ``(H, W)`` slice centred on ``mask``'s box, side
    ``context`` x the box's longer side, at least ``min_fraction`` of the slice and inside it;
    the whole slice for an empty mask."""
    h, w = mask.shape
    if not mask.any():
        return slice(0, h), slice(0, w)
    rows, cols = np.nonzero(mask)
    extent = max(np.ptp(rows), np.ptp(cols)) + 1
    side = int(min(h, w, max(context * extent, min_fraction * min(h, w))))
    window = []
    for lo, hi, size in ((rows.min(), rows.max(), h), (cols.min(), cols.max(), w)):
        start = min(max(round((lo + hi + 1 - side) / 2), 0), size - side)
        window.append(slice(int(start), int(start) + side))
    return window[0], window[1]


def _zoom(
    image: np.ndarray, masks: Sequence[np.ndarray], window: tuple[slice, slice], size: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Crop ``(H, W)`` slices to ``window`` and resize to ``(size, size)`` by MONAI ``Resize``
    (bilinear image; ``nearest-exact`` masks, which keep pixel centres aligned with it)."""
    smooth = Resize((size, size), mode="bilinear")
    exact = Resize((size, size), mode="nearest-exact")

    def cut(x: np.ndarray, resize: Resize) -> np.ndarray:
        return np.asarray(resize(torch.as_tensor(x[window], dtype=torch.float32)[None]))[0]

    return cut(image, smooth), [cut(m, exact) for m in masks]


def write_fig4(
    out_dir: str | Path,
    seed: int,
    split: str,
    n_cases: int = 3,
    zoom: float | None = 3.0,
    zoom_size: int = 128,
) -> Path:
    """Fig. 4: per MRI case of ``split``, one panel per Table-1 method on the same slice.

    Reads ``panels/<case>.npz`` of each method's evaluation on ``split`` (the slice arrays
    the evaluation's ``SegmentationPanelWriter`` saves, ``(P, L)``, the slice chosen from the
    expert label alone). ``n_cases`` cases are spread evenly over the sorted case names. Each
    panel: the MRI with the expert contour red and the method's segmentation yellow, the case's
    3D Dice in the corner. Like the paper's figure, each row is zoomed on the expert tumour (the
    same window for every method of the row).

    Args:
        out_dir: the study folder; the figure is ``out_dir/fig4_<split>.png``.
        seed: the seed whose evaluations are shown.
        split: ``mri_validation`` or ``mri_test``.
        n_cases: rows.
        zoom: window side as a multiple of the expert tumour's extent (at least a quarter of
            the slice), resized to ``zoom_size`` pixels; None shows whole slices.
        zoom_size: pixels of a zoomed panel's side.

    Raises:
        FileNotFoundError: no method has panel arrays for ``split`` (e.g. an evaluation from
            before they were written). A missing method gives "not run" panels instead.
        ValueError: two methods' files of one case show different slices or grids.
    """
    out = Path(out_dir)
    layout = StudyLayout(out)
    found: dict[str, dict[str, Path]] = {}
    missing: dict[str, str] = {}  # the note on a method's panel without a file
    for method in METHODS:
        folder = layout.evaluation(seed, method.key, split)
        found[method.key] = {p.stem: p for p in sorted((folder / "panels").glob("*.npz"))}
        evaluated = (folder / "summary.json").is_file()  # run, but before panels had arrays
        missing[method.key] = NO_ARRAYS if evaluated else NOT_RUN
    cases = sorted({case for files in found.values() for case in files})
    if not cases:
        raise FileNotFoundError(
            f"fig4: no panel arrays (panels/<case>.npz) in the {split} evaluations of seed "
            f"{seed} ({layout.evaluation(seed, METHODS[0].key, split)}, ...). Fix: re-run the "
            "segmentation evaluation stages (their SegmentationPanelWriter writes them)."
        )
    chosen = evenly(cases, n_cases)
    images, experts, predictions, titles, notes = [], [], [], [], []
    for case in chosen:
        panels: dict[str, CasePanel | None] = {
            m.key: load_case_panel(found[m.key][case]) if case in found[m.key] else None
            for m in METHODS
        }
        ref = next(p for p in panels.values() if p is not None)
        where = (ref.slice_index, ref.image.shape)
        for key, p in panels.items():
            if p is not None and (p.slice_index, p.image.shape) != where:
                raise ValueError(
                    f"fig4: {case}: method {key} shows axial slice {p.slice_index} "
                    f"{p.image.shape}, another {ref.slice_index} {ref.image.shape}. Fix: re-run "
                    "its evaluation so every method's panel uses the expert-chosen slice."
                )
        blank = np.zeros_like(ref.expert, dtype=np.float32)
        image = ref.image
        masks = [ref.expert.astype(np.float32)]
        masks += [p.prediction.astype(np.float32) if p else blank for p in panels.values()]
        if zoom is not None:
            image, masks = _zoom(image, masks, _zoom_window(ref.expert, zoom, 0.25), zoom_size)
        images.append(image)
        experts.append(masks[0])
        predictions.append(masks[1:])
        zoomed = ", zoomed" if zoom is not None and ref.expert.any() else ""
        titles.append(f"{case}\naxial {ref.slice_index}/{ref.n_slices - 1}{zoomed}")
        notes.append(
            [missing[key] if p is None else "DSC n/a" if math.isnan(p.dice) else f"DSC {p.dice:.2f}"
             for key, p in panels.items()]
        )  # fmt: skip
    n, k = len(chosen), len(METHODS)
    image = pad_stack(images, -1.0)[:, None]
    expert = pad_stack(experts, 0.0)[:, None]
    prediction = pad_stack([p for row in predictions for p in row], 0.0)
    prediction = prediction.reshape(n, k, *prediction.shape[1:])
    # a method that was not run: a black panel with its note, no contours
    run = np.array([[note.startswith("DSC") for note in row] for row in notes])[..., None, None]
    shown = np.where(run, image, -1.0).astype(np.float32)  # (N, K, H, W)
    expert_shown = expert * run
    return save_contour_grid(
        out / fig4_filename(split), shown,
        {"expert": expert_shown, "segmentation": prediction},
        {"expert": "red", "segmentation": "yellow"},
        column_titles=[_title(m.title) for m in METHODS], row_titles=titles, panel_text=notes,
    )  # fmt: skip


# ------------------------------------------------------------------------------ loss curves


def _read_events(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (steps, values) of every scalar in the TensorBoard event files under ``run_dir``
    (several files are merged by step, a later file winning)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.glob("**/events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep all
        events.Reload()
        for tag in events.Tags()["scalars"]:
            merged.setdefault(tag, {}).update((e.step, e.value) for e in events.Scalars(tag))
    return {
        tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)], dtype=np.float64))
        for tag, v in merged.items()
    }


def _read_log(log: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (steps, values) from MONAI ``StatsHandler`` lines ``Epoch: e/E, Iter: i/I --
    name: value ...`` of a bundle's ``log.txt``; step = (e - 1) * I + i."""
    merged: dict[str, dict[int, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = _LOG_LINE.search(line)
        if not match:
            continue
        epoch, iteration, per_epoch = (int(g) for g in match.groups()[:3])
        step = (epoch - 1) * per_epoch + iteration
        for name, value in _LOG_TERM.findall(match.group(4)):
            try:
                merged.setdefault(name, {})[step] = float(value)
            except ValueError:
                continue
    return {
        tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)], dtype=np.float64))
        for tag, v in merged.items()
    }


def read_losses(train_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The loss terms a synthesis training stage logged: name -> (steps ``(T,)``, values
    ``(T,)``), from its TensorBoard events (``runs/``), else from its ``log.txt``.

    Only loss terms are kept: the trainer's ``LOSS_KEYS`` and any tag containing ``loss``.
    """
    train = Path(train_dir)
    scalars = _read_events(train) or (
        _read_log(train / "log.txt") if (train / "log.txt").is_file() else {}
    )
    return {
        tag: series for tag, series in scalars.items() if tag in LOSS_KEYS or "loss" in tag.lower()
    }


def _smooth(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Running mean over ``w`` = about 1/25 of the points (the per-iteration losses are noisy);
    returns the ``(T - w + 1,)`` means and ``w``."""
    w = max(1, len(values) // 25)
    return np.convolve(values, np.ones(w) / w, mode="valid"), w


def write_loss_curves(out_dir: str | Path, seed: int) -> Path:
    """The synthesis training losses of every model of ``seed``, one panel per loss term.

    Each panel has one curve per model (faint: per iteration; solid: running mean), x the
    training iteration. A term that is zero throughout for a model (switched off, e.g. the
    tumour loss of the CycleGAN) gets no curve of that model but a note in the panel; a term
    off in every model (e.g. ``identity``) gets no panel, the title names it. Written to
    ``out_dir/synthesis_losses.png``.

    Raises:
        FileNotFoundError: no model of ``seed`` logged any loss.
    """
    out = Path(out_dir)
    layout = StudyLayout(out)
    trainings = {m: layout.train(seed, SYNTHESIS, m) for m in SYNTHESIS_MODELS}
    curves = {m: read_losses(folder) for m, folder in trainings.items()}
    order = list(LOSS_TITLES)
    tags = sorted(
        {t for c in curves.values() for t in c},
        key=lambda t: (order.index(t) if t in order else len(order), t),
    )
    if not tags:
        raise FileNotFoundError(
            f"synthesis losses: no loss logged in {', '.join(map(str, trainings.values()))} "
            "(TensorBoard events in runs/, or log.txt). Fix: run the synthesis training stages."
        )
    logged = {t: [m for m, c in curves.items() if t in c and np.any(c[t][1])] for t in tags}
    shown = [t for t in tags if logged[t]]
    off = [t for t in tags if not logged[t]]
    n_cols = min(4, max(1, len(shown)))
    n_rows = max(1, math.ceil(len(shown) / n_cols))
    fig = Figure(figsize=(3.6 * n_cols, 2.8 * n_rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, tag in zip(axes, shown, strict=False):
        for model in reversed(logged[tag]):  # CycleGAN last (dashed, on top)
            steps, values = curves[model][tag]
            color = MODEL_COLORS.get(model, "black")
            style = "--" if model == "cyclegan" else "-"
            ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.6)
            mean, w = _smooth(values)
            ax.plot(steps[w - 1 :], mean, color=color, linewidth=1.5, linestyle=style)
        zero = [SYNTHESIS_TITLES.get(m, m) for m, c in curves.items() if c and m not in logged[tag]]
        if zero:
            ax.text(0.98, 0.97, "off: " + ", ".join(zero), transform=ax.transAxes, ha="right",
                    va="top", fontsize=7, color="dimgray")  # fmt: skip
        ax.set_title(LOSS_TITLES.get(tag, tag), fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    handles = [
        Line2D([0], [0], color=MODEL_COLORS.get(m, "black"), lw=2,
               linestyle="--" if m == "cyclegan" else "-",
               label=SYNTHESIS_TITLES.get(m, m) + ("" if curves[m] else f" ({NOT_RUN})"))
        for m in curves
    ]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    note = f"; zero throughout (off): {', '.join(off)}" if off else ""
    fig.suptitle(
        f"Synthesis training losses, seed {seed} (faint: per iteration; solid: running mean){note}",
        fontsize=10,
    )
    path = out / LOSSES_FILENAME
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
