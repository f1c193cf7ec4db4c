"""Which synthesis setting keeps tumours? Train each model under each option set, score them.

For every seed, synthesis model (CycleGAN, masked CycleGAN, tumour-aware) and option set, the
synthesis bundle is trained (the demo profile unless told otherwise, ``--length`` times its
epochs), its tumour networks are probed for a position prior (``configs/evaluate.json``), and the
tumour-preservation score is measured on the CT it trained on and on held-out CT
(``configs/preservation.json``) with the reader of an existing study (its week-one-only
segmenter of the same seed). The option set ``paper`` reuses the study's own synthesis weights.

Prints one table (mean ± std over seeds, and the paired difference against a baseline with its
bootstrap 95 % CI over cases and seeds) and writes ``ablation.json`` into ``--out``. Choices are
made on ``ct_train`` (the CT that feeds segmentation training); ``ct_test`` is reported beside.

    python benchmarks/preservation_ablation.py --study runs/demo --out runs/ablation \\
        --seeds 0,1,2 --options paper,no_leak,no_leak_real_mri
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tumoraware.atomic import write_json_atomic
from tumoraware.metrics.paired_bootstrap import bootstrap_mean_ci, paired_matrix
from tumoraware.pipeline.layout import SEGMENTATION, SYNTHESIS, StudyLayout
from tumoraware.pipeline.run import default_bundles_dir
from tumoraware.pipeline.schedule import run_stages
from tumoraware.pipeline.stage import BundleStage
from tumoraware.pipeline.study import BUNDLES, PRESERVATION_SPLITS, READER, SYNTHESIS_MODELS

NO_LEAK = "configs/options/no_position_leak.json"
REAL_MRI = "configs/options/u_mri_real_mri.json"
OPTION_SETS: dict[str, tuple[tuple[str, ...], dict[str, object]]] = {
    "paper": ((), {}),
    "no_leak": ((NO_LEAK,), {}),
    "no_leak_real_mri": ((NO_LEAK, REAL_MRI), {}),
    "random_window": ((NO_LEAK,), {"synthesis_tumour_free_share": 0.0}),
    "random_window_real_mri": ((NO_LEAK, REAL_MRI), {"synthesis_tumour_free_share": 0.0}),
    "random_window_real_only": (
        (NO_LEAK, REAL_MRI),
        {"synthesis_tumour_free_share": 0.0, "u_mri_synthetic_weight": 0.0},
    ),
    "random_window_pretrained": (
        (NO_LEAK, REAL_MRI, "configs/options/pretrained_u_mri.json"),
        {"synthesis_tumour_free_share": 0.0},
    ),
    "no_leak_pretrained": ((NO_LEAK, REAL_MRI, "configs/options/pretrained_u_mri.json"), {}),
    "random_window_pretrained_nowarm": (
        (NO_LEAK, REAL_MRI, "configs/options/pretrained_u_mri.json"),
        {
            "synthesis_tumour_free_share": 0.0,
            "tumour_hold_iterations": 0,
            "tumour_ramp_iterations": 0,
        },
    ),
    "no_leak_pretrained_nowarm": (
        (NO_LEAK, REAL_MRI, "configs/options/pretrained_u_mri.json"),
        {"tumour_hold_iterations": 0, "tumour_ramp_iterations": 0},
    ),
    "resize_conv": (("configs/options/resize_conv.json",), {}),
    "spectral_norm": (("configs/options/spectral_norm_d.json",), {}),
}
"""Option files of the synthesis bundle (applied after the model's baseline file) and extra
``--id value`` overrides of each option set."""


def stages_for(
    study: Path, out: Path, seed: int, model: str, option: str, profile: str, length: float,
    manifest: Path,
) -> tuple[list[BundleStage], Path]:  # fmt: skip
    """Train (unless ``paper``), evaluate and preservation stages; returns them and the run
    folder of this (seed, model, option)."""
    synthesis = default_bundles_dir() / BUNDLES[SYNTHESIS]
    segmentation = default_bundles_dir() / BUNDLES[SEGMENTATION]
    trained = StudyLayout(study)
    runs = StudyLayout(out).seed_dir(seed) / model  # this benchmark's own folders, per seed
    files, extra = OPTION_SETS[option]
    configs = [*SYNTHESIS_MODELS[model], *files, f"configs/profiles/{profile}.json"]
    data = {"ct_manifest": manifest, "mri_manifest": manifest}
    stages: list[BundleStage] = []
    if option == "paper" and length == 1:
        models, after = trained.models(seed, SYNTHESIS, model), []
        run = runs / option
    else:
        run = runs / f"{option}_x{length:g}"
        models = run / "train" / "models"
        profile_file = synthesis / "configs" / "profiles" / f"{profile}.json"
        base_epochs = json.loads(profile_file.read_text()).get("max_epochs", 200)
        epochs = {"max_epochs": round(base_epochs * length)} if length != 1 else {}
        stages.append(BundleStage(
            str(run.relative_to(out) / "train"), synthesis, ["configs/train.json", *configs],
            {**data, "ckpt_dir": models, "output_dir": run / "train" / "runs", "seed": seed,
             **epochs, **extra},
            inputs=[manifest], outputs=["models/model.pt", "models/checkpoint_final.pt"],
        ))  # fmt: skip
        after = [stages[0].name]
    name = str(run.relative_to(out))
    stages.append(BundleStage(
        f"{name}/evaluate", synthesis, ["configs/train.json", "configs/evaluate.json", *configs],
        {**data, "ckpt_dir": models, "output_dir": run / "evaluate", "seed": seed, **extra},
        inputs=[manifest], after=after, outputs=["tumour_kl.json"],
    ))  # fmt: skip
    reader = {
        "reader_configs": [str(segmentation / "configs/train.json"),
                           str(segmentation / f"configs/profiles/{profile}.json")],
        "reader_checkpoint": trained.weights(seed, SEGMENTATION, READER),
    }  # fmt: skip
    for split in PRESERVATION_SPLITS:
        stages.append(BundleStage(
            f"{name}/preserve_{split}", synthesis,
            ["configs/inference.json", "configs/preservation.json", *SYNTHESIS_MODELS[model],
             *(f for f in files if "resize" in f), f"configs/profiles/{profile}.json"],
            {"ct_manifest": manifest, "ct_split": split, "ckpt_path": models / "model.pt",
             **reader, "output_dir": run / f"preserve_{split}"},
            inputs=[manifest], after=after, outputs=["preservation.json"],
        ))  # fmt: skip
    return stages, run


def _read(run: Path, split: str) -> dict:
    return json.loads((run / f"preserve_{split}" / "preservation.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a finished study folder")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--manifest", type=Path, default=Path("data_manifests/phantoms.json"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default=",".join(SYNTHESIS_MODELS))
    parser.add_argument("--options", default=",".join(OPTION_SETS))
    parser.add_argument("--length", type=float, default=1.0, help="x the profile's epochs")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", default="cyclegan/paper", help="model/option to pair with")
    parser.add_argument(
        "--report_only", action="store_true", help="tabulate what is on disk, run nothing"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models, options = args.models.split(","), args.options.split(",")
    manifest, study, out = args.manifest.resolve(), args.study.resolve(), args.out.resolve()
    runs: dict[tuple[str, str], dict[int, Path]] = {}
    stages: list[BundleStage] = []
    for seed in seeds:
        for model in models:
            for option in options:
                needs_u = ("real_mri", "real_only", "pretrained")
                if any(n in option for n in needs_u) and model != "tumour_aware":
                    continue  # U_MRI's real-MRI term needs the tumour networks
                new, run = stages_for(study, out, seed, model, option, args.profile,
                                      args.length, manifest)  # fmt: skip
                stages += new
                runs.setdefault((model, option), {})[seed] = run
    if not args.report_only:
        run_stages(stages, out, workers=args.workers, progress=True)

    result: dict[str, dict] = {}
    per_case: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
    suffix = "" if args.length == 1 else f"_x{args.length:g}"
    missing = [
        pair
        for pair, by_seed in runs.items()
        if not all((r / f"preserve_{s}" / "preservation.json").is_file()
                   for r in by_seed.values() for s in PRESERVATION_SPLITS)
    ]  # fmt: skip
    for pair in missing:  # only with --report_only: a stage that failed raises in run_stages
        print(f"not measured (no preservation.json): {'/'.join(pair)}")
        runs.pop(pair)
    for (model, option), by_seed in runs.items():
        key = f"{model}/{option}{suffix}"
        entry: dict[str, dict] = {}
        for split in PRESERVATION_SPLITS:
            files = {seed: _read(run, split) for seed, run in by_seed.items()}
            per_case[(model, option, split)] = {
                seed: {c["case"]: c["dice"] for c in f["cases"]} for seed, f in files.items()
            }
            entry[split] = {
                k: [f["overall"][k] for f in files.values()]
                for k in ("dice", "detection_rate", "false_tumour_rate")
            }
        checks = {}
        for seed, run in by_seed.items():
            path = run / "evaluate" / "tumour_networks.json"
            if path.is_file():
                checks[seed] = json.loads(path.read_text())
        if checks:
            entry["u_checks"] = {
                "max_excess": [c["max_excess"] for c in checks.values()],
                "u_mri_synthetic_dice": [
                    c["u_mri"]["on_synthetic"]["dice"] for c in checks.values()
                ],
                "u_mri_real_dice": [c["u_mri"]["on_real_mri"]["dice"] for c in checks.values()],
                "u_ct_dice": [c["u_ct"]["on_ct"]["dice"] for c in checks.values()],
            }
        result[key] = entry
    base_model, base_option = args.baseline.split("/")
    print(f"\n{'model/option':34s} " + " ".join(f"{s + ' Dice':>14s}" for s in PRESERVATION_SPLITS)
          + f"  {'detect(test)':>12s} {'false(test)':>11s} {'U excess':>9s} {'U_MRI real':>10s}"
          + f"   Δ vs {args.baseline} on ct_train / ct_test [95% CI]")  # fmt: skip
    for (model, option), _ in runs.items():
        key = f"{model}/{option}{suffix}"
        entry = result[key]
        cells = [f"{np.mean(entry[s]['dice']):.3f}±{np.std(entry[s]['dice']):.3f}"
                 for s in PRESERVATION_SPLITS]  # fmt: skip
        u = entry.get("u_checks", {})
        deltas = []
        for split in PRESERVATION_SPLITS:
            base = per_case.get((base_model, base_option, split))
            if base is None or (model, option) == (base_model, base_option):
                deltas.append("-")
                continue
            ci = bootstrap_mean_ci(paired_matrix(per_case[(model, option, split)], base, seeds))
            entry[f"delta_{split}"] = ci
            deltas.append(f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]")
        print(
            f"{key:34s} "
            + " ".join(f"{c:>14s}" for c in cells)
            + f"  {np.mean(entry['ct_test']['detection_rate']):12.2f}"
            + f" {np.mean(entry['ct_test']['false_tumour_rate']):11.3f}"
            + f" {np.mean(u.get('max_excess', [np.nan])):9.3f}"
            + f" {np.mean(u.get('u_mri_real_dice', [np.nan])):10.3f}   "
            + " / ".join(deltas)
        )
    path = out / "ablation.json"  # results of earlier invocations are kept, same keys replaced
    summary = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    for entry in result.values():
        entry.update(seeds=seeds, profile=args.profile, length=args.length)
    summary["results"].update(result)
    write_json_atomic(path, summary)
    print(f"\nablation: {out / 'ablation.json'}")


if __name__ == "__main__":
    main()
