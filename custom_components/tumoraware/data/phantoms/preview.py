"""Quick-look PNGs of the phantom world, one per split, so a person can see what trains.

Each case shows an axial slice through the tumour's largest cross-section and a coronal
slice through its centre, in radiological convention (patient's right on the viewer's
left, anterior up: :func:`tumoraware.visualize.display.load_pls`), with the tumour label
contoured in red. CT uses a soft-tissue window (-160..240 HU), which makes the iso-dense tumour
border visible as the problem it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tumoraware.atomic import atomic_path
from tumoraware.visualize.display import load_pls

from .profiles import PhantomProfile
from .scan_plan import ScanPlan

__all__ = ["preview_paths", "write_previews"]

_SPLITS = {
    "ct_train": lambda p: p.cohort == "ct",
    "mri_week1": lambda p: p.cohort == "mri" and p.week == 1,
    "mri_validation": lambda p: p.cohort == "mri" and p.week > 1,
    "mri_test": lambda p: p.cohort == "mri_test",
}


def _window(image: np.ndarray, is_ct: bool) -> tuple[float, float]:
    return (-160.0, 240.0) if is_ct else tuple(np.percentile(image, [1.0, 99.5]))


def _draw_case(
    ax_axial, ax_coronal, image_path: Path, label_path: Path, title: str, is_ct: bool
) -> None:
    image, zooms = load_pls(image_path)  # (P, L, S), rows anterior -> posterior
    label, _ = load_pls(label_path)
    vmin, vmax = _window(image, is_ct)
    k = int(np.argmax(label.sum(axis=(0, 1)))) if label.any() else image.shape[2] // 2
    j = int(np.round(np.nonzero(label)[0].mean())) if label.any() else image.shape[0] // 2
    axial, axial_label = image[:, :, k], label[:, :, k]
    coronal, coronal_label = image[j].T[::-1], label[j].T[::-1]  # superior up
    for ax, view, mask, aspect in (
        (ax_axial, axial, axial_label, zooms[0] / zooms[1]),
        (ax_coronal, coronal, coronal_label, zooms[2] / zooms[1]),
    ):
        ax.imshow(view, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_axis_off()
    ax_axial.set_title(title, fontsize=8)


def preview_paths(out_dir: Path, plans: list[ScanPlan]) -> list[Path]:
    """The PNGs :func:`write_previews` writes for ``plans``: one per non-empty split."""
    return [
        out_dir / "preview" / f"{split}.png"
        for split, selects in _SPLITS.items()
        if any(selects(p) for p in plans)
    ]


def write_previews(
    out_dir: Path, plans: list[ScanPlan], profile: PhantomProfile, max_cases: int = 6
) -> list[Path]:
    """Write ``out_dir/preview/<split>.png`` for each split; return the paths written."""
    written = []
    for split, selects in _SPLITS.items():
        cases = [p for p in plans if selects(p)][:max_cases]
        if not cases:
            continue
        fig = Figure(figsize=(2.6 * len(cases), 5.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, len(cases), squeeze=False)
        for col, plan in enumerate(cases):
            image_path, label_path = plan.paths(out_dir)
            title = f"{plan.stem}\n{plan.site}" + (
                "" if plan.cohort == "ct" else f", week {plan.week}"
            )
            _draw_case(
                axes[0, col], axes[1, col], image_path, label_path, title, plan.cohort == "ct"
            )
        fig.suptitle(
            f"{split} ({profile.name} profile): axial at largest tumour section (top), coronal "
            "(bottom); red = tumour label",
            fontsize=9,
        )
        fig.tight_layout()
        destination = out_dir / "preview" / f"{split}.png"
        with atomic_path(destination) as tmp:
            fig.savefig(tmp, dpi=90)
        written.append(destination)
    return written
