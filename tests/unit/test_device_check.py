"""``benchmarks/device_check.sh``, the GPU device check: it runs end to end in its CPU dry mode
(every step at tiny sizes) and, without a CUDA device, says so and runs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "device_check.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT
    )


@pytest.mark.timeout(120)
def test_the_dry_run_runs_every_step_and_writes_one_report(tmp_path):
    result = _run("--dry-run", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "device_check_cpu_dry_run.json").read_text())
    assert report["dry_run"] and report["machine"]["device"] == "cpu"
    steps = report["steps"]
    assert list(steps) == ["synthesis", "segmentation_training", "segmentation_inference"]
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(steps, "ok")
    summary = report["summary"]
    for variant in ("plain_eager_fp32", "cyclegan_fp32", "tumour-aware_amp_autotune"):
        assert summary[f"synthesis_{variant}_s_per_step"] > 0
    workers = [r["num_workers"] for r in steps["segmentation_training"]["report"]["rows"]]
    assert workers == [0, 1]  # the config's CPU default, then one worker process
    for r in steps["segmentation_training"]["report"]["rows"]:
        assert r["it_per_s"] > 0 and 0 <= r["data_share"] <= 1
    assert summary["segmentation_infer_row4_s_per_volume"] > 0


def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path):
    result = _run("--out", str(tmp_path), CUDA_VISIBLE_DEVICES="", DEVICE="cuda")
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "--dry-run" in result.stderr
    assert not list(tmp_path.iterdir())
