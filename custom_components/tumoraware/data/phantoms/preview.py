"""Quick-look PNGs of the phantom world, one per split, so a person can see what trains.

Each case shows an axial slice through the tumour's largest cross-section and a coronal
slice through its centre, in radiological convention (patient's right on the viewer's
left, anterior up), with the tumour label contoured in red. CT uses a soft-tissue window
(-160..240 HU), which makes the iso-dense tumour border visible as the problem it is.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from tumoraware.atomic import atomic_path

from .profiles import PhantomProfile
from .world import ScanPlan

__all__ = ["preview_paths", "write_previews"]

_SPLITS = {
    "ct_train": lambda p: p.cohort == "ct",
    "mri_week1": lambda p: p.cohort == "mri" and p.week == 1,
    "mri_validation": lambda p: p.cohort == "mri" and p.week > 1,
    "mri_test": lambda p: p.cohort == "mri_test",
}


def _radiological(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Reorient to RAS and flip x, so axis 0 runs from the patient's right to left.

    Then ``arr[:, :, k].T[::-1]`` is an axial slice in radiological convention (patient's
    right on the viewer's left, anterior up). Also returns the voxel sizes (mm) in that order.
    """
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(volume, ornt)
    zooms = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0))[ornt[:, 0].astype(int)])
    return ras[::-1], zooms


def _window(image: np.ndarray, is_ct: bool) -> tuple[float, float]:
    return (-160.0, 240.0) if is_ct else tuple(np.percentile(image, [1.0, 99.5]))


def _draw_case(
    ax_axial, ax_coronal, image_path: Path, label_path: Path, title: str, is_ct: bool
) -> None:
    img_nii, lab_nii = nib.load(image_path), nib.load(label_path)
    image, zooms = _radiological(np.asanyarray(img_nii.dataobj), img_nii.affine)
    label, _ = _radiological(np.asanyarray(lab_nii.dataobj), lab_nii.affine)
    vmin, vmax = _window(image, is_ct)
    k = int(np.argmax(label.sum(axis=(0, 1)))) if label.any() else image.shape[2] // 2
    j = int(np.round(np.nonzero(label)[1].mean())) if label.any() else image.shape[1] // 2
    axial, axial_label = image[:, :, k].T[::-1], label[:, :, k].T[::-1]
    coronal, coronal_label = image[:, j, :].T[::-1], label[:, j, :].T[::-1]
    for ax, view, mask, aspect in (
        (ax_axial, axial, axial_label, zooms[1] / zooms[0]),
        (ax_coronal, coronal, coronal_label, zooms[2] / zooms[0]),
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
        fig, axes = plt.subplots(2, len(cases), figsize=(2.6 * len(cases), 5.4), squeeze=False)
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
        plt.close(fig)
        written.append(destination)
    return written
