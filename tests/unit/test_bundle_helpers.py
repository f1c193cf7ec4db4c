"""`latest_checkpoint`: what `--resume True` continues from, finished or interrupted."""

from __future__ import annotations

import os

from tumoraware.engines.bundle_helpers import latest_checkpoint


def _touch(path, mtime: float) -> None:
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_an_interrupted_run_resumes_from_its_last_interval_checkpoint(tmp_path):
    _touch(tmp_path / "checkpoint_epoch=3.pt", 100.0)
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=3.pt")


def test_the_newest_wins_and_ties_go_to_the_higher_epoch(tmp_path):
    _touch(tmp_path / "checkpoint_final.pt", 100.0)  # an older finished run
    _touch(tmp_path / "checkpoint_epoch=7.pt", 200.0)  # a later run, killed in epoch 8
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=7.pt")
    _touch(tmp_path / "checkpoint_final.pt", 300.0)  # that run finished after all
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final.pt")
    _touch(tmp_path / "checkpoint_epoch=9.pt", 300.0)
    _touch(tmp_path / "checkpoint_final.pt", 250.0)
    _touch(tmp_path / "checkpoint_epoch=10.pt", 300.0)  # same second: epoch 10, not 9
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")


def test_other_files_are_ignored_and_nothing_gives_the_final_path(tmp_path):
    _touch(tmp_path / "model.pt", 500.0)  # best-metric weights are not a full checkpoint
    _touch(tmp_path / "checkpoint_epoch=x.pt", 500.0)
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_final.pt")
    assert latest_checkpoint(tmp_path / "missing") == str(tmp_path / "missing/checkpoint_final.pt")
