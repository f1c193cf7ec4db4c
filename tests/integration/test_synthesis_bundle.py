"""The synthesis bundle run as users run it: `python -m monai.bundle run` on tiny phantoms."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import nibabel as nib
import pytest
import torch

from tumoraware.data.manifest import validate_manifest
from tumoraware.networks import ResnetGenerator

from ..conftest import REPO_ROOT
from .bundle_runner import property_problems, verify_metadata
from .bundle_runner import run_bundle as _run_bundle

BUNDLE = REPO_ROOT / "bundles" / "lung_ct2mri_synthesis"
TEST_PROFILE = json.loads((BUNDLE / "configs" / "profiles" / "test.json").read_text())


def run_bundle(configs: list[str], **overrides: object) -> subprocess.CompletedProcess:
    """The synthesis bundle through ``python -m monai.bundle run``."""
    return _run_bundle(BUNDLE, configs, **overrides)


@pytest.fixture(scope="module")
def data(tiny_world) -> dict[str, object]:
    _, manifest = tiny_world
    return {"ct_manifest": manifest, "mri_manifest": manifest}


def _run_train(tmp: Path, data, *extra: str, **overrides) -> subprocess.CompletedProcess:
    configs = ["configs/train.json", "configs/profiles/test.json", *extra]
    return run_bundle(
        configs, ckpt_dir=tmp / "models", output_dir=tmp / "runs", **data, **overrides
    )


def _train(tmp: Path, data, *extra: str, **overrides) -> Path:
    _run_train(tmp, data, *extra, **overrides)
    return tmp / "models"


def _generator(in_channels: int = 1) -> ResnetGenerator:
    return ResnetGenerator(in_channels, in_channels, ngf=TEST_PROFILE["ngf"],
                           n_blocks=TEST_PROFILE["n_blocks"])  # fmt: skip


def test_train_resume_evaluate_infer(tmp_path, data):
    models = _train(tmp_path, data, val_interval=1)
    state = torch.load(models / "model.pt", map_location="cpu")
    assert not any(k.startswith("module.") for k in state)
    _generator().load_state_dict(state)  # a plain state_dict of the CT->MRI generator
    full = torch.load(models / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert {"g_ct2mri", "g_mri2ct", "d_mri", "d_ct", "tumour_nets", "trainer"} <= set(full)
    steps = TEST_PROFILE["max_epochs"] * TEST_PROFILE["epoch_length"]
    assert full["trainer"]["iteration"] == steps
    kl = json.loads((tmp_path / "runs" / "tumour_kl.json").read_text())
    assert math.isfinite(kl["tumour_kl"]) and kl["n_real_voxels"] > 0 and kl["n_synth_voxels"] > 0
    assert (tmp_path / "runs" / "synthesis_epoch0002.png").exists()

    resumed = _train(tmp_path, data, resume=True, max_epochs=TEST_PROFILE["max_epochs"] + 1)
    full = torch.load(resumed / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert full["trainer"]["iteration"] == steps + TEST_PROFILE["epoch_length"]

    run_bundle(["configs/train.json", "configs/evaluate.json", "configs/profiles/test.json"],
               ckpt_dir=models, output_dir=tmp_path / "eval", **data)  # fmt: skip
    evaluated = json.loads((tmp_path / "eval" / "tumour_kl.json").read_text())
    assert math.isfinite(evaluated["tumour_kl"]) and evaluated["tumour_js"] <= math.log(2) + 1e-9

    run_bundle(["configs/inference.json", "configs/profiles/test.json"],
               ckpt_path=models / "model.pt", output_dir=tmp_path / "inf",
               ct_manifest=data["ct_manifest"])  # fmt: skip
    manifest = tmp_path / "inf" / "synthetic_mri.json"
    assert validate_manifest(manifest, deep=True) == []
    pairs = json.loads(manifest.read_text())["synthetic_train"]
    assert len(pairs) == len(json.loads(Path(data["ct_manifest"]).read_text())["ct_train"])
    # regions 1.5x the training crop (context_scale), at least its pixel size (larger only
    # where tumour + margin exceed the 1.5 x 96 mm minimum): room to move the tumour
    region = [int(s * 1.5) for s in TEST_PROFILE["spatial_size"]]
    for key in ("image", "label"):
        written = nib.load(tmp_path / "inf" / pairs[0][key])
        assert list(written.shape[:2]) == region
    pixel_mm = 96.0 / TEST_PROFILE["spatial_size"][0]
    assert all(pixel_mm - 1e-4 <= z < 1.5 * pixel_mm for z in written.header.get_zooms()[:2])


@pytest.mark.parametrize("baseline", ["cyclegan", "masked_cyclegan"])
def test_baselines_train_and_infer(tmp_path, data, baseline):
    override = f"configs/baselines/{baseline}.json"
    models = _train(tmp_path, data, override, lr_decay_epochs=1)  # no U optimizer to decay
    full = torch.load(models / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert "tumour_nets" not in full and "u_optimizer" not in full  # no U for the baselines
    initial = json.loads((BUNDLE / "configs" / "train.json").read_text())["learning_rate"]
    for optimizer in ("g_optimizer", "d_optimizer"):  # last epoch of 1 decay epoch: half the lr
        assert full[optimizer]["param_groups"][0]["lr"] == pytest.approx(initial / 2)
    channels = 2 if baseline == "masked_cyclegan" else 1
    _generator(channels).load_state_dict(torch.load(models / "model.pt", map_location="cpu"))
    evaluate = [
        "configs/train.json",
        "configs/evaluate.json",
        "configs/profiles/test.json",
        override,
    ]
    run_bundle(evaluate, ckpt_dir=models, output_dir=tmp_path / "eval", **data)
    kl = json.loads((tmp_path / "eval" / "tumour_kl.json").read_text())
    assert (
        math.isfinite(kl["tumour_kl"]) and (tmp_path / "eval" / "synthesis_epoch0001.png").exists()
    )
    run_bundle(["configs/inference.json", "configs/profiles/test.json", override],
               ckpt_path=models / "model.pt", output_dir=tmp_path / "inf",
               ct_manifest=data["ct_manifest"])  # fmt: skip
    assert validate_manifest(tmp_path / "inf" / "synthetic_mri.json", deep=True) == []


@pytest.mark.parametrize(
    ("workflow", "config"), [("train", "train.json"), ("infer", "inference.json")]
)
def test_property_checks_are_clean(data, workflow, config, tmp_path):
    assert property_problems(BUNDLE, workflow, config, tmp_path, **data) == []


def test_metadata_validates_against_the_model_zoo_schema():
    result = verify_metadata(BUNDLE)
    assert result.returncode == 0 and "verified with no error" in result.stdout + result.stderr


def test_tracking_mlflow_logs_losses_and_validation_metrics(tmp_path, data):
    mlflow = pytest.importorskip("mlflow", reason="the `tracking` extra is not installed")
    _train(tmp_path, data, val_interval=1, tracking="mlflow")
    store = tmp_path / "runs" / "mlruns.db"  # MONAI's default: SQLite under output_dir
    assert store.exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)
    assert {"train_loss", "tumour_kl", "tumour_js"} <= set(run.data.metrics)
    steps = TEST_PROFILE["max_epochs"] * TEST_PROFILE["epoch_length"]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == steps


def test_training_is_deterministic_when_seeded(tmp_path, data):
    """Same seed, same weights: crops, shuffling and the image pool all draw from seeded RNGs."""
    weights = []
    for run in ("a", "b"):  # a pool of 2 fills at once, so its random swaps happen in this run
        models = _train(tmp_path / run, data, pool_size=2, max_epochs=3)
        weights.append(torch.load(models / "model.pt", map_location="cpu"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_tumour_loss_warmup_scales_the_generator_objective(tmp_path, data):
    """hold 1, ramp 2: λtumour is 0, 2.5, 5, 5 in the logged loss_G of iterations 1-4."""
    result = _run_train(tmp_path, data, tumour_hold_iterations=1, tumour_ramp_iterations=2)
    log = result.stdout + result.stderr
    num = r"([\d.]+)"
    pattern = rf"adv_G: {num} cycle: {num} feature: {num} .*?loss_G: {num} .*?\btumour: {num}"
    terms = re.findall(pattern, log)
    steps = TEST_PROFILE["max_epochs"] * TEST_PROFILE["epoch_length"]
    assert len(terms) == steps, log[-2000:]
    for (adv, cyc, feat, loss_g, tumour), weight in zip(terms, [0.0, 2.5, 5.0, 5.0], strict=True):
        expected = float(adv) + 10 * float(cyc) + float(feat) + weight * float(tumour)
        assert float(loss_g) == pytest.approx(expected, abs=2e-3 * (1 + 10 + 1 + weight))


def _mri_dataset(data, **overrides: object):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / n) for n in ("train.json", "profiles/test.json")])
    parser.update({"bundle_root": str(BUNDLE), **{k: str(v) for k, v in data.items()}})
    parser.update(overrides)
    return parser.get_parsed_content("train#mri_dataset")


def test_mri_for_synthesis_is_cut_around_its_tumours_like_the_ct(data):
    """§3.2: tumour regions from the contoured MRI, so the MRI discriminator sees real tumours
    (with body squares it hardly ever did); the body-square option keeps working without labels."""
    size = TEST_PROFILE["spatial_size"]
    regions = _mri_dataset(data)
    samples = [regions[i] for i in range(len(regions))]
    assert samples and all(list(s["image"].shape[1:]) == size for s in samples)
    assert all(s["label"].sum() > 0 for s in samples), "an MRI region slice without tumour"
    centre = [s["label"][0, size[0] // 2 - 2 : size[0] // 2 + 2].sum() > 0 for s in samples]
    assert sum(centre) > len(samples) / 2
    body = _mri_dataset(data, mri_tumour_regions=False)
    window = body[0]
    assert "label" not in window and list(window["image"].shape[1:]) == size
    assert len(body) > len(regions)  # every slice of every unlabelled scan, not tumour slices
