"""The study's report: Table 1 (DSC and HD95 per method and split), tumour KL per synthesis model.

Reads what the stages wrote (``summary.json`` of each segmentation evaluation,
``tumour_kl.json`` of each synthesis evaluation, ``stage.json`` wall times) and writes
``table1.csv``, ``report.json`` and ``report.md`` into the study folder, atomically.

With one seed, a cell is mean ± std over the test (or validation) cases, like the paper's
Table 1. With several seeds, it is mean ± std over the seeds' case means (the spread that
tells whether an ordering of methods is real), and ``report.json`` keeps every seed's values.

The report also checks the paper's claims seed by seed (:func:`evaluate_claims`: the orderings
of test DSC and tumour KL, test DSC ≥ 0.80; a claim holds overall when it holds for at least
⌈2/3·n⌉ of n seeds) and draws the paper's figures for the first seed
(:mod:`tumoraware.pipeline.figures`: Fig. 3, Fig. 4 per evaluation split, the synthesis loss
curves); a figure whose inputs are missing is skipped with a warning and listed as missing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import operator
import os
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

__all__ = ["PAPER_TEST_DSC", "build_report", "evaluate_claims", "format_table", "seeds_needed"]

logger = logging.getLogger(__name__)

PAPER_TEST_DSC = 0.80
"""The paper's test DSC of tumour-aware semi-supervised segmentation (Table 1)."""
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_SYMBOLS = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}
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
    claims = evaluate_claims(rows, kl, seeds)
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
        "claims": claims,
        "figures": figures,
        "stages": stages,
        "schedule": schedule or {},
        "machine": _machine(),
        "versions": _versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "table1.csv", _csv(rows))
    write_text_atomic(out / "report.md", _markdown(report))
    return report


def seeds_needed(n_seeds: int) -> int:
    """Seeds a claim must hold for: ⌈2/3·n⌉ (2 of 3, 1 of 1, 2 of 2, 4 of 5)."""
    return (2 * n_seeds + 2) // 3


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _claim(
    key: str,
    text: str,
    terms: Sequence[tuple[str, Sequence[float]]],
    ops: Sequence[str],
    seeds: Sequence[int],
) -> dict[str, Any]:
    """A chained comparison ``terms[0] ops[0] terms[1] ...`` checked per seed (each term a
    label and its ``(n_seeds,)`` values); a non-finite value makes it fail for that seed."""
    per_seed = []
    for i, seed in enumerate(seeds):
        values = [series[i] for _, series in terms]
        holds = all(_finite(v) for v in values) and all(
            _COMPARE[op](a, b) for op, a, b in zip(ops, values, values[1:], strict=False)
        )
        per_seed.append(
            {"seed": seed, "holds": bool(holds),
             "values": {label: float(v) if _finite(v) else None
                        for (label, _), v in zip(terms, values, strict=True)}}
        )  # fmt: skip
    holding, needed = sum(p["holds"] for p in per_seed), seeds_needed(len(seeds))
    relation = " ".join(
        f"{label} {_SYMBOLS[op]}" for (label, _), op in zip(terms, ops, strict=False)
    )
    return {
        "id": key,
        "claim": text,
        "relation": f"{relation} {terms[-1][0]}",
        "ops": list(ops),
        "per_seed": per_seed,
        "seeds_holding": holding,
        "seeds_needed": needed,
        "holds": bool(seeds) and holding >= needed,
    }


def evaluate_claims(
    rows: Sequence[dict[str, Any]], tumour_kl: dict[str, dict[str, Any]], seeds: Sequence[int]
) -> list[dict[str, Any]]:
    """The paper's claims, checked per seed from the per-seed values in ``rows`` (test DSC,
    ``row["mri_test/val_mean_dice"]["per_seed"]``) and ``tumour_kl`` (``[model]["per_seed"]``).

    Each claim: ``id``, ``claim`` (text), ``relation``, ``per_seed`` (``seed``, ``holds``,
    ``values``), ``seeds_holding``, ``seeds_needed`` (:func:`seeds_needed`) and ``holds``.
    """
    dsc = {row["method"]: row["mri_test/val_mean_dice"]["per_seed"] for row in rows}
    kl = {model: values["per_seed"] for model, values in tumour_kl.items()}
    semi, unsupervised = "tumour_aware_semi_supervised", "tumour_aware_unsupervised"
    return [
        _claim(
            "test_dsc_ordering",
            "Test DSC: tumour-aware semi-supervised ≥ tumour-aware unsupervised > CycleGAN",
            [(semi, dsc[semi]), (unsupervised, dsc[unsupervised]), ("cyclegan", dsc["cyclegan"])],
            (">=", ">"),
            seeds,
        ),
        _claim(
            "tumour_kl_ordering",
            "Tumour KL: tumour-aware < masked CycleGAN < CycleGAN",
            [
                ("tumour_aware", kl["tumour_aware"]),
                ("masked_cyclegan", kl["masked_cyclegan"]),
                ("cyclegan", kl["cyclegan"]),
            ],
            ("<", "<"),
            seeds,
        ),
        _claim(
            "test_dsc_paper",
            f"Test DSC of tumour-aware semi-supervised ≥ {PAPER_TEST_DSC:.2f} (the paper's)",
            [(semi, dsc[semi]), ("paper", [PAPER_TEST_DSC] * len(seeds))],
            (">=",),
            seeds,
        ),
    ]


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


def _claims_markdown(report: dict[str, Any]) -> str:
    """The claims as a table: one row per claim, one column per seed, and the verdict."""
    seeds = report["seeds"]
    head = "| Claim | " + " | ".join(f"seed {s}" for s in seeds) + " | Overall |"
    lines = [head, "|---" * (len(seeds) + 2) + "|"]
    for claim in report.get("claims", []):
        cells = []
        for entry in claim["per_seed"]:
            values = [f"{v:.3f}" if v is not None else "n/a" for v in entry["values"].values()]
            relation = values[0] + "".join(
                f" {_SYMBOLS[op]} {v}" for op, v in zip(claim["ops"], values[1:], strict=False)
            )
            cells.append(f"{'✓' if entry['holds'] else '✗'} {relation}")
        verdict = "holds" if claim["holds"] else "does not hold"
        overall = (
            f"{verdict} ({claim['seeds_holding']}/{len(seeds)}, needs {claim['seeds_needed']})"
        )
        lines.append(f"| {claim['claim']} | " + " | ".join(cells) + f" | {overall} |")
    return "\n".join(lines)


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
        f"| Synthesis model | KL |\n|---|---|\n{kl}\n\n## Paper's claims, per seed\n\n"
        f"A claim holds overall when it holds for at least ⌈2/3·n⌉ of the n seeds; values are "
        f"each seed's means over the test cases (DSC) or tumour KL.\n\n"
        f"{_claims_markdown(report)}\n\n## Figures (seed {first})\n\n"
        f"{_figures_markdown(report)}\n\n## Stages (wall time, s)\n\n"
        f"| Stage | s |\n|---|---|\n{stages}\n\n{_schedule_markdown(report)}"
        f"Machine: {report['machine']['platform']}, {report['machine']['processor']}, "
        f"{report['machine']['cores']} cores, "
        f"Python {report['machine']['python']}; versions {report['versions']}.\n"
    )
