"""The paper's Table-1 study as a list of bundle stages (paper §3.1), per seed.

Methods and what they run (one tumour-aware synthesis model feeds both tumour-aware rows):

=================================  ======================  ==============================
Table-1 row                        synthesis model          segmentation variant
=================================  ======================  ==============================
week one only                      none                     ``week_one_only``
CycleGAN                           ``cyclegan``             ``semi_supervised``
masked CycleGAN                    ``masked_cyclegan``      ``semi_supervised``
tumour-aware unsupervised          ``tumour_aware``         ``synthetic_only``
tumour-aware semi-supervised       ``tumour_aware``         ``semi_supervised``
CycleGAN unsupervised (ours)       ``cyclegan``             ``synthetic_only``
masked CycleGAN unsupervised (ours)  ``masked_cyclegan``    ``synthetic_only``
=================================  ======================  ==============================

The last two rows are the clean ablation the paper lacks: every synthesis model trained on its
synthetic MRI alone, so the synthesis models are compared without the real week-one MRI.

Per synthesis model: train → evaluate (tumour KL, position-leak probes) → inference (synthetic
MRI + manifest), and the tumour-preservation score (:mod:`tumoraware.metrics.preservation`) on the
CT it trained on (``ct_train``) and on held-out CT (``ct_test``, when the manifest has it), read
by the week-one-only segmenter (trained on real labelled MRI only). The reader's own score on the
real MRI test split is the ceiling. Per method: segmentation train → evaluate on the validation
and on the test split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tumoraware.pipeline.stage import BundleStage

__all__ = [
    "EVAL_SPLITS",
    "METHODS",
    "PRESERVATION_SPLITS",
    "READER",
    "SYNTHESIS_MODELS",
    "Method",
    "preservation_name",
    "seeds_stages",
    "study_stages",
]


@dataclass(frozen=True)
class Method:
    """One Table-1 row: a synthesis model (or none) and a segmentation training-set variant."""

    key: str
    title: str
    synthesis: str | None
    variant: str


SYNTHESIS_MODELS: dict[str, tuple[str, ...]] = {
    "cyclegan": ("configs/baselines/cyclegan.json",),
    "masked_cyclegan": ("configs/baselines/masked_cyclegan.json",),
    "tumour_aware": (),
}
METHODS: tuple[Method, ...] = (
    Method("week_one_only", "Week one only", None, "week_one_only"),
    Method("cyclegan", "CycleGAN (semi-supervised)", "cyclegan", "semi_supervised"),
    Method("masked_cyclegan", "Masked CycleGAN (semi-supervised)", "masked_cyclegan",
           "semi_supervised"),
    Method("tumour_aware_unsupervised", "Tumour-aware unsupervised", "tumour_aware",
           "synthetic_only"),
    Method("tumour_aware_semi_supervised", "Tumour-aware semi-supervised", "tumour_aware",
           "semi_supervised"),
    Method("cyclegan_unsupervised", "CycleGAN unsupervised (ours)", "cyclegan", "synthetic_only"),
    Method("masked_cyclegan_unsupervised", "Masked CycleGAN unsupervised (ours)",
           "masked_cyclegan", "synthetic_only"),
)  # fmt: skip
EVAL_SPLITS = ("mri_validation", "mri_test")
PRESERVATION_SPLITS = ("ct_train", "ct_test")
"""CT splits whose synthetic MRI the reader reads: what segmentation trains on, and held-out CT."""
READER = "week_one_only"
"""The method whose segmenter reads synthetic MRI: trained on real labelled MRI only."""
REAL_MRI = "real_mri"
"""The ceiling's name in the preservation layout: the reader on real held-out MRI."""


def preservation_name(seed: int, model: str, split: str) -> str:
    """``seed0/preservation/tumour_aware/ct_test`` (``model = "real_mri"``: the ceiling)."""
    return f"seed{seed}/preservation/{model}/{split}"


def _splits_in(manifest: Path, splits: Sequence[str]) -> list[str]:
    """The ``splits`` that ``manifest`` holds and that are not empty."""
    data = json.loads(Path(manifest).read_text())
    return [s for s in splits if data.get(s)]


def _profile(profile: str | None) -> list[str]:
    return [f"configs/profiles/{profile}.json"] if profile else []


def study_stages(
    bundles_dir: Path,
    out_dir: Path,
    ct_manifest: Path,
    mri_manifest: Path,
    seed: int,
    profile: str | None,
) -> list[BundleStage]:
    """Every stage of one seed of the study, in a valid order; run folders below ``out_dir``.

    Args:
        bundles_dir: the folder holding both bundles.
        out_dir: the study folder; stage ``name`` is its run folder below it.
        ct_manifest: labelled CT (split ``ct_train``) for synthesis.
        mri_manifest: MRI splits ``mri_unlabelled`` (synthesis), ``mri_week1`` (labelled
            training), ``mri_validation`` and ``mri_test``.
        seed: the seed of every stage.
        profile: a profile override of both bundles (``demo``, ``test``) or None (the paper's).
    """
    synthesis = Path(bundles_dir) / "lung_ct2mri_synthesis"
    segmentation = Path(bundles_dir) / "lung_mri_tumor_segmentation"
    out, prof = Path(out_dir), _profile(profile)
    data = {
        "ct_manifest": Path(ct_manifest).resolve(),
        "mri_manifest": Path(mri_manifest).resolve(),
    }
    inputs = sorted({data["ct_manifest"], data["mri_manifest"]})
    stages: list[BundleStage] = []
    root = f"seed{seed}"
    for model, extra in SYNTHESIS_MODELS.items():
        if not any(m.synthesis == model for m in METHODS):
            continue
        train, evaluate, infer = (
            f"{root}/synthesis/{model}/{s}" for s in ("train", "evaluate", "infer")
        )
        stages += [
            BundleStage(
                train, synthesis, ["configs/train.json", *extra, *prof],
                {**data, "ckpt_dir": out / train / "models", "output_dir": out / train / "runs",
                 "seed": seed},
                inputs=inputs, outputs=["models/model.pt", "models/checkpoint_final.pt"],
            ),
            BundleStage(
                evaluate, synthesis, ["configs/train.json", "configs/evaluate.json", *extra, *prof],
                {**data, "ckpt_dir": out / train / "models", "output_dir": out / evaluate,
                 "seed": seed},
                inputs=inputs, after=[train], outputs=["tumour_kl.json"],
            ),
            BundleStage(
                infer, synthesis, ["configs/inference.json", *extra, *prof],
                {"ct_manifest": data["ct_manifest"],
                 "ckpt_path": out / train / "models" / "model.pt", "output_dir": out / infer},
                inputs=inputs, after=[train], outputs=["synthetic_mri.json"],
            ),
        ]  # fmt: skip
    for method in METHODS:
        train = f"{root}/segmentation/{method.key}/train"
        after = [f"{root}/synthesis/{method.synthesis}/infer"] if method.synthesis else []
        synthetic = (
            {"synthetic_manifest": out / after[0] / "synthetic_mri.json"}
            if method.synthesis
            else {}
        )
        variant = f"configs/variants/{method.variant}.json"
        stages.append(
            BundleStage(
                train, segmentation, ["configs/train.json", variant, *prof],
                {"mri_manifest": data["mri_manifest"], **synthetic,
                 "ckpt_dir": out / train / "models", "output_dir": out / train / "runs",
                 "seed": seed},
                inputs=inputs, after=after, outputs=["models/model.pt"],
            )
        )  # fmt: skip
        for split in EVAL_SPLITS:
            name = f"{root}/segmentation/{method.key}/eval_{split}"
            stages.append(
                BundleStage(
                    name, segmentation, ["configs/train.json", "configs/evaluate.json", *prof],
                    {"mri_manifest": data["mri_manifest"], "eval_split": split,
                     "ckpt_dir": out / train / "models", "output_dir": out / name,
                     "method_name": method.title, "seed": seed},
                    inputs=inputs, after=[train], outputs=["summary.json", "fig4_panels.png"],
                )
            )  # fmt: skip
    reader = f"{root}/segmentation/{READER}/train"
    reader_overrides = {
        "reader_configs": [str(segmentation / "configs" / "train.json"),
                           *(str(segmentation / c) for c in prof)],
        "reader_checkpoint": out / reader / "models" / "model.pt",
    }  # fmt: skip
    for model, extra in SYNTHESIS_MODELS.items():
        weights = out / root / "synthesis" / model / "train" / "models" / "model.pt"
        for split in _splits_in(data["ct_manifest"], PRESERVATION_SPLITS):
            name = preservation_name(seed, model, split)
            stages.append(
                BundleStage(
                    name, synthesis,
                    ["configs/inference.json", "configs/preservation.json", *extra, *prof],
                    {"ct_manifest": data["ct_manifest"], "ct_split": split,
                     "ckpt_path": weights,
                     **reader_overrides, "output_dir": out / name,
                     "preservation_title": f"{model} on {split}"},
                    inputs=inputs, after=[f"{root}/synthesis/{model}/train", reader],
                    outputs=["preservation.json", "preservation_cases.csv"],
                )
            )  # fmt: skip
    ceiling = preservation_name(seed, REAL_MRI, "mri_test")
    stages.append(
        BundleStage(
            ceiling, synthesis,
            ["configs/inference.json", "configs/preservation.json", *prof],
            {"read_real_mri": True, "mri_manifest": data["mri_manifest"], "mri_split": "mri_test",
             "ct_manifest": data["ct_manifest"], **reader_overrides, "output_dir": out / ceiling,
             "preservation_title": "reader on real mri_test"},
            inputs=inputs, after=[reader],
            outputs=["preservation.json", "preservation_cases.csv"],
        )
    )  # fmt: skip
    return stages


def seeds_stages(
    bundles_dir: Path, out_dir: Path, ct_manifest: Path, mri_manifest: Path,
    seeds: Sequence[int], profile: str | None,
) -> list[BundleStage]:  # fmt: skip
    """:func:`study_stages` for every seed, seed by seed."""
    return [
        stage
        for seed in seeds
        for stage in study_stages(bundles_dir, out_dir, ct_manifest, mri_manifest, seed, profile)
    ]
