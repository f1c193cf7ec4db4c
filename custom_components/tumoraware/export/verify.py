"""``tumoraware verify_zoo``: the Model Zoo CI checks, run on an exported bundle.

Mirrors ``ci/verify_bundle.py`` of Project-MONAI/model-zoo (required files, version in
changelog, metadata against the 20240725 schema, ``verify_net_in_out``, ``ckpt_export`` +
``torch.jit.load``) and adds what a self-contained export must also prove:

- nothing references the top-level ``tumoraware`` (configs, vendored code, requirements), and
  no config's ``dataset_dir`` leaves the bundle;
- every package the vendored code imports is listed in ``metadata.json``;
- ``ConfigWorkflow`` finds the train and inference properties;
- ``models/model.ts`` computes what ``models/model.pt`` computes; ``large_files.yml`` hashes and
  the zip match the folder;
- a one-iteration training and an inference run of the bundle, each in a clean subprocess whose
  ``PYTHONPATH`` holds only the bundle and where ``tumoraware`` cannot be imported
  (:mod:`.isolated`). Data: the manifests given, else a tiny phantom world made on the spot.

Every MONAI check runs in such a subprocess, never in this process: Model Zoo bundles all name
their code ``scripts``, so two bundles checked in one process would share ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumoraware.export.archive import (
    LARGE_FILE_BYTES,
    bundle_files,
    read_large_files,
    sha256_of,
)
from tumoraware.export.data_dir import DATASET_DIR_ID, dataset_dir_leaves_bundle
from tumoraware.export.isolated import run_isolated
from tumoraware.export.vendor import (
    BASE_PACKAGES,
    PACKAGE,
    config_references,
    distributions_of,
    third_party_imports,
)
from tumoraware.export.zoo_docs import ZOO_SECTIONS, split_sections

__all__ = ["SCHEMA_MD5", "CheckResult", "default_schema", "format_results", "verify_bundle"]

SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
REQUIRED_FILES = (
    "LICENSE",
    "configs/metadata.json",
    "configs/inference.json",
    "configs/train.json",
    "configs/logging.conf",
    "docs/README.md",
    "large_files.yml",
    "models/model.pt",
    "models/model.ts",
    "scripts/__init__.py",
)


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, whether it passed, what it found, and how long it took."""

    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0


def default_schema() -> Path | None:
    """The 20240725 meta schema shipped beside this checkout (``../shared/reference/``)."""
    import tumoraware

    repo = Path(tumoraware.__file__).resolve().parents[2]
    candidate = repo.parent / "shared" / "reference" / SCHEMA_NAME
    return candidate if candidate.is_file() else None


def _timed(name: str, fn: Callable[[], str]) -> CheckResult:
    start = time.perf_counter()
    try:
        detail, ok = fn(), True
    except (AssertionError, ValueError, OSError, ImportError, KeyError) as error:
        detail, ok = str(error), False
    return CheckResult(name, ok, detail, time.perf_counter() - start)


def _required_files(bundle: Path) -> str:
    missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
    if missing:
        raise ValueError(f"missing: {', '.join(missing)}")
    return f"{len(REQUIRED_FILES)} files present"


def _version(meta: dict) -> str:
    version, changelog = meta.get("version"), meta.get("changelog", {})
    if version not in changelog:
        raise ValueError(f"version {version!r} is not a key of changelog {list(changelog)}")
    return f"version {version} in changelog"


def _docs(bundle: Path) -> str:
    _, sections = split_sections((bundle / "docs" / "README.md").read_text())
    titles = [t for t, _ in sections]
    missing = [s for s in ZOO_SECTIONS if s not in titles]
    if missing:
        raise ValueError(f"docs/README.md lacks sections: {', '.join(missing)}")
    return "all Model Zoo sections present"


def _configs(bundle: Path) -> dict[str, Any]:
    return {
        p.relative_to(bundle / "configs").as_posix(): json.loads(p.read_text())
        for p in sorted((bundle / "configs").rglob("*.json"))
    }


def _self_contained(bundle: Path, meta: dict) -> str:
    problems = []
    for name, config in _configs(bundle).items():
        if name != "metadata.json":
            problems += [f"configs/{name}: {ref}" for ref in config_references(config)]
        where = config.get(DATASET_DIR_ID) if isinstance(config, dict) else None
        if where is not None and dataset_dir_leaves_bundle(where):
            problems.append(f"configs/{name}: {DATASET_DIR_ID} {where!r} may leave the bundle")
    for path in sorted((bundle / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n.split(".")[0] == PACKAGE for n in names):
                problems.append(f"{path.relative_to(bundle)}:{node.lineno} imports {PACKAGE}")
    if PACKAGE in meta.get("required_packages_version", {}):
        problems.append(f"metadata.json requires the {PACKAGE} package")
    if problems:
        raise ValueError("; ".join(problems[:8]))
    return f"no reference to the {PACKAGE} package; {DATASET_DIR_ID} inside the bundle"


def _packages(bundle: Path, meta: dict) -> str:
    listed = set(meta.get("required_packages_version", {})) | set(
        meta.get("optional_packages_version", {})
    )
    listed = {n.lower() for n in listed}
    imported = third_party_imports(sorted((bundle / "scripts").rglob("*.py")))
    unlisted = []
    for name, dist in sorted(distributions_of(imported).items()):
        if name in BASE_PACKAGES:
            continue
        if dist is None or dist.lower() not in listed:
            unlisted.append(f"{name} ({dist or 'not installed'})")
    if unlisted:
        raise ValueError(f"imported by scripts/ but not in metadata.json: {', '.join(unlisted)}")
    return f"scripts/ imports only listed packages ({', '.join(sorted(imported))})"


def _large_files(bundle: Path) -> str:
    try:
        entries = {e["path"]: e for e in read_large_files(bundle)}
    except ImportError:
        return "large_files.yml not read: PyYAML is not installed (hashes unchecked)"
    problems = []
    for rel in bundle_files(bundle):
        if (bundle / rel).stat().st_size > LARGE_FILE_BYTES:
            entry = entries.get(rel.as_posix())
            if entry is None:
                problems.append(f"{rel} is over 25 MB and not listed")
            elif entry.get("hash_val") != sha256_of(bundle / rel):
                problems.append(f"{rel}: sha256 differs from large_files.yml")
    if problems:
        raise ValueError("; ".join(problems))
    return f"{len(entries)} large file(s) listed with matching sha256"


def _zip(bundle: Path) -> str:
    archive = bundle.parent / f"{bundle.name}.zip"
    if not archive.is_file():
        return f"no {archive.name} beside the folder (not checked)"
    with zipfile.ZipFile(archive) as z:
        entries = {i.filename: i for i in z.infolist()}
    files = {f"{bundle.name}/{rel.as_posix()}": rel for rel in bundle_files(bundle)}
    if set(entries) != set(files):
        extra, missing = sorted(set(entries) - set(files)), sorted(set(files) - set(entries))
        raise ValueError(f"zip and folder differ: only in zip {extra[:4]}, in folder {missing[:4]}")
    changed = [
        name for name, rel in files.items()
        if zlib.crc32((bundle / rel).read_bytes()) != entries[name].CRC
    ]  # fmt: skip
    if changed:
        raise ValueError(f"zip content differs from the folder: {changed[:4]}")
    return f"{archive.name} unzips to {bundle.name}/ with the folder's {len(files)} files"


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _isolated_checks(
    bundle: Path, schema: Path | None, md5: str | None, train_configs: list[str], ids: dict
) -> list[CheckResult]:
    with tempfile.TemporaryDirectory(prefix="verify_zoo_") as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "checks.json"
        spec = {
            "schema": str(schema) if schema else None,
            "schema_md5": md5,
            "train_configs": train_configs,
            "ids": {k: str(v) for k, v in ids.items()},
        }
        spec_file.write_text(json.dumps(spec))
        start = time.perf_counter()
        proc = run_isolated(bundle, ["checks", str(spec_file), str(result_file)])
        if proc.returncode != 0 or not result_file.is_file():
            return [CheckResult("MONAI checks", False, _tail(proc.stdout + proc.stderr),
                                time.perf_counter() - start)]  # fmt: skip
        records = json.loads(result_file.read_text())
    return [CheckResult(r["name"], r["ok"], r["detail"], r["seconds"]) for r in records]


def _tiny_world(work: Path) -> Path:
    from tumoraware.data.phantoms import generate_world

    manifest = work / "data_manifests" / "phantoms.json"
    generate_world(work / "phantoms", seed=0, profile="tiny", manifest=manifest, preview=False,
                   progress=False)  # fmt: skip
    return manifest


def _run(
    bundle: Path, name: str, configs: list[str], ids: dict[str, Any], check: Callable[[], str]
) -> CheckResult:
    """``python -m monai.bundle run`` in the clean subprocess, then ``check`` its outputs."""
    files = "[" + ",".join(f"'{bundle / 'configs' / c}'" for c in configs) + "]"
    args = ["bundle", "run", "--config_file", files, "--bundle_root", str(bundle)]
    for key, value in ids.items():
        args += [f"--{key}", str(value)]
    start = time.perf_counter()
    proc = run_isolated(bundle, args)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return CheckResult(name, False, _tail(proc.stdout + proc.stderr), seconds)
    try:
        detail = check()
    except (AssertionError, ValueError, OSError) as error:
        return CheckResult(name, False, str(error), seconds)
    return CheckResult(name, True, f"{' + '.join(configs)}: {detail}", seconds)


@dataclass(frozen=True)
class _Data:
    """What the workflows of the bundle get: manifest ids and the training config files."""

    manifests: dict[str, Path]
    train_configs: list[str]
    note: str


def _plan_data(bundle: Path, manifests: dict[str, Path | None], work: Path) -> _Data:
    """Manifests (a tiny phantom world when no CT/MRI manifest is given) and the training
    configs: ``train.json`` + the shipped test profile (+ ``week_one_only`` when the bundle
    wants synthetic MRI and none was given)."""
    given = {k: v for k, v in manifests.items() if v is not None}
    if not any(k in given for k in ("ct_manifest", "mri_manifest")):
        world = _tiny_world(work / "world")
        given = {**given, "ct_manifest": world, "mri_manifest": world}
    train_cfg = json.loads((bundle / "configs" / "train.json").read_text())
    train_configs = ["train.json"]
    if (bundle / "configs" / "profiles" / "test.json").is_file():
        train_configs.append("profiles/test.json")
    note = ""
    week_one_only = bundle / "configs" / "variants" / "week_one_only.json"
    wants_synthetic = "synthetic_manifest" in train_cfg and "synthetic_manifest" not in given
    if wants_synthetic and week_one_only.is_file():
        train_configs.append("variants/week_one_only.json")
        note = " (no --synthetic_manifest: real labelled MRI only)"
    return _Data(given, train_configs, note)


def _ids_for(bundle: Path, config: str, data: _Data) -> dict[str, Any]:
    content = json.loads((bundle / "configs" / config).read_text())
    return {k: v for k, v in data.manifests.items() if k in content}


def _runs(bundle: Path, data: _Data, work: Path) -> list[CheckResult]:
    """One training iteration and an inference run with the shipped weights."""
    train_ids = _ids_for(bundle, "train.json", data)
    train_ids.update(ckpt_dir=work / "train" / "models", output_dir=work / "train" / "runs",
                     max_epochs=1, epoch_length=1)  # fmt: skip

    def trained() -> str:
        final = work / "train" / "models" / "checkpoint_final.pt"
        if not final.is_file():
            raise ValueError(f"training wrote no {final.name}")
        return f"1 iteration, wrote {final.name}{data.note}"

    infer_ids = _ids_for(bundle, "inference.json", data)
    infer_ids["output_dir"] = work / "infer"

    def inferred() -> str:
        outputs = sorted((work / "infer").rglob("*.nii.gz"))
        if not outputs:
            raise ValueError("inference wrote no .nii.gz")
        return f"shipped weights, wrote {len(outputs)} NIfTI file(s)"

    return [
        _run(bundle, "1-iteration training (clean subprocess)", data.train_configs, train_ids,
             trained),
        _run(bundle, "inference (clean subprocess)", ["inference.json"], infer_ids, inferred),
    ]  # fmt: skip


def verify_bundle(
    bundle: str | Path,
    ct_manifest: str | Path | None = None,
    mri_manifest: str | Path | None = None,
    synthetic_manifest: str | Path | None = None,
    schema: str | Path | None = None,
    schema_md5: str | None = None,
    runs: bool = True,
    work_dir: str | Path | None = None,
) -> list[CheckResult]:
    """All checks of an exported bundle folder; see the module doc.

    Args:
        bundle: ``dist/NAME``.
        ct_manifest, mri_manifest, synthetic_manifest: data for the workflows (given to the
            config ids of the same name where a config has them). Without CT and MRI manifests
            a tiny phantom world is generated.
        schema: the meta schema file (default: the 20240725 copy beside this checkout, checked
            against its md5; else MONAI downloads the URL named in ``metadata.json``).
        runs: also run the training iteration and the inference.
        work_dir: where data and run outputs go (default: a temporary folder, removed after).
    """
    bundle = Path(bundle).resolve()
    if not (bundle / "configs" / "metadata.json").is_file():
        return [CheckResult("required files", False, f"{bundle} has no configs/metadata.json")]
    if schema is None:
        schema = default_schema()
        schema_md5 = SCHEMA_MD5 if schema is not None else None
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    results = [
        _timed("required files", lambda: _required_files(bundle)),
        _timed("version in changelog", lambda: _version(meta)),
        _timed("docs sections", lambda: _docs(bundle)),
        _timed("self-contained", lambda: _self_contained(bundle, meta)),
        _timed("packages in metadata", lambda: _packages(bundle, meta)),
        _timed("large_files.yml", lambda: _large_files(bundle)),
        _timed("zip", lambda: _zip(bundle)),
    ]
    manifests = {
        "ct_manifest": ct_manifest, "mri_manifest": mri_manifest,
        "synthetic_manifest": synthetic_manifest,
    }  # fmt: skip
    resolved = {k: Path(v).resolve() if v else None for k, v in manifests.items()}
    with tempfile.TemporaryDirectory(prefix="verify_zoo_") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        data = _plan_data(bundle, resolved, work)
        ids = {**_ids_for(bundle, "train.json", data), **_ids_for(bundle, "inference.json", data)}
        results += _isolated_checks(
            bundle, Path(schema) if schema else None, schema_md5, data.train_configs, ids
        )
        if runs:
            results += _runs(bundle, data, work)
    return results


def format_results(results: Iterable[CheckResult]) -> str:
    """One line per check (``ok``/``FAIL``, name, seconds, detail)."""
    lines = []
    for r in results:
        detail = r.detail.replace("\n", "\n      ")
        lines.append(f"{'ok  ' if r.ok else 'FAIL'}  {r.name} ({r.seconds:.1f} s): {detail}")
    return "\n".join(lines)
