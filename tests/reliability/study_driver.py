"""A small part of the tiny study, run the way ``tumoraware reproduce`` runs it, for tests that
kill it: the week-one-only segmentation training (longer than the test profile's, so there is
time to kill it between checkpoints) and its test-split evaluation.

``python -m tests.reliability.study_driver OUT_DIR MANIFEST [MAX_EPOCHS]``; prints each
finished stage's line and, last, ``RESULT <json>``: the evaluation's summary.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from tumoraware.pipeline.layout import SEGMENTATION, StudyLayout
from tumoraware.pipeline.schedule import run_stages
from tumoraware.pipeline.stage import BundleStage
from tumoraware.pipeline.study import READER, study_stages

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = f"seed0/{SEGMENTATION}/{READER}/train"
EVALUATION = f"seed0/{SEGMENTATION}/{READER}/eval_mri_test"


def stages(out_dir: Path, manifest: Path, max_epochs: int) -> list[BundleStage]:
    """The training (``max_epochs`` epochs) and its evaluation, as the study defines them."""
    study = {
        s.name: s
        for s in study_stages(REPO_ROOT / "bundles", out_dir, manifest, manifest, 0, "test")
    }
    train = study[TRAIN]
    train = dataclasses.replace(train, overrides={**train.overrides, "max_epochs": max_epochs})
    return [train, study[EVALUATION]]


def main(out_dir: Path, manifest: Path, max_epochs: int) -> None:
    run_stages(stages(out_dir, manifest, max_epochs), out_dir, workers=1, progress=False,
               on_line=lambda line: print(line, flush=True))  # fmt: skip
    layout = StudyLayout(out_dir)
    summary = json.loads((out_dir / EVALUATION / "summary.json").read_text())
    print("RESULT " + json.dumps(summary, sort_keys=True), flush=True)
    print(f"weights {layout.weights(0, SEGMENTATION, READER)}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(),
         int(sys.argv[3]) if len(sys.argv) > 3 else 6)  # fmt: skip
