"""Shared fixtures: one tiny phantom world per test session (about 3 s to generate), and the
synthetic MRI the synthesis bundle makes from its CT (about 15 s, only when a test asks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> tuple[Path, Path]:
    """``(out_dir, manifest)`` of the ``tiny`` world, seed 0, with previews."""
    from tumoraware.data.phantoms import generate_world

    root = tmp_path_factory.mktemp("world")
    out_dir, manifest = root / "data" / "phantoms", root / "data_manifests" / "phantoms.json"
    generate_world(out_dir, seed=0, profile="tiny", manifest=manifest, preview=True, progress=False)
    return out_dir, manifest


@pytest.fixture(scope="session")
def tiny_synthetic_mri(tiny_world, tmp_path_factory) -> Path:
    """Manifest of synthetic MRI made by the synthesis bundle (test profile: train, then
    inference) from the tiny world's CT, as `python -m monai.bundle run` makes it."""
    from tests.integration.bundle_runner import run_bundle

    _, manifest = tiny_world
    tmp = tmp_path_factory.mktemp("synthesis")
    synthesis = REPO_ROOT / "bundles" / "lung_ct2mri_synthesis"
    run_bundle(synthesis, ["configs/train.json", "configs/profiles/test.json"],
               ct_manifest=manifest, mri_manifest=manifest, ckpt_dir=tmp / "models",
               output_dir=tmp / "runs")  # fmt: skip
    run_bundle(synthesis, ["configs/inference.json", "configs/profiles/test.json"],
               ct_manifest=manifest, ckpt_path=tmp / "models" / "model.pt",
               output_dir=tmp / "inf")  # fmt: skip
    return tmp / "inf" / "synthetic_mri.json"


@pytest.fixture
def config_bundle(tmp_path) -> Callable[[dict], Path]:
    """A bundle folder whose ``configs/run.json`` is the given config (for pipeline tests)."""

    def make(config: dict) -> Path:
        folder = tmp_path / "bundle"
        (folder / "configs").mkdir(parents=True, exist_ok=True)
        (folder / "configs" / "run.json").write_text(json.dumps(config))
        return folder

    return make
