"""Shared fixtures: one tiny phantom world per test session (about 3 s to generate)."""

from __future__ import annotations

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
