"""The phantom world: unpaired CT and weekly T2w MRI patients, written as NIfTI + a manifest.

Splits mirror the paper (§3.2): labelled CT patients for synthesis training; a few MRI
patients whose pre-treatment (week 1) scan is labelled for semi-supervised training and whose
on-treatment scans are unlabelled for synthesis and labelled for validation; held-out MRI test
patients. CT and MRI patients are different people. Every patient draws from its own random
stream ``(seed, cohort, index)``, so a patient is the same whatever the profile's counts, and the
same seed always gives byte-identical arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tumoraware import __version__
from tumoraware.atomic import save_volume_atomic, write_json_atomic

from .anatomy import ThoraxAnatomy, sample_anatomy
from .appearance import (
    render_ct,
    render_mri,
    sample_ct_appearance,
    sample_mri_appearance,
)
from .grid import Grid
from .profiles import PhantomProfile, get_profile
from .scan_plan import CT_COHORTS, ScanPlan
from .tissues import TUMOUR_TISSUES
from .tumour import SITES, TumourSpec, paint_tumour, sample_tumour

__all__ = [
    "GENERATOR_VERSION",
    "Scan",
    "ScanPlan",
    "build_manifest",
    "generate_world",
    "plan_world",
    "synthesise_scan",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump when the physics changes, so cached worlds are regenerated."""

_COHORT_CODES = {"ct": 1, "mri": 2, "mri_test": 3, "ct_test": 4}


@dataclass
class Scan:
    """A generated volume: image (int16), label (uint8 0/1), tissue map (uint8), grid, truth."""

    plan: ScanPlan
    image: np.ndarray
    label: np.ndarray
    tissue: np.ndarray
    grid: Grid
    truth: dict = field(default_factory=dict)


def _rng(seed: int, cohort: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _COHORT_CODES[cohort], index, stream])


def _sites(seed: int, cohort: str, n: int) -> list[str]:
    """Stratified sites: every block of four patients holds each site once, in random order."""
    rng = np.random.default_rng([seed, 99, _COHORT_CODES[cohort]])
    order: list[str] = []
    while len(order) < n:
        order += list(rng.permutation(SITES))
    return [str(s) for s in order[:n]]


def plan_world(profile: PhantomProfile, seed: int) -> list[ScanPlan]:
    """Every scan the profile asks for, in generation order. Cheap: nothing is rendered."""
    plans = [
        ScanPlan(f"ct_p{i:03d}", "ct", i, 1, site)
        for i, site in enumerate(_sites(seed, "ct", profile.n_ct))
    ]
    for i, site in enumerate(_sites(seed, "mri", profile.n_mri_train)):
        plans += [ScanPlan(f"mri_p{i:03d}", "mri", i, w, site) for w in profile.mri_weeks]
    test_weeks = [*profile.test_longitudinal, *[(1,)] * profile.n_test_pre]
    for i, (site, weeks) in enumerate(
        zip(_sites(seed, "mri_test", len(test_weeks)), test_weeks, strict=True)
    ):
        plans += [ScanPlan(f"mri_t{i:03d}", "mri_test", i, w, site) for w in weeks]
    plans += [
        ScanPlan(f"ct_t{i:03d}", "ct_test", i, 1, site)
        for i, site in enumerate(_sites(seed, "ct_test", profile.n_ct_test))
    ]
    return plans


def _patient(seed: int, plan: ScanPlan) -> tuple[ThoraxAnatomy, TumourSpec]:
    rng = _rng(seed, plan.cohort, plan.index)
    anatomy = sample_anatomy(rng)
    return anatomy, sample_tumour(anatomy, plan.site, rng)


def _ct_grid(
    anatomy: ThoraxAnatomy, tumour: TumourSpec, profile: PhantomProfile, rng: np.random.Generator
) -> Grid:
    sx, sy, sz = profile.ct_spacing
    n_xy = round(profile.ct_fov / sx)
    if profile.ct_slab_margin is None:
        z_lo, z_hi = -30.0, anatomy.height + 15.0
    else:
        reach = tumour.extent() + tumour.atelectasis_length + profile.ct_slab_margin
        z_lo, z_hi = tumour.centre[2] - reach, tumour.centre[2] + reach
    n_z = int(np.ceil((z_hi - z_lo) / sz))
    centre = (0.0, float(rng.uniform(-10.0, 10.0)), (z_lo + z_hi) / 2.0)
    return Grid((n_xy, round(profile.ct_fov / sy), n_z), profile.ct_spacing, centre, "RAS")


def _mri_grid(anatomy: ThoraxAnatomy, profile: PhantomProfile, rng: np.random.Generator) -> Grid:
    """Whole-thorax MRI, LPS storage, patient positioned a little differently at every scan."""
    sx, sy, sz = profile.mri_spacing
    z_lo, z_hi = -25.0, anatomy.height + 10.0
    shape = (
        round(profile.mri_fov / sx),
        round(profile.mri_fov / sy),
        int(np.ceil((z_hi - z_lo) / sz)),
    )
    centre = (
        float(rng.uniform(-8, 8)),
        float(rng.uniform(-8, 8)),
        (z_lo + z_hi) / 2.0 + float(rng.uniform(-6, 6)),
    )
    return Grid(shape, profile.mri_spacing, centre, "LPS")


def synthesise_scan(seed: int, plan: ScanPlan, profile: PhantomProfile) -> Scan:
    """Render one scan: anatomy → tissue map → tumour → CT or T2w physics. Deterministic."""
    anatomy, tumour = _patient(seed, plan)
    scan_rng = _rng(seed, plan.cohort, plan.index, stream=plan.week)
    tumour = tumour.at_week(plan.week)
    is_ct = plan.cohort in CT_COHORTS
    if is_ct:
        grid = _ct_grid(anatomy, tumour, profile, scan_rng)
        look = sample_ct_appearance(scan_rng)
    else:
        grid = _mri_grid(anatomy, profile, scan_rng)
        cohort = "test" if plan.cohort == "mri_test" else "train"
        patient_rng = _rng(seed, plan.cohort, plan.index, stream=100)
        look = sample_mri_appearance(patient_rng, cohort)
        look = look.at_week(plan.week, response=patient_rng.uniform(0.05, 0.3), rng=scan_rng)
    tissue = anatomy.tissue_map(grid)
    paint_tumour(tissue, grid, tumour)
    render = render_ct if is_ct else render_mri
    image = render(tissue, grid, look, scan_rng)
    label = np.isin(tissue, TUMOUR_TISSUES).astype(np.uint8)
    truth = {
        "plan": asdict(plan),
        "grid": asdict(grid),
        "anatomy": {k: v for k, v in asdict(anatomy).items() if k != "vessels"},
        "tumour": asdict(tumour),
        "appearance": {"modality": "CT" if is_ct else "MR", **asdict(look)},
        "tumour_voxels": int(label.sum()),
    }
    return Scan(plan, image, label, tissue, grid, truth)


def _config(profile: PhantomProfile, seed: int) -> dict:
    config = {"generator_version": GENERATOR_VERSION, "seed": seed, "profile": asdict(profile)}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return {**config, "config_hash": digest}


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def build_manifest(
    plans: list[ScanPlan], out_dir: Path, manifest_path: Path, seed: int, profile: PhantomProfile
) -> dict:
    """The MONAI datalist for ``plans``; paths relative to the manifest's folder."""
    out_dir, manifest_dir = Path(out_dir).resolve(), Path(manifest_path).resolve().parent
    base = Path(os.path.commonpath([out_dir, manifest_dir]))

    def entry(plan: ScanPlan, labelled: bool) -> dict:
        image, label = plan.paths(out_dir)
        item = {"image": _relative(image, manifest_dir)}
        if labelled:
            item["label"] = _relative(label, manifest_dir)
        item.update(modality="CT" if plan.cohort in CT_COHORTS else "MR", patient=plan.patient)
        if plan.cohort not in CT_COHORTS:
            item["week"] = plan.week
        if labelled:
            item["tumour_site"] = plan.site
        return item

    mri = [p for p in plans if p.cohort == "mri"]
    return {
        "name": "tumoraware phantom thorax world",
        "description": (
            "Unpaired synthetic thorax phantoms: contrast-enhanced CT (HU, RAS) with tumour "
            "labels, and weekly T2w MRI (LPS) of different patients. Generated by "
            f"`tumoraware phantoms --seed {seed} --profile {profile.name}`."
        ),
        "licence": "CC0-1.0 (synthetic data)",
        "tensorImageSize": "3D",
        "labels": {"0": "background", "1": "tumor"},
        "base_dir": _relative(base, manifest_dir),
        "generator": {
            "tool": "tumoraware phantoms",
            "version": __version__,
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "profile": profile.name,
            "config_hash": _config(profile, seed)["config_hash"],
        },
        "ct_train": [entry(p, True) for p in plans if p.cohort == "ct"],
        "ct_test": [entry(p, True) for p in plans if p.cohort == "ct_test"],
        "mri_unlabelled": [entry(p, False) for p in mri],
        "mri_week1": [entry(p, True) for p in mri if p.week == 1],
        "mri_validation": [entry(p, True) for p in mri if p.week > 1],
        "mri_test": [entry(p, True) for p in plans if p.cohort == "mri_test"],
    }


def generate_world(
    out_dir: str | os.PathLike = "data/phantoms",
    seed: int = 0,
    profile: str = "demo",
    manifest: str | os.PathLike = "data_manifests/phantoms.json",
    preview: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write every scan of ``profile`` under ``out_dir`` and the manifest; return its path.

    Resumable: files are written atomically, so an existing file is complete; a re-run with
    the same seed, profile and generator version skips the scans already on disk (use
    ``overwrite=True`` to regenerate). A different configuration in ``out_dir`` is an error
    rather than a silent mix of two worlds.
    """
    prof, out_dir, manifest = get_profile(profile), Path(out_dir), Path(manifest)
    config = _config(prof, seed)
    config_file = out_dir / "generator.json"
    if config_file.exists() and not overwrite:
        previous = json.loads(config_file.read_text())
        if previous.get("config_hash") != config["config_hash"]:
            raise FileExistsError(
                f"{config_file}: {out_dir} holds a world made with seed {previous.get('seed')}, "
                f"profile {previous.get('profile', {}).get('name')!r} (configuration "
                f"{previous.get('config_hash')}); you asked for seed {seed}, profile {profile!r} "
                f"(configuration {config['config_hash']}; the profile's cohorts or the generator "
                "may have changed since). Fix: choose another --out_dir, or pass --overwrite."
            )
    write_json_atomic(config_file, config)
    plans = plan_world(prof, seed)
    truth_file = out_dir / "world.json"
    truths = json.loads(truth_file.read_text()) if truth_file.exists() and not overwrite else {}
    todo = [p for p in plans if overwrite or not all(f.exists() for f in p.paths(out_dir))]
    bar = tqdm(todo, desc=f"phantoms ({profile})", unit="scan", disable=not progress or not todo)
    for plan in bar:
        bar.set_postfix_str(plan.stem)
        scan = synthesise_scan(seed, plan, prof)
        image_path, label_path = plan.paths(out_dir)
        affine = scan.grid.affine
        save_volume_atomic(scan.label, affine, label_path)
        save_volume_atomic(scan.image, affine, image_path)
        truths[plan.stem] = scan.truth
        write_json_atomic(truth_file, truths)
    if preview:  # imported here: matplotlib only when previews are asked for
        from .preview import preview_paths, write_previews

        if todo or not all(p.exists() for p in preview_paths(out_dir, plans)):
            write_previews(out_dir, plans, prof)
    data = build_manifest(plans, out_dir, manifest, seed, prof)
    write_json_atomic(manifest, data)
    logger.info(
        "phantoms: %d scans (%d new) in %s; manifest %s", len(plans), len(todo), out_dir, manifest
    )
    return manifest
