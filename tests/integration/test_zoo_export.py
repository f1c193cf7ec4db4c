"""Model Zoo export of both bundles, checked the way the Model Zoo CI checks a bundle.

Weights come from real test-profile trainings on the session's tiny phantom world (the
synthesis training of ``tiny_synthetic_mri``, and a segmentation training on its synthetic MRI
here). Each bundle is exported and then verified: required files, schema, ``verify_net_in_out``,
``ckpt_export`` + ``torch.jit.load``, ``ConfigWorkflow`` properties, and a one-iteration
training and an inference run in a subprocess whose ``PYTHONPATH`` is only the exported bundle
and where ``tumoraware`` cannot be imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tumoraware.export import ExportError, export_bundle, verify_bundle

from ..conftest import REPO_ROOT
from .bundle_runner import SCHEMA, SCHEMA_MD5, run_bundle

BUNDLES = {
    "synthesis": REPO_ROOT / "bundles" / "lung_ct2mri_synthesis",
    "segmentation": REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation",
}
TEST_PROFILE = "configs/profiles/test.json"


class TinyNet(torch.nn.Module):
    """A network from outside tumoraware and MONAI: the export cannot vendor it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture(scope="module")
def weights(tiny_world, tiny_synthetic_mri, tmp_path_factory) -> dict[str, Path]:
    """``models/model.pt`` of a test-profile training of each bundle."""
    # tiny_synthetic_mri trained the synthesis bundle into <tmp>/models before its inference
    synthesis = tiny_synthetic_mri.parent.parent / "models" / "model.pt"
    assert synthesis.is_file(), f"conftest's synthesis training moved: {synthesis}"
    tmp = tmp_path_factory.mktemp("zoo_seg")
    run_bundle(BUNDLES["segmentation"], ["configs/train.json", TEST_PROFILE],
               mri_manifest=tiny_world[1], synthetic_manifest=tiny_synthetic_mri,
               ckpt_dir=tmp / "models", output_dir=tmp / "runs")  # fmt: skip
    return {"synthesis": synthesis, "segmentation": tmp / "models" / "model.pt"}


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory) -> dict[str, Path]:
    """``dist/NAME`` of each bundle (no study report: a test export)."""
    dist = tmp_path_factory.mktemp("dist")
    results = {
        kind: export_bundle(BUNDLES[kind], weights[kind], dist, overrides=TEST_PROFILE, report=None)
        for kind in BUNDLES
    }
    return {kind: result.bundle_dir for kind, result in results.items()}


@pytest.mark.parametrize("kind", ["synthesis", "segmentation"])
def test_exported_bundle_passes_the_model_zoo_checks(
    kind, exported, tiny_world, tiny_synthetic_mri, tmp_path
):
    bundle = exported[kind]
    data = {"ct_manifest": tiny_world[1], "mri_manifest": tiny_world[1]}
    if kind == "segmentation":
        data["synthetic_manifest"] = tiny_synthetic_mri  # the default (semi-supervised) recipe
    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} not present (it ships beside the repository)")
    results = verify_bundle(bundle, **data, schema=SCHEMA, schema_md5=SCHEMA_MD5,
                            work_dir=tmp_path)  # fmt: skip
    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    names = {r.name for r in results}
    assert names >= {
        "metadata schema", "verify_net_in_out", "ckpt_export + torch.jit.load",
        "train properties", "inference properties", "no tumoraware imported",
        "1-iteration training (clean subprocess)", "inference (clean subprocess)",
    }  # fmt: skip

    # the runs really used the given data and the shipped weights
    if kind == "synthesis":
        written = json.loads((tmp_path / "infer" / "synthetic_mri.json").read_text())
        assert written["synthetic_train"], "inference wrote an empty synthetic manifest"
    assert (tmp_path / "train" / "models" / "checkpoint_final.pt").is_file()

    # self-contained: every config names the vendored copy, nothing requires tumoraware
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "tumoraware" not in meta["required_packages_version"]
    assert {"nibabel", "pytorch-ignite", "matplotlib"} <= set(meta["required_packages_version"])
    inference = (bundle / "configs" / "inference.json").read_text()
    assert '"tumoraware.' not in inference and "scripts.tumoraware." in inference
    assert not list(bundle.rglob("__pycache__")), "the checks wrote bytecode into the bundle"

    # the merged test profile: network_def fits the weights, paper values kept aside
    paper = json.loads((bundle / "configs" / "profiles" / "paper.json").read_text())
    assert paper["spatial_size"] == [256, 256]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values()), "model.pt: a state_dict"

    docs = (bundle / "docs" / "README.md").read_text()
    for section in ("Model Overview", "Data", "Training configuration", "Input", "Output",
                    "Performance", "MONAI Bundle Commands", "References", "License"):  # fmt: skip
        assert f"\n## {section}\n" in docs
    assert "No measured performance: no demo report was given" in docs

    with zipfile.ZipFile(bundle.parent / f"{bundle.name}.zip") as archive:
        infos = archive.infolist()
    assert all(i.filename.startswith(f"{bundle.name}/") for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_segmentation_export_keeps_what_monai_label_reads(exported):
    meta = json.loads(
        (exported["segmentation"] / "configs" / "metadata.json").read_text()
    )  # fmt: skip
    fmt = meta["network_data_format"]
    assert "tumor" in fmt["outputs"]["pred"]["channel_def"].values()
    assert len(fmt["inputs"]["image"]["spatial_shape"]) == 2  # a 2D model


def test_two_exports_give_byte_identical_zips(exported, weights, tmp_path):
    """The synthesis bundle: its vendored generator is scripted into model.ts, which records
    source file names; they are bundle-relative, so another output folder changes nothing."""
    first = exported["synthesis"]
    again = export_bundle(BUNDLES["synthesis"], weights["synthesis"], tmp_path / "other",
                          overrides=TEST_PROFILE, report=None)  # fmt: skip
    assert again.zip_path.read_bytes() == (first.parent / f"{first.name}.zip").read_bytes()


def test_weights_that_do_not_fit_are_refused_with_the_fix(weights, tmp_path):
    out = tmp_path / "dist"
    with pytest.raises(ExportError) as error:  # trained with the test profile, exported without
        export_bundle(BUNDLES["segmentation"], weights["segmentation"], out, overrides="")
    message = str(error.value)
    assert str(weights["segmentation"]) in message and "do not match network_def" in message
    assert "--overrides configs/profiles/demo.json" in message
    assert not (out / "lung_mri_tumor_segmentation").exists()

    nested = weights["synthesis"].with_name("checkpoint_final.pt")  # all networks + optimizers
    with pytest.raises(ExportError, match=r"not a plain state_dict.*--key g_ct2mri"):
        export_bundle(BUNDLES["synthesis"], nested, out, overrides=TEST_PROFILE)

    result = subprocess.run(
        [sys.executable, "-m", "tumoraware", "export_zoo", "--bundle",
         str(BUNDLES["synthesis"]), "--weights", str(tmp_path / "missing.pt"),
         "--out_dir", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "weights file" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_export_keeps_the_previous_one(tmp_path):
    """A network outside tumoraware and MONAI imports here but not in the exported bundle:
    ckpt_export (run without tumoraware and this test module) fails, the export stops with its
    output, and the previous dist/NAME is left as it was, with no partial folder behind."""
    bundle = tmp_path / "bundles" / "lung_mri_tumor_segmentation"
    shutil.copytree(BUNDLES["segmentation"], bundle,
                    ignore=shutil.ignore_patterns("runs", "eval", "models"))  # fmt: skip
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    inference["network_def"] = {"_target_": f"{__name__}.TinyNet"}
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference))
    weights = tmp_path / "tiny.pt"
    torch.save(TinyNet().state_dict(), weights)
    out = tmp_path / "dist"
    previous = out / bundle.name / "marker.txt"
    previous.parent.mkdir(parents=True)
    previous.write_text("previous export")

    with pytest.raises(ExportError, match="ckpt_export failed") as error:
        export_bundle(bundle, weights, out, overrides="", report=None)
    assert "Cannot locate" in str(error.value) and "TinyNet" in str(error.value)
    assert previous.read_text() == "previous export"
    assert sorted(p.name for p in out.iterdir()) == [bundle.name]
