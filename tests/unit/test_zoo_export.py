"""The pieces of the Model Zoo export that need no MONAI run: vendoring, merged overrides,
docs from a study report, ``large_files.yml`` and the deterministic zip."""

from __future__ import annotations

import ast
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from tumoraware.export.archive import read_large_files, sha256_of, write_large_files, write_zip
from tumoraware.export.data_dir import (
    EXPORTED_DATASET_DIR,
    data_readme,
    dataset_dir_leaves_bundle,
    localise_dataset_dir,
)
from tumoraware.export.export import (
    ExportError,
    _override_list,
    _state_dict,
    bake_overrides,
    exported_metadata,
)
from tumoraware.export.vendor import (
    SourceTree,
    VendorError,
    VendorPlan,
    config_references,
    rewrite_config,
    vendor_configs,
    write_vendored,
)
from tumoraware.export.verify import _self_contained
from tumoraware.export.zoo_docs import (
    Provenance,
    eval_metrics,
    find_provenance,
    load_study,
    render_readme,
    stage_overrides,
)
from tumoraware.label_server.env import MONAILABEL_VERSION
from tumoraware.pipeline.layout import (
    MARKER,
    TRAIN,
    StageAddress,
    StageRecord,
    StudyLayout,
    weights_stage_dir,
    write_stage_record,
)
from tumoraware.pipeline.layout import SEGMENTATION as SEGMENTATION_KIND

from ..conftest import REPO_ROOT

SEGMENTATION = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation"


def _configs(bundle: Path) -> dict:
    return {
        p.relative_to(bundle / "configs").as_posix(): json.loads(p.read_text())
        for p in sorted((bundle / "configs").rglob("*.json"))
        if p.name != "metadata.json"
    }


def test_names_resolve_to_the_module_that_defines_them():
    tree = SourceTree()
    assert tree.resolve("tumoraware.transforms", "CTWindowd") == (
        "tumoraware.transforms.intensity", "CTWindowd"
    )  # fmt: skip
    assert tree.resolve("tumoraware", "__version__") == ("tumoraware", "__version__")
    # a MONAI class re-exported by our package stays where our code binds it
    assert tree.resolve("tumoraware.networks", "PatchDiscriminator") == (
        "tumoraware.networks", "PatchDiscriminator"
    )  # fmt: skip
    assert tree.resolve("tumoraware.data", "manifest") == ("tumoraware.data.manifest", "")


def test_segmentation_vendoring_copies_only_what_its_configs_need(tmp_path):
    rewritten, plan = vendor_configs(_configs(SEGMENTATION))
    assert "tumoraware.transforms.intensity" in plan.modules
    assert "tumoraware.metrics.hausdorff_mm" in plan.modules
    assert "tumoraware.transforms.spacing" in plan.modules  # SafeSpacingd, found by its _target_
    unwanted = ("networks", "data.phantoms", "pipeline", "data.prepare", "losses", "cli")
    assert not [m for m in plan.modules if any(m.startswith(f"tumoraware.{u}") for u in unwanted)]
    target = rewritten["inference.json"]["preprocessing"]["transforms"][3]["_target_"]
    assert target == "scripts.tumoraware.transforms.intensity.RobustMRINormalized"
    assert "$from scripts.tumoraware.data.manifest import load_split" in rewritten["train.json"][
        "imports"
    ]  # fmt: skip
    assert all(not config_references(c) for c in rewritten.values())

    files = write_vendored(plan, tmp_path / "scripts", "0.1.0")
    root = tmp_path / "scripts" / "tumoraware"
    assert (root / "data" / "manifest_schema.json").is_file()  # named by data/manifest.py
    init = (root / "transforms" / "__init__.py").read_text()
    assert "import" not in init, "package __init__ files not needed for their code stay empty"
    for path in (p for p in files if p.suffix == ".py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert not (node.module or "").startswith("tumoraware"), path
    crop = (root / "transforms" / "crop.py").read_text()
    assert "from .intensity import source_name" in crop


def test_expressions_are_rewritten_but_not_string_literals_or_monai_ids():
    plan = VendorPlan(SourceTree())
    config = {
        "a": "$tumoraware.transforms.intensity.source_name(@train#dataset)",
        "b": "$print('tumoraware.transforms is only text here')",
        "c": "$import tumoraware.hounsfield",
        "d": "@train#tumoraware",
    }
    out = rewrite_config(config, plan)
    assert out["a"] == "$scripts.tumoraware.transforms.intensity.source_name(@train#dataset)"
    assert out["b"] == config["b"] and out["d"] == config["d"]
    assert out["c"] == "$import scripts.tumoraware.hounsfield"
    assert {"tumoraware.transforms.intensity", "tumoraware.hounsfield"} <= plan.modules


def test_unvendorable_import_forms_are_refused(tmp_path):
    package = tmp_path / "tumoraware"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("import tumoraware.sub.b\n\ndef f():\n    pass\n")
    (package / "sub" / "b.py").write_text("X = 1\n")
    with pytest.raises(
        VendorError, match=r"cannot be vendored; write `from tumoraware\.x import y`"
    ):
        vendor_configs({"c.json": {"_target_": "tumoraware.sub.a.f"}}, SourceTree(package))
    with pytest.raises(VendorError, match="defines no top-level name 'g'"):
        vendor_configs({"c.json": {"_target_": "tumoraware.sub.b.g"}}, SourceTree(package))


def test_overrides_are_merged_where_the_ids_exist():
    configs = {
        "train.json": {"spatial_size": [256, 256], "max_epochs": 100, "train": {"sources": []}},
        "inference.json": {"spatial_size": [256, 256]},
        "profiles/demo.json": {"spatial_size": [64, 64]},
    }
    merged, baked, paper = bake_overrides(
        configs, {"demo": {"spatial_size": [64, 64], "max_epochs": 10, "train#sources": ["@x"]}}
    )
    assert merged["train.json"]["spatial_size"] == merged["inference.json"]["spatial_size"]
    assert merged["inference.json"] == {"spatial_size": [64, 64]}  # no max_epochs added
    assert merged["train.json"]["train"]["sources"] == ["@x"]
    assert paper == {"spatial_size": [256, 256], "max_epochs": 100, "train#sources": []}
    assert baked["max_epochs"] == 10
    assert configs["train.json"]["max_epochs"] == 100, "the source configs are not modified"
    with pytest.raises(ExportError, match="id 'nope' is in none of"):
        bake_overrides(configs, {"bad": {"nope": 1}})


def test_the_export_reads_data_from_inside_itself_and_names_monai_label(tmp_path):
    from monai.bundle import ConfigParser

    configs = _configs(SEGMENTATION)
    local, changed = localise_dataset_dir(configs)
    assert sorted(changed) == ["inference.json", "train.json"]
    assert dataset_dir_leaves_bundle(configs["train.json"]["dataset_dir"]), "source: ../../"
    assert configs["train.json"]["dataset_dir"] != EXPORTED_DATASET_DIR, "source unchanged"
    bundle = tmp_path / "dist" / SEGMENTATION.name
    for name in changed:
        assert not dataset_dir_leaves_bundle(local[name]["dataset_dir"])
        parser = ConfigParser({k: v for k, v in local[name].items() if k != "imports"})
        parser["bundle_root"] = str(bundle)
        data = Path(parser.get_parsed_content("dataset_dir")).resolve()
        assert data == (bundle / "data_manifests").resolve()
        assert Path(parser.get_parsed_content("mri_manifest")).resolve().is_relative_to(data)
    assert dataset_dir_leaves_bundle("/data/manifests") and dataset_dir_leaves_bundle(None)

    rewritten, _ = vendor_configs(local)  # vendoring leaves dataset_dir alone
    assert rewritten["inference.json"]["dataset_dir"] == EXPORTED_DATASET_DIR
    readme = data_readme(SEGMENTATION.name, rewritten)
    row = "| `mri_manifest` | `phantoms.json` | `--mri_manifest /path/to/phantoms.json` |"
    assert row in readme
    assert "`labelled_split` = `mri_week1`" in readme and "`infer_split` = `mri_test`" in readme

    # verify_zoo refuses an export whose dataset_dir leaves it
    (bundle / "configs").mkdir(parents=True)
    source_dir = configs["inference.json"]["dataset_dir"]
    outside = {**rewritten["inference.json"], "dataset_dir": source_dir}
    (bundle / "configs" / "inference.json").write_text(json.dumps(outside))
    with pytest.raises(ValueError, match=r"dataset_dir .* may leave the bundle"):
        _self_contained(bundle, {})
    (bundle / "configs" / "inference.json").write_text(json.dumps(rewritten["inference.json"]))
    assert "dataset_dir inside the bundle" in _self_contained(bundle, {})

    # MONAI Label in supported_apps, as Model Zoo bundles name their apps, kept by the export
    source = json.loads((SEGMENTATION / "configs" / "metadata.json").read_text())
    meta = exported_metadata(source, {"nibabel": "5.4.2"}, {}, {})
    assert meta["supported_apps"] == {"monai-label": MONAILABEL_VERSION}


def test_weights_from_a_ddp_wrapper_lose_their_prefix(tmp_path):
    path = tmp_path / "ddp.pt"
    torch.save({"module.conv.weight": torch.zeros(1), "module.conv.bias": torch.zeros(1)}, path)
    state, changed = _state_dict(path, key=None)
    assert set(state) == {"conv.weight", "conv.bias"} and changed


def test_zip_is_byte_identical_whatever_the_file_times(tmp_path):
    bundle = tmp_path / "b" / "my_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "a.json").write_text("{}")
    (bundle / "LICENSE").write_text("x")
    (bundle / "__pycache__").mkdir()
    (bundle / "__pycache__" / "x.pyc").write_bytes(b"\0")
    first = write_zip(bundle, tmp_path / "1.zip").read_bytes()
    os.utime(bundle / "LICENSE", (1e9, 1e9))
    (bundle / "configs" / "a.json").chmod(0o600)
    assert write_zip(bundle, tmp_path / "2.zip").read_bytes() == first
    with zipfile.ZipFile(tmp_path / "1.zip") as z:
        assert z.namelist() == ["my_bundle/LICENSE", "my_bundle/configs/a.json"]


def test_large_files_lists_files_over_the_threshold_with_sha256(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"0" * 2048)
    (tmp_path / "small.txt").write_text("x")
    entries = write_large_files(tmp_path, threshold=1024)
    assert [e["path"] for e in entries] == ["models/model.pt"]
    read = read_large_files(tmp_path)
    assert read == entries and read[0]["hash_val"] == sha256_of(tmp_path / "models" / "model.pt")
    assert write_large_files(tmp_path, threshold=10**6) == []
    assert read_large_files(tmp_path) == []


def _study(tmp_path: Path) -> tuple[Path, Path]:
    """A study folder with one segmentation stage and its report (the demo's layout)."""
    layout = StudyLayout(tmp_path / "study")
    address = StageAddress(0, SEGMENTATION_KIND, "tumour_aware_semi_supervised", TRAIN)
    weights = layout.weights(0, SEGMENTATION_KIND, "tumour_aware_semi_supervised")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    configs = ("configs/train.json", "configs/variants/semi_supervised.json",
               "configs/profiles/demo.json")  # fmt: skip
    name = address.name
    write_stage_record(layout.stage_dir(address),
                       StageRecord(name, configs=configs, address=address))  # fmt: skip
    cell = {"mean": 0.5, "std": 0.1, "per_seed": [0.5]}
    report = {
        "profile": "demo", "seeds": [0], "spread": "over cases",
        "rows": [{"method": "tumour_aware_semi_supervised", "title": "Tumour-aware semi-supervised",
                  "mri_validation/val_mean_dice": cell, "mri_validation/val_hd95": cell,
                  "mri_test/val_mean_dice": {"mean": 0.56, "std": 0.36, "per_seed": [0.56]},
                  "mri_test/val_hd95": {"mean": 57.3, "std": 56.5, "per_seed": [57.3]}}],
        "tumour_kl": {"tumour_aware": {"mean": 0.78, "std": 0.0, "per_seed": [0.78]}},
        "claims": [{"id": "test_dsc_paper", "claim": "Test DSC >= 0.80", "holds": False,
                    "comparisons": [{"a": "tumour_aware_semi_supervised", "b": "0.80", "op": ">=",
                                     "difference": {"mean": -0.24, "low": -0.41, "high": -0.07},
                                     "holds": False}]},
                   {"id": "tumour_kl_ordering", "claim": "KL ordering", "holds": True,
                    "comparisons": []}],
        "stages": [{"name": name, "wall_s": 41.7, "skipped": False}],
        "versions": {"tumoraware": "0.1.0", "monai": "1.6.1", "torch": "2.13.0"},
        "written": "2026-11-24T08:55:37",
    }  # fmt: skip
    layout.report.write_text(json.dumps(report))
    return weights, layout.report


def test_docs_take_the_numbers_of_the_stage_that_trained_the_weights(tmp_path):
    weights, report_path = _study(tmp_path)
    assert stage_overrides(weights) == [
        "configs/variants/semi_supervised.json", "configs/profiles/demo.json"
    ]  # fmt: skip
    # merged by default: the profile (model size), not the variant (which data trains it)
    assert _override_list(None, weights) == (
        ["configs/profiles/demo.json"], "the weights' stage.json"
    )  # fmt: skip
    study = load_study(report_path)
    provenance = find_provenance(weights, study)
    assert provenance == Provenance(
        "seed0/segmentation/tumour_aware_semi_supervised/train", 0, "segmentation",
        "tumour_aware_semi_supervised", ("configs/train.json",
        "configs/variants/semi_supervised.json", "configs/profiles/demo.json"),
    )  # fmt: skip
    scores = eval_metrics(study, provenance)
    assert scores == {"val_mean_dice": 0.5, "val_hd95_mm": 0.5, "mean_dice": 0.56,
                      "hd95_mm": 57.3}  # fmt: skip

    meta = json.loads((SEGMENTATION / "configs" / "metadata.json").read_text())
    source = (SEGMENTATION / "docs" / "README.md").read_text()
    docs = render_readme(source, meta, SEGMENTATION.name, "segmentation", study, provenance,
                         report_path, {"spatial_size": [64, 64]}, ["configs/profiles/demo.json"],
                         ["mri_manifest"])  # fmt: skip
    sections = [line[3:] for line in docs.splitlines() if line.startswith("## ")]
    zoo = ["Model Overview", "Data", "Training configuration", "Input", "Output", "Performance",
           "MONAI Bundle Commands", "References", "License"]  # fmt: skip
    assert [s for s in sections if s in zoo] == zoo
    assert "| Tumour-aware semi-supervised | 0.50 ± 0.10 | 0.5 ± 0.1 | 0.56 ± 0.36 |" in docs
    assert "seed 0 of `tumour_aware_semi_supervised`" in docs and "took 42 s" in docs
    assert (
        "Test DSC >= 0.80: does not hold (tumour_aware_semi_supervised − 0.80 -0.240 "
        "[-0.410, -0.070])" in docs
    )
    assert "KL ordering" not in docs  # a synthesis claim, not this bundle's
    assert "**In this export**" in docs and "--mri_manifest /data/mri.json" in docs

    elsewhere = tmp_path / "other.pt"  # weights that are not a stage of the study
    elsewhere.write_bytes(b"")
    assert find_provenance(elsewhere, study) is None
    assert eval_metrics(study, None) == {}

    # a stage.json of the earlier format (a command line, no fields): not read, no guessing
    marker = weights_stage_dir(weights) / MARKER
    old = {"name": provenance.stage, "command": ["-m", "monai.bundle", "run", "--config_file",
                                                 "['configs/train.json']"]}  # fmt: skip
    marker.write_text(json.dumps(old))
    assert stage_overrides(weights) is None and find_provenance(weights, study) is None
    assert _override_list(None, weights) == ([], "none given")
