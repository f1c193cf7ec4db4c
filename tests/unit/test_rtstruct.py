"""DICOM CT + RTSTRUCT → NIfTI, checked voxel for voxel against analytic shapes.

Every case writes real DICOM files with :mod:`tests.dicom_factory` (nothing is mocked) and
compares the reader's image, geometry and label with what the factory knows to be true: the
HU values it wrote, the affine of its grid, and the voxels whose centre lies inside the shape.
Shapes are placed so that no voxel centre lies within the polygon-vs-circle tolerance of a
boundary (``ambiguous_voxel_count == 0``), so an exact rasteriser must match the truth exactly;
the Dice ≥ 0.999 check comes first only to make a failure readable.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.dicom_factory import (
    Contour,
    CtSeriesInfo,
    Cylinder,
    Geometry,
    Ring,
    Sphere,
    ambiguous_voxel_count,
    circle_contour,
    dice,
    oblique_iop,
    shape_contours,
    truth_mask,
    two_point_contour,
    write_ct_series,
    write_rtstruct,
)
from tumoraware.data.dicom import (
    DicomError,
    DicomSeries,
    list_rois,
    rasterise_roi,
    read_dicom_series,
    rtstruct_to_nifti,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

AXIAL = Geometry(
    rows=48, cols=56, pixel_spacing=(1.5, 1.5), origin=(-41.3, -35.2, -62.5),
    slice_spacing=2.5, n_slices=20,
)  # fmt: skip
PRONE = Geometry(
    rows=48, cols=56, pixel_spacing=(1.5, 1.5), iop=(-1, 0, 0, 0, -1, 0),
    origin=(43.1, 37.9, 12.0), slice_spacing=2.5, n_slices=20,
)  # fmt: skip
CORONAL = Geometry(
    rows=40, cols=56, pixel_spacing=(1.5, 1.5), iop=(1, 0, 0, 0, 0, -1),
    origin=(-40.2, -30.6, 55.1), slice_spacing=3.0, n_slices=16,
)  # fmt: skip
ANISOTROPIC = Geometry(
    rows=240, cols=256, pixel_spacing=(0.7, 0.9), origin=(-115.3, -84.1, -20.0),
    slice_spacing=3.0, n_slices=12,
)  # fmt: skip


def _at(geometry: Geometry, i: float, j: float, k: float) -> tuple[float, float, float]:
    """LPS point at (fractional) voxel coordinates of ``geometry``'s regular grid."""
    return tuple(float(v) for v in (geometry.affine_lps @ [i, j, k, 1.0])[:3])


def _axial_sphere() -> Sphere:
    return Sphere(_at(AXIAL, 30.37, 21.61, 9.43), 13.7)


# ---- checks shared by the cases -------------------------------------------------------------
def _check_series(series: DicomSeries, ct: CtSeriesInfo) -> None:
    """The reader's series is the one written: values, order, geometry, identifiers."""
    assert series.array.shape == ct.shape
    np.testing.assert_array_equal(series.array, ct.hu)
    np.testing.assert_allclose(series.affine_lps, ct.geometry.affine_lps, atol=1e-6)
    np.testing.assert_allclose(series.affine_ras, LPS_TO_RAS @ ct.geometry.affine_lps, atol=1e-6)
    assert series.sop_uids == ct.sop_uids
    assert [Path(f).name for f in series.files] == [f.name for f in ct.files]
    assert series.series_uid == ct.series_uid
    assert series.frame_of_reference_uid == ct.frame_of_reference_uid
    assert series.modality == "CT"
    assert series.resampled is False


def _check_label(label: np.ndarray, truth: np.ndarray) -> None:
    assert label.shape == truth.shape
    assert label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= {0, 1}
    assert truth.sum() > 0
    found, true = label.astype(bool), truth.astype(bool)
    missed, extra = int(np.count_nonzero(true & ~found)), int(np.count_nonzero(found & ~true))
    score = dice(label, truth)
    assert score >= 0.999, f"Dice {score:.4f}: {missed} voxels missed, {extra} extra"
    assert missed == extra == 0, f"Dice {score:.5f}: {missed} voxels missed, {extra} extra"


def _convert(ct: CtSeriesInfo, rtstruct: Path, out: Path, **kwargs) -> tuple[np.ndarray, ...]:
    """``rtstruct_to_nifti`` and the NIfTI pair's invariants; returns ``(image, label, affine)``."""
    image_path, label_path = rtstruct_to_nifti(ct.folder, rtstruct, out_dir=out, **kwargs)
    assert Path(image_path) == out / "image.nii.gz"
    assert Path(label_path) == out / "label.nii.gz"
    image, label = nib.load(image_path), nib.load(label_path)
    assert image.get_data_dtype() == np.int16
    assert label.get_data_dtype() == np.uint8
    assert (image.dataobj.slope, image.dataobj.inter) == (1.0, 0.0)  # raw HU, no scaling
    assert image.shape == label.shape
    np.testing.assert_array_equal(image.affine, label.affine)
    # qform and sform must not disagree: ITK (Slicer, ITK-SNAP, SimpleITK, MONAI's ITKReader)
    # reads the qform when it is coded. A sheared (gantry-tilted) grid has no exact qform, so
    # its qform must then be left uncoded (qform_code 0).
    for header in (image.header, label.header):
        qform, code = header.get_qform(coded=True)
        assert code == 0 or np.allclose(qform, image.affine, atol=1e-3), (
            f"qform_code {code} but qform\n{qform}\n!= sform\n{image.affine}"
        )
    return np.asanyarray(image.dataobj), np.asanyarray(label.dataobj), image.affine


def _run_geometry_case(tmp_path: Path, geometry: Geometry, shape, **write_kwargs) -> None:
    """Write, read, convert and compare everything that can be compared."""
    rs_kwargs = {"contour_image_sequence": write_kwargs.pop("contour_image_sequence", True)}
    ct = write_ct_series(tmp_path / "ct", geometry, **write_kwargs)
    rtstruct = write_rtstruct(tmp_path / "rs" / "rtstruct.dcm", ct, {"GTV-1": shape}, **rs_kwargs)
    assert ambiguous_voxel_count(ct, shape) == 0  # the truth below is unambiguous

    series = read_dicom_series(ct.folder)
    _check_series(series, ct)
    truth = truth_mask(ct, shape)
    _check_label(rasterise_roi(rtstruct, series, "GTV-1"), truth)

    image, label, affine = _convert(ct, rtstruct, tmp_path / "out")
    assert image.shape == ct.shape
    np.testing.assert_array_equal(image, ct.hu)
    assert (image[1, 0, :] == -1024).all()  # stored 0, RescaleIntercept -1024
    assert image.min() < -1024  # negative stored values (signed pixels) survive
    _check_label(label, truth)
    np.testing.assert_allclose(affine, series.affine_ras, atol=1e-3)  # float32 in the header
    np.testing.assert_allclose(affine, LPS_TO_RAS @ geometry.affine_lps, atol=1e-3)
    # a tumour voxel and a corner voxel sit where the scanner put them (LPS → RAS sign flip)
    g = geometry
    tumour_voxel = tuple(int(v) for v in np.argwhere(truth)[len(np.argwhere(truth)) // 2])
    for i, j, k in (tumour_voxel, (1, g.rows - 2, ct.shape[2] - 1)):
        lps = ct.positions[k] + i * g.pixel_spacing[1] * g.r + j * g.pixel_spacing[0] * g.c
        ras = (affine @ [i, j, k, 1.0])[:3]
        np.testing.assert_allclose(ras, lps * [-1.0, -1.0, 1.0], atol=1e-3)


# ---- orientations and grids -----------------------------------------------------------------
def test_axial_series_converts_exactly(tmp_path):
    _run_geometry_case(tmp_path, AXIAL, _axial_sphere())
    regular = read_dicom_series(tmp_path / "ct", allow_gaps=True)  # nothing to resample
    assert regular.resampled is False
    assert regular.array.shape == AXIAL.shape


def test_prone_series_with_shuffled_names_and_scrambled_instance_numbers(tmp_path):
    sphere = Sphere(_at(PRONE, 30.37, 21.61, 9.43), 13.7)
    _run_geometry_case(
        tmp_path, PRONE, sphere, file_names="shuffled", instance_numbers="random", seed=3
    )


@pytest.mark.parametrize("axis", ["row", "column"])
def test_oblique_series_tilted_15_degrees(tmp_path, axis):
    geometry = Geometry(
        rows=48, cols=52, pixel_spacing=(1.2, 1.2), iop=oblique_iop(15, axis),
        origin=(-30.1, -28.7, -20.3), slice_spacing=2.0, n_slices=24,
    )  # fmt: skip
    sphere = Sphere(_at(geometry, 25.77, 23.19, 11.63), 12.9)
    _run_geometry_case(tmp_path, geometry, sphere, instance_numbers="reversed")


def test_gantry_tilted_series_keeps_its_shear(tmp_path):
    """IOP tilted 15° about x, slices stacked along the table (z): a sheared grid."""
    geometry = Geometry(
        rows=48, cols=52, pixel_spacing=(1.2, 1.2), iop=oblique_iop(15, "row"),
        origin=(-30.1, -28.7, -20.3), slice_spacing=2.0, n_slices=24, slice_direction=(0, 0, 1),
    )  # fmt: skip
    assert abs(geometry.affine_lps[:3, 2] @ geometry.c) > 0.5  # the step leaves the normal
    sphere = Sphere(_at(geometry, 25.77, 23.19, 11.63), 12.9)
    _run_geometry_case(tmp_path, geometry, sphere, file_names="shuffled")


def test_coronal_series(tmp_path):
    _run_geometry_case(tmp_path, CORONAL, Sphere(_at(CORONAL, 31.41, 17.23, 7.37), 13.1))


def test_non_square_image_with_anisotropic_pixels(tmp_path):
    """240 rows × 256 columns, 0.7 mm between rows, 0.9 mm between columns."""
    sphere = Sphere(_at(ANISOTROPIC, 170.3, 80.6, 5.41), 15.2)
    _run_geometry_case(tmp_path, ANISOTROPIC, sphere)


def test_contours_without_contour_image_sequence_match_by_plane(tmp_path):
    _run_geometry_case(
        tmp_path, AXIAL, _axial_sphere(), contour_image_sequence=False, file_names="shuffled"
    )


@pytest.mark.parametrize("hole_winding", ["opposite", "same"])
def test_ring_keeps_its_hole_empty(tmp_path, hole_winding):
    centre = _at(AXIAL, 27.29, 24.13, 9.61)
    ring = Ring(centre, outer=14.3, inner=6.1, half_length=9.9)
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    contours = shape_contours(ct, ring, hole_winding=hole_winding)
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, {"GTV-1": contours})
    assert ambiguous_voxel_count(ct, ring) == 0

    label = rasterise_roi(rtstruct, read_dicom_series(ct.folder), "GTV-1")
    _check_label(label, truth_mask(ct, ring))
    hole = truth_mask(ct, Cylinder(centre, radius=6.1, half_length=9.9)).astype(bool)
    assert hole.sum() > 100
    assert not label[hole].any()


def test_tiny_tumour_on_a_512_matrix(tmp_path):
    """A 6 mm diameter tumour, 0.703 mm pixels: every one of its ~180 voxels is right."""
    geometry = Geometry(
        rows=512, cols=512, pixel_spacing=(0.703125, 0.703125), origin=(-180.0, -180.0, -100.0),
        slice_spacing=1.25, n_slices=10,
    )  # fmt: skip
    sphere = Sphere(_at(geometry, 301.37, 187.71, 4.43), 3.0)
    _run_geometry_case(tmp_path, geometry, sphere)
    label = np.asanyarray(nib.load(tmp_path / "out" / "label.nii.gz").dataobj)
    truth = truth_mask(geometry, sphere)
    assert int(label.sum()) == int(truth.sum())
    assert 150 < truth.sum() < 200  # (4/3 π 3³) / (0.703² × 1.25) ≈ 183


def test_full_size_512x512x130_series(tmp_path):
    geometry = Geometry(
        rows=512, cols=512, pixel_spacing=(0.9765625, 0.9765625), origin=(-250.0, -250.0, -300.0),
        slice_spacing=2.5, n_slices=130,
    )  # fmt: skip
    sphere = Sphere(_at(geometry, 301.37, 187.71, 64.43), 24.9)
    ct = write_ct_series(tmp_path / "ct", geometry, file_names="uid")
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, {"GTV-1": sphere})
    assert ambiguous_voxel_count(ct, sphere) == 0
    series = read_dicom_series(ct.folder)
    _check_series(series, ct)
    _check_label(rasterise_roi(rtstruct, series, "GTV-1"), truth_mask(ct, sphere))


# ---- contours that need care ----------------------------------------------------------------
def test_plane_matching_tolerates_a_quarter_spacing_and_skips_contours_between_slices(
    tmp_path, caplog
):
    sphere = _axial_sphere()
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    shift = 0.2 * AXIAL.slice_spacing * AXIAL.normal  # within a quarter of the spacing
    contours = [Contour(c.points + shift, None) for c in shape_contours(ct, sphere)]
    between = 0.5 * (ct.positions[3] + ct.positions[4])  # no slice there: must not be painted
    contours.append(circle_contour(AXIAL, between, _at(AXIAL, 10.3, 10.2, 3.5), 6.3))
    rtstruct = write_rtstruct(
        tmp_path / "rtstruct.dcm", ct, {"GTV-1": contours}, contour_image_sequence=False
    )
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        label = rasterise_roi(rtstruct, read_dicom_series(ct.folder), "GTV-1")
    _check_label(label, truth_mask(ct, sphere))
    assert caught or caplog.records  # a dropped contour is never silent


def test_contour_image_sequence_decides_the_slice_before_the_plane(tmp_path):
    """Referenced contours 0.45 spacing off their plane still land on the slice they name."""
    sphere = _axial_sphere()
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    shift = 0.45 * AXIAL.slice_spacing * AXIAL.normal  # beyond the plane-matching tolerance
    contours = [Contour(c.points + shift, c.slice_index) for c in shape_contours(ct, sphere)]
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, {"GTV-1": contours})
    label = rasterise_roi(rtstruct, read_dicom_series(ct.folder), "GTV-1")
    _check_label(label, truth_mask(ct, sphere))


def test_roi_contours_are_found_by_roi_number_not_position(tmp_path):
    sphere, other = _axial_sphere(), Sphere(_at(AXIAL, 12.2, 30.1, 5.3), 8.1)
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    rtstruct = write_rtstruct(
        tmp_path / "rtstruct.dcm", ct, {"Body": other, "GTV-1": sphere, "Cord": other},
        roi_numbers=(7, 3, 12), reverse_roi_contours=True,
    )  # fmt: skip
    series = read_dicom_series(ct.folder)
    _check_label(rasterise_roi(rtstruct, series, "GTV-1"), truth_mask(ct, sphere))
    _check_label(rasterise_roi(rtstruct, series, "Body"), truth_mask(ct, other))


def test_pixel_edge_polygons_reproduce_a_voxel_mask(tmp_path):
    """Contours traced along pixel edges (as exported from voxel masks) give back the mask.

    An L-shaped (concave) polygon with its first point repeated at the end, and a blob written
    as one square contour per voxel (squares share edges only, so XOR = union).
    """
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    g = AXIAL

    def to_lps(k: int, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        col_step, row_step = g.pixel_spacing[1] * g.r, g.pixel_spacing[0] * g.c
        return ct.positions[k] + cols[:, None] * col_step + rows[:, None] * row_step

    expected = np.zeros(ct.shape, dtype=np.uint8)
    # L: columns 10..29 of rows 5..9, plus columns 10..15 of rows 10..24
    expected[10:30, 5:10, 4] = 1
    expected[10:16, 10:25, 4] = 1
    cols = np.array([9.5, 29.5, 29.5, 15.5, 15.5, 9.5, 9.5])
    rows = np.array([4.5, 4.5, 9.5, 9.5, 24.5, 24.5, 4.5])
    contours = [Contour(to_lps(4, cols, rows), 4)]
    blob = np.argwhere(np.add.outer((np.arange(56) - 33.2) ** 2, (np.arange(48) - 30.7) ** 2) < 40)
    square_cols, square_rows = np.array([-0.5, 0.5, 0.5, -0.5]), np.array([-0.5, -0.5, 0.5, 0.5])
    for i, j in blob:
        expected[i, j, 11] = 1
        contours.append(Contour(to_lps(11, i + square_cols, j + square_rows), 11))
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, {"GTV-1": contours})
    label = rasterise_roi(rtstruct, read_dicom_series(ct.folder), "GTV-1")
    assert expected[:, :, 11].sum() == len(blob) > 100
    _check_label(label, expected)


def test_two_point_contour_is_skipped_with_a_warning(tmp_path, caplog):
    sphere = _axial_sphere()
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    contours = [*shape_contours(ct, sphere), two_point_contour(ct, slice_index=9)]
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, {"GTV-1": contours})
    series = read_dicom_series(ct.folder)

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        label = rasterise_roi(rtstruct, series, "GTV-1")
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert any("point" in m.lower() for m in messages), messages
    _check_label(label, truth_mask(ct, sphere))


@pytest.mark.parametrize(
    ("voxel", "edge"),
    [((4.3, 20.7, 9.43), "left"), ((53.6, 45.2, 9.43), "bottom-right"), ((27.4, 1.9, 9.43), "top")],
)
def test_contour_partly_outside_the_image_is_clipped_not_dropped(tmp_path, voxel, edge):
    # radius ~9 pixels, centre 2-5 pixels from the edge: a third or more lies outside
    sphere = Sphere(_at(AXIAL, *voxel), 13.7)
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, {"GTV-1": sphere})
    assert ambiguous_voxel_count(ct, sphere) == 0
    points = np.concatenate([c.points for c in shape_contours(ct, sphere)]) - AXIAL.origin
    column = points @ AXIAL.r / AXIAL.pixel_spacing[1]
    row = points @ AXIAL.c / AXIAL.pixel_spacing[0]
    outside = (
        (column < -0.5) | (column > AXIAL.cols - 0.5) | (row < -0.5) | (row > AXIAL.rows - 0.5)
    )
    assert outside.mean() > 0.2, edge  # the contours do leave the image

    label = rasterise_roi(rtstruct, read_dicom_series(ct.folder), "GTV-1")
    truth = truth_mask(ct, sphere)  # the shape clipped to the grid
    border = np.zeros(ct.shape, dtype=bool)
    border[[0, -1], :, :] = border[:, [0, -1], :] = True
    assert truth[border].any()
    _check_label(label, truth)


def test_roi_names_match_case_insensitively(tmp_path):
    sphere = _axial_sphere()
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    rois = {"Lung-Left": Sphere(_at(AXIAL, 12.2, 30.1, 5.3), 8.1), "GTV-1": sphere}
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, rois)
    assert list_rois(rtstruct) == ["Lung-Left", "GTV-1"]
    label = rasterise_roi(rtstruct, read_dicom_series(ct.folder), "gtv-1")
    _check_label(label, truth_mask(ct, sphere))
    _, nifti_label, _ = _convert(ct, rtstruct, tmp_path / "out", roi="gtv-1")
    _check_label(nifti_label, truth_mask(ct, sphere))


def test_unknown_roi_lists_the_existing_ones(tmp_path):
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    rois = {"Lung-Left": _axial_sphere(), "GTV-1": _axial_sphere()}
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, rois)
    with pytest.raises(DicomError) as err:
        rasterise_roi(rtstruct, read_dicom_series(ct.folder), "GTV-2")
    message = str(err.value)
    assert "GTV-2" in message and "Lung-Left" in message and "GTV-1" in message
    assert rtstruct.name in message
    assert isinstance(err.value, ValueError)
    with pytest.raises(DicomError, match="Lung-Left"):
        rtstruct_to_nifti(ct.folder, rtstruct, roi="GTV-2", out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "label.nii.gz").exists()


def test_rtstruct_inside_the_ct_folder_is_not_taken_for_a_slice(tmp_path):
    sphere = _axial_sphere()
    ct = write_ct_series(tmp_path / "ct", AXIAL)
    rtstruct = write_rtstruct(ct.folder / "RS.dcm", ct, {"GTV-1": sphere})
    _check_series(read_dicom_series(ct.folder), ct)
    _, label, _ = _convert(ct, rtstruct, tmp_path / "out")
    _check_label(label, truth_mask(ct, sphere))


# ---- series selection and slice spacing -----------------------------------------------------
def test_two_series_in_one_folder_use_the_referenced_one(tmp_path):
    folder = tmp_path / "mixed"
    other_geometry = Geometry(
        rows=40, cols=40, pixel_spacing=(2.0, 2.0), origin=(-39.0, -38.0, -70.0),
        slice_spacing=5.0, n_slices=10,
    )  # fmt: skip
    ct_a = write_ct_series(folder, AXIAL, name_prefix="A")
    ct_b = write_ct_series(
        folder, other_geometry, name_prefix="B",
        frame_of_reference_uid=ct_a.frame_of_reference_uid, study_uid=ct_a.study_uid,
    )  # fmt: skip
    assert ct_a.series_uid != ct_b.series_uid
    sphere = _axial_sphere()

    with pytest.raises(DicomError) as err:
        read_dicom_series(folder)
    assert ct_a.series_uid in str(err.value) and ct_b.series_uid in str(err.value)
    _check_series(read_dicom_series(folder, series_uid=ct_a.series_uid), ct_a)
    _check_series(read_dicom_series(folder, series_uid=ct_b.series_uid), ct_b)

    for ct in (ct_a, ct_b):
        rtstruct = write_rtstruct(tmp_path / f"rs_{ct.files[0].name}", ct, {"GTV-1": sphere})
        image, label, affine = _convert(ct, rtstruct, tmp_path / f"out_{ct.files[0].stem}")
        np.testing.assert_array_equal(image, ct.hu)
        np.testing.assert_allclose(affine, LPS_TO_RAS @ ct.geometry.affine_lps, atol=1e-3)
        assert ambiguous_voxel_count(ct, sphere) == 0
        _check_label(label, truth_mask(ct, sphere))


def _numbers(message: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", message)]


def test_missing_slice_is_an_error_that_names_the_gap(tmp_path):
    ct = write_ct_series(tmp_path / "ct", AXIAL, drop_slices=(7,))
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, {"GTV-1": _axial_sphere()})
    with pytest.raises(DicomError) as err:
        read_dicom_series(ct.folder)
    message = str(err.value)
    assert "allow_gaps" in message and "mm" in message
    # slices 6 and 8 sit at z = -47.5 and -42.5 mm; the missing one at -45.0
    assert any(-47.5 - 1e-3 <= v <= -42.5 + 1e-3 for v in _numbers(message)), message
    with pytest.raises(DicomError, match="allow_gaps"):
        rtstruct_to_nifti(ct.folder, rtstruct, out_dir=tmp_path / "out")


def test_allow_gaps_resamples_onto_the_regular_grid(tmp_path):
    sphere = _axial_sphere()
    ct = write_ct_series(tmp_path / "ct", AXIAL, drop_slices=(7,))
    rtstruct = write_rtstruct(tmp_path / "rtstruct.dcm", ct, {"GTV-1": sphere})
    acquired = ct.slice_indices
    assert len(acquired) == AXIAL.n_slices - 1

    series = read_dicom_series(ct.folder, allow_gaps=True)
    assert series.resampled is True
    assert series.array.shape == AXIAL.shape  # the missing slice is back on the grid
    np.testing.assert_allclose(series.affine_lps, AXIAL.affine_lps, atol=1e-6)
    np.testing.assert_array_equal(series.array[:, :, acquired], ct.hu)
    assert [series.sop_uids[k] for k in acquired] == ct.sop_uids
    label = rasterise_roi(rtstruct, series, "GTV-1")
    assert label.shape == AXIAL.shape
    _check_label(label[:, :, acquired], truth_mask(ct, sphere))

    image, nifti_label, affine = _convert(ct, rtstruct, tmp_path / "out", allow_gaps=True)
    assert image.shape == AXIAL.shape
    np.testing.assert_allclose(affine, AXIAL.affine_ras, atol=1e-3)
    np.testing.assert_array_equal(image[:, :, acquired], ct.hu)
    _check_label(nifti_label[:, :, acquired], truth_mask(ct, sphere))


def test_allow_gaps_draws_a_contour_on_the_missing_plane_exactly(tmp_path):
    """The slice file was lost, its contour was not: the resampled grid gets the true mask."""
    sphere = _axial_sphere()
    full = write_ct_series(tmp_path / "full", AXIAL)
    gappy = write_ct_series(tmp_path / "ct", AXIAL, drop_slices=(7,), series_uid=full.series_uid)
    rtstruct = write_rtstruct(
        tmp_path / "rtstruct.dcm", full, {"GTV-1": sphere}, contour_image_sequence=False
    )
    truth = truth_mask(AXIAL, sphere)
    assert truth[:, :, 7].any(), "the tumour must cross the missing slice for this test"
    label = rasterise_roi(rtstruct, read_dicom_series(gappy.folder, allow_gaps=True), "GTV-1")
    _check_label(label, truth)


def test_non_uniform_spacing_is_an_error(tmp_path):
    ct = write_ct_series(tmp_path / "ct", AXIAL, nonuniform={5: 0.4})
    assert np.isclose(ct.positions[5, 2] - ct.positions[4, 2], 1.4 * AXIAL.slice_spacing)
    with pytest.raises(DicomError) as err:
        read_dicom_series(ct.folder)
    assert str(ct.folder) in str(err.value) or ct.folder.name in str(err.value)
    assert "allow_gaps" in str(err.value)

    series = read_dicom_series(ct.folder, allow_gaps=True)
    assert series.resampled is True
    assert series.array.shape == AXIAL.shape
    np.testing.assert_allclose(series.affine_lps, AXIAL.affine_lps, atol=1e-6)
    regular = [k for k in range(AXIAL.n_slices) if k != 5]  # the slices still on the grid
    np.testing.assert_array_equal(series.array[:, :, regular], ct.hu[:, :, regular])


# ---- files pydicom ships --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_test_files_read_with_their_geometry(tmp_path, name):
    source = Path(get_testdata_file(name))
    shutil.copy(source, tmp_path / name)
    ds = pydicom.dcmread(source)
    series = read_dicom_series(tmp_path)

    assert series.array.shape == (ds.Columns, ds.Rows, 1)
    assert series.modality == ds.Modality
    assert series.sop_uids == [ds.SOPInstanceUID]
    assert series.series_uid == ds.SeriesInstanceUID
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    np.testing.assert_allclose(series.affine_lps[:3, 3], np.asarray(ds.ImagePositionPatient, float))
    np.testing.assert_allclose(series.affine_lps[:3, 0], iop[:3] * float(ds.PixelSpacing[1]))
    np.testing.assert_allclose(series.affine_lps[:3, 1], iop[3:] * float(ds.PixelSpacing[0]))
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    expected = ds.pixel_array.T.astype(float) * slope + intercept
    np.testing.assert_allclose(series.array, expected[:, :, None])


# ---- the factory itself (no reader involved) ------------------------------------------------
def test_factory_files_hold_what_the_factory_reports(tmp_path):
    geometry = Geometry(
        rows=24, cols=28, pixel_spacing=(0.7, 0.9), iop=oblique_iop(15),
        origin=(-10.0, -9.0, -8.0), slice_spacing=2.0, n_slices=6,
    )  # fmt: skip
    ct = write_ct_series(tmp_path, geometry, file_names="shuffled", instance_numbers="random")
    normal = geometry.normal
    numbers = []
    for k, path in enumerate(ct.files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == ct.sop_uids[k]
        np.testing.assert_array_equal(ds.pixel_array.T.astype(int) - 1024, ct.hu[:, :, k])
        position = np.asarray(ds.ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(position @ normal, np.dot(geometry.origin, normal) + 2.0 * k)
        numbers.append(int(ds.InstanceNumber))
    assert numbers == ct.instance_numbers and numbers != sorted(numbers)
    assert [f.name for f in ct.files] != sorted(f.name for f in ct.files)
    assert ct.hu.min() < -1024 < ct.hu.max()
    assert (ct.hu[1, 0, :] == -1024).all()

    sphere = Sphere(_at(geometry, 13.3, 11.6, 2.4), 5.2)
    centres = geometry.voxel_centres_lps()
    expected = np.linalg.norm(centres - np.asarray(sphere.centre), axis=-1) < 5.2
    np.testing.assert_array_equal(truth_mask(ct, sphere), expected)
    contour = circle_contour(geometry, ct.positions[2], sphere.centre, 3.0, slice_index=2)
    assert isinstance(contour, Contour)
    np.testing.assert_allclose((contour.points - ct.positions[2]) @ normal, 0.0, atol=1e-9)
    rtstruct = write_rtstruct(tmp_path / "rs" / "rs.dcm", ct, {"GTV-1": sphere})
    rs = pydicom.dcmread(rtstruct)
    refs = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert refs.RTReferencedSeriesSequence[0].SeriesInstanceUID == ct.series_uid
    items = rs.ROIContourSequence[0].ContourSequence
    assert len(items) == sum(bool(sphere.cross_section(p, normal)) for p in ct.positions)
    assert all(int(it.NumberOfContourPoints) == 720 for it in items)
