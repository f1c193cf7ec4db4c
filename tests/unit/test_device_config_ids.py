"""The bundles' loader, copy, logging and determinism settings are top-level config ids: CPU
defaults that keep today's runs unchanged, CUDA defaults chosen from ``device``, and no loader
left with its own hard-coded value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from monai.bundle import ConfigParser

from ..conftest import REPO_ROOT

SYNTHESIS = REPO_ROOT / "bundles" / "lung_ct2mri_synthesis" / "configs"
SEGMENTATION = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation" / "configs"
CPU = {"num_workers": 0, "pin_memory": False, "non_blocking": False, "deterministic": True}
TRAIN_CPU = CPU | {"persistent_workers": False, "log_every": 1}


def _ids(config: Path, device: str, keys: list[str]) -> dict[str, Any]:
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["device"] = f"$torch.device('{device}')"  # constructing it needs no GPU
    return {key: parser.get_parsed_content(key) for key in keys}


@pytest.mark.parametrize(
    ("config", "cpu", "cuda_workers"),
    [
        (SYNTHESIS / "train.json", TRAIN_CPU, 0),  # measured: workers only add IPC here
        (SEGMENTATION / "train.json", TRAIN_CPU, 4),
        (SYNTHESIS / "inference.json", CPU, 4),
        (SEGMENTATION / "inference.json", CPU, 4),
    ],
)
def test_cpu_defaults_are_todays_and_cuda_gets_measured_workers_pinned_memory_sparse_logs(
    config, cpu, cuda_workers
):
    assert _ids(config, "cpu", list(cpu)) == cpu
    cuda = _ids(config, "cuda", list(cpu))
    assert cuda["num_workers"] == cuda_workers
    assert cuda["pin_memory"] is True and cuda["non_blocking"] is True
    assert cuda["deterministic"] is True  # cuDNN's autotuner only when asked for
    if "log_every" in cpu:
        assert cuda["log_every"] == 50 and cuda["persistent_workers"] is False


def _loaders(node: Any) -> list[dict]:
    """Every DataLoader definition in a raw config."""
    found = []
    if isinstance(node, dict):
        if "DataLoader" in str(node.get("_target_", "")):
            found.append(node)
        for value in node.values():
            found += _loaders(value)
    elif isinstance(node, list):
        for value in node:
            found += _loaders(value)
    return found


@pytest.mark.parametrize(
    "config",
    sorted([*SYNTHESIS.rglob("*.json"), *SEGMENTATION.rglob("*.json")]),
    ids=lambda path: str(path.relative_to(REPO_ROOT / "bundles")),
)
def test_every_loader_takes_the_top_level_ids(config):
    for loader in _loaders(json.loads(config.read_text())):
        assert loader["num_workers"] == "@num_workers", config
        assert loader["pin_memory"] == "@pin_memory", config
        if "Resumable" in loader["_target_"] or config.name == "train.json":
            assert loader["persistent_workers"] == "$@persistent_workers and @num_workers > 0"
