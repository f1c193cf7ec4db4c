"""RTSTRUCT → NIfTI speed and exactness on a 512×512×130 CT, side by side with plastimatch.

    python benchmarks/bench_rtstruct.py [--repeats 3] [--out runs/benchmarks]

Writes a generated CT series (0.7 mm pixels, 2.5 mm slices) with a GTV-1 sphere (R = 30 mm)
and a ring with a hole, then times, as the median of ``--repeats`` warm runs:

- ours, read + rasterise in memory; + write ``.nii`` (gzip excluded); ``rtstruct_to_nifti``
  writing ``.nii.gz`` (gzip included);
- plastimatch (``pip install plastimatch``), when installed: ``convert --referenced-ct
  --xor-contours`` of the structure onto the CT grid (label only; and with the image converted
  by a second call, as our converter writes both), ``.nii`` and ``.nii.gz``.

Dice against the analytic truth is reported for every row. Prints a table, writes JSON.
Target: ≤ 1.0 s excluding gzip on 2 cores, never slower than the fastest peer, Dice ≥ 0.999.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.dicom_factory

from tests.dicom_factory import (
    Geometry,
    Ring,
    Sphere,
    dice,
    truth_mask,
    write_ct_series,
    write_rtstruct,
)
from tumoraware.atomic import save_volume_atomic
from tumoraware.data.dicom import rasterise_roi, read_dicom_series, rtstruct_to_nifti


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def _row(tool: str, roi: str, step: str, seconds: float, dice_value: float) -> dict:
    return {"tool": tool, "roi": roi, "step": step, "seconds": seconds, "dice": dice_value}


def _canonical(path: Path) -> np.ndarray:
    """Label array in RAS+ voxel order, whoever wrote it."""
    return np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_rtstruct_"))
    geometry = Geometry(
        rows=512, cols=512, pixel_spacing=(0.7, 0.7), origin=(-179.0, -179.0, -160.0),
        slice_spacing=2.5, n_slices=130,
    )  # fmt: skip
    ct = write_ct_series(work / "ct", geometry)
    shapes = {
        "GTV-1": Sphere((10.0, -20.0, 0.0), 30.0),
        "RING": Ring((-60.0, 30.0, -20.0), 25.0, 12.0, 20.0),
    }
    rtstruct = write_rtstruct(work / "rtstruct.dcm", ct, shapes)
    rows = []
    # the pip package puts the binary next to this interpreter, which may not be on PATH
    plastimatch = shutil.which("plastimatch") or shutil.which(
        "plastimatch", path=str(Path(sys.executable).parent)
    )
    for roi, shape in shapes.items():
        truth = truth_mask(ct, shape)

        def ours_memory(roi=roi):
            series = read_dicom_series(work / "ct")
            return series, rasterise_roi(rtstruct, series, roi)

        def ours_nii(roi=roi):
            series, label = ours_memory(roi)
            save_volume_atomic(series.array, series.affine_ras, work / "ours" / "image.nii")
            return save_volume_atomic(label, series.affine_ras, work / "ours" / "label.nii")

        def ours_gz(roi=roi):
            return rtstruct_to_nifti(work / "ct", rtstruct, roi, work / "ours_gz")[1]

        def peer(fmt: str, with_image: bool, xor: bool = True, roi=roi) -> Path:
            target = work / f"plastimatch_{fmt.replace('.', '_')}"
            shutil.rmtree(target, ignore_errors=True)
            if with_image:  # plastimatch converts the image in a call of its own
                subprocess.run(
                    [plastimatch, "convert", "--input", str(work / "ct"), "--output-img",
                     str(target / f"image.{fmt}")],
                    check=True, capture_output=True,
                )  # fmt: skip
            subprocess.run(
                [plastimatch, "convert", "--input", str(rtstruct), "--referenced-ct",
                 str(work / "ct"), "--output-prefix", str(target), "--prefix-format", fmt,
                 *(["--xor-contours"] if xor else [])],
                check=True, capture_output=True,
            )  # fmt: skip
            return target / f"{roi}.{fmt}"

        seconds, (series, label) = _median_time(ours_memory, args.repeats)
        rows.append(
            _row("tumoraware", roi, "read + rasterise (memory)", seconds, dice(label, truth))
        )
        # Files are compared in RAS+ voxel order, so a writer's orientation choice cannot matter.
        reference = _canonical(save_volume_atomic(truth, series.affine_ras, work / "truth.nii"))
        runs = [("tumoraware", "+ write .nii (gzip excluded)", ours_nii),
                ("tumoraware", "rtstruct_to_nifti .nii.gz", ours_gz)]  # fmt: skip
        if plastimatch is not None:
            runs += [
                ("plastimatch", f"{what} .{fmt}", lambda fmt=fmt, image=image: peer(fmt, image))
                for fmt in ("nii", "nii.gz")
                for what, image in (("label (--xor-contours)", False), ("image + label", True))
            ]
            if roi == "RING":  # plastimatch's default fills holes
                runs.append(
                    ("plastimatch", "label, default flags .nii", lambda: peer("nii", False, False))
                )
        for tool, step, run in runs:
            seconds, path = _median_time(run, args.repeats)
            rows.append(_row(tool, roi, step, seconds, dice(_canonical(path), reference)))
    print(f"{'tool':12} {'roi':6} {'step':32} {'seconds':>8} {'dice':>8}")
    print("-" * 70)
    for r in rows:
        print(f"{r['tool']:12} {r['roi']:6} {r['step']:32} {r['seconds']:8.3f} {r['dice']:8.5f}")
    if plastimatch is None:
        print("plastimatch not installed (pip install plastimatch): peer rows skipped")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.processor() or platform.machine(), "series": "512x512x130",
              "repeats": args.repeats, "rows": rows}  # fmt: skip
    (out / "bench_rtstruct.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'bench_rtstruct.json'}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
