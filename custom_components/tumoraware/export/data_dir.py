"""The exported bundle's data folder: ``dataset_dir`` inside the bundle, not beside it.

In the repository the configs find the committed manifests two folders up
(``$@bundle_root + '/../../data_manifests'``). An exported bundle is unpacked on its own, where
that path names whatever happens to lie around it, so the export points ``dataset_dir`` at the
bundle's own ``data_manifests/`` and writes a README there saying which manifest files the
configs look for. Run without data, the bundle then fails on a missing file *inside* itself;
``--mri_manifest`` and the like still pick any other file. The source bundles are not changed.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DATASET_DIR_ID",
    "DATA_FOLDER",
    "EXPORTED_DATASET_DIR",
    "SOURCE_DATA_PATH",
    "data_readme",
    "dataset_dir_leaves_bundle",
    "localise_dataset_dir",
    "manifest_defaults",
]

DATASET_DIR_ID = "dataset_dir"
DATA_FOLDER = "data_manifests"
EXPORTED_DATASET_DIR = f"$@bundle_root + '/{DATA_FOLDER}'"
SOURCE_DATA_PATH = "../../data_manifests/"
"""How the source bundles' docs name the manifests' folder (relative to the bundle)."""

_IN_DATASET_DIR = re.compile(r"^\$@dataset_dir \+ '/([^'/]+)'$")


def localise_dataset_dir(configs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``configs`` (name -> parsed JSON) with every top-level ``dataset_dir`` set to
    :data:`EXPORTED_DATASET_DIR`, and the names of the configs that had one."""
    out = copy.deepcopy(dict(configs))
    changed = []
    for name, config in out.items():
        if isinstance(config, dict) and DATASET_DIR_ID in config:
            config[DATASET_DIR_ID] = EXPORTED_DATASET_DIR
            changed.append(name)
    return out, changed


def dataset_dir_leaves_bundle(value: Any) -> bool:
    """Whether a ``dataset_dir`` value may point outside the bundle: anything but a path built
    on ``@bundle_root`` without ``..`` (an absolute path, a parent folder, another id)."""
    if not isinstance(value, str):
        return True
    return not value.startswith("$@bundle_root + '/") or ".." in value


def manifest_defaults(configs: Mapping[str, Any]) -> dict[str, str]:
    """Ids whose default is a file in ``dataset_dir`` -> that file name, over all configs
    (``{"mri_manifest": "phantoms.json"}``)."""
    found: dict[str, str] = {}
    for config in configs.values():
        if not isinstance(config, dict):
            continue
        for key, value in config.items():
            match = _IN_DATASET_DIR.match(value) if isinstance(value, str) else None
            if match:
                found.setdefault(key, match.group(1))
    return dict(sorted(found.items()))


_BASE_CONFIGS = ("train.json", "inference.json")


def _literal(value: Any) -> bool:
    """A value given as is, not a reference (``@id``) or an expression (``$...``)."""
    return isinstance(value, list) or (isinstance(value, str) and not value.startswith(("@", "$")))


def _top_level_defaults(configs: Mapping[str, Any], suffixes: tuple[str, ...]) -> dict[str, Any]:
    """Ids ending in one of ``suffixes`` -> their default: from ``train.json`` and
    ``inference.json`` first, then the other top-level configs; references to other ids
    (``evaluate.json``'s ``"val_split": "@eval_split"``) and override files in folders (profiles,
    variants) are not defaults."""
    found: dict[str, Any] = {}
    for name in sorted(configs, key=lambda n: (n not in _BASE_CONFIGS, n)):
        config = configs[name]
        if "/" not in name and isinstance(config, dict):
            for key, value in config.items():
                reference = isinstance(value, str) and value.startswith("@")
                if key.endswith(suffixes) and not reference:
                    found.setdefault(key, value)
    return dict(sorted(found.items()))


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def data_readme(bundle_name: str, configs: Mapping[str, Any]) -> str:
    """``data_manifests/README.md`` of the export: which manifest files the configs look for
    here, which splits they read, and how to point them elsewhere."""
    manifests = manifest_defaults(configs)
    elsewhere = {  # inputs beside the bundle (a sibling bundle's output), not outputs of its own
        k: v for k, v in _top_level_defaults(configs, ("_manifest",)).items()
        if k not in manifests and isinstance(v, str) and "/../" in v
    }  # fmt: skip
    splits = {
        k: v for k, v in _top_level_defaults(configs, ("_split", "_splits")).items() if _literal(v)
    }
    inference = manifest_defaults({k: v for k, v in configs.items() if k == "inference.json"})
    lines = [
        f"# Data manifests of {bundle_name}",
        "",
        f"The configs' `{DATASET_DIR_ID}` is this folder (`{EXPORTED_DATASET_DIR}`), so by "
        "default they read the manifests below from here. None ships with the bundle: put "
        "yours here under these names, or pass each on the command line (any path).",
        "",
    ]
    if manifests:
        lines += ["| config id | default file here | command-line option |", "|---|---|---|"]
        lines += [f"| `{k}` | `{v}` | `--{k} /path/to/{v}` |" for k, v in manifests.items()]
        lines.append("")
    for key, value in elsewhere.items():
        lines += [
            f"`{key}` defaults to `{value}`, which is not in this folder; pass "
            f"`--{key} PATH` to choose another (docs/README.md says what happens without it).",
            "",
        ]
    if splits:
        shown = ", ".join(f"`{k}` = `{_shown(v)}`" for k, v in splits.items())
        lines += [f"Splits the configs read (change with `--ID NAME`): {shown}.", ""]
    lines += [
        "A manifest is a MONAI datalist (`monai.data.load_decathlon_datalist` reads it): "
        "`name`, `labels`, an optional `base_dir` (the folder every data path must stay "
        "inside), and one list per split of entries with `image` (and `label`: a 0/1 NIfTI "
        "mask on the image's grid), `modality` and `patient`; paths are relative to the "
        "manifest's folder. The full format is the JSON schema "
        "`scripts/tumoraware/data/manifest_schema.json`.",
    ]
    if inference:
        example = " ".join(f"--{k} /data/{v}" for k, v in inference.items())
        lines += ["", "```bash", "python -m monai.bundle run --config_file configs/inference.json "
                  f"{example}", "```"]  # fmt: skip
    return "\n".join(lines) + "\n"
