"""The study's report: Table 1 (DSC and HD95 per method and split), tumour KL per synthesis model.

Reads what the stages wrote (``summary.json`` of each segmentation evaluation,
``tumour_kl.json`` of each synthesis evaluation, ``stage.json`` wall times) and writes
``table1.csv``, ``report.json`` and ``report.md`` into the study folder, atomically.

With one seed, a cell is mean ± std over the test (or validation) cases, like the paper's
Table 1. With several seeds, it is mean ± std over the seeds' case means (the spread that
tells whether an ordering of methods is real), and ``report.json`` keeps every seed's values.

Every claim (:func:`evaluate_claims`) is judged by a paired bootstrap 95 % confidence interval over
cases and seeds (:mod:`tumoraware.metrics.paired_bootstrap`): the paper's orderings of test DSC
and tumour KL, its test DSC of 0.80, and ours: the tumour-preservation score of tumour-aware
synthesis against CycleGAN's, and the synthetic-only rows. ``A > B`` holds when the interval of
``A - B`` lies above 0; ``A ≥ B`` when it reaches 0 or above (A not significantly worse). The
report also gives the tumour-preservation table (:mod:`tumoraware.metrics.preservation`) with the
reader's ceiling on real MRI, and draws the paper's figures for the first seed
(:mod:`tumoraware.pipeline.figures`: Fig. 3, Fig. 4 per evaluation split, the synthesis loss
curves); a figure whose inputs are missing is skipped with a warning and listed as missing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumoraware import __version__
from tumoraware.atomic import write_json_atomic, write_text_atomic
from tumoraware.metrics.paired_bootstrap import bootstrap_mean_ci, judge, paired_matrix
from tumoraware.pipeline.layout import StudyLayout
from tumoraware.pipeline.stage import StageResult
from tumoraware.pipeline.study import (
    EVAL_SPLITS,
    METHODS,
    PRESERVATION_SPLITS,
    REAL_MRI,
    SYNTHESIS_MODELS,
    WHOLE_SPLITS,
    preservation_name,
)

__all__ = ["PAPER_TEST_DSC", "build_report", "evaluate_claims", "format_table"]

logger = logging.getLogger(__name__)

PAPER_TEST_DSC = 0.80
"""The paper's test DSC of tumour-aware semi-supervised segmentation (Table 1)."""
_SYMBOLS = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}
METRICS = (("val_mean_dice", "DSC"), ("val_hd95", "HD95 (mm)"))
SPLIT_TITLES = {"mri_validation": "Validation", "mri_test": "Test"}
WHOLE = "whole_"
"""Prefix of a whole-volume column (``whole_mri_test/val_mean_dice``): no expert position given."""
WHOLE_DSC = f"{WHOLE}mri_test/val_mean_dice"
"""The whole-volume test DSC cell, whose per-case values the whole-volume claim compares."""
DETECTED = "detected"
"""Share of the label's 3D tumours that a whole-volume mask covers by >= 10 % of their voxels."""


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


def _metric_cells(
    row: dict[str, Any], prefix: str, folders: Sequence[Path], seeds: Sequence[int]
) -> None:
    """``row[f"{prefix}/{metric}"]`` for every Table-1 metric, from each seed's
    ``summary.json`` in ``folders``: mean and std (over cases for one seed, over the seeds'
    means for several), per-seed means and per-case values."""
    summaries = [_read(folder / "summary.json") for folder in folders]
    for metric, _ in METRICS:
        means = [summary["metrics"][metric]["mean"] for summary in summaries]
        stds = [summary["metrics"][metric]["std"] for summary in summaries]
        mean, std = _cell(means, stds)
        row[f"{prefix}/{metric}"] = {
            "mean": mean, "std": std, "per_seed": means,
            "per_case": {str(seed): _case_values(summary, metric)
                         for seed, summary in zip(seeds, summaries, strict=True)},
        }  # fmt: skip


def _whole_cells(
    row: dict[str, Any], layout: StudyLayout, method: str, split: str, seeds: Sequence[int]
) -> None:
    """``row``'s whole-volume cells of ``split`` (``whole_<split>/<metric>``): Dice and HD95
    from the stage's ``summary.json``, the share of tumours detected from its
    ``preservation.json``; mean over cases per seed, then over seeds."""
    folders = [layout.whole_evaluation(seed, method, split) for seed in seeds]
    _metric_cells(row, f"{WHOLE}{split}", folders, seeds)
    rates = [_read(folder / "preservation.json")["overall"]["detection_rate"] for folder in folders]
    mean, std = _cell(rates, [None] * len(rates))
    row[f"{WHOLE}{split}/{DETECTED}"] = {"mean": mean, "std": std, "per_seed": rates}


def build_report(
    out_dir: Path,
    seeds: Sequence[int],
    results: Sequence[StageResult],
    profile: str | None,
    schedule: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Collect every number, write ``table1.csv``, ``report.json``, ``report.md``; return the
    report dict (``rows``: per method and split, mean/std per metric, per-seed values).

    ``schedule`` says how the stages ran (``workers``, ``threads_per_stage``, ``cores``,
    ``elapsed_s`` of this run), since stage wall times overlap when several ran at once."""
    out = Path(out_dir)
    layout = StudyLayout(out)
    rows = []
    for method in METHODS:
        row: dict[str, Any] = {"method": method.key, "title": method.title}
        for split in EVAL_SPLITS:
            folders = [layout.evaluation(seed, method.key, split) for seed in seeds]
            _metric_cells(row, split, folders, seeds)
        for split in WHOLE_SPLITS:
            _whole_cells(row, layout, method.key, split, seeds)
        rows.append(row)
    kl = {}
    for model in SYNTHESIS_MODELS:
        files = [
            _read(layout.synthesis_evaluation(seed, model) / "tumour_kl.json") for seed in seeds
        ]
        values = [f["tumour_kl"] for f in files]
        kl[model] = {
            "mean": float(np.mean(values)),
            "std": float(np.std(values)),
            "per_seed": values,
            "per_case": {str(s): f.get("per_case", {}) for s, f in zip(seeds, files, strict=True)},
        }
    preservation = _preservation(out, seeds)
    tumour_networks = _tumour_networks(out, seeds)
    claims = evaluate_claims(rows, kl, seeds, preservation)
    figures = _figures(out, seeds[0]) if seeds else {}
    stages = [  # a skipped stage's wall time is the one its earlier run recorded
        {"name": r.name, "wall_s": round(r.wall_s, 3), "skipped": r.skipped} for r in results
    ]
    report = {
        "profile": profile or "paper",
        "seeds": list(seeds),
        "spread": "over cases" if len(seeds) == 1 else "over seeds (of the per-seed case means)",
        "rows": rows,
        "tumour_kl": kl,
        "preservation": preservation,
        "tumour_networks": tumour_networks,
        "claims": claims,
        "figures": figures,
        "stages": stages,
        "schedule": schedule or {},
        "machine": _machine(),
        "versions": _versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json_atomic(layout.report, report)
    write_text_atomic(out / "table1.csv", _csv(rows))
    write_text_atomic(out / "report.md", _markdown(report))
    return report


def _case_values(summary: dict[str, Any], metric: str) -> dict[str, float]:
    """``{case: value}`` of ``metric`` from a ``summary.json`` (finite values only)."""
    return {
        str(case["case"]): float(case[metric])
        for case in summary.get("cases", [])
        if _finite(case.get(metric))
    }


def _preservation(out: Path, seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per synthesis model (and the reader's ceiling ``real_mri``) and CT split: the pooled
    preservation scores per seed, their mean ± std over seeds, and per-case Dice per seed.

    Models or splits whose ``preservation.json`` is missing in a seed are left out (a study
    over a CT manifest without ``ct_test`` has no held-out split)."""
    result: dict[str, dict[str, Any]] = {}
    layout = StudyLayout(out)
    targets = [(m, split) for m in SYNTHESIS_MODELS for split in PRESERVATION_SPLITS]
    for model, split in [*targets, (REAL_MRI, "mri_test")]:
        paths = [layout.preservation(s, model, split) / "preservation.json" for s in seeds]
        if not seeds or not all(p.is_file() for p in paths):
            continue
        files = [_read(p) for p in paths]
        entry: dict[str, Any] = {}
        for key in ("dice", "detection_rate", "false_tumour_rate"):
            per_seed = [f["overall"].get(key) for f in files]
            finite = [v for v in per_seed if _finite(v)]
            if len(seeds) > 1:
                std = float(np.std(finite)) if finite else math.nan
            else:  # one seed: the spread over cases where there is one (Dice), else none
                std = files[0]["overall"].get(f"{key}_std", math.nan)
            entry[key] = {
                "mean": float(np.mean(finite)) if finite else math.nan,
                "std": std if _finite(std) else math.nan,
                "per_seed": per_seed,
            }
        entry["per_case"] = {
            str(seed): {str(c["case"]): float(c["dice"]) for c in f.get("cases", [])}
            for seed, f in zip(seeds, files, strict=True)
        }
        for group in ("by_site", "by_size"):  # pooled Dice per group, mean over seeds
            names = sorted({name for f in files for name in f.get(group, {})})
            entry[group] = {
                name: float(np.mean([f[group][name]["dice"] for f in files if name in f[group]]))
                for name in names
            }
        result.setdefault(model, {})[split] = entry
    return result


def _tumour_networks(out: Path, seeds: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """Per synthesis model with tumour networks, per seed: the position-leak verdict, the
    largest centre excess and U_MRI's Dice on synthetic and on real MRI (``evaluate`` stage's
    ``tumour_networks.json``; models without one are left out)."""
    result: dict[str, list[dict[str, Any]]] = {}
    layout = StudyLayout(out)
    for model in SYNTHESIS_MODELS:
        for seed in seeds:
            path = layout.synthesis_evaluation(seed, model) / "tumour_networks.json"
            if path.is_file():
                check = _read(path)
                result.setdefault(model, []).append({
                    "seed": seed, "leak": bool(check["leak"]), "max_excess": check["max_excess"],
                    "u_ct_dice": check["u_ct"]["on_ct"]["dice"],
                    "u_mri_synthetic_dice": check["u_mri"]["on_synthetic"]["dice"],
                    "u_mri_real_dice": check["u_mri"]["on_real_mri"]["dice"],
                })  # fmt: skip
    return result


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _by_seed(per_case: dict[str, dict[str, float]], seeds: Sequence[int]) -> dict[int, dict]:
    return {seed: per_case.get(str(seed), {}) for seed in seeds}


def _comparison(
    a: str,
    b: str,
    op: str,
    a_cases: dict[str, dict[str, float]],
    b_cases: dict[str, dict[str, float]] | float,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """``a op b`` judged on the paired differences over cases and seeds (``b`` a number:
    ``a``'s values against that threshold)."""
    a_by_seed = _by_seed(a_cases, seeds)
    if isinstance(b_cases, (int, float)):
        diff = paired_matrix(a_by_seed, {s: dict.fromkeys(a_by_seed[s], 0.0) for s in seeds},
                             seeds) - float(b_cases)  # fmt: skip
    else:
        diff = paired_matrix(a_by_seed, _by_seed(b_cases, seeds), seeds)
    ci = bootstrap_mean_ci(diff)
    return {"a": a, "b": b, "op": op, "difference": ci, "holds": judge(ci, op)}


def _claim(key: str, text: str, comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": key,
        "claim": text,
        "comparisons": comparisons,
        "holds": bool(comparisons) and all(c["holds"] for c in comparisons),
    }


def evaluate_claims(
    rows: Sequence[dict[str, Any]],
    tumour_kl: dict[str, dict[str, Any]],
    seeds: Sequence[int],
    preservation: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The paper's claims and ours, each judged by paired bootstrap CIs over cases and seeds.

    Inputs are :func:`build_report`'s: ``rows`` (``row["mri_test/val_mean_dice"]["per_case"]``:
    ``{seed: {case: DSC}}``, and the same under ``whole_mri_test/`` for whole volumes, whose
    claim asks whether the paper's best row still wins when nobody places the tumour region),
    ``tumour_kl`` (``[model]["per_case"]``) and ``preservation``
    (``[model][split]["per_case"]``). Each claim: ``id``, ``claim`` (text), ``comparisons``
    (``a``, ``b``, ``op``, ``difference``: mean and CI of ``a − b``, ``holds``) and ``holds``
    (every comparison holds). A claim whose data is missing has no comparisons and fails.
    """
    dsc = {row["method"]: row["mri_test/val_mean_dice"].get("per_case", {}) for row in rows}
    kl = {model: values.get("per_case", {}) for model, values in tumour_kl.items()}
    semi, unsupervised = "tumour_aware_semi_supervised", "tumour_aware_unsupervised"
    claims = [
        _claim(
            "test_dsc_ordering",
            "Test DSC: tumour-aware semi-supervised ≥ tumour-aware unsupervised > CycleGAN",
            [_comparison(semi, unsupervised, ">=", dsc[semi], dsc[unsupervised], seeds),
             _comparison(unsupervised, "cyclegan", ">", dsc[unsupervised], dsc["cyclegan"],
                         seeds)],
        ),
        _claim(
            "tumour_kl_ordering",
            "Tumour KL: tumour-aware < masked CycleGAN < CycleGAN",
            [_comparison("tumour_aware", "masked_cyclegan", "<", kl["tumour_aware"],
                         kl["masked_cyclegan"], seeds),
             _comparison("masked_cyclegan", "cyclegan", "<", kl["masked_cyclegan"],
                         kl["cyclegan"], seeds)],
        ),
        _claim(
            "test_dsc_paper",
            f"Test DSC of tumour-aware semi-supervised ≥ {PAPER_TEST_DSC:.2f} (the paper's)",
            [_comparison(semi, f"{PAPER_TEST_DSC:.2f}", ">=", dsc[semi], PAPER_TEST_DSC, seeds)],
        ),
    ]  # fmt: skip
    if "cyclegan_unsupervised" in dsc:
        claims.append(_claim(
            "synthetic_only_dsc",
            "Test DSC, synthetic MRI only (ours): tumour-aware ≥ CycleGAN",
            [_comparison(unsupervised, "cyclegan_unsupervised", ">=", dsc[unsupervised],
                         dsc["cyclegan_unsupervised"], seeds)],
        ))  # fmt: skip
    whole = {row["method"]: row.get(WHOLE_DSC, {}).get("per_case", {}) for row in rows}
    if whole.get(semi) and whole.get("week_one_only") and whole.get("cyclegan"):
        claims.append(_claim(
            "whole_volume_dsc",
            "Whole-volume test DSC (ours; no expert position): tumour-aware semi-supervised > "
            "week one only and > CycleGAN",
            [_comparison(semi, "week_one_only", ">", whole[semi], whole["week_one_only"], seeds),
             _comparison(semi, "cyclegan", ">", whole[semi], whole["cyclegan"], seeds)],
        ))  # fmt: skip
    for split in PRESERVATION_SPLITS:
        models = preservation or {}
        if split in models.get("tumour_aware", {}) and split in models.get("cyclegan", {}):
            claims.append(_claim(
                f"preservation_{split}",
                f"Tumour-preservation Dice on {split} (ours): tumour-aware > CycleGAN",
                [_comparison("tumour_aware", "cyclegan", ">",
                             models["tumour_aware"][split]["per_case"],
                             models["cyclegan"][split]["per_case"], seeds)],
            ))  # fmt: skip
    return claims


FIGURES = (
    ("fig3", "Fig. 3: MRI synthesised from CT (CT tumour contour red)"),
    *(
        (f"fig4_{split}", f"Fig. 4: segmentations on {SPLIT_TITLES[split].lower()} MRI "
         "(expert red, method yellow)")
        for split in EVAL_SPLITS
    ),
    ("synthesis_losses", "Synthesis training losses"),
)  # fmt: skip


def _figures(out: Path, seed: int) -> dict[str, dict[str, Any]]:
    """Draw every figure of ``seed`` into ``out``; a figure that fails (missing or unreadable
    inputs) is logged and recorded as ``missing`` with the reason, never raised."""
    from tumoraware.pipeline import figures

    draw = {
        "fig3": (figures.FIG3_FILENAME, lambda: figures.write_fig3(out, seed)),
        "synthesis_losses": (figures.LOSSES_FILENAME, lambda: figures.write_loss_curves(out, seed)),
    }
    for split in EVAL_SPLITS:
        draw[f"fig4_{split}"] = (
            figures.fig4_filename(split),
            lambda split=split: figures.write_fig4(out, seed, split),
        )
    result = {}
    for key, title in FIGURES:
        filename, write = draw[key]
        entry: dict[str, Any] = {"file": filename, "title": title, "seed": seed}
        try:
            write()
            entry["status"] = "written"
        except Exception as error:  # a figure must never cost the report of a finished study
            logger.warning("report: %s not drawn (%s: %s)", filename, type(error).__name__, error)
            entry.update(status="missing", reason=f"{type(error).__name__}: {error}")
            (out / filename).unlink(missing_ok=True)  # not an outdated figure of an earlier run
        result[key] = entry
    return result


def _machine() -> dict[str, Any]:
    """Platform, processor and core count: the same seeds give other numbers on another CPU."""
    processor = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        processor = names[0] if names else processor
    return {"platform": platform.platform(), "processor": processor or "unknown",
            "cores": os.cpu_count(), "python": platform.python_version()}  # fmt: skip


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
    whole = [f"{WHOLE}{s}/{m}" for s in WHOLE_SPLITS for m in (*(m for m, _ in METRICS), DETECTED)]
    for key in whole:
        header += [f"{key.replace('/', '_')}_mean", f"{key.replace('/', '_')}_std"]
    writer.writerow(header)
    for row in rows:
        line = [row["method"]]
        keys = [f"{split}/{metric}" for split in EVAL_SPLITS for metric, _ in METRICS]
        for key in [*keys, *whole]:
            cell = row[key]
            line += [f"{cell['mean']:.6g}", f"{cell['std']:.6g}"]
        writer.writerow(line)
    return buffer.getvalue()


def format_table(report: dict[str, Any]) -> str:
    """Table 1 as markdown: one row per method, DSC and HD95 for validation and test on the
    tumour regions (the paper's protocol), then DSC, HD95 and tumours detected on whole test
    volumes (no expert position given; columns marked "whole")."""
    columns = [
        (f"{s}/{m}", f"{SPLIT_TITLES[s]} {label}") for s in EVAL_SPLITS for m, label in METRICS
    ]
    whole_labels = (*METRICS, (DETECTED, "detected"))
    columns += [(f"{WHOLE}{s}/{m}", f"{SPLIT_TITLES[s]} whole {label}")
                for s in WHOLE_SPLITS for m, label in whole_labels]  # fmt: skip
    head = "| Method | " + " | ".join(label for _, label in columns)
    lines = [head + " |", "|---" * (1 + len(columns)) + "|"]
    for row in report["rows"]:
        cells = []
        for key, _ in columns:
            cell = row.get(key)
            if cell is None:
                cells.append("n/a")
            elif key.endswith(DETECTED):
                cells.append(_percent(cell["mean"]))
            else:
                cells.append(_fmt(cell["mean"], cell["std"], 2 if "dice" in key else 1))
        lines.append(f"| {row['title']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100.0 * value:.0f} %"


def _ci(ci: dict[str, Any], digits: int = 3) -> str:
    if not (_finite(ci.get("low")) and _finite(ci.get("high"))):
        return "n/a"
    return f"{ci['mean']:+.{digits}f} [{ci['low']:+.{digits}f}, {ci['high']:+.{digits}f}]"


def _claims_markdown(report: dict[str, Any]) -> str:
    """One row per comparison: what is compared, the mean paired difference and its 95 % CI
    over cases and seeds, and whether the comparison (and its claim) holds."""
    lines = [
        "| Claim | Comparison | Mean difference [95% CI] | Holds |",
        "|---|---|---|---|",
    ]
    for claim in report.get("claims", []):
        verdict = "**holds**" if claim["holds"] else "does not hold"
        if not claim["comparisons"]:
            lines.append(f"| {claim['claim']} | no data | n/a | {verdict} |")
        for i, comp in enumerate(claim["comparisons"]):
            name = claim["claim"] if i == 0 else ""
            sign = "✓" if comp["holds"] else "✗"
            lines.append(
                f"| {name} | {comp['a']} {_SYMBOLS[comp['op']]} {comp['b']} | "
                f"{_ci(comp['difference'])} (n = {comp['difference']['n_seeds']} seeds × "
                f"{comp['difference']['n_cases']} cases) | {sign}"
                + (f" (claim {verdict})" if i == len(claim["comparisons"]) - 1 else "")
                + " |"
            )
    return "\n".join(lines)


def _tumour_networks_markdown(report: dict[str, Any]) -> str:
    """Position-leak probes of U_CT / U_MRI, one row per model and seed."""
    checks = report.get("tumour_networks") or {}
    if not checks:
        return ""
    lines = [
        "Position-leak probe of the tumour networks (U on constant and rolled crops; a leak = "
        "the crop centre painted as tumour whatever the image holds):",
        "",
        "| Synthesis model | seed | Position leak | centre excess | U_CT Dice (CT) | "
        "U_MRI Dice (synthetic) | U_MRI Dice (real MRI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, rows in checks.items():
        for r in rows:
            leak = "**LEAK**" if r["leak"] else "none"
            lines.append(
                f"| {model} | {r['seed']} | {leak} | {r['max_excess']:.2f} | "
                f"{r['u_ct_dice']:.2f} | {r['u_mri_synthetic_dice']:.2f} | "
                f"{r['u_mri_real_dice']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _preservation_markdown(report: dict[str, Any]) -> str:
    """The preservation table: per model and CT split, Dice, detection and false-tumour rates
    (mean ± std over seeds), then the reader's ceiling on real MRI."""
    preservation = report.get("preservation") or {}
    if not preservation:
        return "No tumour-preservation results (the study has no preservation stages).\n"
    lines = [
        "| Synthesis model | CT split | Reader Dice | Tumours detected | False tumours "
        "(share of tumour-free slices) |",
        "|---|---|---|---|---|",
    ]
    for model, splits in preservation.items():
        for split, entry in splits.items():
            cells = [
                _fmt(entry[k]["mean"], entry[k]["std"], 2)
                if _finite(entry[k]["std"]) else f"{entry[k]['mean']:.2f}"
                for k in ("dice", "detection_rate", "false_tumour_rate")
            ]  # fmt: skip
            title = "reader's ceiling: real MRI" if model == REAL_MRI else model
            lines.append(f"| {title} | {split} | " + " | ".join(cells) + " |")
    for group, title in (("by_site", "tumour site"), ("by_size", "tumour size")):
        names = sorted({n for splits in preservation.values() for e in splits.values()
                        for n in e.get(group, {})})  # fmt: skip
        if not names:
            continue
        lines += ["", f"Reader Dice by {title} (mean over seeds):", "",
                  "| Synthesis model | split | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]  # fmt: skip
        for model, splits in preservation.items():
            for split, entry in splits.items():
                cells = [f"{entry[group][n]:.2f}" if n in entry.get(group, {}) else "–"
                         for n in names]  # fmt: skip
                lines.append(f"| {model} | {split} | " + " | ".join(cells) + " |")
    first = report["seeds"][0] if report.get("seeds") else None
    panels = [
        (model, f"{preservation_name(first, model, split)}/preservation_panels.png")
        for model, splits in preservation.items()
        for split in splits
        if first is not None and split == PRESERVATION_SPLITS[-1]
    ]
    if panels:
        links = ", ".join(f"[{m}]({path})" for m, path in panels)
        split = PRESERVATION_SPLITS[-1]
        lines += ["", f"What the reader read (seed {first}, {split}; CT label red, reader "
                  f"yellow): {links}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _figures_markdown(report: dict[str, Any]) -> str:
    parts = []
    for figure in report.get("figures", {}).values():
        if figure["status"] == "written":
            parts.append(f"### {figure['title']}\n\n![{figure['title']}]({figure['file']})")
        else:
            parts.append(f"### {figure['title']}\n\nNot drawn: {figure['reason']}")
    return "\n\n".join(parts)


def _schedule_markdown(report: dict[str, Any]) -> str:
    """How the stages ran: their wall times overlap when several ran at once."""
    schedule = report.get("schedule") or {}
    if not schedule:
        return ""
    threads = schedule.get("threads_per_stage") or "torch's default number of"
    return (
        f"Stages ran {schedule['workers']} at a time with {threads} thread(s) each on "
        f"{schedule['cores']} cores; this run took {schedule['elapsed_s']:.0f} s in all "
        "(stages skipped as unchanged take none).\n\n"
    )


def _markdown(report: dict[str, Any]) -> str:
    kl = "\n".join(
        f"| {model} | {v['mean']:.3f} ± {v['std']:.3f} |"
        for model, v in report["tumour_kl"].items()
    )
    stages = "\n".join(
        f"| {s['name']} | {s['wall_s']:.0f}{' (earlier run)' if s['skipped'] else ''} |"
        for s in report["stages"]
    )
    first = report["seeds"][0] if report["seeds"] else "-"
    return (
        f"# Table 1 on the phantom world (profile `{report['profile']}`, seeds "
        f"{report['seeds']})\n\nMean ± std {report['spread']}.\n\n{format_table(report)}\n\n"
        f"## Tumour KL divergence (synthetic vs real MRI tumour intensities)\n\n"
        f"| Synthesis model | KL |\n|---|---|\n{kl}\n\n"
        f"## Tumour preservation: does a reader trained on real MRI find the CT tumour?\n\n"
        f"The week-one-only segmenter (real labelled MRI only) reads each model's synthetic MRI; "
        f"Dice against the CT label, tumours detected (≥ 10 % of the tumour covered), and "
        f"tumour-free CT slices on which it finds a tumour. Mean ± std {report['spread']} "
        f"(rates pooled over cases, so one seed has no spread).\n\n"
        f"{_preservation_markdown(report)}\n{_tumour_networks_markdown(report)}\n"
        f"## Claims, with paired bootstrap 95 % confidence intervals\n\n"
        f"Each comparison is the mean paired difference A − B over the same cases in every "
        f"seed, with a crossed bootstrap interval over cases and seeds. `>` / `<` hold when the "
        f"interval excludes 0; `≥` holds when A is not significantly below B (the interval "
        f"reaches 0).\n\n"
        f"{_claims_markdown(report)}\n\n## Figures (seed {first})\n\n"
        f"{_figures_markdown(report)}\n\n## Stages (wall time, s)\n\n"
        f"| Stage | s |\n|---|---|\n{stages}\n\n{_schedule_markdown(report)}"
        f"Machine: {report['machine']['platform']}, {report['machine']['processor']}, "
        f"{report['machine']['cores']} cores, "
        f"Python {report['machine']['python']}; versions {report['versions']}.\n"
    )
