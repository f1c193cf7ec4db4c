"""The README's MONAI Label figure: demo-trained weights, exported, served, and asked to segment.

``tumoraware monailabel figure`` exports the demo's segmentation model (``make demo`` writes it
under ``runs/demo``), starts MONAI Label on a few held-out phantom MRI volumes, runs
``/infer`` on each, and draws the slice with the most expert-labelled tumour, shown
radiologically (:mod:`tumoraware.visualize.display`): expert contour in red, the mask MONAI
Label returned in yellow, 3D Dice in the corner. Two columns: the bundle's default (only the
largest 3D component kept) and the same request with the bundle's
``displayable_configs`` option ``keep_largest_component`` switched off (every component).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.transforms import ScaleIntensityRangePercentiles

from tumoraware.data.names import case_name
from tumoraware.label_server.serve import check_model_listed, start_label_server
from tumoraware.label_server.server import free_port
from tumoraware.pipeline.layout import DEMO_STUDY, SEGMENTATION, StudyLayout
from tumoraware.pipeline.study import SHIPPED
from tumoraware.visualize.display import largest_area_slice, load_pls

__all__ = ["DEMO_WEIGHTS", "monailabel_demo_figure", "volume_dice"]

DEMO_WEIGHTS = str(StudyLayout(DEMO_STUDY).weights(0, SEGMENTATION, SHIPPED[SEGMENTATION]))
"""The demo study's tumour-aware semi-supervised segmentation weights (seed 0)."""


def _normalise(volume: np.ndarray) -> np.ndarray:
    """1st–99th percentile to [-1, 1], the window of the bundle's ``RobustMRINormalized``."""
    scale = ScaleIntensityRangePercentiles(lower=1, upper=99, b_min=-1.0, b_max=1.0, clip=True)
    return np.asarray(scale(volume))


def volume_dice(expert: np.ndarray, mask: np.ndarray) -> float:
    """3D Dice of two boolean volumes of one shape (H, W, D); 1 when both are empty."""
    as_batch = [torch.as_tensor(m, dtype=torch.float32)[None, None] for m in (mask, expert)]
    return float(compute_dice(*as_batch, include_background=True, ignore_empty=False))


def monailabel_demo_figure(
    weights: str | os.PathLike = DEMO_WEIGHTS,
    manifest: str | os.PathLike = "data_manifests/phantoms.json",
    split: str = "mri_test",
    out_png: str | os.PathLike = (
        "bundles/lung_mri_tumor_segmentation/docs/images/monailabel_demo.png"
    ),
    work_dir: str | os.PathLike = "runs/monailabel_demo",
    bundle: str | os.PathLike = "bundles/lung_mri_tumor_segmentation",
    n_cases: int = 3,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Export ``weights``, segment ``n_cases`` volumes of ``split`` through MONAI Label, draw them.

    Returns ``out_png``. Raises FileNotFoundError when the weights are missing (run
    ``make demo`` first) and :class:`~tumoraware.label_server.LabelServerError` when the server
    fails (with its log).
    """
    from tumoraware.data.manifest import load_split
    from tumoraware.export import export_bundle
    from tumoraware.visualize import save_contour_grid

    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"{weights} not found. Fix: run `make demo` first (it trains the segmentation "
            "model this figure serves), or pass --weights PATH/model.pt."
        )
    work = Path(work_dir)
    exported = export_bundle(bundle, weights, work / "dist").bundle_dir
    cases = load_split(manifest, split)[:n_cases]
    if not cases or any("label" not in c for c in cases):
        raise ValueError(f"{manifest}: split {split!r} needs labelled cases for the figure")
    studies = work / "studies"
    shutil.rmtree(studies, ignore_errors=True)
    studies.mkdir(parents=True)
    for case in cases:
        shutil.copy(case["image"], studies)

    server, name = start_label_server(
        exported, studies, work / "app", free_port(), cache_dir=cache_dir,
        log_file=work / "server.log",
    )  # fmt: skip
    columns = {"largest component (default)": True, "all components": False}
    images, experts, predictions, titles, notes = [], [], [], [], []
    with server:
        check_model_listed(server.wait_ready(), name, server)
        for case in cases:
            image_id = case_name(case["image"])
            volume = load_pls(case["image"])[0].astype(np.float32)  # (P, L, S)
            expert = load_pls(case["label"])[0] > 0
            z, _ = largest_area_slice(expert)
            masks = []
            for keep in columns.values():
                out = work / "masks" / f"{image_id}_keep_largest_{keep}.nii.gz"
                server.infer(name, image_id, out, params={"keep_largest_component": keep})
                masks.append(load_pls(out)[0] > 0)
            images.append(_normalise(volume)[:, :, z][None])
            experts.append(expert[:, :, z][None].astype(np.float32))
            predictions.append(np.stack([m[:, :, z] for m in masks]).astype(np.float32))
            titles.append(f"{image_id.removesuffix('_image')} z={z}")
            notes.append([f"3D Dice {volume_dice(expert, m):.2f}" for m in masks])
    return save_contour_grid(
        out_png, [np.stack(images)] * len(columns),
        {"expert": np.stack(experts), "MONAI Label /infer": np.stack(predictions)},
        {"expert": "red", "MONAI Label /infer": "yellow"},
        column_titles=list(columns), row_titles=titles, panel_text=notes,
    )  # fmt: skip
