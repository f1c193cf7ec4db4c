"""`tumoraware demo` end to end with the tiny test profile on a tiny phantom world.

The demo generates the world, then runs both bundles for every Table-1 method (3 synthesis
models, 7 segmentation methods, 2 evaluation splits) and the tumour-preservation score (3 models x
2 CT splits, and the reader's ceiling): 37 stages. The
first run is killed (SIGKILL to its whole process group, as a power cut would) once a few
stages have finished; the second run must skip those by content hash and finish the rest; a
third run must skip everything. Then the report's artefacts and numbers are checked.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tumoraware.pipeline.study import (
    EVAL_SPLITS,
    METHODS,
    PRESERVATION_SPLITS,
    REAL_MRI,
    WHOLE_SPLITS,
)

pytestmark = pytest.mark.slow
N_PRESERVATION = 3 * len(PRESERVATION_SPLITS) + 1  # the tiny world has a ct_test split
N_STAGES = 3 * 3 + len(METHODS) * (3 + len(WHOLE_SPLITS)) + N_PRESERVATION
FIRST_STAGES = ["cyclegan/train", "cyclegan/evaluate"]


def demo_args(root: Path) -> list[str]:
    return [sys.executable, "-m", "tumoraware", "demo", "--profile", "test", "--world", "tiny",
            "--data_dir", str(root / "data"), "--manifest", str(root / "phantoms.json"),
            "--out_dir", str(root / "study")]  # fmt: skip


def demo(root: Path, *extra: str) -> str:
    result = subprocess.run([*demo_args(root), *extra], capture_output=True, text=True,
                            timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def killed_demo(root: Path, *extra: str, timeout_s: float = 600.0) -> None:
    """Start the demo and SIGKILL its process group once FIRST_STAGES have finished."""
    markers = [root / f"study/seed0/synthesis/{s}/stage.json" for s in FIRST_STAGES]
    proc = subprocess.Popen([*demo_args(root), *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    try:
        while not all(m.exists() for m in markers):
            assert proc.poll() is None, f"demo exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "demo did not reach the kill point in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demo")
    killed_demo(root, "--tracking", "mlflow")  # both runs tracked: every stage has its run
    resumed = demo(root, "--tracking", "mlflow")  # tracking changes no stage's hash
    return {"root": root, "out": root / "study", "log": resumed}


def test_a_killed_demo_resumes_where_it_stopped(study):
    log = study["log"]
    for name in FIRST_STAGES:
        assert f"seed0/synthesis/{name}: unchanged, skipped" in log
    skipped, done = log.count("unchanged, skipped"), log.count(": done in ")
    assert skipped >= len(FIRST_STAGES) and skipped + done == N_STAGES


def test_every_artefact_exists_and_every_number_is_in_range(study):
    out, log = study["out"], study["log"]
    report = json.loads((out / "report.json").read_text())
    assert [row["method"] for row in report["rows"]] == [m.key for m in METHODS]
    for row in report["rows"]:
        for split in EVAL_SPLITS:
            dice = row[f"{split}/val_mean_dice"]
            assert 0.0 <= dice["mean"] <= 1.0 and dice["std"] >= 0.0
            hd = row[f"{split}/val_hd95"]
            assert math.isnan(hd["mean"]) or hd["mean"] >= 0.0
        for split in WHOLE_SPLITS:  # whole volumes, no expert position: Dice, HD95, detection
            assert 0.0 <= row[f"whole_{split}/val_mean_dice"]["mean"] <= 1.0
            assert 0.0 <= row[f"whole_{split}/detected"]["mean"] <= 1.0
            assert (
                out / f"seed0/segmentation/{row['method']}/whole_{split}/preservation.json"
            ).is_file()
    assert "Test whole DSC" in (out / "report.md").read_text()
    assert set(report["tumour_kl"]) == {"tumour_aware", "cyclegan", "masked_cyclegan"}
    assert all(math.isfinite(v["mean"]) and v["mean"] >= 0 for v in report["tumour_kl"].values())
    assert len(report["stages"]) == N_STAGES and all(s["wall_s"] > 0 for s in report["stages"])
    assert report["claims"] and all(isinstance(c["holds"], bool) for c in report["claims"])
    assert {c["id"] for c in report["claims"]} >= {"preservation_ct_train", "preservation_ct_test"}
    preservation = report["preservation"]
    assert set(preservation) == {"tumour_aware", "cyclegan", "masked_cyclegan", REAL_MRI}
    for model, splits in preservation.items():
        expected = {"mri_test"} if model == REAL_MRI else set(PRESERVATION_SPLITS)
        assert set(splits) == expected, model
        for entry in splits.values():
            assert all(0.0 <= v <= 1.0 for v in entry["dice"]["per_seed"])
            assert entry["per_case"]["0"], model  # per-case Dice for the paired claims
    assert "## Tumour preservation" in (out / "report.md").read_text()
    for key, figure in report["figures"].items():
        assert figure["status"] == "written", (key, figure)
        assert (out / figure["file"]).stat().st_size > 10_000, key
    with open(out / "table1.csv") as f:
        assert len(list(csv.reader(f))) == 1 + len(METHODS)
    markdown = (out / "report.md").read_text()
    assert all(m.title in markdown for m in METHODS) and "| Method |" in log
    assert all(figure["file"] in markdown for figure in report["figures"].values())


def test_a_second_run_skips_everything(study):
    log = demo(study["root"])
    assert log.count("unchanged, skipped") == N_STAGES and ": done in " not in log
    markdown = (study["out"] / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| seed0/")]
    assert len(rows) == N_STAGES  # two cells each, the note inside one, or Markdown drops it
    assert all(row.endswith(" (earlier run) |") and row.count("|") == 3 for row in rows)


def test_tracking_puts_the_study_in_one_mlflow_experiment(study):
    """Every training and evaluation stage, in the killed run or the resumed one, has a run
    tagged with its seed, method and step, with its losses or metrics; and a ``table1`` run."""
    mlflow = pytest.importorskip("mlflow", reason="the `tracking` extra is not installed")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{study['out'] / 'mlruns.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "tumoraware_study"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    for method in METHODS:
        train = runs[f"seed0/segmentation/{method.key}/train"]
        assert train.data.tags["method"] == method.key and train.data.tags["seed"] == "0"
        assert train.data.tags["step"] == "train" and "train_loss" in train.data.metrics
        for split in EVAL_SPLITS:
            evaluation = runs[f"seed0/segmentation/{method.key}/eval_{split}"]
            assert evaluation.data.tags["split"] == split
            assert 0.0 <= evaluation.data.metrics["val_mean_dice"] <= 1.0
    table = runs["table1"]
    assert table.info.artifact_uri.startswith((study["out"] / "mlartifacts").as_uri())
    assert {a.path for a in client.list_artifacts(table.info.run_id)} >= {"report.md", "table1.csv"}
    report = json.loads((study["out"] / "report.json").read_text())
    row = report["rows"][0]
    logged = table.data.metrics[f"{row['method']}__mri_test__val_mean_dice"]
    assert logged == pytest.approx(row["mri_test/val_mean_dice"]["mean"])
    assert "infer" not in {r.data.tags.get("step") for r in runs.values()}
