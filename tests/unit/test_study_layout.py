"""`StudyLayout`: the study's folders, their inverse, and the fields of a stage's `stage.json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tumoraware.pipeline import BundleStage, run_stage
from tumoraware.pipeline.layout import (
    EVALUATE,
    INFER,
    MARKER,
    PRESERVATION,
    PRESERVE,
    SEGMENTATION,
    STAGE_SCHEMA,
    SYNTHESIS,
    TRAIN,
    StageAddress,
    StageRecord,
    StudyLayout,
    read_stage_record,
    weights_stage_dir,
    write_stage_record,
)
from tumoraware.pipeline.schedule import _kind

CONFIG = {
    "out_dir": "/tmp/unset",
    "run": [
        "$open(@out_dir + '/runs.txt', 'a').write('run\\n')",
        "$open(@out_dir + '/result.txt', 'w').write('done')",
    ],
}


def test_the_study_folders(tmp_path):
    layout = StudyLayout(tmp_path)
    assert layout.seed_dir(2) == tmp_path / "seed2"
    assert layout.report == tmp_path / "report.json"
    assert StudyLayout.of_report(layout.report) == layout
    assert layout.train(0, SYNTHESIS, "cyclegan") == tmp_path / "seed0/synthesis/cyclegan/train"
    assert layout.models(0, SYNTHESIS, "cyclegan") == (
        tmp_path / "seed0/synthesis/cyclegan/train/models"
    )
    assert layout.weights(1, SEGMENTATION, "week_one_only") == (
        tmp_path / "seed1/segmentation/week_one_only/train/models/model.pt"
    )
    assert layout.events(0, SEGMENTATION, "cyclegan") == (
        tmp_path / "seed0/segmentation/cyclegan/train/runs"
    )
    assert layout.synthesis_evaluation(0, "tumour_aware") == (
        tmp_path / "seed0/synthesis/tumour_aware/evaluate"
    )
    assert layout.inference(3, "tumour_aware") == tmp_path / "seed3/synthesis/tumour_aware/infer"
    assert layout.evaluation(0, "cyclegan", "mri_test") == (
        tmp_path / "seed0/segmentation/cyclegan/eval_mri_test"
    )
    assert layout.preservation(0, "real_mri", "mri_test") == (
        tmp_path / "seed0/preservation/real_mri/mri_test"
    )
    weights = layout.weights(0, SYNTHESIS, "tumour_aware")
    assert weights_stage_dir(weights) == layout.train(0, SYNTHESIS, "tumour_aware").resolve()


ADDRESSES = [
    StageAddress(0, SYNTHESIS, "cyclegan", TRAIN),
    StageAddress(0, SYNTHESIS, "cyclegan", EVALUATE),
    StageAddress(12, SYNTHESIS, "tumour_aware", INFER),
    StageAddress(0, SEGMENTATION, "week_one_only", TRAIN),
    StageAddress(1, SEGMENTATION, "tumour_aware_unsupervised", EVALUATE, "mri_validation"),
    StageAddress(0, PRESERVATION, "masked_cyclegan", PRESERVE, "ct_test"),
    StageAddress(0, PRESERVATION, "real_mri", PRESERVE, "mri_test"),
]


@pytest.mark.parametrize("address", ADDRESSES, ids=lambda a: a.name)
def test_a_folder_describes_its_stage(tmp_path, address):
    layout = StudyLayout(tmp_path)
    folder = layout.stage_dir(address)
    assert folder == tmp_path / address.name
    assert layout.describe(folder) == address  # absolute, inside the study
    assert layout.describe(address.name) == address  # relative to the study


@pytest.mark.parametrize(
    "folder",
    ["seed0/synthesis/cyclegan", "seed0/synthesis/cyclegan/eval_mri_test",
     "seed0/segmentation/cyclegan/evaluate", "seedX/synthesis/cyclegan/train",
     "seed00/synthesis/cyclegan/train", "seed0/registration/cyclegan/train",
     "seed0/synthesis/cyclegan/predict", "run0/synthesis/cyclegan/train"],
)  # fmt: skip
def test_other_folders_are_not_stages(tmp_path, folder):
    with pytest.raises(ValueError, match="not a stage folder"):
        StudyLayout(tmp_path).describe(folder)
    with pytest.raises(ValueError, match="not inside the study"):
        StudyLayout(tmp_path / "a").describe(tmp_path / "b" / "seed0/synthesis/cyclegan/train")


def test_an_address_must_be_one_the_study_has():
    for bad in [(0, "registration", "x", TRAIN), (0, SYNTHESIS, "x", PRESERVE),
                (0, SEGMENTATION, "x", EVALUATE), (0, SYNTHESIS, "x", TRAIN, "mri_test"),
                (-1, SYNTHESIS, "x", TRAIN), (0, SYNTHESIS, "a/b", TRAIN)]:  # fmt: skip
        with pytest.raises(ValueError, match="stage address"):
            StageAddress(*bad)
    assert StageAddress(0, SEGMENTATION, "m", EVALUATE, "mri_test").group == (
        "segmentation/evaluate/mri_test"
    )


def _stage(bundle: Path, run_dir: Path, address: StageAddress | None) -> BundleStage:
    return BundleStage(
        name=address.name if address else "s", bundle=bundle, configs=["configs/run.json"],
        overrides={"out_dir": run_dir, "flag": True, "n": 3, "files": [run_dir / "a"]},
        outputs=["result.txt"], address=address,
    )  # fmt: skip


def test_stage_json_records_the_stage_as_fields(config_bundle, tmp_path):
    bundle = config_bundle(CONFIG)
    layout = StudyLayout(tmp_path / "study")
    address = StageAddress(4, SEGMENTATION, "cyclegan", EVALUATE, "mri_test")
    run_dir = layout.stage_dir(address)
    result = run_stage(_stage(bundle, run_dir, address), run_dir, {}, progress=False)
    saved = json.loads((run_dir / MARKER).read_text())
    assert saved["schema"] == STAGE_SCHEMA and saved["name"] == address.name
    assert saved["content_hash"] == result.content_hash and saved["wall_s"] > 0
    assert saved["bundle"] == str(bundle) and saved["configs"] == ["configs/run.json"]
    assert saved["overrides"] == {
        "out_dir": str(run_dir), "flag": True, "n": 3, "files": [str(run_dir / "a")]
    }  # fmt: skip
    assert (saved["seed"], saved["kind"], saved["method"], saved["step"], saved["split"]) == (
        4, "segmentation", "cyclegan", "evaluate", "mri_test"
    )  # fmt: skip
    record = read_stage_record(run_dir)
    assert record is not None and layout.stage_record(address) == record
    assert record.address == address and record.configs == ("configs/run.json",)
    assert record.overrides["out_dir"] == str(run_dir) and record.bundle == str(bundle)
    assert StageRecord.from_json(record.to_json()) == record

    outside = tmp_path / "outside"  # a stage outside a study: no address, null fields
    run_stage(_stage(bundle, outside, None), outside, {}, progress=False)
    saved = json.loads((outside / MARKER).read_text())
    assert saved["seed"] is saved["kind"] is saved["method"] is saved["step"] is None
    assert read_stage_record(outside).address is None


def test_an_old_stage_json_counts_as_changed(config_bundle, tmp_path):
    bundle = config_bundle(CONFIG)
    address = StageAddress(0, SYNTHESIS, "cyclegan", TRAIN)
    run_dir = StudyLayout(tmp_path).stage_dir(address)
    stage = _stage(bundle, run_dir, address)
    first = run_stage(stage, run_dir, {}, progress=False)
    assert run_stage(stage, run_dir, {}, progress=False).skipped
    old = {"name": stage.name, "content_hash": first.content_hash, "wall_s": 12.5,
           "command": ["-m", "monai.bundle", *stage.bundle_args()],
           "finished": "2026-01-01T00:00:00"}  # fmt: skip
    (run_dir / MARKER).write_text(json.dumps(old))  # what the earlier version wrote
    assert read_stage_record(run_dir) is None
    again = run_stage(stage, run_dir, {}, progress=False)
    assert not again.skipped and again.content_hash == first.content_hash
    assert (run_dir / "runs.txt").read_text().splitlines() == ["run", "run"]
    assert read_stage_record(run_dir).address == address  # rewritten in the current schema
    current = read_stage_record(run_dir).to_json()
    for broken in (
        "[]",
        "{not json",
        json.dumps({**current, "seed": "zero"}),
        json.dumps({**current, "kind": None}),
        json.dumps({**current, "method": "x"}),
    ):
        (run_dir / MARKER).write_text(broken)  # unreadable, or another stage's record
        assert not run_stage(stage, run_dir, {}, progress=False).skipped
    assert run_stage(stage, run_dir, {}, progress=False).skipped


def test_a_study_stage_is_named_by_its_address(tmp_path):
    address = StageAddress(0, SYNTHESIS, "cyclegan", INFER)
    with pytest.raises(ValueError, match="name a study stage by its address"):
        BundleStage("seed0/synthesis/cyclegan/inference", tmp_path, [], address=address)
    write_stage_record(tmp_path, StageRecord(address.name, address=address))
    assert read_stage_record(tmp_path) == StageRecord(address.name, address=address)


def test_stages_of_a_kind_share_their_expected_duration(tmp_path):
    """The scheduler estimates a stage's time from the last of its kind, step and split."""
    a, b = (StageAddress(s, SEGMENTATION, m, EVALUATE, "mri_test")
            for s, m in ((0, "cyclegan"), (1, "week_one_only")))  # fmt: skip
    stage_a, stage_b = (BundleStage(x.name, tmp_path, [], address=x) for x in (a, b))
    assert _kind(stage_a) == _kind(stage_b) == "segmentation/evaluate/mri_test"
    validation = StageAddress(0, SEGMENTATION, "cyclegan", EVALUATE, "mri_validation")
    assert _kind(BundleStage(validation.name, tmp_path, [], address=validation)) != _kind(stage_a)
    assert _kind(BundleStage("other", tmp_path, [])) == "other"
