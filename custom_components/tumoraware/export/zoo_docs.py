"""``docs/README.md`` of an exported bundle, in the Model Zoo's section layout.

Model Zoo bundle READMEs have: Model Overview, Data, Training configuration, Input, Output,
Performance, MONAI Bundle Commands, References, License. The text comes from the bundle's own
``docs/README.md`` (its sections are matched by title, extra sections are kept in place); the
Input/Output specs come from ``metadata.json``; Performance holds measured numbers from the
demo study's ``report.json``, or says plainly that there are none.

Which row of the study the shipped weights are: a training stage of ``tumoraware demo`` /
``reproduce`` writes ``stage.json`` (:class:`~tumoraware.pipeline.layout.StageRecord`) into the
stage folder that holds the weights, with the stage's seed, kind and method as fields, so the
weights are identified by that record when they are the study's weights of that stage
(:class:`~tumoraware.pipeline.layout.StudyLayout`) and the stage is in the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumoraware.pipeline.layout import (
    TRAIN,
    StageRecord,
    StudyLayout,
    read_stage_record,
    weights_stage_dir,
)

__all__ = [
    "Provenance",
    "Study",
    "eval_metrics",
    "find_provenance",
    "load_study",
    "render_readme",
    "stage_overrides",
]

ZOO_SECTIONS = (
    "Model Overview",
    "Data",
    "Training configuration",
    "Input",
    "Output",
    "Performance",
    "MONAI Bundle Commands",
    "References",
    "License",
)
# report.json keys of the segmentation rows and their metadata eval_metrics names
_SEG_METRICS = (
    ("mri_validation/val_mean_dice", "Validation DSC", "val_mean_dice", "{:.2f}"),
    ("mri_validation/val_hd95", "Validation HD95 (mm)", "val_hd95_mm", "{:.1f}"),
    ("mri_test/val_mean_dice", "Test DSC", "mean_dice", "{:.2f}"),
    ("mri_test/val_hd95", "Test HD95 (mm)", "hd95_mm", "{:.1f}"),
)


@dataclass(frozen=True)
class Provenance:
    """The study stage that trained the shipped weights (from its ``stage.json``)."""

    stage: str  # the stage's name in the study and its report
    seed: int
    kind: str  # "synthesis" or "segmentation"
    method: str
    configs: tuple[str, ...]  # the config files it ran, the base config first


@dataclass(frozen=True)
class Study:
    """A demo/reproduce ``report.json`` and where it was read from."""

    path: Path  # resolved
    shown: str  # as given (docs show this, not the builder's absolute path)
    report: Mapping[str, Any]


def stage_of(weights: str | Path) -> StageRecord | None:
    """The record (``stage.json``) of the training stage that wrote ``weights``, if there is
    one of the current schema."""
    return read_stage_record(weights_stage_dir(weights))


def stage_overrides(weights: str | Path) -> list[str] | None:
    """The override config files (``configs/profiles/demo.json``, ...) the weights were trained
    with: the stage's config files after its base config."""
    record = stage_of(weights)
    if record is None or not record.configs:
        return None
    return list(record.configs[1:])


def load_study(report: str | Path | None) -> Study | None:
    if not report or not Path(report).is_file():
        return None
    return Study(Path(report).resolve(), str(report), json.loads(Path(report).read_text()))


def find_provenance(weights: str | Path, study: Study | None) -> Provenance | None:
    """The study stage that produced ``weights``, when its ``stage.json`` records a training
    stage of the report's study whose weights these are."""
    record = stage_of(weights)
    if record is None or study is None or record.address is None:
        return None
    address = record.address
    layout = StudyLayout.of_report(study.path)
    expected = layout.weights(address.seed, address.kind, address.method).resolve()
    known = {s.get("name") for s in study.report.get("stages", [])}
    if address.step != TRAIN or expected != Path(weights).resolve() or record.name not in known:
        return None
    return Provenance(record.name, address.seed, address.kind, address.method, record.configs)


def _seed_value(entry: Mapping[str, Any], study: Study, seed: int) -> float | None:
    seeds = list(study.report.get("seeds", []))
    values = entry.get("per_seed", [])
    if seed in seeds and seeds.index(seed) < len(values):
        return float(values[seeds.index(seed)])
    return None


def _mean_std(entry: Mapping[str, Any] | None, fmt: str) -> str:
    if not entry or entry.get("mean") is None or not math.isfinite(entry["mean"]):
        return "n/a"
    return f"{fmt.format(entry['mean'])} ± {fmt.format(entry.get('std') or 0.0)}"


def eval_metrics(study: Study | None, provenance: Provenance | None) -> dict[str, float]:
    """Achieved scores of the shipped weights (their seed and method) for ``eval_metrics``."""
    if study is None or provenance is None:
        return {}
    report, seed = study.report, provenance.seed
    if provenance.kind == "synthesis":
        entry = report.get("tumour_kl", {}).get(provenance.method)
        value = _seed_value(entry, study, seed) if entry else None
        return {} if value is None else {"tumour_kl_divergence": round(value, 4)}
    for row in report.get("rows", []):
        if row.get("method") == provenance.method:
            out = {}
            for key, _, name, _ in _SEG_METRICS:
                value = _seed_value(row[key], study, seed) if key in row else None
                if value is not None and math.isfinite(value):
                    out[name] = round(value, 4)
            return out
    return {}


def _study_header(study: Study) -> list[str]:
    report = study.report
    versions = report.get("versions", {})
    machine = report.get("machine", {})
    return [
        f"Measured by the study in `{study.shown}` (profile `{report.get('profile')}`, seeds "
        f"{report.get('seeds')}, written {report.get('written')}; tumoraware "
        f"{versions.get('tumoraware')}, MONAI {versions.get('monai')}, torch "
        f"{versions.get('torch')}, {machine.get('platform', 'unknown platform')}), on the "
        "embedded phantom world: these are numbers of a small CPU demo, not of real patients.",
        "",
    ]


def _performance(
    study: Study | None, provenance: Provenance | None, kind: str, report_path: str | Path | None
) -> list[str]:
    if study is None:
        where = f"the demo report `{report_path}` was not found" if report_path else (
            "no demo report was given"
        )  # fmt: skip
        return [
            f"No measured performance: {where} when this bundle was exported, so no numbers "
            "are given here. Run `make demo` (it writes `runs/demo/report.json`) and export "
            "again.",
            "",
        ]
    report = study.report
    lines = _study_header(study)
    spread = report.get("spread", "over cases")
    if kind == "synthesis":
        lines += [
            "Tumour-region KL divergence between real and synthetic MRI (lower is better; "
            "mean ± std over seeds):",
            "",
            "| Synthesis model | KL |",
            "|---|---|",
        ]
        for method, entry in sorted(report.get("tumour_kl", {}).items()):
            lines.append(f"| {method} | {_mean_std(entry, '{:.3f}')} |")
    else:
        lines += [
            f"Segmentation of the paper's Table 1 (mean ± std {spread}):",
            "",
            "| Method | " + " | ".join(title for _, title, _, _ in _SEG_METRICS) + " |",
            "|---|" + "---|" * len(_SEG_METRICS),
        ]
        for row in report.get("rows", []):
            cells = [_mean_std(row.get(key), fmt) for key, _, _, fmt in _SEG_METRICS]
            lines.append(f"| {row.get('title', row.get('method'))} | " + " | ".join(cells) + " |")
    lines.append("")
    if provenance is not None and provenance.kind == kind:
        scores = eval_metrics(study, provenance)
        shown = ", ".join(f"{k} {v:g}" for k, v in scores.items()) or "no scores recorded"
        stages = report.get("stages", [])
        wall = next((s.get("wall_s") for s in stages if s.get("name") == provenance.stage), None)
        took = f"; training took {wall:.0f} s on the study's machine" if wall else ""
        lines += [
            f"The weights in this bundle are seed {provenance.seed} of `{provenance.method}` "
            f"(stage `{provenance.stage}`): {shown}{took}.",
            "",
        ]
    else:
        lines += [
            "The weights in this bundle are not identified as a stage of this study (no "
            "`stage.json` beside them names one), so the table describes the study's models, "
            "not necessarily these weights.",
            "",
        ]
    topic = "kl" if kind == "synthesis" else "dsc"
    claims = [c for c in report.get("claims", []) if topic in str(c.get("id", "")).lower()]
    if claims:
        lines += ["The claims on this study (each judged by a paired bootstrap 95 % confidence "
                  "interval over cases and seeds):", ""]  # fmt: skip
        for claim in claims:
            verdict = "holds" if claim.get("holds") else "does not hold"
            parts = []
            for comp in claim.get("comparisons", []):
                ci = comp.get("difference", {})
                bounds = (ci.get("mean"), ci.get("low"), ci.get("high"))
                shown = (
                    "{:+.3f} [{:+.3f}, {:+.3f}]".format(*bounds)
                    if all(isinstance(b, (int, float)) for b in bounds)
                    else "n/a"
                )
                parts.append(f"{comp.get('a')} − {comp.get('b')} {shown}")
            lines.append(f"- {claim.get('claim')}: {verdict} ({'; '.join(parts) or 'no data'})")
        lines.append("")
    return lines


def split_sections(markdown: str) -> tuple[str, list[tuple[str, str]]]:
    """``(title line, [(section title, body), ...])`` of a README split at ``## `` headings
    (headings inside code fences are ignored)."""
    title, sections = "", []
    current: tuple[str, list[str]] | None = None
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("# ") and not title and current is None:
            title = line[2:].strip()
        elif not fenced and line.startswith("## "):
            if current:
                sections.append((current[0], "\n".join(current[1]).strip("\n")))
            current = (line[3:].strip(), [])
        elif current is not None:
            current[1].append(line)
    if current:
        sections.append((current[0], "\n".join(current[1]).strip("\n")))
    return title, sections


def _io_spec(name: str, spec: Mapping[str, Any]) -> list[str]:
    shape = "×".join(str(s) for s in spec.get("spatial_shape", []))
    channels = ", ".join(f"{k}: {v}" for k, v in spec.get("channel_def", {}).items())
    return [
        f"`{name}`: {spec.get('type')} ({spec.get('format')}"
        + (f", {spec['modality']}" if spec.get("modality") else "")
        + f"), {spec.get('num_channels')} channel(s), spatial shape {shape}, "
        f"{spec.get('dtype')}, value range {spec.get('value_range')}"
        + (", patches of larger images" if spec.get("is_patch_data") else "")
        + (f"; channels — {channels}" if channels else "")
        + ".",
    ]


def _io_sections(
    source: str | None, metadata: Mapping[str, Any], baked: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """Input and Output sections: the metadata spec, then the source's "Input and output"
    bullets (``- Input ...`` to Input, the rest to Output)."""
    fmt = metadata.get("network_data_format", {})
    inputs = [line for k, v in fmt.get("inputs", {}).items() for line in _io_spec(k, v)]
    outputs = [line for k, v in fmt.get("outputs", {}).items() for line in _io_spec(k, v)]
    if "spatial_size" in baked:
        note = (
            f"The spatial shape is this export's `spatial_size` {baked['spatial_size']} (see "
            "Training configuration); the text below describes the paper's default."
        )
        inputs.append(note)
        outputs.append(note)
    inputs, outputs = [*inputs, ""], [*outputs, ""]
    if source:
        bullets: list[list[str]] = []
        for line in source.splitlines():
            if line.startswith("- ") or not bullets:
                bullets.append([line])
            else:
                bullets[-1].append(line)
        for bullet in bullets:
            target = inputs if bullet[0].startswith("- Input") else outputs
            target.extend(bullet)
        inputs.append("")
        outputs.append("")
    return inputs, outputs


def _baked_note(baked: Mapping[str, Any], overrides: Sequence[str]) -> list[str]:
    if not baked:
        return []
    shown = ", ".join(f"`{k}` = {json.dumps(v)}" for k, v in baked.items())
    return [
        f"**In this export** the configs carry the settings the shipped weights were trained "
        f"with ({', '.join(f'`{o}`' for o in overrides)} merged into `train.json` and "
        f"`inference.json`: {shown}), so `network_def` fits `models/model.pt`. "
        "`configs/profiles/paper.json` restores the paper's values: "
        "`--config_file \"['configs/train.json','configs/profiles/paper.json']\"`.",
        "",
    ]


def _commands(name: str, manifest_ids: Sequence[str]) -> list[str]:
    example = " ".join(f"--{i} /data/{i.split('_')[0]}.json" for i in manifest_ids)
    return [
        "This is a self-contained export: the `tumoraware` code the configs use is vendored in "
        "`scripts/tumoraware/` (configs name it `scripts.tumoraware...`), so it runs with MONAI "
        "and the packages in `configs/metadata.json` and no `tumoraware` installed. Run the "
        "commands from this folder (Python puts it on `sys.path`), or set "
        f"`PYTHONPATH=/path/to/{name}` when running from elsewhere.",
        "",
        "The configs read their manifests from this bundle's own `data_manifests/` "
        "(`dataset_dir`; none ships, its README lists the file names): put yours there, or "
        "pass them, e.g.",
        "",
        "```bash",
        f"python -m monai.bundle run --config_file configs/inference.json {example}".rstrip(),
        "python -m monai.bundle ckpt_export network_def --filepath models/model.ts "
        "--ckpt_file models/model.pt --meta_file configs/metadata.json "
        "--config_file configs/inference.json",
        "```",
        "",
    ]


def render_readme(
    source_readme: str,
    metadata: Mapping[str, Any],
    bundle_name: str,
    kind: str,
    study: Study | None,
    provenance: Provenance | None,
    report_path: str | Path | None,
    baked: Mapping[str, Any],
    overrides: Sequence[str],
    manifest_ids: Sequence[str] = (),
) -> str:
    """The exported ``docs/README.md`` (see module doc).

    Args:
        kind: ``synthesis`` or ``segmentation``: which study table Performance shows.
        baked: config ids set by ``overrides`` in the exported configs (id -> value).
        manifest_ids: the manifest ids of ``inference.json`` (for the example command).
    """
    title, sections = split_sections(source_readme)
    by_title = {t: body for t, body in sections}
    io_source = by_title.get("Input and output")
    inputs, outputs = _io_sections(io_source, metadata, baked)
    training = by_title.get("Training configuration")
    generated = {
        "Training configuration": "\n".join(
            _baked_note(baked, overrides) + ([training] if training else [])
        ).strip("\n"),
        "Input": "\n".join(inputs).strip("\n"),
        "Output": "\n".join(outputs).strip("\n"),
        "Performance": "\n".join(
            _performance(study, provenance, kind, report_path)
            + ([by_title["Performance"]] if by_title.get("Performance") else [])
        ).strip("\n"),
        "MONAI Bundle Commands": "\n".join(
            _commands(bundle_name, manifest_ids)
            + ([by_title["MONAI Bundle Commands"]] if by_title.get("MONAI Bundle Commands") else [])
        ).strip("\n"),
    }
    extras = [(t, b) for t, b in sections if t not in ZOO_SECTIONS and t != "Input and output"]
    out = [f"# {title or metadata.get('name', bundle_name)}", ""]
    out += [
        f"Model Zoo export of `{bundle_name}` version {metadata.get('version')}.",
        "",
    ]
    for section in ZOO_SECTIONS:
        body = generated.get(section, by_title.get(section))
        if body is None:
            body = f"(The source bundle's docs have no “{section}” section.)"
        out += [f"## {section}", body, ""]
        if section == "Training configuration":
            for extra_title, extra_body in extras:
                out += [f"## {extra_title}", extra_body, ""]
    return "\n".join(out).rstrip("\n") + "\n"
