"""Run the Table-1 study stage by stage (resumable), then write and print the report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tumoraware.pipeline.report import build_report, format_table
from tumoraware.pipeline.stage import StageResult, run_stage
from tumoraware.pipeline.study import seeds_stages

__all__ = ["default_bundles_dir", "run_study"]

logger = logging.getLogger(__name__)


def default_bundles_dir() -> Path:
    """``bundles/`` of the checkout this package is installed from (``pip install -e .``)."""
    return Path(__file__).resolve().parents[3] / "bundles"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _kind(name: str) -> str:
    """``seed0/segmentation/cyclegan/eval_mri_test`` -> ``segmentation/eval_mri_test``."""
    parts = name.split("/")
    return f"{parts[1]}/{parts[-1]}" if len(parts) > 2 else name


def run_study(
    out_dir: str | Path,
    ct_manifest: str | Path,
    mri_manifest: str | Path,
    seeds: Sequence[int] = (0,),
    profile: str | None = "demo",
    bundles_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every stage of every seed into ``out_dir`` (skipping unchanged ones), then write
    ``report.md``, ``report.json`` and ``table1.csv`` there and print Table 1."""
    out = Path(out_dir).resolve()
    bundles = Path(bundles_dir) if bundles_dir else default_bundles_dir()
    stages = seeds_stages(bundles, out, Path(ct_manifest), Path(mri_manifest), seeds, profile)
    hashes: dict[str, str] = {}
    results: list[StageResult] = []
    walls: dict[str, float] = {}
    with tqdm(total=len(stages), desc="study", unit="stage", disable=not progress) as bar:
        for stage in stages:
            expected = walls.get(_kind(stage.name))
            result = run_stage(stage, out / stage.name, hashes, progress, expected_s=expected)
            if result.wall_s:  # a skipped stage's recorded time is as good an estimate
                walls[_kind(stage.name)] = result.wall_s
            hashes[stage.name] = result.content_hash
            results.append(result)
            state = (
                "unchanged, skipped" if result.skipped else f"done in {_duration(result.wall_s)}"
            )
            bar.write(f"{stage.name}: {state}")
            bar.update()
    report = build_report(out, seeds, results, profile)
    print(format_table(report))
    print(f"report: {out / 'report.md'}")
    return report
