"""Image grids with tumour contours as PNGs (Fig. 3 and Fig. 4 style).

- :func:`save_synthesis_grid`: one row per case, CT | synthetic MRI | reconstructed CT, the CT
  tumour contour in red on every panel (what the CycleGAN keeps and what it loses).
- :func:`save_contour_grid`: the general grid underneath, for the later figures, e.g.
  Fig. 3 (CT | CycleGAN | masked CycleGAN | tumour-aware, red tumour contour) or Fig. 4 (MRI with
  the expert contour in red and each method's segmentation in yellow).

Images are on the normalised scale ``[-1, 1]`` (CT window and MRI normalisation, generator
``tanh``) and shown in grayscale with ``vmin=-1, vmax=1``, so panels are comparable: a darker
synthetic tumour is darker, not re-windowed. Each ``(H, W)`` array is shown as stored, row 0 at
the top (imshow's convention); :mod:`tumoraware.visualize.display` reorients beforehand for
radiological display.

Drawing uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch,
no figure left open), and every file is written through :func:`tumoraware.atomic.atomic_path`,
so an interrupted run never leaves a half-written PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tumoraware.atomic import atomic_path

__all__ = ["save_contour_grid", "save_synthesis_grid"]

VALUE_RANGE = (-1.0, 1.0)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A float numpy array from a torch tensor (any device, with grad) or an array-like."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor -> plain tensor
        x = x.float().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _grid_images(images: Any) -> np.ndarray:
    """``(N, K, H, W)`` from an ``(N, K, H, W)`` array or a list of K ``(N, 1, H, W)`` ones."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: expected at least one column, got an empty list")
        columns = [_to_numpy(c, f"images[{j}]") for j, c in enumerate(images)]
        for j, c in enumerate(columns):
            if c.ndim != 4 or c.shape[1] != 1 or c.shape != columns[0].shape:
                raise ValueError(
                    f"images[{j}]: expected shape (N, 1, H, W), the same for every column "
                    f"(images[0] is {columns[0].shape}), got {c.shape}"
                )
        arr = np.concatenate(columns, axis=1)
    else:
        arr = _to_numpy(images, "images")
    if arr.ndim != 4 or 0 in arr.shape:
        raise ValueError(
            f"images: expected shape (N, K, H, W) (N rows, K columns) with no empty axis, "
            f"got {arr.shape}"
        )
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0][:2])
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} NaN/Inf voxel(s), the first "
            f"in row {row}, column {col}. Fix: check the network output or normalisation that "
            "produced it (a diverged generator gives NaN)."
        )


def _check_titles(titles: Sequence[str] | None, n: int, name: str, what: str) -> list[str]:
    if titles is None:
        return [""] * n
    if isinstance(titles, str) or len(titles) != n:
        got = repr(titles) if isinstance(titles, str) else f"{len(titles)}"
        raise ValueError(f"{name}: expected {n} titles (one per {what}), got {got}")
    return [str(t) for t in titles]


def save_contour_grid(
    path: str | os.PathLike,
    images: Any,
    masks: Mapping[str, Any],
    colors: Mapping[str, str],
    column_titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    *,
    panel_text: Sequence[Sequence[str]] | None = None,
    panel_inches: float = 2.5,
    dpi: int = 100,
) -> Path:
    """Save a grid of grayscale images with mask contours as a PNG.

    Args:
        path: destination, must end in ``.png``; parent folders are created.
        images: ``(N, K, H, W)``: N rows (cases) by K columns, values on ``[-1, 1]`` (shown with
            ``vmin=-1, vmax=1``; values outside saturate). A single ``(N, 1, H, W)`` array is a
            one-column grid; a list of K ``(N, 1, H, W)`` arrays gives the K columns. Torch
            tensors (any device, with or without grad) or numpy arrays.
        masks: name -> mask, each ``(N, 1, H, W)`` (drawn on every column of its row) or
            ``(N, K, H, W)`` (one mask per panel, e.g. each column's prediction). Contoured at
            level 0.5 in the order given, earlier ones drawn thicker so that coinciding
            contours stay visible; an empty (or full) mask draws nothing on that panel. May be
            empty.
        colors: name -> matplotlib colour (``"red"``, ``"yellow"``, ``"#ff0000"``) for every
            name in ``masks``. The names and colours form the legend under the grid.
        column_titles: K titles above the columns, or None.
        row_titles: N titles left of the rows, or None.
        panel_text: N rows of K notes written in the top-left corner of each panel (e.g. a
            Dice, or "not run" on an empty panel); ``""`` for none. Default None (no notes).
        panel_inches: edge of one square panel in inches. Default 2.5.
        dpi: pixels per inch. Default 100 (a 250-pixel panel).

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: a path not ending in ``.png``; shapes other than the above; NaN/Inf in an
            image or mask (names the row and column); a mask without a colour; title counts that
            do not match the grid.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path: expected a .png file, got {str(path)!r}")
    grid = _grid_images(images)
    n, k, h, w = grid.shape
    _check_finite(grid, "images")
    if not isinstance(masks, Mapping) or not isinstance(colors, Mapping):
        raise ValueError(
            f"masks, colors: expected mappings name -> mask and name -> colour, got "
            f"{type(masks).__name__} and {type(colors).__name__}"
        )
    missing = [name for name in masks if name not in colors]
    if missing:
        raise ValueError(
            f"colors: expected a colour for every mask {list(masks)}, got none for {missing}"
        )
    contours: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        arr = _to_numpy(mask, f"masks[{name!r}]")
        if (
            arr.ndim != 4
            or arr.shape[1] not in (1, k)
            or (n, h, w) != (arr.shape[0], *arr.shape[2:])
        ):
            raise ValueError(
                f"masks[{name!r}]: expected shape ({n}, 1, {h}, {w}) or ({n}, {k}, {h}, {w}) "
                f"to match images, got {arr.shape}"
            )
        _check_finite(arr, f"masks[{name!r}]")
        contours[name] = np.broadcast_to(arr > 0.5, grid.shape)
    col_titles = _check_titles(column_titles, k, "column_titles", "column")
    r_titles = _check_titles(row_titles, n, "row_titles", "row")
    notes = [[""] * k for _ in range(n)] if panel_text is None else panel_text
    if len(notes) != n or any(isinstance(r, str) or len(r) != k for r in notes):
        raise ValueError(f"panel_text: expected {n} rows of {k} notes, one per panel")

    legend_inches = 0.4 if contours else 0.0
    fig = Figure(figsize=(k * panel_inches, n * panel_inches + legend_inches), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, k, squeeze=False)
    for i in range(n):
        for j in range(k):
            ax = axes[i, j]
            ax.imshow(grid[i, j], cmap="gray", vmin=VALUE_RANGE[0], vmax=VALUE_RANGE[1])
            for order, (name, inside) in enumerate(contours.items()):
                if inside[i, j].any() and not inside[i, j].all():
                    ax.contour(
                        inside[i, j].astype(np.float32),
                        levels=[0.5],
                        colors=[colors[name]],
                        # earlier masks thicker: a coincident later contour leaves them visible
                        linewidths=1.2 + 0.8 * (len(contours) - 1 - order),
                    )
            if notes[i][j]:
                ax.text(0.03, 0.97, str(notes[i][j]), transform=ax.transAxes, ha="left",
                        va="top", color="white", fontsize=8,
                        bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"})  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i == 0 and col_titles[j]:
                ax.set_title(col_titles[j], fontsize=10)
            if j == 0 and r_titles[i]:
                ax.set_ylabel(r_titles[i], fontsize=9)
    if contours:
        handles = [Line2D([0], [0], color=colors[name], lw=2, label=name) for name in contours]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def save_synthesis_grid(
    path: str | os.PathLike,
    ct: Any,
    synthetic_mri: Any,
    reconstructed_ct: Any,
    tumour_mask: Any,
    titles: Sequence[str] = ("CT", "synthetic MRI", "reconstructed CT"),
    row_titles: Sequence[str] | None = None,
) -> Path:
    """Save CT | synthetic MRI | reconstructed CT, one row per case, tumour contoured in red.

    Args:
        path: destination, must end in ``.png``.
        ct: CT slices ``x_c``, ``(N, 1, H, W)`` on ``[-1, 1]``.
        synthetic_mri: ``G_{C->M}(x_c)``, ``(N, 1, H, W)``.
        reconstructed_ct: ``G_{M->C}(G_{C->M}(x_c))``, ``(N, 1, H, W)``.
        tumour_mask: the CT tumour mask ``y_c``, ``(N, 1, H, W)``, drawn in red on all three.
        titles: the three column titles.
        row_titles: N row titles (e.g. case ids), or None.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: as :func:`save_contour_grid`, naming which of the three inputs is wrong.
    """
    named = {"ct": ct, "synthetic_mri": synthetic_mri, "reconstructed_ct": reconstructed_ct}
    columns = []
    for name, x in named.items():
        arr = _to_numpy(x, name)
        if arr.ndim != 4 or arr.shape[1] != 1 or (columns and arr.shape != columns[0].shape):
            like = f" like ct {columns[0].shape}" if columns else ""
            raise ValueError(f"{name}: expected shape (N, 1, H, W){like}, got {arr.shape}")
        _check_finite(arr, name)
        columns.append(arr)
    return save_contour_grid(
        path,
        columns,
        {"tumour": tumour_mask},
        {"tumour": "red"},
        column_titles=titles,
        row_titles=row_titles,
    )
