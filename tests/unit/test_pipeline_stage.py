"""`run_stage`: a real `python -m monai.bundle run` of a small bundle config, skipped by hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tumoraware.pipeline import BundleStage, run_stage

# A tiny real bundle config: logs MONAI-style progress, counts its runs, writes an output.
CONFIG = {
    "out_dir": "/tmp/unset",
    "fail": False,
    "run": [
        "$print('Epoch: 1/1, Iter: 1/2 -- train_loss: 0.5')",
        "$print('Epoch: 1/1, Iter: 2/2 -- train_loss: 0.4')",
        "$open(@out_dir + '/runs.txt', 'a').write('run\\n')",
        "$1 / 0 if @fail else None",
        "$open(@out_dir + '/result.txt', 'w').write('done')",
    ],
}


@pytest.fixture
def bundle(config_bundle) -> Path:
    return config_bundle(CONFIG)


def _stage(bundle: Path, run_dir: Path, **kw) -> BundleStage:
    overrides = {"out_dir": run_dir, **kw.pop("overrides", {})}
    return BundleStage(name="s", bundle=bundle, configs=["configs/run.json"],
                       overrides=overrides, outputs=["result.txt"], **kw)  # fmt: skip


def _runs(run_dir: Path) -> int:
    return len((run_dir / "runs.txt").read_text().splitlines())


def test_second_run_is_skipped_and_changes_rerun(bundle, tmp_path):
    run_dir = tmp_path / "run"
    first = run_stage(_stage(bundle, run_dir), run_dir, {}, progress=False)
    assert not first.skipped and (run_dir / "result.txt").read_text() == "done"
    marker = json.loads((run_dir / "stage.json").read_text())
    assert (
        marker["content_hash"] == first.content_hash
        and "Iter: 2/2" in (run_dir / "log.txt").read_text()
    )
    again = run_stage(_stage(bundle, run_dir), run_dir, {}, progress=False)
    assert again.skipped and again.content_hash == first.content_hash and _runs(run_dir) == 1

    changed = run_stage(
        _stage(bundle, run_dir, overrides={"extra": 1}), run_dir, {}, progress=False
    )
    assert not changed.skipped and _runs(run_dir) == 2  # an override changed
    config = bundle / "configs" / "run.json"
    config.write_text(config.read_text() + "\n")  # a config byte changed
    assert not run_stage(_stage(bundle, run_dir, overrides={"extra": 1}), run_dir, {}).skipped
    assert _runs(run_dir) == 3


def test_upstream_and_input_changes_rerun(bundle, tmp_path):
    run_dir, manifest = tmp_path / "run", tmp_path / "manifest.json"
    manifest.write_text("{}")
    stage = _stage(bundle, run_dir, inputs=[manifest], after=["prev"])
    assert not run_stage(stage, run_dir, {"prev": "a"}, progress=False).skipped
    assert run_stage(stage, run_dir, {"prev": "a"}, progress=False).skipped
    assert not run_stage(stage, run_dir, {"prev": "b"}, progress=False).skipped
    manifest.write_text('{"changed": true}')
    assert not run_stage(stage, run_dir, {"prev": "b"}, progress=False).skipped
    assert _runs(run_dir) == 3
    with pytest.raises(KeyError, match="needs stage 'prev' first"):
        run_stage(stage, run_dir, {}, progress=False)
    manifest.unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest\.json does not exist"):
        run_stage(stage, run_dir, {"prev": "b"}, progress=False)


def test_an_interrupted_or_failed_run_runs_again(bundle, tmp_path):
    run_dir = tmp_path / "run"
    run_stage(_stage(bundle, run_dir), run_dir, {}, progress=False)
    (run_dir / "stage.json").unlink()  # killed after the work, before the marker
    assert not run_stage(_stage(bundle, run_dir), run_dir, {}, progress=False).skipped
    with pytest.raises(RuntimeError, match=r"stage s failed \(exit 1\).*ZeroDivisionError"):
        run_stage(_stage(bundle, run_dir, overrides={"fail": True}), run_dir, {}, progress=False)
    assert not (run_dir / "stage.json").exists()  # the failed run left no marker behind
    assert not (run_dir / "result.txt").exists()  # nor the output of the run before it
    stage = _stage(bundle, run_dir)
    assert not run_stage(stage, run_dir, {}, progress=False).skipped  # no marker: rerun
    (run_dir / "result.txt").unlink()
    assert not run_stage(stage, run_dir, {}, progress=False).skipped  # output gone: rerun


def test_missing_outputs_are_an_error(bundle, tmp_path):
    run_dir = tmp_path / "run"
    stage = BundleStage(name="s", bundle=bundle, configs=["configs/run.json"],
                        overrides={"out_dir": run_dir}, outputs=["never.txt"])  # fmt: skip
    with pytest.raises(RuntimeError, match=r"did not write \['never\.txt'\]"):
        run_stage(stage, run_dir, {}, progress=False)
    assert not (run_dir / "stage.json").exists()


def test_the_stage_sees_the_callers_environment_now(bundle, tmp_path, monkeypatch):
    """The forkserver starts once; each stage must still get the environment of its call."""
    config = {"imports": ["$import os"], "out_dir": "/tmp/unset", "run": [
        "$open(@out_dir + '/env.txt', 'w').write(os.environ.get('TA_PROBE', '-'))",
        "$open(@out_dir + '/result.txt', 'w').write('done')"]}  # fmt: skip
    (bundle / "configs" / "env.json").write_text(json.dumps(config))
    for value in ("first", "second"):
        monkeypatch.setenv("TA_PROBE", value)
        run_dir = tmp_path / value
        stage = BundleStage(name="e", bundle=bundle, configs=["configs/env.json"],
                            overrides={"out_dir": run_dir}, outputs=["result.txt"])  # fmt: skip
        run_stage(stage, run_dir, {}, progress=False)
        assert (run_dir / "env.txt").read_text() == value
    run_dir = tmp_path / "explicit"
    stage = BundleStage(name="e", bundle=bundle, configs=["configs/env.json"],
                        overrides={"out_dir": run_dir}, outputs=["result.txt"])  # fmt: skip
    run_stage(stage, run_dir, {}, progress=False, env={"TA_PROBE": "given"})
    assert (run_dir / "env.txt").read_text() == "given"
