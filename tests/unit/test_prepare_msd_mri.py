"""``tumoraware prepare msd`` / ``prepare mri`` on real files written to ``tmp_path`` (no mocks).

MSD: a tiny Task06_Lung tree (``dataset.json``, ``imagesTr``/``labelsTr``/``imagesTs``, macOS
``._`` junk). MRI: NIfTI scans under every accepted naming variant, masks with and without
suffixes, and a 3-slice MR DICOM series written with pydicom.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tumoraware.data.manifest import load_manifest, splits, validate_manifest
from tumoraware.data.prepare import MissingInputError, PrepareError, prepare_mri, prepare_msd
from tumoraware.data.prepare.mri import parse_scan_name

SHAPE = (6, 5, 3)
AFFINE = np.array([[-0.9, 0, 0, 12.0], [0, -0.9, 0, 8.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _seed(path: Path) -> int:
    """A seed per file name: every scan differs (the same voxels twice is a duplicate scan)."""
    return zlib.crc32(path.name.encode())


def _ct(path: Path) -> Path:
    ct = np.full(SHAPE, -1000, dtype=np.int16)
    ct[1:5, 1:4, :] = 40 + _seed(path) % 50
    return _save(path, ct)


def _mask(path: Path, shape: tuple[int, ...] = SHAPE, affine: np.ndarray = AFFINE) -> Path:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:4, 2:4, 1] = 1
    return _save(path, mask, affine)


def _mr(path: Path) -> Path:
    rng = np.random.default_rng(_seed(path))
    return _save(path, rng.uniform(50, 400, SHAPE).astype(np.float32))


# ------------------------------------------------------------------------------------ MSD


def _task06(root: Path, train=("lung_001", "lung_003"), test=("lung_002",)) -> Path:
    """A Task06_Lung tree in ``root`` with macOS junk next to the real files."""
    for case in train:
        _ct(root / "imagesTr" / f"{case}.nii.gz")
        _mask(root / "labelsTr" / f"{case}.nii.gz")
    for case in test:
        _ct(root / "imagesTs" / f"{case}.nii.gz")
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"._{(train + test)[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    dataset = {
        "name": "Lung",
        "description": "Lung and cancer segmentation",
        "reference": "The Cancer Imaging Archive",
        "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(train),
        "numTest": len(test),
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train
        ],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test],
    }
    (root / "dataset.json").write_text(json.dumps(dataset), encoding="utf-8")
    return root


def test_msd_manifest_validates_and_loads_in_monai(tmp_path, caplog):
    from monai.data import load_decathlon_datalist

    root = _task06(tmp_path / "data" / "Task06_Lung")
    with caplog.at_level(logging.WARNING):
        manifest = prepare_msd(root, tmp_path / "data_manifests")
    assert manifest == tmp_path / "data_manifests" / "msd_task06_lung.json"
    assert validate_manifest(manifest, deep=True) == []
    data = load_manifest(manifest)
    assert data["base_dir"] == ".."
    assert data["licence"] == "CC-BY-SA 4.0"
    assert data["labels"] == {"0": "background", "1": "tumor"}
    assert data["generator"]["tool"] == "tumoraware prepare msd"
    assert sorted(splits(data)) == ["ct_train", "test"]
    assert [e["patient"] for e in data["ct_train"]] == ["lung_001", "lung_003"]
    assert data["ct_train"][0] == {
        "image": "../data/Task06_Lung/imagesTr/lung_001.nii.gz",
        "label": "../data/Task06_Lung/labelsTr/lung_001.nii.gz",
        "modality": "CT",
        "patient": "lung_001",
        "tumour_site": "lung",
    }
    assert data["test"] == [
        {"image": "../data/Task06_Lung/imagesTs/lung_002.nii.gz", "modality": "CT",
         "patient": "lung_002"}
    ]  # fmt: skip
    assert "._" not in manifest.read_text()
    assert not caplog.records  # the ._ junk is neither listed nor reported as unlisted
    loaded = load_decathlon_datalist(str(manifest), data_list_key="ct_train")
    for entry, case in zip(loaded, ("lung_001", "lung_003"), strict=True):
        assert entry["image"] == str(root / "imagesTr" / f"{case}.nii.gz")
        assert entry["label"] == str(root / "labelsTr" / f"{case}.nii.gz")
        assert os.path.isabs(entry["image"]) and os.path.isfile(entry["image"])
        assert os.path.isfile(entry["label"])


def test_msd_through_a_symlinked_data_folder(tmp_path):
    """Data on another disk, linked into the repository: base_dir widens to hold the target."""
    real = _task06(tmp_path / "bigdisk" / "Task06_Lung", train=("lung_004",), test=())
    (tmp_path / "repo" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "data" / "Task06_Lung").symlink_to(real)
    manifest = prepare_msd(tmp_path / "repo" / "data" / "Task06_Lung", tmp_path / "repo" / "m")
    assert validate_manifest(manifest) == []
    data = load_manifest(manifest)
    assert data["ct_train"][0]["image"] == "../data/Task06_Lung/imagesTr/lung_004.nii.gz"
    assert data["base_dir"] == "../.."  # holds repo/ and bigdisk/
    assert "test" not in data  # an empty labelled-looking split is left out


def test_msd_missing_files_are_all_named_or_skipped(tmp_path, caplog):
    root = _task06(tmp_path / "Task06_Lung", train=("lung_001", "lung_003", "lung_005"))
    (root / "imagesTr" / "lung_003.nii.gz").unlink()
    (root / "labelsTr" / "lung_005.nii.gz").unlink()
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError) as error:
        prepare_msd(root, out)
    message = str(error.value)
    assert str(root / "imagesTr" / "lung_003.nii.gz") in message
    assert str(root / "labelsTr" / "lung_005.nii.gz") in message
    assert "Task06_Lung.tar" in message
    assert not (out / "msd_task06_lung.json").exists()

    with caplog.at_level(logging.WARNING):
        manifest = prepare_msd(root, out, manifest_name="partial.json", skip_missing=True)
    assert [e["patient"] for e in load_manifest(manifest)["ct_train"]] == ["lung_001"]
    assert "lung_003" in caplog.text and "lung_005" in caplog.text
    assert validate_manifest(manifest) == []


def test_msd_dataset_json_errors(tmp_path):
    root = _task06(tmp_path / "Task06_Lung")
    dataset_json = root / "dataset.json"
    good = dataset_json.read_text()

    dataset_json.write_text(good[:-5])  # truncated
    with pytest.raises(PrepareError, match=r"dataset\.json: invalid JSON at line 1:"):
        prepare_msd(root, tmp_path / "out")

    dataset_json.write_text(json.dumps({**json.loads(good), "modality": {"0": "MRI"}}))
    with pytest.raises(ValueError, match=r"modality.*Task06_Lung"):
        prepare_msd(root, tmp_path / "out")

    dataset_json.unlink()
    with pytest.raises(MissingInputError, match=r"dataset\.json: not found"):
        prepare_msd(root, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        prepare_msd(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ MRI


def test_parse_scan_name_variants():
    cases = {
        "P001_week3": ("P001", 3),
        "p001-wk3": ("p001", 3),
        "P001_w3": ("P001", 3),
        "P001_WEEK_03": ("P001", 3),
        "LUNG-7-Wk12": ("LUNG-7", 12),
        "A_w1_week5": ("A_w1", 5),
        "P002": ("P002", 1),
        "lung_w": ("lung_w", 1),
        "P003week2": ("P003week2", 1),  # no separator: no week part
    }
    assert {stem: parse_scan_name(stem) for stem in cases} == cases


def _mri_folders(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "mri" / "images", tmp_path / "mri" / "labels"
    for name in ("P001_week1.nii.gz", "P001-wk3.nii.gz", "Q7.nii", "P003_week1.nii.gz",
                 "P003_W4.nii.gz", "p010_w2.nii.gz"):  # fmt: skip
        _mr(images / name)
    (images / "._P001_week1.nii.gz").write_bytes(b"junk")
    (images / "notes.txt").write_text("scanner protocol")
    for name in ("P001_week1_label.nii.gz", "P001-wk3_SEG.nii.gz", "P003_week4-mask.nii.gz",
                 "P003_week1.nii.gz"):  # fmt: skip
        _mask(labels / name)
    return images, labels


def _key(entry: dict) -> tuple[str, int]:
    return entry["patient"], entry["week"]


def test_mri_splits_names_and_labels(tmp_path, caplog):
    images, labels = _mri_folders(tmp_path)
    out = tmp_path / "data_manifests"
    with caplog.at_level(logging.WARNING):
        manifest = prepare_mri(images, out, labels, test_patients="p003", progress=False)
    assert "notes.txt" in caplog.text
    assert validate_manifest(manifest, deep=True) == []
    data = load_manifest(manifest)
    assert data["base_dir"] == ".."
    assert data["generator"]["test_patients"] == ["P003"]
    assert sorted(splits(data)) == ["mri_test", "mri_unlabelled", "mri_validation", "mri_week1"]
    unlabelled = data["mri_unlabelled"]
    assert [_key(e) for e in unlabelled] == [("P001", 1), ("P001", 3), ("Q7", 1), ("p010", 2)]
    assert all("label" not in e and e["modality"] == "MR" for e in unlabelled)
    assert unlabelled[2]["image"] == "../mri/images/Q7.nii"
    assert data["mri_week1"] == [
        {"image": "../mri/images/P001_week1.nii.gz", "label": "../mri/labels/P001_week1_label"
         ".nii.gz", "modality": "MR", "patient": "P001", "week": 1}
    ]  # fmt: skip
    assert [(_key(e), e["label"]) for e in data["mri_validation"]] == [
        (("P001", 3), "../mri/labels/P001-wk3_SEG.nii.gz")
    ]
    assert [(_key(e), e["image"], e["label"]) for e in data["mri_test"]] == [
        (("P003", 1), "../mri/images/P003_week1.nii.gz", "../mri/labels/P003_week1.nii.gz"),
        (("P003", 4), "../mri/images/P003_W4.nii.gz", "../mri/labels/P003_week4-mask.nii.gz"),
    ]


def test_mri_without_labels_and_with_masks_beside_the_images(tmp_path):
    images, _ = _mri_folders(tmp_path)
    data = load_manifest(prepare_mri(images, tmp_path / "a", progress=False))
    assert sorted(splits(data)) == ["mri_unlabelled"]  # empty labelled splits are left out
    assert len(data["mri_unlabelled"]) == 6

    _mask(images / "Q7_label.nii.gz")
    with pytest.raises(PrepareError, match=r"Q7_label\.nii\.gz(.|\n)*labels=images"):
        prepare_mri(images, tmp_path / "b", progress=False)
    manifest = prepare_mri(images, tmp_path / "c", labels=images, progress=False)
    data = load_manifest(manifest)
    assert len(data["mri_unlabelled"]) == 6  # the mask is not taken for an image
    assert [(_key(e), e["label"]) for e in data["mri_week1"]] == [
        (("Q7", 1), "../mri/images/Q7_label.nii.gz")
    ]
    assert validate_manifest(manifest, deep=True) == []


def test_mri_name_errors(tmp_path):
    images, labels = _mri_folders(tmp_path)
    out = tmp_path / "out"

    with pytest.raises(PrepareError, match="not found among the 4 patient") as error:
        prepare_mri(images, out, labels, test_patients=["P003", "P999"], progress=False)
    assert "'P999'" in str(error.value) and "P001, P003, Q7, p010" in str(error.value)

    _mask(labels / "P009_week1_label.nii.gz")
    with pytest.raises(PrepareError, match="match no image") as error:
        prepare_mri(images, out, labels, progress=False)
    assert str(labels / "P009_week1_label.nii.gz") in str(error.value)
    (labels / "P009_week1_label.nii.gz").unlink()

    _mr(images / "P001_week3.nii")
    with pytest.raises(PrepareError, match="more than one image") as error:
        prepare_mri(images, out, labels, progress=False)
    assert str(images / "P001-wk3.nii.gz") in str(error.value)
    assert str(images / "P001_week3.nii") in str(error.value)
    assert not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no MRI scans found(.|\n)*_week<N>") as error:
        prepare_mri(empty, out, progress=False)
    assert str(empty) in str(error.value)


def test_mri_mask_off_the_image_grid(tmp_path):
    images, labels = _mri_folders(tmp_path)
    _mask(labels / "P001_week1_label.nii.gz", shape=(6, 5, 4))
    shifted = AFFINE.copy()
    shifted[2, 3] += 2.5
    _mask(labels / "P001-wk3_SEG.nii.gz", affine=shifted)
    with pytest.raises(PrepareError, match="not on their image's grid") as error:
        prepare_mri(images, tmp_path / "out", labels, progress=False)
    message = str(error.value)
    assert str(labels / "P001_week1_label.nii.gz") in message
    assert str(images / "P001_week1.nii.gz") in message
    assert "shape (6, 5, 4)" in message
    assert str(labels / "P001-wk3_SEG.nii.gz") in message and "2.5 mm" in message
    assert "resample" in message


def _write_mr_series(folder: Path, pixels: np.ndarray) -> None:
    """``pixels`` (slices, rows, cols) as an axial MR series, slice 0 at z = 10 mm, 5 mm apart."""
    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(pixels.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "P004", k + 1
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.ImagePositionPatient = [-20.0, -30.0, 10.0 + 5.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.8, 0.7]  # row spacing (along y), column spacing (along x)
        ds.SliceThickness = 5.0
        ds.Rows, ds.Columns = pixels.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2.0, -10.0
        ds.PixelData = pixels[k].astype(np.uint16).tobytes()
        # written in reverse order: the reader must sort by position, not by file name
        ds.save_as(folder / f"IM{pixels.shape[0] - k:04d}.dcm", enforce_file_format=True)


def test_mri_dicom_series_is_converted_once(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    pixels = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5) + 100  # slices, rows, cols
    _write_mr_series(images / "P004_w2", pixels)
    assert pydicom.dcmread(images / "P004_w2" / "IM0001.dcm").ImagePositionPatient[2] == 20.0
    # RAS: x = 20 - 0.7 i, y = 30 - 0.8 j, z = 10 + 5 k (LPS origin (-20, -30, 10) flipped)
    ras = np.array([[-0.7, 0, 0, 20.0], [0, -0.8, 0, 30.0], [0, 0, 5.0, 10.0], [0, 0, 0, 1]])
    _mask(labels / "P004_w2_label.nii.gz", shape=(5, 4, 3), affine=ras)
    _mr(images / "P005_week1.nii.gz")
    out = tmp_path / "manifests"

    manifest = prepare_mri(images, out, labels, progress=False)
    converted = out / "P004" / "week2_image.nii.gz"
    nifti = nib.load(converted)
    assert nifti.shape == (5, 4, 3)  # (columns, rows, slices)
    np.testing.assert_allclose(nifti.affine, ras, atol=1e-6)
    assert nifti.get_data_dtype() == np.int16  # slope 2, intercept -10: whole numbers
    expected = 2.0 * pixels.transpose(2, 1, 0).astype(np.float64) - 10.0
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), expected)
    data = load_manifest(manifest)
    assert [(_key(e), e["image"]) for e in data["mri_unlabelled"]] == [
        (("P004", 2), "P004/week2_image.nii.gz"),
        (("P005", 1), "../images/P005_week1.nii.gz"),
    ]
    assert [e["label"] for e in data["mri_validation"]] == ["../labels/P004_w2_label.nii.gz"]
    assert validate_manifest(manifest, deep=True) == []

    os.utime(converted, ns=(1_000_000_000, 1_000_000_000))
    prepare_mri(images, out, labels, progress=False)
    assert converted.stat().st_mtime_ns == 1_000_000_000  # not converted again
    assert load_manifest(manifest) == data
