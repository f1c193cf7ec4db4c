"""The study's report: Table 1 (DSC and HD95 per method and split), tumour KL per synthesis model.

Reads what the stages wrote (``summary.json`` of each segmentation evaluation,
``tumour_kl.json`` of each synthesis evaluation, ``stage.json`` wall times) and writes
``table1.csv``, ``report.json`` and ``report.md`` into the study folder, atomically.

With one seed, a cell is mean ± std over the test (or validation) cases, like the paper's
Table 1. With several seeds, it is mean ± std over the seeds' case means (the spread that
tells whether an ordering of methods is real), and ``report.json`` keeps every seed's values.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumoraware import __version__
from tumoraware.atomic import write_json_atomic, write_text_atomic
from tumoraware.pipeline.stage import StageResult
from tumoraware.pipeline.study import EVAL_SPLITS, METHODS, SYNTHESIS_MODELS

__all__ = ["build_report", "format_table"]

METRICS = (("val_mean_dice", "DSC"), ("val_hd95", "HD95 (mm)"))
SPLIT_TITLES = {"mri_validation": "Validation", "mri_test": "Test"}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"report: cannot read {path} ({error}). Fix: run the study again; the stage that "
            "writes it re-runs when its output is missing."
        ) from None


def _cell(values: Sequence[float], stds: Sequence[float]) -> tuple[float, float]:
    """(mean, std): over cases for one seed, over the seeds' means for several."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    if len(values) == 1:
        return float(finite[0]), float(stds[0]) if stds[0] is not None else math.nan
    return float(np.mean(finite)), float(np.std(finite))


def _fmt(mean: float, std: float, digits: int) -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def build_report(
    out_dir: Path, seeds: Sequence[int], results: Sequence[StageResult], profile: str | None
) -> dict[str, Any]:
    """Collect every number, write ``table1.csv``, ``report.json``, ``report.md``; return the
    report dict (``rows``: per method and split, mean/std per metric, per-seed values)."""
    out = Path(out_dir)
    rows = []
    for method in METHODS:
        row: dict[str, Any] = {"method": method.key, "title": method.title}
        for split in EVAL_SPLITS:
            for metric, _ in METRICS:
                means, stds = [], []
                for seed in seeds:
                    name = f"seed{seed}/segmentation/{method.key}/eval_{split}"
                    summary = _read(out / name / "summary.json")["metrics"][metric]
                    means.append(summary["mean"])
                    stds.append(summary["std"])
                mean, std = _cell(means, stds)
                row[f"{split}/{metric}"] = {"mean": mean, "std": std, "per_seed": means}
        rows.append(row)
    kl = {}
    for model in SYNTHESIS_MODELS:
        values = [
            _read(out / f"seed{seed}/synthesis/{model}/evaluate" / "tumour_kl.json")["tumour_kl"]
            for seed in seeds
        ]
        kl[model] = {
            "mean": float(np.mean(values)),
            "std": float(np.std(values)),
            "per_seed": values,
        }
    stages = [  # a skipped stage's wall time is the one its earlier run recorded
        {"name": r.name, "wall_s": round(r.wall_s, 3), "skipped": r.skipped} for r in results
    ]
    report = {
        "profile": profile or "paper",
        "seeds": list(seeds),
        "spread": "over cases" if len(seeds) == 1 else "over seeds (of the per-seed case means)",
        "rows": rows,
        "tumour_kl": kl,
        "stages": stages,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "versions": _versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "table1.csv", _csv(rows))
    write_text_atomic(out / "report.md", _markdown(report))
    return report


def _versions() -> dict[str, str]:
    import monai
    import torch

    return {"tumoraware": __version__, "monai": monai.__version__, "torch": torch.__version__}


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method"]
    for split in EVAL_SPLITS:
        for metric, _ in METRICS:
            header += [f"{split}_{metric}_mean", f"{split}_{metric}_std"]
    writer.writerow(header)
    for row in rows:
        line = [row["method"]]
        for split in EVAL_SPLITS:
            for metric, _ in METRICS:
                cell = row[f"{split}/{metric}"]
                line += [f"{cell['mean']:.6g}", f"{cell['std']:.6g}"]
        writer.writerow(line)
    return buffer.getvalue()


def format_table(report: dict[str, Any]) -> str:
    """Table 1 as markdown: one row per method, DSC and HD95 for validation and test."""
    head = "| Method | " + " | ".join(
        f"{SPLIT_TITLES[s]} {label}" for s in EVAL_SPLITS for _, label in METRICS
    )
    lines = [head + " |", "|---" * (1 + len(EVAL_SPLITS) * len(METRICS)) + "|"]
    for row in report["rows"]:
        cells = [
            _fmt(row[f"{s}/{m}"]["mean"], row[f"{s}/{m}"]["std"], 2 if m == "val_mean_dice" else 1)
            for s in EVAL_SPLITS
            for m, _ in METRICS
        ]
        lines.append(f"| {row['title']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    kl = "\n".join(
        f"| {model} | {v['mean']:.3f} ± {v['std']:.3f} |"
        for model, v in report["tumour_kl"].items()
    )
    stages = "\n".join(
        f"| {s['name']} | {s['wall_s']:.0f} |{' (earlier run)' if s['skipped'] else ''}"
        for s in report["stages"]
    )
    return (
        f"# Table 1 on the phantom world (profile `{report['profile']}`, seeds "
        f"{report['seeds']})\n\nMean ± std {report['spread']}.\n\n{format_table(report)}\n\n"
        f"## Tumour KL divergence (synthetic vs real MRI tumour intensities)\n\n"
        f"| Synthesis model | KL |\n|---|---|\n{kl}\n\n## Stages (wall time, s)\n\n"
        f"| Stage | s |\n|---|---|\n{stages}\n\nMachine: {report['machine']['platform']}, "
        f"Python {report['machine']['python']}; versions {report['versions']}.\n"
    )
