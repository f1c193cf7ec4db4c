"""The paper's Table-1 study as a list of bundle stages (paper §3.1), per seed.

Methods and what they run (one tumour-aware synthesis model feeds both tumour-aware rows):

=============================  ======================  ==============================
Table-1 row                    synthesis model          segmentation variant
=============================  ======================  ==============================
week one only                  none                     ``week_one_only``
CycleGAN                       ``cyclegan``             ``semi_supervised``
masked CycleGAN                ``masked_cyclegan``      ``semi_supervised``
tumour-aware unsupervised      ``tumour_aware``         ``synthetic_only``
tumour-aware semi-supervised   ``tumour_aware``         ``semi_supervised``
=============================  ======================  ==============================

Per synthesis model: train → evaluate (tumour KL) → inference (synthetic MRI + manifest).
Per method: segmentation train → evaluate on the validation and on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tumoraware.pipeline.stage import BundleStage

__all__ = ["EVAL_SPLITS", "METHODS", "SYNTHESIS_MODELS", "Method", "seeds_stages", "study_stages"]


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
)  # fmt: skip
EVAL_SPLITS = ("mri_validation", "mri_test")


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
