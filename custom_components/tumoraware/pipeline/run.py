"""Run the Table-1 study stage by stage (resumable, several at once), then write and print the
report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tumoraware.pipeline.report import build_report, format_table
from tumoraware.pipeline.schedule import available_cores, run_stages, threads_per_stage
from tumoraware.pipeline.study import seeds_stages

__all__ = ["default_bundles_dir", "run_study"]


def default_bundles_dir() -> Path:
    """``bundles/`` of the checkout this package is installed from (``pip install -e .``)."""
    return Path(__file__).resolve().parents[3] / "bundles"


def run_study(
    out_dir: str | Path,
    ct_manifest: str | Path,
    mri_manifest: str | Path,
    seeds: Sequence[int] = (0,),
    profile: str | None = "demo",
    bundles_dir: str | Path | None = None,
    progress: bool = True,
    workers: int = 1,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Run every stage of every seed into ``out_dir`` (skipping unchanged ones, ``workers`` at
    a time), then write ``report.md``, ``report.json`` and ``table1.csv`` there and print
    Table 1. ``tracking="mlflow"``: the whole study in one MLflow experiment
    (:mod:`tumoraware.pipeline.tracking`)."""
    from tumoraware.pipeline import tracking as tracker

    tracking = tracker.check_tracking(tracking)
    out = Path(out_dir).resolve()
    bundles = Path(bundles_dir) if bundles_dir else default_bundles_dir()
    stages = seeds_stages(bundles, out, Path(ct_manifest), Path(mri_manifest), seeds, profile)
    if tracking:
        out.mkdir(parents=True, exist_ok=True)
        stages = tracker.tracked_stages(stages, out)
    start = time.perf_counter()
    results = run_stages(stages, out, workers, progress)
    schedule = {
        "workers": workers,
        "threads_per_stage": threads_per_stage(workers),
        "cores": available_cores(),
        "elapsed_s": round(time.perf_counter() - start, 1),
    }
    report = build_report(out, seeds, results, profile, schedule)
    if tracking:
        tracker.tag_runs(out, stages)
        tracker.log_table(out, report)
        print(f"tracking: MLflow experiment {tracker.experiment_name(out)} in "
              f"{tracker.tracking_uri(out)}")  # fmt: skip
    print(format_table(report))
    print(f"report: {out / 'report.md'}")
    return report
