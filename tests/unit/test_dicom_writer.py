"""The inference post-step: DICOM SEG + RTSTRUCT beside the NIfTI when the input was DICOM.

The handler runs on a real ignite engine whose output is what the bundle's evaluator leaves
after postprocessing: per-case dicts whose ``pred`` is a MONAI ``MetaTensor`` carrying the
input's affine. The DICOM case reads the series with MONAI's own ``LoadImage`` (ITK), so the
affine and axis order are MONAI's, then reorients the mask to RAS as the preprocessing does;
the handler must still put every voxel back on the right slice, row and column.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
import pytest
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation

from tests.dicom_factory import Geometry, Ring, oblique_iop, truth_mask, write_ct_series
from tumoraware.data.dicom import DicomError, read_dicom_series
from tumoraware.handlers.dicom_writer import DicomOutputWriter

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
OBLIQUE = Geometry(
    rows=40, cols=52, pixel_spacing=(1.5, 1.25), iop=oblique_iop(20.0),
    origin=(-33.0, -21.5, -9.0), slice_spacing=2.5, n_slices=8,
)  # fmt: skip


@pytest.fixture
def case(tmp_path):
    ct = write_ct_series(tmp_path / "series1", OBLIQUE)
    centre = tuple((ct.geometry.affine_lps @ [25.3, 19.6, 3.6, 1.0])[:3])
    mask = truth_mask(ct, Ring(centre, outer=18.0, inner=7.0, half_length=6.0))
    return ct, mask


def _run(handler: DicomOutputWriter, cases: list[dict]) -> None:
    engine = Engine(lambda engine, batch: cases)
    handler.attach(engine)
    engine.run([0], max_epochs=1)


def _seg_mask(path, sop_uids) -> np.ndarray:
    pixels = hd.seg.segread(path).get_pixels_by_source_instance(
        sop_uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    return pixels[..., 0].transpose(2, 1, 0)


def test_dicom_input_gets_seg_and_rtstruct_beside_the_nifti(case, tmp_path):
    ct, mask = case
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(ct.folder))
    np.testing.assert_array_equal(image[0].numpy(), read_dicom_series(ct.folder).array)
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    pred = MetaTensor(mask[None].astype(np.float32), affine=image.affine, meta=meta)
    pred = Orientation(axcodes="RAS", labels=None)(pred)  # LPS-ordered voxels flipped to RAS
    assert not np.array_equal(pred.numpy(), mask[None])

    handler = DicomOutputWriter(tmp_path / "inference", model_name="m", model_version="9")
    _run(handler, [{"image": image, "pred": pred}])
    paths = handler.written[0]
    assert sorted(p.name for p in paths.values()) == ["series1_rtstruct.dcm", "series1_seg.dcm"]
    np.testing.assert_array_equal(_seg_mask(paths["seg"], ct.sop_uids), mask)


def test_nifti_input_needs_a_reference_series(case, tmp_path):
    ct, mask = case
    affine = LPS_TO_RAS @ ct.geometry.affine_lps
    meta = {"filename_or_obj": str(tmp_path / "scan.nii.gz")}
    pred = MetaTensor(mask[None], affine=affine, meta=meta)
    out = tmp_path / "inference"

    _run(DicomOutputWriter(out), [{"pred": pred}])  # plain NIfTI: nothing to reference
    assert not out.exists()

    handler = DicomOutputWriter(out, formats=["seg"])
    _run(handler, [{"pred": pred, "reference_series": str(ct.folder)}])
    assert handler.written == [{"seg": out / "scan_seg.dcm"}]
    np.testing.assert_array_equal(_seg_mask(out / "scan_seg.dcm", ct.sop_uids), mask)


def test_empty_prediction_is_skipped_and_wrong_grid_raises(case, tmp_path, caplog):
    ct, mask = case
    affine = LPS_TO_RAS @ ct.geometry.affine_lps
    source = str(ct.folder)
    empty = MetaTensor(np.zeros_like(mask)[None], affine=affine, meta={"filename_or_obj": source})
    with caplog.at_level(logging.WARNING):
        _run(DicomOutputWriter(tmp_path / "out"), [{"pred": empty}])
    assert "no tumour found" in caplog.text
    assert not (tmp_path / "out").exists()

    shifted = affine.copy()
    shifted[:3, 3] += 0.5 * affine[:3, 2]  # half a slice off
    wrong = MetaTensor(mask[None], affine=shifted, meta={"filename_or_obj": source})
    with pytest.raises(DicomError, match=r"prediction for .*series1.*off the series' voxel"):
        _run(DicomOutputWriter(tmp_path / "out"), [{"pred": wrong}])
    assert not (tmp_path / "out").exists()


def test_names_follow_save_imaged(case, tmp_path):
    """A UID-named series folder loses its last dot-suffix in SaveImaged's NIfTI name; the DICOM
    outputs must carry the same name to lie beside it."""
    ct, mask = case
    folder = ct.folder.rename(tmp_path / "1.2.840.5")
    meta = {"filename_or_obj": str(folder)}
    pred = MetaTensor(mask[None], affine=LPS_TO_RAS @ ct.geometry.affine_lps, meta=meta)
    handler = DicomOutputWriter(tmp_path / "out")
    _run(handler, [{"pred": pred}])
    assert sorted(p.name for p in handler.written[0].values()) == [
        "1.2.840_rtstruct.dcm", "1.2.840_seg.dcm"
    ]  # fmt: skip
