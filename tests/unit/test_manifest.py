"""Manifest reading and validation, on real NIfTI files written to ``tmp_path`` (no mocks).

The layout mirrors the repository: the manifest lives in ``<root>/data_manifests/`` with
``"base_dir": ".."`` and lists volumes in ``<root>/data/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import nibabel as nib
import numpy as np
import pytest

from tumoraware.data.manifest import (
    METADATA_KEYS,
    SCHEMA_PATH,
    ManifestError,
    ManifestProblem,
    load_manifest,
    load_split,
    run_validate,
    splits,
    validate_manifest,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((REPO / "data_manifests" / "templates").glob("*.json"))
SHAPE = (16, 16, 4)
AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 10.0], [0.0, -0.8, 0.0, 20.0], [0.0, 0.0, 2.5, -30.0], [0, 0, 0, 1]]
)


def _blob() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[6:10, 6:10, 1:3] = 1
    return mask


def _ct_hu(body: int = 40) -> np.ndarray:
    """Air (-1000 HU) around a soft-tissue body (``body`` HU) holding a 60 HU tumour."""
    ct = np.full(SHAPE, -1000, dtype=np.int16)
    ct[2:14, 2:14, :] = body
    ct[_blob() == 1] = 60
    return ct


def _mr(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mr = rng.uniform(50.0, 400.0, SHAPE).astype(np.float32)
    mr[_blob() == 1] = 600.0
    return mr


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _entry(name: str, modality: str, label: bool = True, **extra: Any) -> dict[str, Any]:
    entry = {"image": f"../data/{name}_image.nii.gz", "modality": modality, "patient": name}
    if label:
        entry["label"] = f"../data/{name}_label.nii.gz"
    return {**entry, **extra}


def _write_manifest(root: Path, manifest: dict[str, Any], name: str = "m.json") -> Path:
    path = root / "data_manifests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path


def _base_manifest(**split_lists: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "test", "labels": {"0": "background", "1": "tumor"}, "base_dir": "..",
            **split_lists}  # fmt: skip


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A good data set: two labelled CTs, one labelled MRI (week 1), one unlabelled MRI."""
    data = tmp_path / "data"
    _save(data / "ct0_image.nii.gz", _ct_hu())
    _save(data / "ct0_label.nii.gz", _blob())
    _save(data / "ct1_image.nii.gz", _ct_hu(body=30))  # each patient's scan is its own
    _save(data / "ct1_label.nii.gz", _blob())
    _save(data / "mr0_image.nii.gz", _mr())
    _save(data / "mr0_label.nii.gz", _blob())
    _save(data / "mr1_image.nii.gz", _mr(seed=1))
    return tmp_path


def _good(**overrides: list[dict[str, Any]]) -> dict[str, Any]:
    split_lists = {
        "ct_train": [_entry("ct0", "CT", tumour_site="hilar"), _entry("ct1", "CT")],
        "mri_week1": [_entry("mr0", "MR", week=1)],
        "mri_unlabelled": [_entry("mr1", "MR", label=False, week=2)],
    }
    return _base_manifest(**{**split_lists, **overrides})


def _matching(problems: list[ManifestProblem], text: str) -> list[ManifestProblem]:
    return [p for p in problems if text in p.problem]


def _one(problems: list[ManifestProblem], text: str) -> ManifestProblem:
    found = _matching(problems, text)
    assert len(found) == 1, f"expected one problem containing {text!r}, got: {problems}"
    return found[0]


# ------------------------------------------------------------------------------------ good input


def test_good_manifest_passes_deep_checks(root: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write_manifest(root, _good())
    assert validate_manifest(path, deep=True) == []
    assert run_validate(str(path), deep=True) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"OK: {path} (4 entries in 3 splits, deep checks passed)"


def test_load_manifest_and_splits(root: Path) -> None:
    manifest = load_manifest(_write_manifest(root, _good()))
    assert list(splits(manifest)) == ["ct_train", "mri_week1", "mri_unlabelled"]
    assert splits(manifest)["mri_week1"][0]["week"] == 1


def test_load_split_matches_monai(root: Path) -> None:
    from monai.data import load_decathlon_datalist

    path = _write_manifest(root, _good())
    entries = load_split(path, "ct_train")
    assert [e["patient"] for e in entries] == ["ct0", "ct1"]
    for entry in entries:
        for key in ("image", "label"):
            assert os.path.isabs(entry[key]) and os.path.isfile(entry[key]), entry[key]
    assert entries == load_decathlon_datalist(str(path), data_list_key="ct_train")


def test_load_split_unknown_split_lists_the_existing_ones(root: Path) -> None:
    path = _write_manifest(root, _good())
    with pytest.raises(ManifestError, match='no split "ct_val"') as info:
        load_split(path, "ct_val")
    assert '"ct_train", "mri_week1", "mri_unlabelled"' in str(info.value)


def test_load_split_refuses_paths_outside_base_dir(root: Path) -> None:
    path = _write_manifest(root, _good(ct_train=[_entry("ct0", "CT", image="../../x.nii.gz")]))
    with pytest.raises(ManifestError, match="outside base_dir"):
        load_split(path, "ct_train")


def test_problem_str_names_file_split_and_fix() -> None:
    problem = ManifestProblem("a.json", "Broken.", "mend it.", split="ct_train")
    assert str(problem) == "a.json: [ct_train] Broken. Fix: mend it."
    assert str(ManifestProblem("a.json", "Broken.", "mend it.")) == "a.json: Broken. Fix: mend it."


# ------------------------------------------------------------------------------------ JSON, schema


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "name": "x",\n  "labels": {"1": "tumor"},\n}\n', encoding="utf-8")
    (problem,) = validate_manifest(path)
    assert problem.file == str(path)
    assert "line 4:1" in problem.problem
    with pytest.raises(ManifestError, match=r"broken\.json.*line 4:1"):
        load_manifest(path)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ManifestError, match=r"nope\.json: The manifest does not exist"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("change", "location", "fix_text"),
    [
        (lambda e: e.pop("image"), 'ct_train[0] has no "image"', '"image":'),
        (lambda e: e.update(modality="PET"), "ct_train[0].modality is 'PET'", "'CT' or 'MR'"),
        (lambda e: e.update(week=0), "ct_train[0].week is 0", "count weeks from 1"),
    ],
    ids=["missing-image", "bad-modality", "week-0"],
)
def test_schema_violation(root: Path, change: Any, location: str, fix_text: str) -> None:
    manifest = _good()
    change(manifest["ct_train"][0])
    path = _write_manifest(root, manifest)
    problem = _one(validate_manifest(path), location)
    assert problem.file == str(path)
    assert problem.split == "ct_train"
    assert fix_text in problem.fix
    with pytest.raises(ManifestError, match="ct_train\\[0\\]"):
        load_manifest(path)


def test_every_schema_problem_is_reported_sorted(root: Path) -> None:
    manifest = _good()
    del manifest["name"]
    manifest["ct_train"][1]["modality"] = "ct"
    manifest["ct_train"][0]["week"] = 0
    manifest["CT-Val"] = []
    with pytest.raises(ManifestError) as info:
        load_manifest(_write_manifest(root, manifest))
    texts = [p.problem for p in info.value.problems]
    assert len(texts) == 4, texts
    assert "'CT-Val'" in texts[0] and 'has no "name"' in texts[1]
    assert texts[2].startswith("ct_train[0].week") and texts[3].startswith("ct_train[1].modality")
    assert 'rename the split to "ct_val"' in info.value.problems[0].fix


def test_absolute_path_is_reported_with_a_relative_fix(root: Path) -> None:
    absolute = str(root / "data" / "ct0_image.nii.gz")
    path = _write_manifest(root, _good(ct_train=[_entry("ct0", "CT", image=absolute)]))
    problem = _one(validate_manifest(path), "not a relative path")
    assert problem.file == str(path)
    assert absolute in problem.problem
    assert '"../data/ct0_image.nii.gz"' in problem.fix


def test_templates_pass_the_schema_and_only_miss_their_data() -> None:
    assert len(TEMPLATES) == 3
    for template in TEMPLATES:
        manifest = load_manifest(template)
        assert manifest["template"] is True
        assert min(len(entries) for entries in splits(manifest).values()) >= 1
        unexpected = [p for p in validate_manifest(template) if "does not exist" not in p.problem]
        assert unexpected == [], unexpected


def test_run_validate_on_a_template_says_so(capsys: pytest.CaptureFixture) -> None:
    template = REPO / "data_manifests" / "templates" / "own_t2w_mri.json"
    assert run_validate(str(template)) == 2
    err = capsys.readouterr().err
    assert "this manifest is a template" in err and "This is a template" in err


def test_schema_copy_is_identical_and_valid() -> None:
    copy = REPO / "data_manifests" / "schema.json"
    assert copy.read_bytes() == SCHEMA_PATH.read_bytes()
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    # The metadata names allowed as top-level keys are exactly the metadata properties.
    assert set(schema["propertyNames"]["anyOf"][0]["enum"]) == METADATA_KEYS


# ------------------------------------------------------------------------------------ paths


def test_missing_file_names_the_file(root: Path) -> None:
    (root / "data" / "ct1_label.nii.gz").unlink()
    path = _write_manifest(root, _good())
    (problem,) = validate_manifest(path)
    assert problem.file == str(root / "data" / "ct1_label.nii.gz")
    assert "ct_train[1].label" in problem.problem and "does not exist" in problem.problem
    assert "relative to the manifest's folder" in problem.fix


def test_path_climbing_out_of_base_dir(root: Path) -> None:
    outside = root.parent / "etc_x.nii.gz"
    _save(outside, _ct_hu())
    manifest = _good(ct_train=[_entry("ct0", "CT", image=f"../../{outside.name}")])
    path = _write_manifest(root, manifest)
    (problem,) = validate_manifest(path)
    assert problem.file == str(outside)
    assert "outside base_dir" in problem.problem and str(root) in problem.problem


def test_symlink_leaving_base_dir(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "ct.nii.gz"
    _save(outside, _ct_hu())
    (root / "data" / "linked_image.nii.gz").symlink_to(outside)
    path = _write_manifest(root, _good(ct_train=[_entry("linked", "CT", label=False)]))
    (problem,) = validate_manifest(path)
    assert problem.file == str(root / "data" / "linked_image.nii.gz")
    assert f"resolves to {outside}" in problem.problem


def test_base_dir_that_does_not_exist_is_one_problem(root: Path) -> None:
    manifest = _good()
    manifest["base_dir"] = "../nothere"
    path = _write_manifest(root, manifest)
    (problem,) = validate_manifest(path)
    assert problem.file == str(path) and 'base_dir "../nothere"' in problem.problem


def test_label_folder_and_non_nifti_image(root: Path) -> None:
    (root / "data" / "scan.png").write_bytes(b"PNG")
    entry = _entry("ct0", "CT", label=False, image="../data/scan.png")
    path = _write_manifest(
        root, _good(ct_train=[{**_entry("ct0", "CT"), "label": "../data"}, entry])
    )
    problems = validate_manifest(path)
    assert _one(problems, '.label "../data" is not a NIfTI file').file == str(root / "data")
    assert _one(problems, "neither a NIfTI file").file == str(root / "data" / "scan.png")
    assert len(problems) == 3, problems  # plus: ct_train[1] has no label in a labelled split


def test_empty_labelled_split(root: Path) -> None:
    path = _write_manifest(root, _good(ct_train=[], mri_unlabelled=[]))
    (problem,) = validate_manifest(path)  # the empty *unlabelled* split is fine
    assert problem.split == "ct_train" and problem.file == str(path)
    assert 'Split "ct_train" is empty' in problem.problem


def test_partly_labelled_split(root: Path) -> None:
    manifest = _good(ct_train=[_entry("ct0", "CT"), _entry("ct1", "CT", label=False)])
    (problem,) = validate_manifest(_write_manifest(root, manifest))
    assert "1 of its 2 entries" in problem.problem and "ct_train[1]" in problem.problem


# ------------------------------------------------------------------------------------ deep checks


def test_shape_mismatch(root: Path) -> None:
    label = root / "data" / "ct1_label.nii.gz"
    _save(label, np.zeros((16, 16, 5), dtype=np.uint8) + 1)
    path = _write_manifest(root, _good())
    assert validate_manifest(path) == []  # only the deep checks open files
    problem = _one(validate_manifest(path, deep=True), "has shape")
    assert problem.file == str(label)
    assert "(16, 16, 5)" in problem.problem and "(16, 16, 4)" in problem.problem


def test_affine_mismatch(root: Path) -> None:
    label = root / "data" / "ct1_label.nii.gz"
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    _save(label, _blob(), shifted)
    (problem,) = validate_manifest(_write_manifest(root, _good()), deep=True)
    assert problem.file == str(label)
    assert "[-0.8, 0, 0, 12]" in problem.problem and "[-0.8, 0, 0, 10]" in problem.problem


def test_affine_within_tolerance_is_accepted(root: Path) -> None:
    nudged = AFFINE.copy()
    nudged[0, 3] += 5e-4
    _save(root / "data" / "ct1_label.nii.gz", _blob(), nudged)
    assert validate_manifest(_write_manifest(root, _good()), deep=True) == []


def test_non_binary_label(root: Path) -> None:
    label = root / "data" / "mr0_label.nii.gz"
    values = _blob()
    values[0, 0, 0] = 2
    _save(label, values)
    (problem,) = validate_manifest(_write_manifest(root, _good()), deep=True)
    assert problem.file == str(label)
    assert "values are 0, 1, 2" in problem.problem


def test_empty_label(root: Path) -> None:
    label = root / "data" / "ct0_label.nii.gz"
    _save(label, np.zeros(SHAPE, dtype=np.uint8))
    (problem,) = validate_manifest(_write_manifest(root, _good()), deep=True)
    assert problem.file == str(label) and "no tumour voxels" in problem.problem


@pytest.mark.parametrize(
    ("values", "found", "fix_text"),
    [
        (_ct_hu().astype(np.float32) + 1024, "[24, 1084]", "RescaleSlope/RescaleIntercept"),
        ((_ct_hu().astype(np.float32) + 1000) / 530 - 1, "[-1, 1]", "supply raw HU"),
        (np.clip(_ct_hu(), -200, 300), "[-200, 60]", "unclipped"),
        (_ct_hu().astype(np.float32) * 5, "[-5000, 300]", "check the conversion"),
    ],
    ids=["raw-stored", "normalised", "no-air", "out-of-range"],
)
def test_ct_not_in_hounsfield_units(
    root: Path, values: np.ndarray, found: str, fix_text: str
) -> None:
    image = root / "data" / "ct0_image.nii.gz"
    _save(image, values)
    (problem,) = validate_manifest(_write_manifest(root, _good()), deep=True)
    assert problem.file == str(image)
    assert f"values span {found}" in problem.problem
    assert fix_text in problem.fix


def test_nan_in_mri(root: Path) -> None:
    image = root / "data" / "mr1_image.nii.gz"
    values = _mr()
    values[0, 0, :] = np.nan
    values[1, 1, 0] = np.inf
    _save(image, values)
    (problem,) = validate_manifest(_write_manifest(root, _good()), deep=True)
    assert problem.file == str(image) and problem.split == "mri_unlabelled"
    assert "5 NaN/Inf voxels (4 NaN, 1 Inf)" in problem.problem


def test_truncated_gzip(root: Path) -> None:
    image = root / "data" / "mr0_image.nii.gz"
    image.write_bytes(image.read_bytes()[:-200])
    (problem,) = validate_manifest(_write_manifest(root, _good()), deep=True)
    assert problem.file == str(image) and "could not be read" in problem.problem
    assert "re-export" in problem.fix


def test_dicom_series_folder(root: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series, study, stored = generate_uid(), generate_uid(), _ct_hu(body=20) + 1024
    folder = root / "data" / "ct2_dicom"
    folder.mkdir()
    for z in range(SHAPE[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
            CTImageStorage,
            generate_uid(),
        )
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.PatientID, ds.InstanceNumber = "ct2", z + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * z], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows, ds.Columns, ds.SamplesPerPixel = SHAPE[1], SHAPE[0], 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.ascontiguousarray(stored[:, :, z].T.astype(np.uint16)).tobytes()
        ds.save_as(folder / f"{z:03d}.dcm", enforce_file_format=True)
    garbage = root / "data" / "ct3_dicom"
    garbage.mkdir()
    (garbage / "001.dcm").write_bytes(b"not a dicom file")
    manifest = _good(
        ct_test=[
            {"image": "../data/ct2_dicom", "modality": "CT", "patient": "ct2"},
            {"image": "../data/ct3_dicom", "modality": "CT", "patient": "ct3"},
        ]
    )
    (problem,) = validate_manifest(_write_manifest(root, manifest), deep=True)
    # The good series reads in HU (RescaleIntercept applied); the garbage one cannot be read.
    assert problem.file == str(garbage) and "DICOM series could not be read" in problem.problem


# ------------------------------------------------------------------------------------ together


def test_several_problems_are_all_reported(root: Path) -> None:
    (root / "data" / "ct1_image.nii.gz").unlink()
    _save(root / "data" / "mr0_label.nii.gz", _blob() * 3)
    _save(root / "data" / "ct0_image.nii.gz", _ct_hu() + 1024)
    manifest = _good()
    manifest["mri_unlabelled"][0]["modality"] = "MRI"
    manifest["mri_validation"] = []
    problems = validate_manifest(_write_manifest(root, manifest), deep=True)
    expected = ["is 'MRI'", 'Split "mri_validation" is empty', "does not exist",
                "raw stored values", "values are 0, 3"]  # fmt: skip
    for text in expected:
        _one(problems, text)
    assert len(problems) == len(expected), problems


def test_run_validate_failure_output(root: Path, capsys: pytest.CaptureFixture) -> None:
    label = root / "data" / "ct0_label.nii.gz"
    label.unlink()
    manifest = _good()
    manifest["mri_week1"][0]["week"] = 0
    path = _write_manifest(root, manifest)
    assert run_validate(str(path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{path}: [mri_week1] mri_week1[0].week is 0") and "Fix:" in lines[0]
    assert lines[1].startswith(f"{label}: [ct_train]") and "Fix:" in lines[1]
    assert lines[2] == f"FAILED: {path}: 2 problems."


def test_load_split_of_an_empty_test_split(root: Path) -> None:
    # load_decathlon_datalist indexes [0] of a split named "test"; an empty one must still load.
    assert load_split(_write_manifest(root, _good(test=[])), "test") == []
