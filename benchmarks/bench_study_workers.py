"""Table-1 study wall time with stages run one at a time against two at a time, side by side.

    python benchmarks/bench_study_workers.py [--profile test] [--world tiny] [--workers 1,2]
        [--manifest PATH] [--out runs/benchmarks]

Runs the whole seed-0 study (``run_study``, every stage from scratch) once per ``--workers``
value, one after the other on the same machine, each into its own fresh folder, and prints the
wall time, the sum of the stages' wall times (their overlap) and the speed-up against the
first value. Writes ``bench_study_workers.json``. The default is the tiny ``test`` profile on the
tiny phantom world (about 1 min per run; start-up dominates its stages); ``--profile demo
--world demo`` measures ``make demo`` itself (about 27 min for both runs on 2 cores). The CPU
pressure stall around each run shows whether something else was running (see contention.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from contention import stall_us

from tumoraware.data.phantoms import generate_world
from tumoraware.pipeline import run_study
from tumoraware.pipeline.schedule import available_cores


def measure(workers: int, manifest: Path, profile: str, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    stall = stall_us()
    start = time.perf_counter()
    report = run_study(out, manifest, manifest, (0,), profile, progress=False, workers=workers)
    wall = time.perf_counter() - start
    after = stall_us()
    stages = sum(s["wall_s"] for s in report["stages"])
    return {
        "workers": workers, "threads_per_stage": report["schedule"]["threads_per_stage"],
        "stages": len(report["stages"]), "wall_s": wall, "sum_stage_s": stages,
        "overlap": stages / wall,
        "cpu_stall_s": None if stall is None or after is None else (after - stall) / 1e6,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="test")
    parser.add_argument("--world", default="tiny", help="phantom world, when no --manifest")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--manifest", default=None, help="an existing phantom world's manifest")
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_study_") as scratch:
        manifest = Path(args.manifest) if args.manifest else None
        if manifest is None:
            manifest = generate_world(Path(scratch) / "world", 0, args.world,
                                      Path(scratch) / "world.json", progress=False)  # fmt: skip
        rows = [
            measure(int(w), manifest.resolve(), args.profile, Path(scratch) / f"study_w{w}")
            for w in args.workers.split(",")
        ]
    base = rows[0]["wall_s"]
    header = (
        f"{'workers':>7} {'threads':>7} {'stages':>6} {'wall s':>8} {'sum s':>8} {'speed-up':>8}"
    )
    print(f"profile {args.profile}, {available_cores()} cores")
    print(header)
    print("-" * len(header))
    for r in rows:
        r["speed_up"] = base / r["wall_s"]
        threads = r["threads_per_stage"] or "torch"
        print(
            f"{r['workers']:7d} {threads!s:>7} {r['stages']:6d} {r['wall_s']:8.1f} "
            f"{r['sum_stage_s']:8.1f} {r['speed_up']:8.2f}"
        )
    report = {"machine": platform.processor() or platform.machine(), "cores": available_cores(),
              "profile": args.profile, "rows": rows}  # fmt: skip
    (out / "bench_study_workers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'bench_study_workers.json'}")


if __name__ == "__main__":
    main()
