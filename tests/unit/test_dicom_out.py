"""Masks out as DICOM SEG and RTSTRUCT, read back and compared voxel for voxel.

Series are written by :mod:`tests.dicom_factory` (axial and oblique, non-square) or come from
pydicom's and pydicom-data's test files (real MR slices from Siemens and Philips scanners, a
real 5-slice CT, a real Enhanced MR multi-frame file; nobody here wrote them). The SEG
is read back with highdicom, the RTSTRUCT with our own reader (:mod:`.rtstruct`, even-odd fill
at pixel centres), so writer and reader are checked to agree, holes and islands included. When
David Clunie's ``dciodvfy`` is installed (Debian: ``apt-get install dicom3tools``) the outputs
are also checked against the standard's IODs.
"""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from tests.dicom_factory import (
    CtSeriesInfo,
    Cylinder,
    Geometry,
    Ring,
    dice,
    oblique_iop,
    truth_mask,
    write_ct_series,
)
from tumoraware.atomic import save_volume_atomic
from tumoraware.data.dicom import DicomError, fill_polygons, rasterise_roi, read_dicom_series
from tumoraware.data.dicom.align import mask_onto_series
from tumoraware.data.dicom.outputs import dicom_out, output_paths, parse_formats
from tumoraware.data.dicom.rtstruct_writer import mask_contours, write_rtstruct
from tumoraware.data.dicom.seg_writer import write_seg
from tumoraware.data.dicom.source import load_source_series, series_description

MODEL, VERSION = "lung_mri_tumor_segmentation", "0.1.0-test"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
TEST_FILES = Path(get_testdata_file("MR_small.dcm")).parent
REAL_CT = TEST_FILES / "dicomdirtests" / "98892001" / "CT5N"  # 5 slices, files in reverse order
# pydicom-data (a test dependency, from PyPI): read from the installed package, never downloaded
PYDICOM_DATA = Path(str(importlib.resources.files("data_store") / "data"))

AXIAL = Geometry(
    rows=48, cols=64, pixel_spacing=(1.5, 2.0), origin=(-61.3, -35.2, -12.5),
    slice_spacing=2.5, n_slices=10,
)  # fmt: skip
OBLIQUE = Geometry(
    rows=64, cols=48, pixel_spacing=(1.25, 1.75), iop=oblique_iop(23.0, "column"),
    origin=(-40.2, -44.6, 7.1), slice_spacing=3.0, n_slices=9,
)  # fmt: skip
GEOMETRIES = {"axial": AXIAL, "oblique": OBLIQUE}


def _centre(geometry: Geometry) -> tuple[float, float, float]:
    middle = [(geometry.cols - 1) / 2 + 1.3, (geometry.rows - 1) / 2 - 2.1, 4.4, 1.0]
    return tuple(float(v) for v in (geometry.affine_lps @ middle)[:3])


def _tumour(ct: CtSeriesInfo) -> np.ndarray:
    """A tube with a hole and an island in the hole, plus a blob on the image's edge."""
    centre = _centre(ct.geometry)
    mask = truth_mask(ct, Ring(centre, outer=21.0, inner=11.0, half_length=7.0))
    mask |= truth_mask(ct, Cylinder(centre, radius=4.5, half_length=4.0))
    mask[:3, :2, 1] = 1  # touches the first column and row: contours must still close
    mask[10, 10, 2] = mask[11, 11, 2] = 1  # two pixels touching at a corner only
    return mask


@pytest.fixture(params=sorted(GEOMETRIES))
def series(request, tmp_path) -> tuple[CtSeriesInfo, np.ndarray]:
    ct = write_ct_series(tmp_path / "ct", GEOMETRIES[request.param], file_names="shuffled")
    return ct, _tumour(ct)


@pytest.fixture
def real_mr(tmp_path) -> Path:
    """pydicom's MR_small.dcm (a real 64×64 MR slice) alone in a folder."""
    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(TEST_FILES / "MR_small.dcm", folder)
    return folder


def _seg_pixels(path: Path, sop_uids: list[str]) -> np.ndarray:
    """The SEG's segment 1 as ``(cols, rows, slices)``, frames without tumour as zeros."""
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(
        sop_uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    return pixels[..., 0].transpose(2, 1, 0)


def _read_back_rtstruct(path: Path, folder: Path) -> np.ndarray:
    return rasterise_roi(path, read_dicom_series(folder), roi="GTV")


def _ring(shape: tuple[int, int], centre: tuple[float, float], outer: float, inner: float):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    radius = np.hypot(rows - centre[0], cols - centre[1])
    return ((radius < outer) & (radius >= inner)).astype(np.uint8)


# ---- SEG ------------------------------------------------------------------------------------
def test_seg_round_trip_voxel_for_voxel(series, tmp_path):
    ct, mask = series
    path = write_seg(mask, ct.folder, tmp_path / "out" / "seg.dcm", MODEL, VERSION)
    np.testing.assert_array_equal(_seg_pixels(path, ct.sop_uids), mask)

    ds, source = pydicom.dcmread(path), pydicom.dcmread(ct.files[0])
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert ds[keyword].value == source[keyword].value
    assert ds.SeriesInstanceUID not in (ct.series_uid, source.SeriesInstanceUID)
    assert ds.SOPInstanceUID not in ct.sop_uids
    assert MODEL in ds.SeriesDescription and VERSION in ds.SeriesDescription
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "GTV" and segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (MODEL, VERSION)
    referenced = {
        item.ReferencedSOPInstanceUID
        for series_ref in ds.ReferencedSeriesSequence
        for item in series_ref.ReferencedInstanceSequence
    }
    assert referenced == set(ct.sop_uids)


def test_seg_from_datasets_and_a_torch_mask(tmp_path):
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    mask = _tumour(ct)
    shuffled = [pydicom.dcmread(f) for f in reversed(ct.files)]  # any order: sorted on normal
    tensor = torch.from_numpy(mask)[None].float()  # MONAI's channel-first layout
    path = write_seg(tensor, shuffled, tmp_path / "seg.dcm", MODEL, VERSION)
    np.testing.assert_array_equal(_seg_pixels(path, ct.sop_uids), mask)


# ---- RTSTRUCT -------------------------------------------------------------------------------
def test_rtstruct_round_trip_through_our_reader(series, tmp_path):
    ct, mask = series
    path = write_rtstruct(mask, ct.folder, tmp_path / "out" / "rs.dcm", MODEL, VERSION)
    back = _read_back_rtstruct(path, ct.folder)
    assert dice(back, mask) >= 0.99
    np.testing.assert_array_equal(back, mask)  # the writer traces what the reader fills

    ds, source = pydicom.dcmread(path), pydicom.dcmread(ct.files[0])
    assert ds.Modality == "RTSTRUCT" and ds.ApprovalStatus == "UNAPPROVED"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate"):
        assert ds[keyword].value == source[keyword].value
    assert ds.SeriesInstanceUID != ct.series_uid
    assert MODEL in ds.SeriesDescription and VERSION in ds.SeriesDescription
    assert [roi.ROIName for roi in ds.StructureSetROISequence] == ["GTV"]
    assert ds.RTROIObservationsSequence[0].RTROIInterpretedType == "GTV"
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct.frame_of_reference_uid
    series_ref = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == ct.series_uid
    assert [i.ReferencedSOPInstanceUID for i in series_ref.ContourImageSequence] == ct.sop_uids

    per_slice: dict[str, int] = {}
    normal = ct.geometry.normal
    for item in ds.ROIContourSequence[0].ContourSequence:
        assert item.ContourGeometricType == "CLOSED_PLANAR"
        points = np.asarray(item.ContourData, dtype=float).reshape(-1, 3)
        assert len(points) == item.NumberOfContourPoints >= 3
        uid = item.ContourImageSequence[0].ReferencedSOPInstanceUID
        k = ct.sop_uids.index(uid)  # on the plane of the slice it references
        np.testing.assert_allclose(points @ normal, ct.positions[k] @ normal, atol=1e-3)
        per_slice[uid] = per_slice.get(uid, 0) + 1
    assert max(per_slice.values()) >= 3  # outer boundary, hole, island: separate contours


@pytest.mark.parametrize("seed", range(6))
def test_traced_contours_fill_back_exactly(seed):
    """Random masks (edges, single pixels, corner contacts, nested holes): tracing then the
    reader's even-odd fill gives every pixel back."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((23, 31)) < 0.15 + 0.1 * seed).astype(np.uint8)
    mask[5:15, 6:20] = 1
    mask[8:12, 9:16] = 0  # a hole
    mask[9:11, 11:13] = 1  # an island in the hole
    filled = fill_polygons(mask_contours(mask), mask.shape)
    np.testing.assert_array_equal(filled, mask.astype(bool))


# ---- real files nobody here wrote ------------------------------------------------------------
def test_real_mr_slice_round_trips(real_mr, tmp_path):
    mask = _ring((64, 64), (30.2, 35.7), outer=14.0, inner=5.0).T[:, :, None]  # (cols, rows, 1)
    seg = write_seg(mask, real_mr, tmp_path / "seg.dcm", MODEL, VERSION)
    rs = write_rtstruct(mask, real_mr, tmp_path / "rs.dcm", MODEL, VERSION)
    uid = str(pydicom.dcmread(real_mr / "MR_small.dcm").SOPInstanceUID)
    np.testing.assert_array_equal(_seg_pixels(seg, [uid]), mask)
    back = _read_back_rtstruct(rs, real_mr)
    assert dice(back, mask) >= 0.99
    np.testing.assert_array_equal(back, mask)
    assert pydicom.dcmread(rs).PatientID == pydicom.dcmread(real_mr / "MR_small.dcm").PatientID


@pytest.mark.parametrize(
    "name",
    ["MR-SIEMENS-DICOM-WithOverlays.dcm", "MR2_UNCR.dcm"],  # 484² axial; 1024² oblique
)
def test_real_scanner_mr_slices_round_trip(name, tmp_path):
    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(PYDICOM_DATA / name, folder)
    source = pydicom.dcmread(folder / name)
    rows, cols = int(source.Rows), int(source.Columns)
    ring = _ring((rows, cols), (rows * 0.43, cols * 0.58), outer=rows / 7, inner=rows / 20)
    mask = ring.T[:, :, None]  # (cols, rows, 1)
    seg = write_seg(mask, folder, tmp_path / "seg.dcm", MODEL, VERSION)
    rs = write_rtstruct(mask, folder, tmp_path / "rs.dcm", MODEL, VERSION)
    np.testing.assert_array_equal(_seg_pixels(seg, [str(source.SOPInstanceUID)]), mask)
    back = _read_back_rtstruct(rs, folder)
    assert dice(back, mask) >= 0.99
    for written in (pydicom.dcmread(seg), pydicom.dcmread(rs)):
        assert written.PatientID == source.PatientID
        assert written.StudyInstanceUID == source.StudyInstanceUID
        assert written.SeriesInstanceUID != source.SeriesInstanceUID


def test_enhanced_multi_frame_mr_is_named_not_called_broken(tmp_path):
    """pydicom-data's emri_small.dcm: a real Enhanced MR file (10 frames in one file)."""
    enhanced = tmp_path / "enhanced"
    enhanced.mkdir()
    shutil.copy(PYDICOM_DATA / "emri_small.dcm", enhanced)
    for read in (load_source_series, read_dicom_series):
        with pytest.raises(DicomError, match=r"emri_small\.dcm: a multi-frame image \(Enhanced MR"):
            read(enhanced)
    # beside a classic series it is another series, skipped, not a "truncated" file
    shutil.copy(TEST_FILES / "MR_small.dcm", enhanced)
    assert load_source_series(enhanced).shape == (64, 64, 1)
    assert read_dicom_series(enhanced).array.shape == (64, 64, 1)


def test_real_ct_series_round_trips(tmp_path):
    series = read_dicom_series(REAL_CT)
    mask = np.zeros(series.array.shape, dtype=np.uint8)
    mask[3:12, 4:13, 1:4] = 1
    mask[6:9, 7:10, 2] = 0  # a hole on the middle slice
    seg = write_seg(mask, REAL_CT, tmp_path / "seg.dcm", MODEL, VERSION)
    rs = write_rtstruct(mask, REAL_CT, tmp_path / "rs.dcm", MODEL, VERSION)
    np.testing.assert_array_equal(_seg_pixels(seg, series.sop_uids), mask)
    np.testing.assert_array_equal(rasterise_roi(rs, series, roi="GTV"), mask)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not found")
def test_outputs_pass_dciodvfy(real_mr, tmp_path):
    ct = write_ct_series(tmp_path / "ct", OBLIQUE)
    mask = _ring((64, 64), (30.2, 35.7), outer=14.0, inner=5.0).T[:, :, None]
    files = [
        write_seg(_tumour(ct), ct.folder, tmp_path / "seg.dcm", MODEL, VERSION),
        write_rtstruct(_tumour(ct), ct.folder, tmp_path / "rs.dcm", MODEL, VERSION),
        write_seg(mask, real_mr, tmp_path / "mr_seg.dcm", MODEL, VERSION),
        write_rtstruct(mask, real_mr, tmp_path / "mr_rs.dcm", MODEL, VERSION),
    ]
    for path in files:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        report = run.stdout + run.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}:\n{report}"


# ---- NIfTI masks onto the series: tumoraware dicom_out --------------------------------------
def test_dicom_out_maps_a_reoriented_nifti_onto_the_series(tmp_path):
    ct = write_ct_series(tmp_path / "ct", OBLIQUE)
    mask = _tumour(ct)
    affine = LPS_TO_RAS @ ct.geometry.affine_lps
    # the same grid stored with axes swapped and flipped (as a reader reorienting to RAS may)
    swapped = np.flip(mask.transpose(2, 0, 1), axis=1)
    to_swapped = np.zeros((4, 4))  # swapped voxel (k, n_i - 1 - i, j) -> series voxel (i, j, k)
    to_swapped[0, 1], to_swapped[0, 3] = -1.0, mask.shape[0] - 1
    to_swapped[1, 2] = to_swapped[2, 0] = to_swapped[3, 3] = 1.0
    nifti = save_volume_atomic(swapped, affine @ to_swapped, tmp_path / "scan_seg.nii.gz")

    paths = dicom_out(nifti, ct.folder, tmp_path / "out", model_name=MODEL, model_version=VERSION)
    assert paths == {"seg": tmp_path / "out" / "scan_seg.dcm",
                     "rtstruct": tmp_path / "out" / "scan_rtstruct.dcm"}  # fmt: skip
    np.testing.assert_array_equal(_seg_pixels(paths["seg"], ct.sop_uids), mask)
    np.testing.assert_array_equal(_read_back_rtstruct(paths["rtstruct"], ct.folder), mask)


def test_mask_onto_series_refuses_another_grid_unless_resampled(tmp_path):
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    source = load_source_series(ct.folder)
    mask = _tumour(ct)
    affine = LPS_TO_RAS @ ct.geometry.affine_lps
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0] * 0.5  # half a voxel along the columns
    with pytest.raises(DicomError, match=r"off the series' voxel centres.*--resample"):
        mask_onto_series(mask, shifted, source, name="m.nii.gz")
    with pytest.raises(DicomError, match="covering another part"):
        mask_onto_series(mask[1:], affine @ _translation(1, 0, 0), source)
    turn = np.radians(30.0)
    rotated = affine.copy()
    rotated[:2, :3] = [[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]] @ affine[:2, :3]
    with pytest.raises(DicomError, match="rotated or scaled"):
        mask_onto_series(mask, rotated, source)
    # twice as fine in-plane: resampling at the series' voxel centres gives the mask back
    fine = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    fine_affine = affine @ _translation(-0.25, -0.25, 0) @ np.diag([0.5, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(mask_onto_series(fine, fine_affine, source, resample=True), mask)


def _translation(i: float, j: float, k: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = (i, j, k)
    return out


def test_dicom_out_command(tmp_path, capsys, monkeypatch):
    from tumoraware.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() sets it
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    nifti = save_volume_atomic(_tumour(ct), LPS_TO_RAS @ ct.geometry.affine_lps,
                               tmp_path / "case.nii.gz")  # fmt: skip
    main(["dicom_out", "--mask", str(nifti), "--series", str(ct.folder), "--out_dir",
          str(tmp_path / "out"), "--formats", "rtstruct", "--model_version", "2.0"])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case_rtstruct.dcm"]
    assert "case_rtstruct.dcm" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["dicom_out", "--mask", str(tmp_path / "missing.nii.gz"), "--series",
              str(ct.folder), "--out_dir", str(tmp_path / "out")])  # fmt: skip
    assert exited.value.code == 2
    assert "missing.nii.gz: no such file" in capsys.readouterr().err


# ---- errors ---------------------------------------------------------------------------------
def test_clear_errors(tmp_path):
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    mask = _tumour(ct)
    out = tmp_path / "out.dcm"
    with pytest.raises(DicomError, match=r"shape \(48, 64, 10\).*not on this series' grid"):
        write_seg(mask.transpose(1, 0, 2), ct.folder, out, MODEL, VERSION)
    with pytest.raises(DicomError, match="the mask is empty"):
        write_rtstruct(np.zeros_like(mask), ct.folder, out, MODEL, VERSION)
    with pytest.raises(DicomError, match="not a binary mask"):
        write_seg(mask * 2, ct.folder, out, MODEL, VERSION)
    with pytest.raises(DicomError, match="no such folder"):
        write_seg(mask, tmp_path / "nowhere", out, MODEL, VERSION)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no DICOM image series"):
        write_rtstruct(mask, tmp_path / "empty", out, MODEL, VERSION)
    with pytest.raises(ValueError, match="unknown DICOM output format"):
        parse_formats("seg,nifti")
    assert not out.exists()


def test_mixed_series_and_frames_of_reference_are_refused(tmp_path):
    mixed = tmp_path / "two_series"
    write_ct_series(mixed, AXIAL, name_prefix="A")
    write_ct_series(mixed, AXIAL, name_prefix="B")
    with pytest.raises(DicomError, match=r"2 series in one folder.*--series_uid"):
        load_source_series(mixed)

    frames = tmp_path / "two_frames"  # one SeriesInstanceUID, two frames of reference
    even = write_ct_series(frames, AXIAL, drop_slices=range(1, 10, 2), name_prefix="E")
    write_ct_series(frames, AXIAL, drop_slices=range(0, 10, 2), name_prefix="O",
                    series_uid=even.series_uid, frame_of_reference_uid="1.2.3.4")  # fmt: skip
    with pytest.raises(DicomError, match="mixed FrameOfReferenceUIDs"):
        load_source_series(frames)

    radial = TEST_FILES / "dicomdirtests" / "98892003" / "MR700"  # real radial MR slices
    with pytest.raises(DicomError, match="mixes images"):
        load_source_series(radial)


def test_reader_and_writers_refuse_two_slices_at_one_position(tmp_path):
    """One stacking check for both (``sorted_stack``): a resample must not hide a duplicate."""
    twice = tmp_path / "twice"
    first = write_ct_series(twice, AXIAL, name_prefix="A")
    write_ct_series(twice, AXIAL, name_prefix="B", series_uid=first.series_uid,
                    study_uid=first.study_uid,
                    frame_of_reference_uid=first.frame_of_reference_uid)  # fmt: skip
    for read in (load_source_series, read_dicom_series,
                 lambda folder: read_dicom_series(folder, allow_gaps=True)):  # fmt: skip
        with pytest.raises(DicomError, match=r"same slice position .* two acquisitions"):
            read(twice)


def test_names_and_descriptions():
    assert output_paths("o", "series1_seg", ["seg", "rtstruct"]) == {
        "seg": Path("o/series1_seg.dcm"), "rtstruct": Path("o/series1_rtstruct.dcm")
    }  # fmt: skip
    long = series_description("RTSTRUCT", "x" * 80, "10.2.3")
    assert len(long) <= 64 and long.endswith(" 10.2.3")
    assert parse_formats(("RTSTRUCT", "seg")) == ("seg", "rtstruct")
    assert parse_formats("") == ()


def test_dicom_out_refuses_a_file_that_is_not_nifti(tmp_path):
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    broken = tmp_path / "mask.nii.gz"
    broken.write_bytes(b"not a NIfTI")
    with pytest.raises(DicomError, match="not a readable NIfTI mask"):
        dicom_out(broken, ct.folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_single_slice_ignores_the_guessed_slice_spacing(real_mr, tmp_path):
    """One slice has no spacing; ITK says 1 mm, our reader SliceThickness: both must map."""
    source = load_source_series(real_mr)
    mask = _ring((64, 64), (30.2, 35.7), outer=14.0, inner=5.0).T[:, :, None]
    affine = LPS_TO_RAS @ source.affine_lps
    affine[:3, 2] *= 4.0  # a reader that guessed another thickness
    np.testing.assert_array_equal(mask_onto_series(mask, affine, source), mask)


def test_gaps_are_fine_on_the_slices_but_not_for_a_nifti_grid(tmp_path):
    ct = write_ct_series(tmp_path / "ct", AXIAL, drop_slices=[4])
    mask = _tumour(ct)
    path = write_seg(mask, ct.folder, tmp_path / "seg.dcm", MODEL, VERSION)
    np.testing.assert_array_equal(_seg_pixels(path, ct.sop_uids), mask)
    nifti = save_volume_atomic(mask, LPS_TO_RAS @ ct.geometry.affine_lps, tmp_path / "m.nii.gz")
    with pytest.raises(DicomError, match="not evenly spaced"):
        dicom_out(nifti, ct.folder, tmp_path / "out")
