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

Both trainings declare their checkpoint folder (``models/``, the bundles' ``ckpt_dir``), so a
study killed during a training continues it from its last checkpoint (``--resume True``, an id
both bundles' ``train.json`` define); every other stage reruns from scratch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumoraware.pipeline.layout import (
    EVALUATE,
    EVALUATE_WHOLE,
    INFER,
    MODELS_DIR,
    PRESERVATION,
    PRESERVE,
    SEGMENTATION,
    SYNTHESIS,
    TRAIN,
    WEIGHTS_FILE,
    StageAddress,
    StudyLayout,
)
from tumoraware.pipeline.stage import BundleStage

__all__ = [
    "BUNDLES",
    "EVAL_SPLITS",
    "METHODS",
    "PRESERVATION_SPLITS",
    "READER",
    "SHIPPED",
    "SYNTHESIS_MODELS",
    "WHOLE_SPLITS",
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
WHOLE_SPLITS = ("mri_test",)
"""Splits each method is also evaluated on as whole volumes (no expert position given)."""
PRESERVATION_SPLITS = ("ct_train", "ct_test")
"""CT splits whose synthetic MRI the reader reads: what segmentation trains on, and held-out CT."""
READER = "week_one_only"
"""The method whose segmenter reads synthetic MRI: trained on real labelled MRI only."""
REAL_MRI = "real_mri"
"""The ceiling's name in the preservation layout: the reader on real held-out MRI."""
BUNDLES = {SYNTHESIS: "lung_ct2mri_synthesis", SEGMENTATION: "lung_mri_tumor_segmentation"}
"""The bundle folder (below the bundles folder) of each kind of training."""
SHIPPED = {SYNTHESIS: "tumour_aware", SEGMENTATION: "tumour_aware_semi_supervised"}
"""Per kind, the method whose weights are exported and served: the paper's proposed ones."""


def preservation_name(seed: int, model: str, split: str) -> str:
    """The name (and folder below the study) of a preservation stage (``model = "real_mri"``:
    the ceiling); :meth:`StudyLayout.preservation` is its path."""
    return StageAddress(seed, PRESERVATION, model, PRESERVE, split).name


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
        out_dir: the study folder; stage ``name`` is its run folder below it
            (:class:`~tumoraware.pipeline.layout.StudyLayout`).
        ct_manifest: labelled CT (split ``ct_train``) for synthesis.
        mri_manifest: MRI splits ``mri_unlabelled`` (synthesis), ``mri_week1`` (labelled
            training), ``mri_validation`` and ``mri_test``.
        seed: the seed of every stage.
        profile: a profile override of both bundles (``demo``, ``test``) or None (the paper's).
    """
    synthesis = Path(bundles_dir) / BUNDLES[SYNTHESIS]
    segmentation = Path(bundles_dir) / BUNDLES[SEGMENTATION]
    layout, prof = StudyLayout(Path(out_dir)), _profile(profile)
    data = {
        "ct_manifest": Path(ct_manifest).resolve(),
        "mri_manifest": Path(mri_manifest).resolve(),
    }
    inputs = sorted({data["ct_manifest"], data["mri_manifest"]})
    stages: list[BundleStage] = []

    def stage(address: StageAddress, bundle: Path, configs: list[str],
              overrides: dict[str, Any], **kw: Any) -> BundleStage:  # fmt: skip
        return BundleStage(address.name, bundle, configs, overrides, inputs=inputs,
                           address=address, **kw)  # fmt: skip

    for model, extra in SYNTHESIS_MODELS.items():
        if not any(m.synthesis == model for m in METHODS):
            continue
        train, evaluate, infer = (
            StageAddress(seed, SYNTHESIS, model, step) for step in (TRAIN, EVALUATE, INFER)
        )
        models = layout.models(seed, SYNTHESIS, model)
        stages += [
            stage(
                train, synthesis, ["configs/train.json", *extra, *prof],
                {**data, "ckpt_dir": models, "output_dir": layout.events(seed, SYNTHESIS, model),
                 "seed": seed, "slice_cache_dir": layout.slice_cache},
                outputs=[WEIGHTS_FILE, f"{MODELS_DIR}/checkpoint_final.pt"],
                checkpoints=MODELS_DIR,
            ),
            stage(
                evaluate, synthesis, ["configs/train.json", "configs/evaluate.json", *extra, *prof],
                {**data, "ckpt_dir": models, "output_dir": layout.stage_dir(evaluate),
                 "seed": seed, "slice_cache_dir": layout.slice_cache},
                after=[train.name], outputs=["tumour_kl.json"],
            ),
            stage(
                infer, synthesis, ["configs/inference.json", *extra, *prof],
                {"ct_manifest": data["ct_manifest"],
                 "ckpt_path": layout.weights(seed, SYNTHESIS, model),
                 "output_dir": layout.stage_dir(infer)},
                after=[train.name], outputs=["synthetic_mri.json"],
            ),
        ]  # fmt: skip
    for method in METHODS:
        train = StageAddress(seed, SEGMENTATION, method.key, TRAIN)
        source = (
            StageAddress(seed, SYNTHESIS, method.synthesis, INFER) if method.synthesis else None
        )
        synthetic = (
            {"synthetic_manifest": layout.stage_dir(source) / "synthetic_mri.json"}
            if source
            else {}
        )
        variant = f"configs/variants/{method.variant}.json"
        stages.append(
            stage(
                train, segmentation, ["configs/train.json", variant, *prof],
                {"mri_manifest": data["mri_manifest"], **synthetic,
                 "ckpt_dir": layout.models(seed, SEGMENTATION, method.key),
                 "output_dir": layout.events(seed, SEGMENTATION, method.key), "seed": seed,
                 "slice_cache_dir": layout.slice_cache},
                after=[source.name] if source else [], outputs=[WEIGHTS_FILE],
                checkpoints=MODELS_DIR,
            )
        )  # fmt: skip
        for split in EVAL_SPLITS:
            evaluation = StageAddress(seed, SEGMENTATION, method.key, EVALUATE, split)
            stages.append(
                stage(
                    evaluation, segmentation,
                    ["configs/train.json", "configs/evaluate.json", *prof],
                    {"mri_manifest": data["mri_manifest"], "eval_split": split,
                     "ckpt_dir": layout.models(seed, SEGMENTATION, method.key),
                     "output_dir": layout.stage_dir(evaluation),
                     "method_name": method.title, "seed": seed,
                     "slice_cache_dir": layout.slice_cache},
                    after=[train.name], outputs=["summary.json", "fig4_panels.png"],
                )
            )  # fmt: skip
        for split in WHOLE_SPLITS:
            whole = StageAddress(seed, SEGMENTATION, method.key, EVALUATE_WHOLE, split)
            stages.append(
                stage(
                    whole, segmentation,
                    ["configs/inference.json", "configs/evaluate_whole.json", *prof],
                    {"mri_manifest": data["mri_manifest"], "eval_split": split,
                     "ckpt_path": layout.weights(seed, SEGMENTATION, method.key),
                     "output_dir": layout.stage_dir(whole), "method_name": method.title},
                    after=[train.name], outputs=["summary.json", "preservation.json"],
                )
            )  # fmt: skip
    reader = StageAddress(seed, SEGMENTATION, READER, TRAIN)
    reader_overrides = {
        "reader_configs": [str(segmentation / "configs" / "train.json"),
                           *(str(segmentation / c) for c in prof)],
        "reader_checkpoint": layout.weights(seed, SEGMENTATION, READER),
    }  # fmt: skip
    for model, extra in SYNTHESIS_MODELS.items():
        trained = StageAddress(seed, SYNTHESIS, model, TRAIN)
        for split in _splits_in(data["ct_manifest"], PRESERVATION_SPLITS):
            score = StageAddress(seed, PRESERVATION, model, PRESERVE, split)
            stages.append(
                stage(
                    score, synthesis,
                    ["configs/inference.json", "configs/preservation.json", *extra, *prof],
                    {"ct_manifest": data["ct_manifest"], "ct_split": split,
                     "ckpt_path": layout.weights(seed, SYNTHESIS, model),
                     **reader_overrides, "output_dir": layout.stage_dir(score),
                     "preservation_title": f"{model} on {split}"},
                    after=[trained.name, reader.name],
                    outputs=["preservation.json", "preservation_cases.csv"],
                )
            )  # fmt: skip
    ceiling = StageAddress(seed, PRESERVATION, REAL_MRI, PRESERVE, "mri_test")
    stages.append(
        stage(
            ceiling, synthesis,
            ["configs/inference.json", "configs/preservation.json", *prof],
            {"read_real_mri": True, "mri_manifest": data["mri_manifest"], "mri_split": "mri_test",
             "ct_manifest": data["ct_manifest"], **reader_overrides,
             "output_dir": layout.stage_dir(ceiling),
             "preservation_title": "reader on real mri_test"},
            after=[reader.name],
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
