"""`prepare nsclc` on a TCIA-shaped download written with pydicom: good and broken patients."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_factory import (
    Geometry,
    Sphere,
    default_hu,
    dice,
    truth_mask,
    write_ct_series,
    write_rtstruct,
)
from tumoraware.data.dicom import DicomError
from tumoraware.data.manifest import validate_manifest
from tumoraware.data.prepare.nsclc import prepare_nsclc

GEOMETRY = Geometry(rows=48, cols=56, pixel_spacing=(1.5, 1.2), origin=(-33.0, -36.0, -20.0),
                    slice_spacing=3.0, n_slices=16)  # fmt: skip
TUMOUR = Sphere((0.0, 0.0, 2.0), 12.0)


def _patient(root: Path, pid: str, *, rtstruct: bool = True, roi: str = "GTV-1",
             drop_slices: tuple[int, ...] = ()):  # fmt: skip
    """NBIA layout: NSCLC-Radiomics/<pid>/<study folder>/<series folder>/1-01.dcm ..."""
    study = root / "NSCLC-Radiomics" / pid / "01-01-2014-StudyID-34270"
    # each patient's own CT (the same voxels under two patient ids is a duplicate scan)
    hu = np.stack([default_hu(GEOMETRY, k) for k in range(GEOMETRY.n_slices)], axis=-1)
    ct = write_ct_series(study / "0.000000-NA-82046", GEOMETRY, hu + int(pid[-3:]), patient_id=pid,
                         drop_slices=drop_slices, seed=int(pid[-3:]))  # fmt: skip
    if rtstruct:
        write_rtstruct(
            study / "3.000000-NA-78236" / "1-1.dcm",
            ct,
            {roi: TUMOUR, "Lung-Left": Sphere((20.0, 0.0, 0.0), 5.0)},
        )
    return ct


@pytest.fixture(scope="module")
def download(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tcia")
    cts = {
        "LUNG1-001": _patient(root, "LUNG1-001"),
        "LUNG1-002": _patient(root, "LUNG1-002", rtstruct=False),
        "LUNG1-003": _patient(root, "LUNG1-003", roi="GTV-2"),
        "LUNG1-004": _patient(root, "LUNG1-004", drop_slices=(7,)),
        "LUNG1-005": _patient(root, "LUNG1-005", roi="gtv-1"),  # other case: still GTV-1
    }
    (root / "NSCLC-Radiomics" / "LICENSE.txt").write_text("not DICOM")
    return root, cts


def _skipped(out: Path) -> dict[str, str]:
    with open(out / "skipped.csv", newline="") as f:
        return {row["patient"]: row["reason"] for row in csv.DictReader(f)}


def test_converts_good_patients_and_records_why_others_were_skipped(download, tmp_path):
    root, cts = download
    out = tmp_path / "out"
    manifest = prepare_nsclc(root, out, progress=False)
    data = json.loads(manifest.read_text())
    assert [e["patient"] for e in data["ct_train"]] == ["LUNG1-001", "LUNG1-005"]
    assert validate_manifest(manifest, deep=True) == []
    label = np.asanyarray(nib.load(out / "LUNG1-001" / "label.nii.gz").dataobj)
    assert dice(label, truth_mask(cts["LUNG1-001"], TUMOUR)) >= 0.999
    skipped = _skipped(out)
    assert set(skipped) == {"LUNG1-002", "LUNG1-003", "LUNG1-004"}
    assert "no RTSTRUCT" in skipped["LUNG1-002"]
    assert "GTV-2" in skipped["LUNG1-003"] and "no ROI 'GTV-1'" in skipped["LUNG1-003"]
    assert "missing" in skipped["LUNG1-004"] and "allow_gaps" in skipped["LUNG1-004"]
    provenance = json.loads((out / "LUNG1-001" / "conversion.json").read_text())
    assert provenance["roi"] == "GTV-1" and provenance["tumour_voxels"] == int(label.sum())


def test_allow_gaps_recovers_the_patient_with_a_missing_slice(download, tmp_path):
    root, _ = download
    manifest = prepare_nsclc(root, tmp_path / "out", allow_gaps=True, progress=False)
    patients = [e["patient"] for e in json.loads(manifest.read_text())["ct_train"]]
    assert "LUNG1-004" in patients
    image = nib.load(tmp_path / "out" / "LUNG1-004" / "image.nii.gz")
    assert image.shape[2] == GEOMETRY.n_slices  # the missing slice was interpolated back


def test_rerun_skips_finished_patients(download, tmp_path):
    root, _ = download
    out = tmp_path / "out"
    prepare_nsclc(root, out, progress=False)
    image = out / "LUNG1-001" / "image.nii.gz"
    before = image.stat().st_mtime_ns
    (out / "LUNG1-005" / "image.nii.gz").unlink()  # as if interrupted before the image landed
    prepare_nsclc(root, out, progress=False)
    assert image.stat().st_mtime_ns == before
    assert (out / "LUNG1-005" / "image.nii.gz").exists()


def test_nothing_convertible_is_an_error_naming_the_csv(tmp_path):
    root = tmp_path / "tcia"
    _patient(root, "LUNG1-009", rtstruct=False)
    with pytest.raises(DicomError, match=r"skipped\.csv"):
        prepare_nsclc(root, tmp_path / "out", progress=False)


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="NBIA"):
        prepare_nsclc(tmp_path / "nope", tmp_path / "out", progress=False)


def test_cli_prepare_nsclc_and_rtstruct_to_nifti(download, tmp_path):
    root, cts = download
    run = [sys.executable, "-m", "tumoraware"]
    args = ["prepare", "nsclc", "--dicom_root", str(root), "--out_dir", str(tmp_path / "o")]
    done = subprocess.run([*run, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "nsclc_radiomics.json").exists()
    series = cts["LUNG1-001"].folder
    rtstruct = series.parent / "3.000000-NA-78236" / "1-1.dcm"
    bad_roi = subprocess.run([*run, "rtstruct_to_nifti", "--dicom_dir", str(series), "--rtstruct",
                              str(rtstruct), "--roi", "GTV-9", "--out_dir", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad_roi.returncode == 2
    assert "GTV-9" in bad_roi.stderr and "Lung-Left" in bad_roi.stderr
    assert not (tmp_path / "x" / "image.nii.gz").exists()
