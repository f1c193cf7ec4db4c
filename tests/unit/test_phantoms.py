"""The phantom world reproduces the paper's problem: facts measured on generated volumes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tumoraware.data.manifest import load_split, validate_manifest
from tumoraware.data.phantoms import (
    Tissue,
    build_manifest,
    generate_world,
    get_profile,
    plan_world,
    synthesise_scan,
)
from tumoraware.data.phantoms.appearance import sample_mri_appearance
from tumoraware.data.phantoms.preview import preview_paths
from tumoraware.data.phantoms.tissues import SOFT_TISSUE_NEAR_TUMOUR, TUMOUR_TISSUES

from ..conftest import REPO_ROOT

DEMO = get_profile("demo")
TINY = get_profile("tiny")


def _core(mask: np.ndarray) -> np.ndarray:
    """Erode by one voxel so partial-volume blur at borders does not bias a mean."""
    return ndimage.binary_erosion(mask)


@pytest.fixture(scope="module")
def demo_scans():
    """Six CT and six MRI scans at demo resolution (all four tumour sites, both cohorts)."""
    plans = plan_world(DEMO, seed=0)
    ct = [p for p in plans if p.cohort == "ct"][:6]
    mri = [p for p in plans if p.cohort == "mri" and p.week == 1]
    mri += [p for p in plans if p.cohort == "mri_test"][:2]
    return [synthesise_scan(0, p, DEMO) for p in ct], [synthesise_scan(0, p, DEMO) for p in mri]


# ---- determinism ----------------------------------------------------------------------------
def test_same_seed_gives_identical_arrays_and_other_seed_differs():
    plan = plan_world(TINY, seed=3)[0]
    a, b = synthesise_scan(3, plan, TINY), synthesise_scan(3, plan, TINY)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    other = synthesise_scan(4, plan_world(TINY, seed=4)[0], TINY)
    assert a.image.shape != other.image.shape or not np.array_equal(a.image, other.image)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_regenerating_the_world_gives_byte_identical_files(tiny_world, tmp_path):
    out_dir, _ = tiny_world
    again = tmp_path / "again"
    generate_world(again, seed=0, profile="tiny", manifest=tmp_path / "m.json", progress=False)
    originals = sorted(out_dir.glob("*/*.nii.gz"))
    assert len(originals) == 2 * len(plan_world(TINY, 0))
    for path in originals:
        assert _digest(path) == _digest(again / path.relative_to(out_dir)), path


def test_a_patient_does_not_depend_on_the_profile_counts():
    """Patient i is the same person whatever the profile asks (streams keyed by seed/cohort/i)."""
    tiny_plan = plan_world(TINY, 0)[1]
    demo_plan = next(p for p in plan_world(DEMO, 0) if p.patient == tiny_plan.patient)
    a, b = synthesise_scan(0, tiny_plan, TINY), synthesise_scan(0, demo_plan, TINY)
    np.testing.assert_array_equal(a.image, b.image)


# ---- the paper's contrast problem ----------------------------------------------------------
def test_ct_tumour_is_near_isodense_with_adjacent_soft_tissue(demo_scans):
    ct, _ = demo_scans
    measured = []
    for scan in ct:
        tumour = _core(np.isin(scan.tissue, TUMOUR_TISSUES))
        near = ndimage.binary_dilation(scan.label > 0, iterations=4) & ~(scan.label > 0)
        ring = near & _core(np.isin(scan.tissue, SOFT_TISSUE_NEAR_TUMOUR))
        assert 15.0 < scan.image[tumour].mean() < 80.0, scan.plan  # soft tissue, not contrast
        if ring.sum() >= 200:
            measured.append(abs(scan.image[tumour].mean() - scan.image[ring].mean()))
    assert len(measured) >= 3, "most tumours should border soft tissue"
    assert max(measured) <= 20.0, measured


def test_ct_atelectasis_is_isodense_but_mri_atelectasis_is_distinct():
    central = [p for p in plan_world(DEMO, 0) if p.site in ("hilar", "mediastinal")]
    plans = [p for p in central if p.cohort == "ct"][:5] + [p for p in central if p.cohort != "ct"][
        :5
    ]
    ct_seen = mri_seen = 0
    for plan in plans:
        scan = synthesise_scan(0, plan, TINY if plan.cohort == "ct" else DEMO)
        atelectasis = _core(scan.tissue == Tissue.ATELECTASIS)
        tumour = _core(np.isin(scan.tissue, TUMOUR_TISSUES))
        if atelectasis.sum() < 30 or tumour.sum() < 30:
            continue
        a, t = scan.image[atelectasis].mean(), scan.image[tumour].mean()
        if plan.cohort == "ct":
            assert abs(a - t) <= 20.0, (plan, a, t)
            ct_seen += 1
        else:
            assert abs(a - t) / t >= 0.15, (plan, a, t)
            mri_seen += 1
    assert ct_seen >= 1 and mri_seen >= 1


def test_mri_tumour_is_hyperintense_to_muscle(demo_scans):
    _, mri = demo_scans
    ratios = []
    for scan in mri:
        tumour = _core(np.isin(scan.tissue, TUMOUR_TISSUES))
        muscle = _core(scan.tissue == Tissue.MUSCLE)
        ratios.append(scan.image[tumour].mean() / scan.image[muscle].mean())
    assert min(ratios) >= 1.8, ratios
    assert np.mean(ratios) >= 2.2, ratios


def _best_window_dice(image: np.ndarray, label: np.ndarray) -> float:
    """Best Dice of any intensity window cut from the tumour's own intensity percentiles."""
    inside = image[label > 0]
    best = 0.0
    for lo in np.percentile(inside, [0, 5, 10, 25, 40]):
        for hi in np.percentile(inside, [60, 75, 90, 95, 100]):
            window = (image >= lo) & (image <= hi)
            best = max(best, 2.0 * (window & (label > 0)).sum() / (window.sum() + label.sum()))
    return best


def test_bright_does_not_mean_tumour_on_mri(demo_scans):
    """Fat, marrow, fluid, CSF and atelectasis share the tumour's intensities: no window works."""
    _, mri = demo_scans
    dice = [_best_window_dice(scan.image, scan.label) for scan in mri]
    assert max(dice) < 0.5, dice


def test_most_unlabelled_mri_slices_are_tumour_free(tiny_world):
    _, manifest = tiny_world
    shares = []
    for entry in load_split(manifest, "mri_unlabelled"):
        label_path = entry["image"].replace("_image.nii.gz", "_label.nii.gz")
        label = np.asanyarray(nib.load(label_path).dataobj)
        shares.append(1.0 - (label.sum(axis=(0, 1)) > 0).mean())
    assert min(shares) >= 0.6, shares
    assert np.mean(shares) >= 0.75, shares


def test_ct_volumes_always_hold_tumour_slices(tiny_world):
    _, manifest = tiny_world
    for entry in load_split(manifest, "ct_train"):
        label = np.asanyarray(nib.load(entry["label"]).dataobj)
        assert (label.sum(axis=(0, 1)) > 0).sum() >= 2, entry["label"]


def test_tumour_sizes_span_the_paper_range(demo_scans):
    ct, mri = demo_scans
    radii = []
    for scan in [*ct, *mri]:
        voxel_mm3 = float(np.prod(scan.grid.spacing))
        radii.append((3.0 * scan.label.sum() * voxel_mm3 / (4.0 * np.pi)) ** (1 / 3))
    assert min(radii) >= 5.0 and max(radii) <= 50.0, radii
    assert max(radii) >= 18.0, "the world must hold large tumours too"


def test_sites_mix_embedded_and_free_tumours():
    sites = [p.site for p in plan_world(DEMO, 0) if p.cohort == "ct"]
    assert set(sites) == {"hilar", "mediastinal", "chest_wall", "lung"}
    assert sites.count("hilar") + sites.count("mediastinal") >= len(sites) / 2


def test_free_lung_tumours_are_surrounded_by_lung():
    plan = next(p for p in plan_world(DEMO, 0) if p.cohort == "ct" and p.site == "lung")
    scan = synthesise_scan(0, plan, TINY)
    shell = ndimage.binary_dilation(scan.label > 0, iterations=2) & ~(scan.label > 0)
    aerated = np.isin(scan.tissue[shell], (Tissue.LUNG, Tissue.LUNG_VESSEL, Tissue.ATELECTASIS))
    assert aerated.mean() > 0.8


def test_tumours_shrink_during_treatment(tiny_world):
    _, manifest = tiny_world
    volumes: dict[str, list[tuple[int, int]]] = {}
    for split in ("mri_week1", "mri_validation"):
        for entry in load_split(manifest, split):
            voxels = int(np.asanyarray(nib.load(entry["label"]).dataobj).sum())
            volumes.setdefault(entry["patient"], []).append((entry["week"], voxels))
    for patient, series in volumes.items():
        series.sort()
        assert series[-1][1] < series[0][1], (patient, series)


def test_test_cohort_appearance_varies_more_than_training():
    rng = np.random.default_rng(0)
    train = [sample_mri_appearance(rng, "train") for _ in range(300)]
    test = [sample_mri_appearance(rng, "test") for _ in range(300)]
    for attr in ("gain", "noise", "bias_strength", "tumour_ratio", "heterogeneity"):
        spread_train = np.ptp([getattr(a, attr) for a in train])
        spread_test = np.ptp([getattr(a, attr) for a in test])
        assert spread_test > 1.3 * spread_train, attr


# ---- geometry and files ----------------------------------------------------------------------
def test_ct_is_ras_and_mri_is_lps_on_their_own_grids(tiny_world):
    out_dir, _ = tiny_world
    ct = nib.load(next((out_dir / "ct").glob("*_image.nii.gz")))
    mri = nib.load(next((out_dir / "mri").glob("*_image.nii.gz")))
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    assert nib.aff2axcodes(mri.affine) == ("L", "P", "S")
    np.testing.assert_allclose(ct.header.get_zooms(), TINY.ct_spacing)
    np.testing.assert_allclose(mri.header.get_zooms(), TINY.mri_spacing)
    assert ct.get_data_dtype() == np.int16 and int(ct.header["sform_code"]) == 1
    ct_values = np.asanyarray(ct.dataobj)
    assert ct_values.min() >= -1024 and np.median(ct_values) < -900  # air around the body, HU


def test_labels_share_their_image_grid(tiny_world):
    out_dir, _ = tiny_world
    for image_path in out_dir.glob("*/*_image.nii.gz"):
        label = nib.load(str(image_path).replace("_image", "_label"))
        image = nib.load(image_path)
        assert label.shape == image.shape
        np.testing.assert_allclose(label.affine, image.affine)
        assert set(np.unique(np.asanyarray(label.dataobj))) == {0, 1}


# ---- manifest ----------------------------------------------------------------------------------
def test_generated_manifest_is_valid_and_splits_mirror_the_paper(tiny_world):
    _, manifest = tiny_world
    assert validate_manifest(manifest, deep=True) == []
    data = json.loads(manifest.read_text())
    assert len(data["ct_train"]) == TINY.n_ct
    assert len(data["mri_unlabelled"]) == TINY.n_mri_train * len(TINY.mri_weeks)
    assert all("label" not in e for e in data["mri_unlabelled"])
    assert all(e["week"] == 1 and "label" in e for e in data["mri_week1"])
    assert all(e["week"] > 1 for e in data["mri_validation"])
    train_patients = {e["patient"] for e in data["mri_unlabelled"]}
    test_patients = {e["patient"] for e in data["mri_test"]}
    ct_patients = {e["patient"] for e in data["ct_train"]}
    assert not train_patients & test_patients and not ct_patients & (train_patients | test_patients)
    assert all(not Path(e["image"]).is_absolute() for e in data["ct_train"])


def test_committed_demo_manifest_matches_the_generator():
    committed = REPO_ROOT / "data_manifests" / "phantoms.json"
    expected = build_manifest(
        plan_world(DEMO, 0), REPO_ROOT / "data" / "phantoms", committed, 0, DEMO
    )
    assert json.loads(committed.read_text()) == expected


# ---- resumability and safety ---------------------------------------------------------------------
def test_rerun_regenerates_only_what_is_missing(tmp_path):
    out_dir, manifest = tmp_path / "w", tmp_path / "m.json"
    generate_world(out_dir, seed=1, profile="tiny", manifest=manifest, progress=False)
    files = sorted(out_dir.glob("*/*.nii.gz"))
    victim = out_dir / "mri" / "mri_p001_w4_label.nii.gz"  # its scan is regenerated as a pair
    pair = {victim, out_dir / "mri" / "mri_p001_w4_image.nii.gz"}
    before = {f: (_digest(f), f.stat().st_mtime_ns) for f in files}
    victim.unlink()
    generate_world(out_dir, seed=1, profile="tiny", manifest=manifest, progress=False)
    for f in files:
        assert _digest(f) == before[f][0]
        if f not in pair:
            assert f.stat().st_mtime_ns == before[f][1], f"{f} was rewritten"
    assert not list(out_dir.rglob("*.tmp*")), "temporary files left behind"


def test_a_different_world_in_the_same_folder_is_refused(tmp_path):
    out_dir, manifest = tmp_path / "w", tmp_path / "m.json"
    generate_world(out_dir, seed=1, profile="tiny", manifest=manifest, progress=False)
    with pytest.raises(FileExistsError, match=r"generator\.json.*--overwrite"):
        generate_world(out_dir, seed=2, profile="tiny", manifest=manifest, progress=False)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'huge'.*demo.*full.*tiny"):
        get_profile("huge")


def test_previews_are_real_pngs_for_each_split(tiny_world):
    out_dir, _ = tiny_world
    pngs = sorted((out_dir / "preview").glob("*.png"))
    assert [p.stem for p in pngs] == ["ct_train", "mri_test", "mri_validation", "mri_week1"]
    assert sorted(preview_paths(out_dir, plan_world(TINY, 0))) == pngs
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 20_000
