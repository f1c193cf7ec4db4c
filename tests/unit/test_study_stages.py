"""The study's stage graph: the preservation stages read with the real-MRI-only reader."""

from __future__ import annotations

import json
from pathlib import Path

from tumoraware.pipeline.layout import (
    EVALUATE_WHOLE,
    PRESERVATION,
    PRESERVE,
    SEGMENTATION,
    SYNTHESIS,
    TRAIN,
    StageAddress,
    StudyLayout,
)
from tumoraware.pipeline.run import default_bundles_dir
from tumoraware.pipeline.study import (
    METHODS,
    READER,
    SYNTHESIS_MODELS,
    WHOLE_SPLITS,
    preservation_name,
    study_stages,
)


def _manifest(path: Path, with_ct_test: bool) -> Path:
    case = {"image": "a.nii.gz", "label": "a_label.nii.gz"}
    data = {"ct_train": [case], "mri_week1": [case], "mri_test": [case]}
    if with_ct_test:
        data["ct_test"] = [case]
    path.write_text(json.dumps(data))
    return path


def test_preservation_stages_read_synthetic_mri_with_the_week_one_reader(tmp_path):
    manifest = _manifest(tmp_path / "m.json", with_ct_test=True)
    stages = {s.name: s for s in study_stages(default_bundles_dir(), tmp_path / "out",
                                               manifest, manifest, 3, "demo")}  # fmt: skip
    layout = StudyLayout(tmp_path / "out")
    reader = StageAddress(3, SEGMENTATION, READER, TRAIN).name
    assert READER == "week_one_only" and any(m.key == READER for m in METHODS)
    for model in SYNTHESIS_MODELS:
        for split in ("ct_train", "ct_test"):
            stage = stages[preservation_name(3, model, split)]
            assert stage.address == StageAddress(3, PRESERVATION, model, PRESERVE, split)
            assert set(stage.after) == {StageAddress(3, SYNTHESIS, model, TRAIN).name, reader}
            assert stage.overrides["ct_split"] == split
            assert stage.overrides["reader_checkpoint"] == layout.weights(3, SEGMENTATION, READER)
            assert stage.overrides["output_dir"] == layout.preservation(3, model, split)
            assert stage.configs[:2] == ["configs/inference.json", "configs/preservation.json"]
            assert stage.configs[-1] == "configs/profiles/demo.json"  # as the reader's profile
            assert stage.overrides["reader_configs"][-1].endswith("profiles/demo.json")
    ceiling = stages[preservation_name(3, "real_mri", "mri_test")]
    assert ceiling.overrides["read_real_mri"] is True and ceiling.after == [reader]
    # the synthetic-only rows of the extended Table 1 train on each model's synthetic MRI
    for key in ("cyclegan_unsupervised", "masked_cyclegan_unsupervised"):
        train = stages[StageAddress(3, SEGMENTATION, key, TRAIN).name]
        assert "configs/variants/synthetic_only.json" in train.configs


def test_no_held_out_ct_no_held_out_stages(tmp_path):
    manifest = _manifest(tmp_path / "m.json", with_ct_test=False)
    names = [s.name for s in study_stages(default_bundles_dir(), tmp_path / "out", manifest,
                                          manifest, 0, None)]  # fmt: skip
    assert preservation_name(0, "tumour_aware", "ct_train") in names
    assert not any(name.endswith("/ct_test") for name in names)


def test_every_stage_runs_in_its_layout_folder(tmp_path):
    """A stage's name is its address's, and its outputs go to that folder of the layout."""
    manifest = _manifest(tmp_path / "m.json", with_ct_test=True)
    out = tmp_path / "out"
    layout = StudyLayout(out)
    stages = study_stages(default_bundles_dir(), out, manifest, manifest, 1, "demo")
    for stage in stages:
        assert stage.address is not None and stage.name == stage.address.name
        assert layout.describe(layout.stage_dir(stage.address)) == stage.address
        folder = stage.overrides.get("output_dir")
        expected = layout.stage_dir(stage.address)
        if stage.address.step == TRAIN:  # a training logs into runs/ and keeps models/
            kind, method = stage.address.kind, stage.address.method
            expected = layout.events(1, kind, method)
            assert stage.overrides["ckpt_dir"] == layout.models(1, kind, method)
        assert folder == expected, stage.name
        assert all(a in {s.name for s in stages} for a in stage.after)


def test_every_method_is_also_evaluated_on_whole_volumes(tmp_path):
    """One whole-volume stage per method and split: inference.json + evaluate_whole.json with
    that method's own trained weights, after its training."""
    manifest = _manifest(tmp_path / "m.json", with_ct_test=True)
    out = tmp_path / "out"
    stages = {s.name: s for s in study_stages(default_bundles_dir(), out, manifest, manifest, 0,
                                              "demo")}  # fmt: skip
    layout = StudyLayout(out)
    for method in METHODS:
        for split in WHOLE_SPLITS:
            address = StageAddress(0, SEGMENTATION, method.key, EVALUATE_WHOLE, split)
            stage = stages[address.name]
            assert address.name.endswith(f"/whole_{split}")
            assert stage.configs[:2] == ["configs/inference.json", "configs/evaluate_whole.json"]
            assert stage.overrides["ckpt_path"] == layout.weights(0, SEGMENTATION, method.key)
            assert stage.overrides["eval_split"] == split
            assert stage.after == [StageAddress(0, SEGMENTATION, method.key, TRAIN).name]
