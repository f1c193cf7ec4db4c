"""Bad data stopped at the door: a catalogue of broken inputs, each written as a real file.

Every case damages one thing in an otherwise good data set (NIfTI written with nibabel, DICOM
with ``tests/dicom_factory.py``) and asserts that the error names the file (and the manifest
entry) and gives a fix, and that nothing already written was lost or half-written: a failed
``prepare`` keeps the previous manifest byte for byte, a failed check records no verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor

from tests.dicom_factory import Geometry, default_hu, write_ct_series
from tumoraware.data.manifest import (
    VALIDATION_CACHE,
    ManifestError,
    check_manifest,
    validate_manifest,
)
from tumoraware.data.prepare import PrepareError, prepare_mri, prepare_msd
from tumoraware.errors import check_state_dict, innermost_error, state_dict_mismatch
from tumoraware.transforms import (
    AppendMaskChanneld,
    CTWindowd,
    RobustMRINormalized,
    TumourRegionCropd,
    VolumeToSlicesd,
)

SHAPE = (16, 16, 6)
AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------ data


def _blob() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[6:10, 6:10, 2:4] = 1
    return mask


def _ct(seed: int) -> np.ndarray:
    """Air around a soft-tissue body with a tumour; ``seed`` makes every patient's CT its own."""
    ct = np.full(SHAPE, -1000, dtype=np.int16)
    ct[2:14, 2:14, :] = 30 + seed
    ct[_blob() == 1] = 60
    return ct


def _mr(seed: int) -> np.ndarray:
    mr = np.random.default_rng(seed).uniform(50.0, 400.0, SHAPE).astype(np.float32)
    mr[_blob() == 1] = 600.0
    return mr


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _entry(name: str, modality: str, patient: str, label: bool = True, **extra) -> dict:
    entry = {"image": f"../data/{name}_image.nii.gz", "modality": modality, "patient": patient}
    if label:
        entry["label"] = f"../data/{name}_label.nii.gz"
    return {**entry, **extra}


def _manifest() -> dict:
    """Every split the study reads; mri_unlabelled repeats the training scans (allowed)."""
    return {
        "name": "bad inputs",
        "labels": {"0": "background", "1": "tumor"},
        "base_dir": "..",
        "ct_train": [_entry("ct_a", "CT", "A"), _entry("ct_b", "CT", "B")],
        "ct_test": [_entry("ct_c", "CT", "C")],
        "mri_unlabelled": [
            _entry("p1_w1", "MR", "P1", label=False, week=1),
            _entry("p1_w3", "MR", "P1", label=False, week=3),
        ],
        "mri_week1": [_entry("p1_w1", "MR", "P1", week=1)],
        "mri_validation": [_entry("p1_w3", "MR", "P1", week=3)],
        "mri_test": [_entry("p2_w1", "MR", "P2", week=1)],
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for i, name in enumerate(("ct_a", "ct_b", "ct_c")):
        _save(data / f"{name}_image.nii.gz", _ct(i))
        _save(data / f"{name}_label.nii.gz", _blob())
    for i, name in enumerate(("p1_w1", "p1_w3", "p2_w1")):
        _save(data / f"{name}_image.nii.gz", _mr(i))
        _save(data / f"{name}_label.nii.gz", _blob())
    _write(tmp_path, _manifest())
    return tmp_path


def _write(root: Path, manifest: dict) -> Path:
    path = root / "data_manifests" / "m.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2))
    return path


def test_the_good_data_set_passes(root: Path) -> None:
    assert validate_manifest(root / "data_manifests" / "m.json", deep=True) == []


# ------------------------------------------------------------------------------------ damage


def _image(name: str) -> str:
    return f"data/{name}_image.nii.gz"


def _label(name: str) -> str:
    return f"data/{name}_label.nii.gz"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _as_nii(root: Path, name: str, damage: Callable[[Path], None]) -> None:
    """Re-save ``name``'s image uncompressed (.nii), list it, then ``damage`` it."""
    image = root / "data" / f"{name}_image.nii.gz"
    target = _save(root / "data" / f"{name}_image.nii", np.asanyarray(nib.load(image).dataobj))
    manifest = _manifest()
    for split in manifest.values():
        for entry in split if isinstance(split, list) else []:
            if entry["image"].endswith(f"{name}_image.nii.gz"):
                entry["image"] = entry["image"][: -len(".gz")]
    _write(root, manifest)
    damage(target)


def _with(root: Path, change: Callable[[dict], None]) -> None:
    manifest = _manifest()
    change(manifest)
    _write(root, manifest)


def _shifted(mm: float) -> np.ndarray:
    affine = AFFINE.copy()
    affine[0, 3] += mm
    return affine


def _spacing() -> np.ndarray:
    affine = AFFINE.copy()
    affine[2, 2] = 3.0
    return affine


def _flipped() -> np.ndarray:
    affine = AFFINE.copy()
    affine[0, 0] = 0.8
    affine[0, 3] = 10.0 - 0.8 * (SHAPE[0] - 1)
    return affine


def _nearly_constant(seed: int) -> np.ndarray:
    mr = np.full(SHAPE, 100.0, dtype=np.float32)
    mr[0, 0, 0] = 400.0
    return mr


def _dicom_ct(root: Path, name: str, **kwargs) -> Path:
    """A CT series folder listed as ct_unlabelled[0] (patient D), written by the DICOM factory."""
    folder = root / "data" / name
    geometry = Geometry(rows=12, cols=14, pixel_spacing=(1.5, 1.2), slice_spacing=3.0, n_slices=8)
    write_ct_series(folder, geometry, patient_id="D", **kwargs)
    entry = {"image": f"../data/{name}", "modality": "CT", "patient": "D"}
    _with(root, lambda m: m.update(ct_unlabelled=[entry]))
    return folder


def _two_series(root: Path) -> None:
    folder = _dicom_ct(root, "ct_dicom")
    geometry = Geometry(rows=12, cols=14, pixel_spacing=(1.5, 1.2), slice_spacing=3.0, n_slices=8)
    write_ct_series(folder, geometry, patient_id="D", name_prefix="MR", seed=7)


def _slice_without_pixels(root: Path) -> None:
    folder = _dicom_ct(root, "ct_dicom")
    path = sorted(folder.glob("*.dcm"))[3]
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)


def _truncated_slice(root: Path) -> None:
    folder = _dicom_ct(root, "ct_dicom")
    _truncate(sorted(folder.glob("*.dcm"))[2], keep=0.6)


def _same_patient(split_a: str, split_b: str) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        manifest[split_b][0]["patient"] = manifest[split_a][0]["patient"]

    return change


def _copy_of(source: str, target: str) -> Callable[[Path], None]:
    """``target``'s image becomes a byte copy of ``source``'s (another name, the same scan)."""

    def damage(root: Path) -> None:
        (root / _image(target)).write_bytes((root / _image(source)).read_bytes())

    return damage


# (damage, the file named, text of the problem, text of the fix, the manifest entry)
CASES: dict[str, tuple[Callable[[Path], None], str, str, str, str]] = {
    "mri-constant": (lambda r: _save(r / _image("p1_w3"), np.full(SHAPE, 100.0, np.float32)),
                     _image("p1_w3"), "every voxel is 100", "re-export", "mri_unlabelled[1]"),
    "mri-all-zero": (lambda r: _save(r / _image("p2_w1"), np.zeros(SHAPE, np.float32)),
                     _image("p2_w1"), "all zero", "re-export", "mri_test[0]"),
    "ct-all-zero": (lambda r: _save(r / _image("ct_b"), np.zeros(SHAPE, np.int16)),
                    _image("ct_b"), "all zero", "re-export", "ct_train[1]"),
    "mri-nearly-constant": (lambda r: _save(r / _image("p2_w1"), _nearly_constant(0)),
                            _image("p2_w1"), "percentiles both 100", "T2w series", "mri_test[0]"),
    "mri-4d-unlabelled": (lambda r: _save(r / _image("p1_w3"), np.stack([_mr(1)] * 3, -1)),
                          _image("p1_w3"), "(4D)", "one 3D file per scan", "mri_unlabelled[1]"),
    "ct-4d": (lambda r: _save(r / _image("ct_c"), np.stack([_ct(2)] * 2, -1)),
              _image("ct_c"), "(4D)", "split the 4D file", "ct_test[0]"),
    "mri-2d": (lambda r: _save(r / _image("p2_w1"), _mr(2)[:, :, 0]),
               _image("p2_w1"), "(2D)", "whole 3D volume", "mri_test[0]"),
    "zero-byte-nii-gz": (lambda r: (r / _image("p2_w1")).write_bytes(b""),
                         _image("p2_w1"), "empty (0 bytes)", "re-export", "mri_test[0]"),
    "truncated-nii-gz": (lambda r: _truncate(r / _image("ct_a")),
                         _image("ct_a"), "truncated", "re-download", "ct_train[0]"),
    "truncated-nii": (lambda r: _as_nii(r, "ct_b", _truncate),
                      "data/ct_b_image.nii", "truncated", "re-download", "ct_train[1]"),
    "not-a-nifti": (lambda r: (r / _image("ct_c")).write_bytes(b"<html>403 Forbidden</html>"),
                    _image("ct_c"), "could not be read", "re-export", "ct_test[0]"),
    "zero-byte-label": (lambda r: (r / _label("ct_a")).write_bytes(b""),
                        _label("ct_a"), "empty (0 bytes)", "re-export", "ct_train[0]"),
    "label-0-2": (lambda r: _save(r / _label("p1_w1"), _blob() * 2),
                  _label("p1_w1"), "values are 0, 2", "relabel", "mri_week1[0]"),
    "ct-label-0-1-2": (lambda r: _save(r / _label("ct_a"), _blob() + (_ct(0) > 0)),
                       _label("ct_a"), "values are 0, 1, 2", "relabel", "ct_train[0]"),
    "label-probabilities": (lambda r: _save(r / _label("ct_b"), _blob() * np.float32(0.5)),
                            _label("ct_b"), "values are 0, 0.5", "threshold", "ct_train[1]"),
    "label-empty": (lambda r: _save(r / _label("p2_w1"), np.zeros(SHAPE, np.uint8)),
                    _label("p2_w1"), "no tumour voxels", "unlabelled split", "mri_test[0]"),
    "label-shape": (lambda r: _save(r / _label("ct_c"), np.ones((16, 16, 5), np.uint8)),
                    _label("ct_c"), "has shape (16, 16, 5)", "resample", "ct_test[0]"),
    "ct-label-shifted-5mm": (lambda r: _save(r / _label("ct_b"), _blob(), _shifted(5.0)),
                             _label("ct_b"), "origin shifted by 5 mm", "affine", "ct_train[1]"),
    "label-spacing": (lambda r: _save(r / _label("p1_w3"), _blob(), _spacing()),
                      _label("p1_w3"), "voxel spacing", "image's affine", "mri_validation[0]"),
    "label-flipped": (lambda r: _save(r / _label("p2_w1"), _blob(), _flipped()),
                      _label("p2_w1"), "axis directions", "image's affine", "mri_test[0]"),
    "ct-raw-stored": (lambda r: _save(r / _image("ct_a"), _ct(0) + 1024),
                      _image("ct_a"), "raw stored values", "RescaleIntercept", "ct_train[0]"),
    "ct-normalised": (lambda r: _save(r / _image("ct_b"), (_ct(1) + 1000) / 1060.0 - 1),
                      _image("ct_b"), "already normalised", "raw HU", "ct_train[1]"),
    "ct-windowed": (lambda r: _save(r / _image("ct_c"), np.clip(_ct(2), -160, 240)),
                    _image("ct_c"), "no air", "unclipped", "ct_test[0]"),
    "ct-overflow": (lambda r: _save(r / _image("ct_a"), _ct(0).astype(np.float32) * 40),
                    _image("ct_a"), "outside the Hounsfield range", "overflow", "ct_train[0]"),
    "mri-nan": (lambda r: _save(r / _image("p1_w1"), np.where(_blob() == 1, np.nan, _mr(0))),
                _image("p1_w1"), "NaN/Inf", "finite values", "mri_unlabelled[0]"),
    "dicom-two-series": (_two_series, "data/ct_dicom", "2 series in one folder",
                         "its own folder", "ct_unlabelled[0]"),
    "dicom-slice-without-pixels": (_slice_without_pixels, "data/ct_dicom", "CT0003.dcm: 1 slice",
                                   "re-download", "ct_unlabelled[0]"),
    "dicom-missing-slice": (lambda r: _dicom_ct(r, "ct_gap", drop_slices=(4,)), "data/ct_gap",
                            "1 slice(s) missing", "--allow_gaps", "ct_unlabelled[0]"),
    "dicom-truncated-slice": (_truncated_slice, "data/ct_dicom", "CT0002.dcm: 1 slice",
                              "re-download", "ct_unlabelled[0]"),
    "same-file-twice": (lambda r: _with(r, lambda m: m["ct_train"].append(dict(m["ct_train"][0]))),
                        _image("ct_a"), "the same file", "remove the duplicate", "ct_train[2]"),
    "same-voxels-other-name": (_copy_of("ct_a", "ct_c"), _image("ct_c"),
                               "the same voxel data as", "remove the duplicate", "ct_test[0]"),
    "mri-copy-across-patients": (_copy_of("p1_w1", "p2_w1"), _image("p2_w1"),
                                 "the same voxel data as", "point it at", "mri_test[0]"),
    "patient-in-ct-train-and-test": (lambda r: _with(r, _same_patient("ct_train", "ct_test")),
                                     "data_manifests/m.json", '"ct_test" also appear in',
                                     "test patient", "ct_test[0]"),
    "patient-in-mri-train-and-test": (
        lambda r: _with(r, _same_patient("mri_week1", "mri_test")), "data_manifests/m.json",
        '"mri_test" also appear in', "--test_patients", "mri_test[0]"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_deep_validation_names_the_file_entry_and_fix(root: Path, case: str) -> None:
    damage, file, problem_text, fix_text, entry = CASES[case]
    damage(root)
    manifest = root / "data_manifests" / "m.json"
    before = manifest.read_bytes()
    problems = validate_manifest(manifest, deep=True)
    found = [p for p in problems if os.path.normpath(p.file) == str(root / file)]
    assert found, f"no problem names {file}: {[str(p) for p in problems]}"
    assert any(problem_text in p.problem and entry in p.problem for p in found), found
    assert any(fix_text in p.fix for p in found), found
    assert all(p.fix and "Fix:" in str(p) for p in problems)
    # the gate raises the same problems, naming the manifest, and records no verdict
    with pytest.raises(ManifestError, match="problem") as error:
        check_manifest(manifest)
    assert str(manifest) in str(error.value).splitlines()[0]
    assert manifest.read_bytes() == before
    assert not list(root.rglob(VALIDATION_CACHE))


def test_a_passed_check_is_remembered_until_a_file_changes(root: Path, monkeypatch) -> None:
    import tumoraware.data.manifest as manifest_module

    manifest = root / "data_manifests" / "m.json"
    check_manifest(manifest)
    assert (root / "data" / VALIDATION_CACHE).is_file()  # the data folder, not the manifest's

    def no_reading(file: str):
        raise AssertionError(f"read {file} although nothing changed")

    monkeypatch.setattr(manifest_module, "_read_volume", no_reading)
    check_manifest(manifest)  # remembered: nothing is read
    monkeypatch.undo()
    _save(root / _label("ct_a"), _blob() * 2)  # a changed file is checked afresh
    with pytest.raises(ManifestError, match="values are 0, 2"):
        check_manifest(manifest)


# ------------------------------------------------------------------------------------ prepare


def _mri_folder(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    for i, name in enumerate(("P1_week1", "P1_week3", "P2_week1")):
        _save(images / f"{name}.nii.gz", _mr(10 + i))
        _save(labels / f"{name}_label.nii.gz", _blob())
    return images, labels


# damage(images folder, masks folder), the file named, text of the problem
PREPARE_MRI_CASES = {
    "zero-byte-image": (lambda i, m: (i / "P1_week3.nii.gz").write_bytes(b""),
                        "images/P1_week3.nii.gz", "empty (0 bytes)"),
    "truncated-image": (lambda i, m: _truncate(i / "P2_week1.nii.gz"),
                        "images/P2_week1.nii.gz", "truncated"),
    "label-0-2": (lambda i, m: _save(m / "P1_week1_label.nii.gz", _blob() * 2),
                  "labels/P1_week1_label.nii.gz", "values are 0, 2"),
    "constant-image": (lambda i, m: _save(i / "P2_week1.nii.gz", np.zeros(SHAPE, np.float32)),
                       "images/P2_week1.nii.gz", "all zero"),
    "4d-image": (lambda i, m: _save(i / "P1_week3.nii.gz", np.stack([_mr(3)] * 2, -1)),
                 "images/P1_week3.nii.gz", "(4D)"),
    "copied-scan": (lambda i, m: (i / "P2_week1.nii.gz").write_bytes(
                        (i / "P1_week1.nii.gz").read_bytes()),
                    "images/P2_week1.nii.gz", "the same voxel data"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PREPARE_MRI_CASES))
def test_prepare_mri_never_writes_a_manifest_over_bad_files(tmp_path: Path, case: str) -> None:
    images, labels = _mri_folder(tmp_path)
    out = tmp_path / "out"
    manifest = prepare_mri(images, out, labels, test_patients="P2", progress=False)
    before = manifest.read_bytes()
    damage, file, text = PREPARE_MRI_CASES[case]
    damage(images, labels)
    with pytest.raises(PrepareError) as error:
        prepare_mri(images, out, labels, test_patients="P2", progress=False)
    message = str(error.value)
    assert str(tmp_path / file) in message and text in message and "Fix:" in message
    assert str(manifest) in message.splitlines()[0] and "not written" in message
    assert manifest.read_bytes() == before  # the previous manifest survives, unchanged
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def _task06(root: Path) -> Path:
    for i, case in enumerate(("lung_001", "lung_003")):
        _save(root / "imagesTr" / f"{case}.nii.gz", _ct(10 + i))
        _save(root / "labelsTr" / f"{case}.nii.gz", _blob())
    dataset = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in ("lung_001", "lung_003")
        ],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


@pytest.mark.parametrize(
    ("damage", "file", "text"),
    [
        (lambda r: _truncate(r / "imagesTr" / "lung_003.nii.gz"), "imagesTr/lung_003", "truncated"),
        (lambda r: _save(r / "labelsTr" / "lung_001.nii.gz", _blob() + (_ct(0) > 0)),
         "labelsTr/lung_001", "values are 0, 1, 2"),
        (lambda r: _save(r / "labelsTr" / "lung_003.nii.gz", _blob(), _shifted(5.0)),
         "labelsTr/lung_003", "origin shifted by 5 mm"),
    ],
    ids=["truncated-ct", "label-0-1-2", "label-shifted-5mm"],
)  # fmt: skip
def test_prepare_msd_keeps_the_previous_manifest(tmp_path: Path, damage, file, text) -> None:
    root = _task06(tmp_path / "Task06_Lung")
    manifest = prepare_msd(root, tmp_path / "manifests")
    before = manifest.read_bytes()
    damage(root)
    with pytest.raises(PrepareError) as error:
        prepare_msd(root, tmp_path / "manifests")
    assert f"{file}.nii.gz" in str(error.value) and text in str(error.value)
    assert manifest.read_bytes() == before


def test_prepare_nsclc_leaves_out_a_patient_whose_ct_is_another_patients(tmp_path: Path) -> None:
    """A batch survives one bad patient: the duplicate is skipped, with the reason and file."""
    from tests.dicom_factory import Sphere, write_rtstruct
    from tumoraware.data.prepare import prepare_nsclc

    geometry = Geometry(rows=24, cols=24, pixel_spacing=(1.5, 1.5), slice_spacing=3.0,
                        n_slices=8, origin=(-18.0, -18.0, -10.0))  # fmt: skip
    hu = np.stack([default_hu(geometry, k) for k in range(geometry.n_slices)], axis=-1)
    for pid in ("LUNG1-001", "LUNG1-002"):  # the same voxels under two patient ids
        study = tmp_path / "tcia" / pid / "study"
        ct = write_ct_series(study / "ct", geometry, hu, patient_id=pid, seed=int(pid[-1]))
        write_rtstruct(study / "rs" / "1-1.dcm", ct, {"GTV-1": Sphere((0.0, 0.0, 0.0), 6.0)})
    manifest = prepare_nsclc(tmp_path / "tcia", tmp_path / "out", progress=False)
    assert [e["patient"] for e in json.loads(manifest.read_text())["ct_train"]] == ["LUNG1-001"]
    skipped = (tmp_path / "out" / "skipped.csv").read_text()
    assert "LUNG1-002" in skipped and "the same CT voxels as patient 'LUNG1-001'" in skipped
    assert str(tmp_path / "out" / "LUNG1-002" / "image.nii.gz") in skipped and "Fix:" in skipped


# ------------------------------------------------------------------------------------ transforms


def _meta(array: np.ndarray, name: str, affine: np.ndarray = AFFINE) -> MetaTensor:
    return MetaTensor(
        torch.as_tensor(array)[None].float(),
        affine=torch.as_tensor(affine),
        meta={"filename_or_obj": name},
    )


TRANSFORM_CASES = {
    "ct-window-raw-stored": (lambda: CTWindowd("image")(
                                 {"image": _meta(_ct(0) + 1024, "/d/ct.nii")}),
                             "/d/ct.nii", "raw stored values"),
    "mri-normalise-constant": (lambda: RobustMRINormalized("image")(
                                   {"image": _meta(np.zeros(SHAPE), "/d/mr.nii")}),
                               "/d/mr.nii", "constant image"),
    "crop-empty-label": (lambda: TumourRegionCropd(("image", "label"), spatial_size=(16, 16))(
                             {"image": _meta(_mr(0), "/d/mr.nii"),
                              "label": _meta(np.zeros(SHAPE), "/d/lab.nii")}),
                         "/d/lab.nii", "empty label"),
    "crop-label-0-1-2": (lambda: TumourRegionCropd(("image", "label"), spatial_size=(16, 16))(
                             {"image": _meta(_ct(0), "/d/ct.nii"),
                              "label": _meta(_blob() + (_ct(0) > 0), "/d/lab.nii")}),
                         "/d/lab.nii", "binary tumour label"),
    "crop-label-shifted-5mm": (lambda: TumourRegionCropd(("image", "label"), spatial_size=(16, 16))(
                                   {"image": _meta(_ct(0), "/d/ct.nii"),
                                    "label": _meta(_blob(), "/d/lab.nii", _shifted(5.0))}),
                               "/d/lab.nii", "origin shifted by 5 mm"),
    "crop-shape-mismatch": (lambda: TumourRegionCropd(("image", "label"), spatial_size=(16, 16))(
                                {"image": _meta(_ct(0)[:12], "/d/ct.nii"),
                                 "label": _meta(_blob(), "/d/lab.nii")}),
                            "/d/ct.nii", "like the label /d/lab.nii"),
    "crop-wrong-spatial-size": (lambda: TumourRegionCropd("image", spatial_size=(64, 64, 8)),
                                "spatial_size", "[256, 256]"),
    "slices-depth-mismatch": (lambda: VolumeToSlicesd(("image", "label"))(
                                  {"image": _meta(_mr(0)[..., :5], "/d/mr.nii"),
                                   "label": _meta(_blob(), "/d/lab.nii")}),
                              "/d/mr.nii", "slice count D"),
    "slices-label-0-2": (lambda: VolumeToSlicesd(("image", "label"))(
                             {"image": _meta(_mr(0), "/d/mr.nii"),
                              "label": _meta(_blob() * 2, "/d/lab.nii")}),
                         "/d/lab.nii", "binary tumour label"),
    "mask-channel-shape": (lambda: AppendMaskChanneld("image")(
                               {"image": _meta(_mr(0)[:, :, 0], "/d/mr.nii"),
                                "label": _meta(_blob()[:8, :, 0], "/d/lab.nii")}),
                           "/d/mr.nii", "/d/lab.nii"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TRANSFORM_CASES))
def test_transform_errors_name_the_file_and_the_fix(case: str) -> None:
    run, name, text = TRANSFORM_CASES[case]
    with pytest.raises(ValueError) as error:
        run()
    assert name in str(error.value) and text in str(error.value) and "Fix:" in str(error.value)


def test_wrong_spatial_size_for_the_network_says_what_to_set() -> None:
    from tumoraware.networks import ResnetGenerator

    with pytest.raises(ValueError, match=r"Fix: set the bundle's spatial_size"):
        ResnetGenerator(n_blocks=1, ngf=4)(torch.zeros(1, 1, 30, 32))


# ------------------------------------------------------------------------------------ surfacing


def test_a_failed_stage_surfaces_our_error_not_monais_wrapper(config_bundle, tmp_path) -> None:
    """CTWindowd fails inside a ConfigExpression of a real bundle run, as in the study."""
    from tumoraware.pipeline import BundleStage, run_stage

    ct = _save(tmp_path / "raw_ct.nii.gz", (_ct(0) + 1024).astype(np.float32))
    bundle = config_bundle({
        "imports": ["$import monai", "$import tumoraware.transforms"],
        "transform": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "tumoraware.transforms.CTWindowd", "keys": "image"}]},
        "dataset": f"$monai.data.CacheDataset([{{'image': '{ct}'}}], @transform, progress=False)",
        "run": ["$print(len(@dataset))"],
    })  # fmt: skip
    stage = BundleStage(name="s", bundle=bundle, configs=["configs/run.json"])
    with pytest.raises(RuntimeError) as error:
        run_stage(stage, tmp_path / "run", {}, progress=False)
    message = str(error.value)
    cause = message.split("Cause: ", 1)[1].split("\nFull traceback: ", 1)[0]
    assert str(ct) in cause and "raw stored values" in cause and "Fix:" in cause
    assert "ConfigExpression" not in cause
    assert f"Full traceback: {tmp_path / 'run' / 'log.txt'}" in message  # kept, not replaced
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "Failed to evaluate ConfigExpression" in log
    assert innermost_error(log) == cause


LOG_CASES = {
    "dataloader-worker": (
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "RuntimeError: Caught ValueError in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n  File \"w.py\", line 2, in f\n"
        "ValueError: /d/lab.nii: empty label. Fix: check the label.\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n  File \"c.py\", line 3, in e\n"
        "RuntimeError: Failed to evaluate ConfigExpression: $x\n",
        "ValueError: /d/lab.nii: empty label. Fix: check the label."),
    "truncated-file": (
        "Traceback (most recent call last):\n  File \"g.py\", line 9, in read\n"
        "EOFError: Compressed file ended before the end-of-stream marker was reached\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n  File \"c.py\", line 3, in e\n"
        "RuntimeError: applying transform <LoadImaged>\n",
        "manifest validate MANIFEST --deep"),
    "tensor-sizes": (
        "Traceback (most recent call last):\n  File \"n.py\", line 4, in forward\n"
        "RuntimeError: Sizes of tensors must match except in dimension 1. Expected size 13 but "
        "got size 14 for tensor number 1 in the list.\n",
        "Fix: set spatial_size"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LOG_CASES))
def test_innermost_error_of_a_log(case: str) -> None:
    log, expected = LOG_CASES[case]
    assert expected in innermost_error(log)
    assert "ConfigExpression" not in innermost_error(log)


def test_a_checkpoint_of_another_architecture_says_which_network_how_much_and_the_fix() -> None:
    from monai.networks.nets import UNet

    network = UNet(2, 1, 2, (8, 16, 32), (2, 2), num_res_units=1)
    deeper = UNet(2, 1, 2, (8, 16, 32), (2, 2), num_res_units=0).state_dict()
    wider = UNet(2, 1, 2, (4, 8, 16), (2, 2), num_res_units=1).state_dict()
    for other, counts in ((deeper, "missing from it, 14 unexpected"), (wider, "of another shape")):
        with pytest.raises(RuntimeError) as raw:  # what MONAI's CheckpointLoader meets
            network.load_state_dict(other)
        summary = state_dict_mismatch(str(raw.value), checkpoint="/w/model.pt")
        assert summary is not None and "/w/model.pt does not fit network UNet" in summary
        assert counts in summary and "Fix: load it with the configs and profile" in summary
        assert len(summary) < len(str(raw.value))  # counts, not the key lists
    with pytest.raises(ValueError, match=r"network_def: .*weight\(s\) of another shape.*Fix: "):
        check_state_dict(network, wider, "network_def", "/w/model.pt", "use the demo profile.")


def test_the_bundles_checkpoint_loader_explains_another_architecture(tmp_path: Path) -> None:
    from ignite.engine import Engine
    from monai.networks.nets import UNet

    from tumoraware.handlers.checkpoint import CheckpointLoader

    weights = tmp_path / "model.pt"
    torch.save(UNet(2, 1, 2, (4, 8, 16), (2, 2)).state_dict(), weights)
    network = UNet(2, 1, 2, (8, 16, 32), (2, 2))
    loader = CheckpointLoader(load_path=str(weights), load_dict={"network": network})
    with pytest.raises(ValueError) as error:
        loader(Engine(lambda engine, batch: None))
    message = str(error.value)
    assert f"{weights} does not fit network UNet" in message and "of another shape" in message
    assert "Fix: load it with the configs and profile it was trained with" in message
    assert "Missing key(s)" not in message


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tumoraware", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300)  # fmt: skip


def test_reproduce_stops_bad_data_before_training_with_one_clear_error(root: Path) -> None:
    _save(root / _label("ct_b"), _blob(), _shifted(5.0))
    manifest = root / "data_manifests" / "m.json"
    args = ("reproduce", "--ct_manifest", str(manifest), "--mri_manifest", str(manifest),
            "--profile", "test", "--out_dir", str(root / "study"))  # fmt: skip
    result = _cli(*args, cwd=root)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(manifest) in errors[0]
    assert str(root / _label("ct_b")) in result.stderr and "origin shifted by 5 mm" in result.stderr
    assert "Fix:" in result.stderr and "run with --debug for the traceback" in result.stderr
    assert not (root / "study").exists()  # nothing trained, nothing written

    debug = _cli(*args, "--debug", cwd=root)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert "ManifestError" in debug.stderr


def test_the_phantom_world_passes_the_gate_and_is_remembered(tiny_world) -> None:
    """What `tumoraware demo` checks before training: its generated world passes (training
    splits may share patients, test splits may not), and a second check reads nothing."""
    out_dir, manifest = tiny_world
    check_manifest(manifest)
    assert (out_dir / VALIDATION_CACHE).is_file()
    assert validate_manifest(manifest, deep=True) == []
