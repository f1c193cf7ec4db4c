"""The segmentation bundle run as users run it: `python -m monai.bundle run` on tiny phantoms.

A module fixture first runs the synthesis bundle (test profile) on the session's tiny world and
its inference, so the segmentation bundle trains on real synthetic-MRI files from bundle 1.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import UNet
from monai.utils import set_determinism

from ..conftest import REPO_ROOT
from .bundle_runner import property_problems, run_bundle, verify_metadata

BUNDLE = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation"
TEST_PROFILE = json.loads((BUNDLE / "configs" / "profiles" / "test.json").read_text())
VARIANTS = ["semi_supervised", "synthetic_only", "week_one_only"]


def segment(configs: list[str], expect_ok: bool = True, **overrides: object):
    return run_bundle(BUNDLE, configs, expect_ok=expect_ok, **overrides)


def unet_from_state(state: dict) -> UNet:
    net = UNet(2, 1, 2, TEST_PROFILE["unet_channels"], TEST_PROFILE["unet_strides"],
               num_res_units=TEST_PROFILE["unet_res_units"], norm="batch")  # fmt: skip
    net.load_state_dict(state)  # strict: a plain state_dict of exactly this network
    return net


def _decayed_lr(max_epochs: int) -> float:
    """The lr of the last epoch of a ``max_epochs`` run under ``lr_decay_epochs`` = max_epochs."""
    initial = ConfigParser.load_config_file(BUNDLE / "configs" / "train.json")["learning_rate"]
    return initial * (1.0 - max_epochs / (max_epochs + 1.0))


@pytest.fixture(scope="module")
def data(tiny_world, tiny_synthetic_mri) -> dict[str, Path]:
    """Manifests: the tiny world, and synthetic MRI made from its CT by bundle 1 (test profile)."""
    return {"mri_manifest": tiny_world[1], "synthetic_manifest": tiny_synthetic_mri}


def _train(tmp: Path, data: dict, variant: str, **overrides) -> Path:
    configs = [
        "configs/train.json",
        f"configs/variants/{variant}.json",
        "configs/profiles/test.json",
    ]
    segment(configs, ckpt_dir=tmp / "models", output_dir=tmp / "runs", **{**data, **overrides})
    return tmp / "models"


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """``models/`` of one semi-supervised test-profile training."""
    return _train(tmp_path_factory.mktemp("seg"), data, "semi_supervised")


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_evaluates_and_infers(tmp_path, data, variant):
    if variant == "week_one_only":  # needs no synthetic MRI at all: point at a missing file
        data = {**data, "synthetic_manifest": tmp_path / "missing.json"}
    models = _train(tmp_path, data, variant)
    unet_from_state(
        torch.load(models / "model.pt", map_location="cpu")
    )  # best-Dice plain state_dict
    full = torch.load(models / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert {"network", "optimizer", "trainer"} <= set(full)
    steps = TEST_PROFILE["max_epochs"] * TEST_PROFILE["epoch_length"]
    assert full["trainer"]["iteration"] == steps
    assert full["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        _decayed_lr(TEST_PROFILE["max_epochs"])
    )  # linear decay over the whole run: the last epoch trains at 1/(E+1) of the initial lr

    eval_dir = tmp_path / "eval"
    segment(["configs/train.json", "configs/evaluate.json", "configs/profiles/test.json"],
            ckpt_dir=models, output_dir=eval_dir, method_name=variant,
            **data)  # fmt: skip
    cases = json.loads(Path(data["mri_manifest"]).read_text())["mri_test"]
    summary = json.loads((eval_dir / "summary.json").read_text())
    dice = summary["metrics"]["val_mean_dice"]
    assert dice["n"] == len(cases) and 0.0 <= dice["mean"] <= 1.0
    hd = summary["metrics"]["val_hd95"]
    assert hd["n"] == len(cases) and (hd["n_nan"] == hd["n"] or hd["mean"] >= 0.0)
    with open(eval_dir / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert len(rows) == 1 + len(cases)  # header + one row per test volume
    assert variant in (eval_dir / "summary.md").read_text()
    assert (eval_dir / "fig4_panels.png").stat().st_size > 1000
    assert len(list((eval_dir / "panels").glob("*.png"))) == len(cases)

    segment(["configs/inference.json", "configs/profiles/test.json"],
            ckpt_path=models / "model.pt", output_dir=tmp_path / "inf",
            mri_manifest=data["mri_manifest"])  # fmt: skip
    for case in cases:
        source = nib.load(Path(data["mri_manifest"]).parent / case["image"])
        name = Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        mask = nib.load(tmp_path / "inf" / name)
        assert mask.shape == source.shape
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, data):
    """A run killed after its last interval checkpoint (simulated: the final one removed)
    continues from ``checkpoint_epoch=N.pt`` with ``--resume True``."""
    models = _train(tmp_path, data, "week_one_only")
    (models / "checkpoint_final.pt").unlink()
    interval = models / f"checkpoint_epoch={TEST_PROFILE['max_epochs']}.pt"
    assert interval.exists()
    more = TEST_PROFILE["max_epochs"] + 1
    result = segment(
        ["configs/train.json", "configs/variants/week_one_only.json", "configs/profiles/test.json"],
        ckpt_dir=models, output_dir=tmp_path / "runs", resume=True, max_epochs=more, **data,
    )  # fmt: skip
    assert f"Restored all variables from {interval}" in result.stdout + result.stderr
    full = torch.load(models / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert full["trainer"]["iteration"] == more * TEST_PROFILE["epoch_length"]
    # the schedule follows the restored epoch and the new length, not the restored lr
    assert full["optimizer"]["param_groups"][0]["lr"] == pytest.approx(_decayed_lr(more))


def _nibabel_anatomical() -> Path:
    return Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _pydicom_mr_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("MR_small.dcm"))


def _without_trailing_ones(shape) -> tuple[int, ...]:
    shape = tuple(shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def test_inference_on_real_files_keeps_their_shape_and_geometry(tmp_path, trained):
    """nibabel's anatomical.nii (2 mm, LAS) and pydicom's MR_small.dcm, as a file and as a
    one-file DICOM series folder: each gets a binary mask of its own shape and affine."""
    series = tmp_path / "mr_small_series"
    series.mkdir()
    shutil.copy(_pydicom_mr_small(), series / "MR_small.dcm")
    inputs = [str(_nibabel_anatomical()), str(_pydicom_mr_small()), str(series)]
    segment(["configs/inference.json", "configs/profiles/test.json"],
            ckpt_path=trained / "model.pt", output_dir=tmp_path / "inf",
            datalist=json.dumps(inputs))  # fmt: skip
    from monai.transforms import LoadImage

    outputs = sorted((tmp_path / "inf").glob("*_seg.nii.gz"))
    assert len(outputs) == 3, outputs
    by_name = {p.name: p for p in outputs}
    expected = {
        "anatomical_seg.nii.gz": inputs[0],
        "MR_small_seg.nii.gz": inputs[1],
        "mr_small_series_seg.nii.gz": inputs[2],
    }
    assert set(by_name) == set(expected)
    for name, source in expected.items():
        reference = LoadImage(image_only=True)(source)  # MONAI's own reading of the input
        mask = nib.load(by_name[name])
        # MONAI's writer drops trailing singleton dims: one DICOM slice gives a 2D NIfTI
        assert mask.shape == _without_trailing_ones(reference.shape), name
        np.testing.assert_allclose(mask.affine, reference.affine.numpy(), atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    # the DICOM series folder (only it) also gets DICOM SEG + RTSTRUCT, unless nothing was found
    dicom = sorted(p.name for p in (tmp_path / "inf").glob("*.dcm"))
    if np.asarray(nib.load(by_name["mr_small_series_seg.nii.gz"]).dataobj).any():
        assert dicom == ["mr_small_series_rtstruct.dcm", "mr_small_series_seg.dcm"]
    else:
        assert dicom == []


def test_inference_of_a_corrupt_file_names_it(tmp_path, trained):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    result = segment(["configs/inference.json", "configs/profiles/test.json"], expect_ok=False,
                     ckpt_path=trained / "model.pt", output_dir=tmp_path / "inf",
                     datalist=json.dumps([str(bad)]))  # fmt: skip
    assert result.returncode != 0 and "broken.nii.gz" in result.stdout + result.stderr


def test_tracking_mlflow_logs_loss_and_validation_metrics(tmp_path, data):
    """``--tracking mlflow`` (MONAI's standard settings) records every iteration's loss and the
    validation Dice and HD95 of every validation in one run."""
    mlflow = pytest.importorskip("mlflow", reason="the `tracking` extra is not installed")
    _train(tmp_path, data, "semi_supervised", val_interval=1, tracking="mlflow")
    store = tmp_path / "runs" / "mlruns.db"  # MONAI's default: SQLite under output_dir
    assert store.exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {"train_loss", "val_mean_dice", "val_hd95"} <= set(run.data.metrics)
    steps = TEST_PROFILE["max_epochs"] * TEST_PROFILE["epoch_length"]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == steps
    dice = client.get_metric_history(run.info.run_id, "val_mean_dice")
    assert len(dice) == TEST_PROFILE["max_epochs"] and all(0.0 <= m.value <= 1.0 for m in dice)


def test_training_is_deterministic_when_seeded(tmp_path, data):
    weights = []
    for run in ("a", "b"):
        models = _train(tmp_path / run, data, "semi_supervised")
        full = torch.load(models / "checkpoint_final.pt", map_location="cpu", weights_only=False)
        weights.append(full["network"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize(
    ("workflow", "config"), [("train", "train.json"), ("infer", "inference.json")]
)
def test_property_checks_are_clean(data, workflow, config, tmp_path):
    assert property_problems(BUNDLE, workflow, config, tmp_path, **data) == []


def test_metadata_validates_against_the_model_zoo_schema():
    result = verify_metadata(BUNDLE)
    assert result.returncode == 0 and "verified with no error" in result.stdout + result.stderr
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert len(fmt["inputs"]["image"]["spatial_shape"]) == 2  # MONAI Label: a 2D model
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "tumor"}
    assert math.isclose(json.loads((BUNDLE / "configs" / "train.json").read_text())
                        ["learning_rate"], 1e-4)  # fmt: skip


def test_real_mri_training_windows_move_the_tumour_and_include_tumour_free_body(data):
    """The centre-prior fix: whole-body slices cut into windows with the tumour off-centre or
    absent, so the network also works on a sliding window over whole slices (MONAI Label)."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / n) for n in ("train.json", "profiles/test.json")])
    parser["bundle_root"] = str(BUNDLE)
    parser["mri_manifest"] = str(data["mri_manifest"])
    dataset = parser.get_parsed_content("train#dataset")
    size = TEST_PROFILE["spatial_size"]
    set_determinism(seed=0)
    offsets, tumour_free = [], 0
    for index in [i for i in range(len(dataset)) for _ in range(4)]:
        window = dataset[index]
        assert list(window["image"].shape[1:]) == size == list(window["label"].shape[1:])
        ys, xs = np.nonzero(window["label"][0].numpy() > 0)
        if len(ys) == 0:
            tumour_free += 1
            assert (window["image"] > parser["body_threshold"]).any(), "a window of air only"
            continue
        offsets.append(max(abs(ys.mean() - (size[0] - 1) / 2), abs(xs.mean() - (size[1] - 1) / 2)))
    set_determinism(seed=None)
    assert tumour_free > 0 and len(offsets) > 0
    assert max(offsets) >= size[0] / 8, "the tumour never moves away from the window centre"


def _parsed(data: dict, variant: str) -> ConfigParser:
    parser = ConfigParser()
    configs = ("train.json", f"variants/{variant}.json", "profiles/test.json")
    parser.read_config([str(BUNDLE / "configs" / name) for name in configs])
    parser["bundle_root"] = str(BUNDLE)
    parser.update({key: str(value) for key, value in data.items()})
    return parser


def test_semi_supervised_draws_real_slices_at_their_configured_share(data):
    """Synthetic slices outnumber the labelled real ones; the sampler gives the real MRI its
    configured share of the draws (1 - synthetic_share), so it is not drowned; one-source
    variants keep plain shuffling."""
    parser = _parsed(data, "semi_supervised")
    synthetic, real = parser.get_parsed_content("train#sources")
    assert len(synthetic) > len(real) > 0
    real_share_wanted = 1.0 - parser.get_parsed_content("synthetic_share")
    assert real_share_wanted > len(real) / (len(real) + len(synthetic))
    sampler = parser.get_parsed_content("train#sampler")
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler)
    set_determinism(seed=0)
    draws = [index for _ in range(20) for index in sampler]
    set_determinism(seed=None)
    real_share = sum(index >= len(synthetic) for index in draws) / len(draws)
    assert abs(real_share - real_share_wanted) < 0.1, (real_share, real_share_wanted)
    for variant in ("week_one_only", "synthetic_only"):
        one_source = _parsed(data, variant)
        assert one_source.get_parsed_content("train#sampler") is None
        assert one_source.get_parsed_content("train#dataloader#shuffle") is True
