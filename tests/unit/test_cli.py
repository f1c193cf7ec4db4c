"""The command line, run as users run it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumoraware.pipeline.layout import SEGMENTATION, StudyLayout

from ..conftest import REPO_ROOT

ENV = {**os.environ, "PAGER": "cat", "PYTHONUNBUFFERED": "1"}


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tumoraware", *args],
        capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300,
    )  # fmt: skip


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("tumoraware")
    assert script.exists(), "pip install -e . must install the `tumoraware` console script"


def test_phantoms_command_writes_world_and_manifest(tmp_path):
    result = _run("phantoms", "--profile", "tiny", "--seed", "5", "--out_dir", "w",
                  "--manifest", "m/phantoms.json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "m" / "phantoms.json").read_text())
    assert manifest["generator"]["seed"] == 5
    first = tmp_path / "m" / manifest["ct_train"][0]["image"]
    assert first.resolve().is_file()


def test_unknown_profile_exits_2_with_the_choices(tmp_path):
    result = _run("phantoms", "--profile", "huge", "--out_dir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert "Unknown phantom profile 'huge'" in result.stderr and "demo" in result.stderr
    assert "Traceback" not in result.stderr


def test_manifest_validate_exit_codes(tiny_world, tmp_path):
    _, manifest = tiny_world
    good = _run("manifest", "validate", str(manifest), "--deep")
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout

    broken = json.loads(manifest.read_text())
    broken["ct_train"][0]["image"] = "../missing/ct_image.nii.gz"
    bad_manifest = manifest.parent / "broken.json"
    bad_manifest.write_text(json.dumps(broken))
    bad = _run("manifest", "validate", str(bad_manifest))
    assert bad.returncode == 2
    assert "ct_image.nii.gz" in bad.stderr and "Fix:" in bad.stderr


@pytest.mark.parametrize("content", ["{not json", '{"name": 3}'])
def test_manifest_validate_reports_broken_json(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = _run("manifest", "validate", str(path))
    assert result.returncode == 2 and str(path) in result.stderr


def test_prepare_mri_command_with_numeric_test_patient(tmp_path):
    """fire turns `--test_patients 8` into an int; the command must still hold patient 8 out."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:5, 2:5, 1:3] = 1
    for patient in ("7", "8"):
        for week in (1, 3):
            scan = np.random.default_rng(int(patient) * 10 + week).uniform(50, 400, (8, 8, 4))
            nib.save(nib.Nifti1Image(scan.astype(np.float32), np.eye(4)),
                     images / f"{patient}_week{week}.nii.gz")  # fmt: skip
            nib.save(
                nib.Nifti1Image(mask, np.eye(4)), labels / f"{patient}_week{week}_label.nii.gz"
            )
    result = _run("prepare", "mri", "--images", str(images), "--labels", str(labels),
                  "--out_dir", str(tmp_path / "out"), "--test_patients", "8")  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "own_t2w_mri.json").read_text())
    assert {e["patient"] for e in manifest["mri_test"]} == {"8"}
    assert {e["patient"] for e in manifest["mri_unlabelled"]} == {"7"}
    assert [e["week"] for e in manifest["mri_validation"]] == [3]


def test_export_zoo_finds_the_weights_of_a_study_seed(tmp_path):
    """`--study DIR --seed N` picks the study's weights of the paper's method (StudyLayout)."""
    bundle = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation"
    study = tmp_path / "study"
    result = _run("export_zoo", "--bundle", str(bundle), "--study", str(study), "--seed", "2",
                  "--out_dir", str(tmp_path / "dist"))  # fmt: skip
    expected = StudyLayout(study).weights(2, SEGMENTATION, "tumour_aware_semi_supervised")
    assert result.returncode == 2 and f"weights file {expected} not found" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "dist").exists()
