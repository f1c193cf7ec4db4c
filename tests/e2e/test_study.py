"""The Table-1 study end to end: `tumoraware reproduce --profile test` on the tiny world.

Runs both bundles for every method (3 synthesis models, 5 segmentation methods, 2 evaluation
splits: 24 stages, about 3.5 min on 2 cores), then checks the report; a second run must skip
every stage by content hash, and a run whose last stage was lost (its marker removed, as when
the process is killed before finishing it) must re-run that stage only.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tumoraware.pipeline import METHODS

pytestmark = pytest.mark.slow
N_STAGES = 3 * 3 + len(METHODS) * 3


def reproduce(manifest: Path, out_dir: Path) -> str:
    args = [sys.executable, "-m", "tumoraware", "reproduce", "--profile", "test",
            "--ct_manifest", str(manifest), "--mri_manifest", str(manifest),
            "--out_dir", str(out_dir)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def study(tiny_world, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("study")
    log = reproduce(tiny_world[1], out)
    return {"out": out, "log": log, "manifest": tiny_world[1]}


def test_every_artefact_exists_and_every_number_is_in_range(study):
    out, log = study["out"], study["log"]
    assert log.count(": done in ") == N_STAGES
    report = json.loads((out / "report.json").read_text())
    assert [row["method"] for row in report["rows"]] == [m.key for m in METHODS]
    for row in report["rows"]:
        for split in ("mri_validation", "mri_test"):
            dice = row[f"{split}/val_mean_dice"]
            assert 0.0 <= dice["mean"] <= 1.0 and dice["std"] >= 0.0
            hd = row[f"{split}/val_hd95"]
            assert math.isnan(hd["mean"]) or hd["mean"] >= 0.0
    assert set(report["tumour_kl"]) == {"tumour_aware", "cyclegan", "masked_cyclegan"}
    assert all(math.isfinite(v["mean"]) and v["mean"] >= 0 for v in report["tumour_kl"].values())
    assert len(report["stages"]) == N_STAGES and all(s["wall_s"] > 0 for s in report["stages"])
    with open(out / "table1.csv") as f:
        assert len(list(csv.reader(f))) == 1 + len(METHODS)
    markdown = (out / "report.md").read_text()
    assert all(m.title in markdown for m in METHODS) and "| Method |" in log
    for method in METHODS:
        assert (out / f"seed0/segmentation/{method.key}/eval_mri_test/fig4_panels.png").exists()


def test_a_second_run_skips_everything(study):
    log = reproduce(study["manifest"], study["out"])
    assert log.count("unchanged, skipped") == N_STAGES and ": done in " not in log


def test_a_lost_stage_runs_again_alone(study):
    last = study["out"] / "seed0/segmentation/tumour_aware_semi_supervised/eval_mri_test"
    (last / "stage.json").unlink()
    log = reproduce(study["manifest"], study["out"])
    assert log.count("unchanged, skipped") == N_STAGES - 1
    assert "tumour_aware_semi_supervised/eval_mri_test: done in" in log
