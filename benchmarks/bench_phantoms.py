"""Phantom generation speed: seconds per scan and voxels per second, per profile and modality.

    python benchmarks/bench_phantoms.py [--profiles tiny,demo] [--scans 3] [--out runs/benchmarks]

Prints a table and writes ``bench_phantoms.json``. Rendering only (no file writes), single
process, the first ``--scans`` CT and MRI scans of each profile's seed-0 world.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from tumoraware.data.phantoms import get_profile, plan_world, synthesise_scan


def measure(profile_name: str, scans: int) -> list[dict]:
    profile = get_profile(profile_name)
    plans = plan_world(profile, seed=0)
    rows = []
    for cohort, modality in (("ct", "CT"), ("mri", "MR")):
        chosen = [p for p in plans if p.cohort == cohort][:scans]
        seconds, voxels = [], []
        for plan in chosen:
            start = time.perf_counter()
            scan = synthesise_scan(0, plan, profile)
            seconds.append(time.perf_counter() - start)
            voxels.append(scan.image.size)
        rows.append({
            "profile": profile_name, "modality": modality, "scans": len(chosen),
            "s_per_scan": float(np.mean(seconds)), "s_max": float(np.max(seconds)),
            "mvoxels_per_scan": float(np.mean(voxels)) / 1e6,
            "mvoxels_per_s": float(np.sum(voxels) / np.sum(seconds)) / 1e6,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="tiny,demo")
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args()
    rows = [r for name in args.profiles.split(",") for r in measure(name, args.scans)]
    header = (
        f"{'profile':8} {'mod':3} {'scans':>5} {'s/scan':>7} {'max s':>6} {'Mvox':>6} {'Mvox/s':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['profile']:8} {r['modality']:3} {r['scans']:5d} {r['s_per_scan']:7.2f} "
            f"{r['s_max']:6.2f} {r['mvoxels_per_scan']:6.2f} {r['mvoxels_per_s']:7.2f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.processor() or platform.machine(), "rows": rows}
    (out / "bench_phantoms.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'bench_phantoms.json'}")


if __name__ == "__main__":
    main()
