"""The study's stage graph: the preservation stages read with the real-MRI-only reader."""

from __future__ import annotations

import json
from pathlib import Path

from tumoraware.pipeline.run import default_bundles_dir
from tumoraware.pipeline.study import (
    METHODS,
    READER,
    SYNTHESIS_MODELS,
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
    reader = f"seed3/segmentation/{READER}/train"
    assert READER == "week_one_only" and any(m.key == READER for m in METHODS)
    for model in SYNTHESIS_MODELS:
        for split in ("ct_train", "ct_test"):
            stage = stages[preservation_name(3, model, split)]
            assert set(stage.after) == {f"seed3/synthesis/{model}/train", reader}
            assert stage.overrides["ct_split"] == split
            assert stage.overrides["reader_checkpoint"] == (
                tmp_path / "out" / reader / "models" / "model.pt"
            )
            assert stage.configs[:2] == ["configs/inference.json", "configs/preservation.json"]
            assert stage.configs[-1] == "configs/profiles/demo.json"  # as the reader's profile
            assert stage.overrides["reader_configs"][-1].endswith("profiles/demo.json")
    ceiling = stages[preservation_name(3, "real_mri", "mri_test")]
    assert ceiling.overrides["read_real_mri"] is True and ceiling.after == [reader]
    # the synthetic-only rows of the extended Table 1 train on each model's synthetic MRI
    for key in ("cyclegan_unsupervised", "masked_cyclegan_unsupervised"):
        train = stages[f"seed3/segmentation/{key}/train"]
        assert "configs/variants/synthetic_only.json" in train.configs


def test_no_held_out_ct_no_held_out_stages(tmp_path):
    manifest = _manifest(tmp_path / "m.json", with_ct_test=False)
    names = [s.name for s in study_stages(default_bundles_dir(), tmp_path / "out", manifest,
                                          manifest, 0, None)]  # fmt: skip
    assert preservation_name(0, "tumour_aware", "ct_train") in names
    assert not any(name.endswith("/ct_test") for name in names)
