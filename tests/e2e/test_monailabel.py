"""A real MONAI Label 0.8.5 server with the exported segmentation bundle, as a user runs it.

The segmentation bundle is trained for a few iterations (test profile, labelled MRI only) on
the session's tiny phantom world and exported with ``tumoraware export_zoo``; MONAI Label runs
in its own environment (built once under ``~/.cache/tumoraware``, minutes cold; reused after),
with the stock ``monaibundle`` app, on a studies folder of phantom MRI (labels for the training
patients in ``labels/final``). The server is stopped by its PID (process group) whatever happens.

Every test runs twice, once per environment recipe: ``monai15`` (MONAI 1.5.2 pinned) and
``monai16`` (``pip install monailabel==0.8.5`` as users install it, so MONAI 1.6.x, whose
``Spacingd`` broke ``/infer`` until the bundle used ``SafeSpacingd``). One server at a time: pytest
stops the first recipe's server before it starts the second's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tumoraware.data.manifest import load_split
from tumoraware.label_server import RECIPES, check_model_listed, free_port, start_label_server

from ..conftest import REPO_ROOT
from ..integration.bundle_runner import run_bundle

pytestmark = pytest.mark.slow
BUNDLE = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation"
NAME = BUNDLE.name
PROFILE = "configs/profiles/test.json"


@pytest.fixture(scope="module")
def exported(tiny_world, tmp_path_factory) -> Path:
    """``dist/<NAME>``: the bundle trained briefly on the tiny world, then exported."""
    tmp = tmp_path_factory.mktemp("monailabel_bundle")
    run_bundle(BUNDLE, ["configs/train.json", "configs/variants/week_one_only.json", PROFILE],
               mri_manifest=tiny_world[1], ckpt_dir=tmp / "models",
               output_dir=tmp / "runs")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "tumoraware", "export_zoo", "--bundle", str(BUNDLE),
         "--weights", str(tmp / "models" / "model.pt"), "--out_dir", str(tmp / "dist"),
         "--overrides", PROFILE, "--report", ""],  # no study report: a test export
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp / "dist" / NAME


@pytest.fixture(scope="module")
def studies(tiny_world, tmp_path_factory) -> Path:
    """Phantom MRI: the training patients' volumes with their labels in ``labels/final``
    (what MONAI Label trains on), and the test patients' volumes unlabelled."""
    folder = tmp_path_factory.mktemp("studies")
    (folder / "labels" / "final").mkdir(parents=True)
    manifest = tiny_world[1]
    for split in ("mri_week1", "mri_validation"):
        for item in load_split(manifest, split):
            shutil.copy(item["image"], folder)
            shutil.copy(item["label"], folder / "labels" / "final" / Path(item["image"]).name)
    for item in load_split(manifest, "mri_test"):
        shutil.copy(item["image"], folder)
    return folder


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module", params=sorted(RECIPES))
def server(request, exported, studies, tmp_path_factory):
    """The running server of one environment recipe and its ``/info/``; stopped by PID on the
    way out, also on failure. Each recipe gets its own app (so its own copy of the bundle)."""
    tmp = tmp_path_factory.mktemp(f"monailabel_app_{request.param}")
    label_server, name = start_label_server(
        exported, studies, tmp / "app", port=free_port(), log_file=tmp / "server.log",
        env_vars={"OMP_NUM_THREADS": "1"},  # 2 cores: never oversubscribe (reference README)
        recipe=request.param,
    )  # fmt: skip
    with label_server:
        pgid = label_server.process.pid
        info = label_server.wait_ready(timeout_s=300)
        yield label_server, name, info
    alive = _group_alive(pgid)
    if alive:  # never leave a server behind, then fail
        os.killpg(pgid, signal.SIGKILL)
    assert not alive, "the server's process group outlived stop()"


def test_the_server_runs_the_monai_its_recipe_names(server, request):
    label_server, _, _ = server
    recipe = RECIPES[request.node.callspec.params["server"]]
    _, _, monai_version, monailabel_version = label_server.env.versions.split()
    assert monai_version.startswith(recipe.monai_series), label_server.env.versions
    assert monailabel_version == "0.8.5"


def test_info_lists_the_bundle_as_a_2d_tumour_segmentation(server):
    label_server, name, info = server
    model = check_model_listed(info, name, label_server)
    assert model["type"] == "segmentation"
    assert "tumor" in model["labels"]
    assert model["dimension"] == 2
    assert model["config"]["keep_largest_component"] is True  # inference.json displayable_configs
    assert name in info["trainers"]
    assert label_server.url.startswith("http://127.0.0.1:")


def test_infer_gives_the_bundles_own_binary_mask_in_the_volume_geometry(server, studies, tmp_path):
    label_server, name, _ = server
    image = sorted(studies.glob("mri_t*_image.nii.gz"))[0]
    image_id = image.name.removesuffix(".nii.gz")
    mask = nib.load(label_server.infer(name, image_id, tmp_path / "mask.nii.gz"))
    volume = nib.load(image)
    values = np.asarray(mask.dataobj)
    assert mask.shape == volume.shape
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-3)
    assert set(np.unique(values)) <= {0, 1}

    # MONAI Label loads weights non-strictly: the same mask as the bundle's own inference.json
    # shows that it ran the exported network with the exported weights.
    run_bundle(label_server.app_dir / "model" / name, ["configs/inference.json"],
               datalist=f"['{image}']", output_dir=tmp_path / "bundle")  # fmt: skip
    own = np.asarray(nib.load(tmp_path / "bundle" / f"{image_id}_seg.nii.gz").dataobj)
    assert np.mean(own != values) < 1e-3

    # a request option reaches the bundle: every component, not only the largest
    every = label_server.infer(name, image_id, tmp_path / "all.nii.gz",
                               params={"keep_largest_component": False})  # fmt: skip
    every_values = np.asarray(nib.load(every).dataobj)
    assert np.all(every_values >= values)  # the largest component is one of them


def test_train_runs_one_epoch_on_the_labelled_studies(server):
    label_server, name, _ = server
    models = label_server.app_dir / "model" / name / "models"
    before = (models / "model.pt").read_bytes()
    task = label_server.train(
        name, {"max_epochs": 1, "val_split": 0.25, "device": "cpu", "multi_gpu": False},
        timeout_s=600,
    )  # fmt: skip
    assert task["status"] == "DONE"
    final = torch.load(models / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    trainer = final["trainer"]  # ignite's state: one whole epoch ran
    assert trainer["max_epochs"] == 1 and trainer["iteration"] == trainer["epoch_length"] > 0
    # validated after the epoch (the test profile's val_interval is 1): the best model replaces
    # models/model.pt, which MONAI Label's /infer loads next
    assert (models / "model.pt").read_bytes() != before
