"""Whole-volume accuracy of demo-trained segmentation models, as MONAI Label users get it.

Runs the segmentation bundle's ``inference.json`` (whole volume, every axial slice, largest
3D component kept; no expert label to place a tumour region) with each model's weights over the
``mri_validation`` and ``mri_test`` splits, then scores every mask against the expert label
with ``volume_dice`` (MONAI's ``compute_dice``), the Dice of the README's MONAI Label figure.
A volume is *hit* when its Dice exceeds 0.1. Prints a table and writes JSON; run after
``make demo``::

    python benchmarks/whole_volume_dice.py --study runs/demo --seed 0
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from tumoraware.atomic import write_json_atomic
from tumoraware.data.manifest import load_split
from tumoraware.label_server.figure import volume_dice  # the Dice of the MONAI Label figure
from tumoraware.pipeline.layout import SEGMENTATION, StudyLayout

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "lung_mri_tumor_segmentation"
MODELS = ("tumour_aware_semi_supervised", "week_one_only")
SPLITS = ("mri_validation", "mri_test")
HIT = 0.1


def infer(weights: Path, manifest: Path, split: str, out_dir: Path) -> None:
    """``python -m monai.bundle run`` of ``inference.json`` + the demo profile, as users run it."""
    configs = "['configs/inference.json','configs/profiles/demo.json']"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs,
               "--ckpt_path", str(weights.resolve()), "--mri_manifest", str(manifest.resolve()),
               "--infer_split", split, "--output_dir", str(out_dir.resolve())]  # fmt: skip
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"inference of {weights} on {split} failed:\n{result.stderr[-3000:]}")


def load_pair(mask_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A written 0/1 mask and its expert label as boolean volumes of one grid, shapes (H, W, D)."""
    mask, label = (np.asarray(nib.load(p).dataobj) > 0 for p in (mask_path, label_path))
    if mask.shape != label.shape:
        raise ValueError(f"{mask_path}: shape {mask.shape} differs from {label_path} {label.shape}")
    return mask, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--manifest", type=Path, default=ROOT / "data_manifests" / "phantoms.json")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "whole_volume_dice.json")
    args = parser.parse_args()
    results: dict[str, dict[str, dict]] = {}
    for model in MODELS:
        weights = StudyLayout(args.study).weights(args.seed, SEGMENTATION, model)
        if not weights.is_file():
            sys.exit(f"error: {weights} is missing. Fix: run `make demo` first.")
        for split in SPLITS:
            out_dir = args.out.parent / "whole_volume" / model / split
            infer(weights, args.manifest, split, out_dir)
            cases = {}
            for item in load_split(args.manifest, split):
                image = Path(item["image"])  # load_split gives absolute paths
                mask = out_dir / image.name.replace(".nii.gz", "_seg.nii.gz")
                predicted, expert = load_pair(mask, Path(item["label"]))
                cases[image.name] = volume_dice(expert, predicted)
            dice = list(cases.values())
            results.setdefault(model, {})[split] = {
                "mean_dice": float(np.mean(dice)),
                "hit": sum(d > HIT for d in dice),
                "n": len(dice),
                "cases": cases,
            }
    print(f"| Model (seed {args.seed}) | " + " | ".join(SPLITS) + " |")
    print("|---|" + "---|" * len(SPLITS))
    for model, splits in results.items():
        cells = [f"{r['mean_dice']:.2f} ({r['hit']} of {r['n']} hit)" for r in splits.values()]
        print(f"| {model} | " + " | ".join(cells) + " |")
    write_json_atomic(args.out, {"seed": args.seed, "hit_dice": HIT, "models": results})
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
