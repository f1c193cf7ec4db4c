"""``tumoraware export_zoo``: a bundle + trained weights -> a self-contained Model Zoo bundle.

``dist/NAME/`` gets: the configs with the training overrides of the weights merged in (so
``network_def`` fits ``models/model.pt``) and every ``tumoraware`` reference pointed at the copy
vendored in ``scripts/tumoraware/`` (:mod:`.vendor`); all override files (profiles, baselines,
variants) rewritten the same way, plus ``configs/profiles/paper.json`` with the paper's values of
whatever was merged; ``metadata.json`` without the ``tumoraware`` requirement but with the
packages the vendored code imports, the working spatial shape and the achieved scores;
``models/model.pt`` (state_dict of ``network_def``), ``models/model.ts`` made by
``python -m monai.bundle ckpt_export`` and ``models/model.onnx`` when ``onnx`` is installed;
``docs/README.md`` in the Model Zoo layout (:mod:`.zoo_docs`); ``large_files.yml``;
``dataset_dir`` pointed at the bundle's own ``data_manifests/`` with a README saying what to put
there (:mod:`.data_dir`); and ``dist/NAME.zip`` (deterministic, :mod:`.archive`).

Everything is built in a hidden folder under ``out_dir`` and renamed into place at the end, so a
failed export never leaves a half-written ``dist/NAME``. ``ckpt_export`` runs in a subprocess
with only the staged bundle on ``PYTHONPATH`` and ``tumoraware`` refused (:mod:`.isolated`), which
already proves the vendored network imports on its own.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from tumoraware import __version__
from tumoraware.atomic import save_torch_atomic
from tumoraware.export.archive import write_large_files, write_zip
from tumoraware.export.data_dir import (
    DATA_FOLDER,
    SOURCE_DATA_PATH,
    data_readme,
    localise_dataset_dir,
)
from tumoraware.export.isolated import run_isolated
from tumoraware.export.vendor import (
    BASE_PACKAGES,
    PACKAGE,
    VendorError,
    distributions_of,
    third_party_imports,
    vendor_configs,
    write_vendored,
)
from tumoraware.export.zoo_docs import (
    eval_metrics,
    find_provenance,
    load_study,
    render_readme,
    stage_overrides,
)
from tumoraware.pipeline.layout import DEMO_STUDY, SEGMENTATION, SYNTHESIS, StudyLayout
from tumoraware.pipeline.study import BUNDLES, SHIPPED

__all__ = [
    "ExportError",
    "ExportResult",
    "StudyModel",
    "bundle_kind",
    "export_bundle",
    "study_model",
]

# Override files that choose the training *data* (the segmentation's Table-1 variants), not the
# model: a stage.json lists them, but they are shipped as files, not merged, so train.json keeps
# its own default sources (e.g. synthetic MRI only when a synthetic manifest exists).
_DATA_RECIPES = ("configs/variants/",)
_DEMO_REPORT = StudyLayout(DEMO_STUDY).report
# Folders of a source bundle that hold run outputs, not bundle content (and local datalists,
# which name this machine's files: the export writes its own data_manifests/ README).
_SKIPPED = {"runs", "eval", "models", "__pycache__", ".ipynb_checkpoints", DATA_FOLDER}


class ExportError(ValueError):
    """The export cannot be made as asked; the message says what to change."""


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote."""

    bundle_dir: Path
    zip_path: Path
    overrides: list[str]
    baked: dict[str, Any]
    vendored_modules: list[str]
    onnx: str
    large_files: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class StudyModel:
    """What a study trained for a bundle: the weights and the study's ``report.json``."""

    weights: Path
    report: Path


def bundle_kind(bundle: str | Path) -> str:
    """``synthesis`` or ``segmentation``: which of the study's trainings ``bundle`` runs (by
    its folder name)."""
    name = Path(bundle).name
    known = {folder: kind for kind, folder in BUNDLES.items()}
    return known.get(name, SEGMENTATION if SEGMENTATION in name else SYNTHESIS)


def study_model(
    bundle: str | Path, study: str | Path = DEMO_STUDY, seed: int = 0, method: str | None = None
) -> StudyModel:
    """The weights ``study`` trained for ``bundle`` (seed ``seed`` of ``method``; default: the
    method the study ships for the bundle's kind, e.g. ``tumour_aware_semi_supervised``) and
    the study's report, by :class:`~tumoraware.pipeline.layout.StudyLayout`."""
    kind = bundle_kind(bundle)
    layout = StudyLayout(Path(study))
    return StudyModel(layout.weights(seed, kind, method or SHIPPED[kind]), layout.report)


def _override_list(overrides: str | Sequence[str] | None, weights: Path) -> tuple[list[str], str]:
    """Override config files to merge (relative to the bundle) and where the list came from."""
    if overrides is None:
        found = stage_overrides(weights)
        if found is None:
            return [], "none given"
        kept = [f for f in found if not f.startswith(_DATA_RECIPES)]
        return kept, "the weights' stage.json"
    if isinstance(overrides, str):
        items = [] if overrides.strip().lower() in ("", "none") else overrides.split(",")
    else:
        items = list(overrides)
    return [str(i).strip() for i in items if str(i).strip()], "--overrides"


def _load_json_configs(configs_dir: Path) -> dict[str, Any]:
    """Every JSON config under ``configs/`` (relative posix path -> content), metadata excluded."""
    found = {}
    for path in sorted(configs_dir.rglob("*")):
        rel = path.relative_to(configs_dir).as_posix()
        if path.suffix in (".yaml", ".yml"):
            raise ExportError(f"{path}: only JSON configs can be exported (convert it to JSON)")
        if path.suffix == ".json" and rel != "metadata.json":
            found[rel] = json.loads(path.read_text())
    return found


def _get(config: Any, key: str) -> tuple[bool, Any]:
    node = config
    for part in key.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _set(config: Any, key: str, value: Any) -> None:
    *path, last = key.split("#")
    node = config
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def bake_overrides(
    configs: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Merge override files into the top-level configs that define each id.

    An id (``spatial_size``, ``train#sources``) is set in every top-level config
    (``train.json``, ``inference.json``, ...) that already has it; an id that none has is an
    error (it would silently not apply). Returns ``(configs, baked id -> value, paper id ->
    original value)``.
    """
    out = copy.deepcopy(dict(configs))
    baked: dict[str, Any] = {}
    paper: dict[str, Any] = {}
    top = [name for name in out if "/" not in name]
    for override_name, content in overrides.items():
        for key, value in content.items():
            holders = [name for name in top if _get(out[name], key)[0]]
            if not holders:
                raise ExportError(
                    f"{override_name}: id {key!r} is in none of {', '.join(top)}, so it cannot "
                    "be merged into the exported configs"
                )
            for name in holders:
                original = _get(configs[name], key)[1]
                paper.setdefault(key, copy.deepcopy(original))
                _set(out[name], key, copy.deepcopy(value))
            baked[key] = value
    return out, baked, {k: v for k, v in paper.items() if k in baked and v != baked[k]}


def _state_dict(weights: Path, key: str | None) -> tuple[dict, bool]:
    """The state_dict in ``weights`` (``key`` picks one network from a nested checkpoint);
    the flag says whether it differs from the file's content (must be re-saved)."""
    import torch

    try:
        loaded = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ExportError(f"cannot read weights {weights}: {error}") from error
    if not isinstance(loaded, Mapping):
        raise ExportError(f"{weights} holds a {type(loaded).__name__}, not a state_dict")
    changed = False
    if key is not None:
        if key not in loaded:
            raise ExportError(f"{weights} has no key {key!r}; its keys: {', '.join(loaded)}")
        loaded, changed = loaded[key], True
    elif not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        nested = [k for k, v in loaded.items() if isinstance(v, Mapping)]
        raise ExportError(
            f"{weights} is not a plain state_dict (top-level keys: {', '.join(map(str, loaded))}). "
            f"Pass --key NAME to take one network from it"
            + (f", e.g. --key {nested[0]}" if nested else "")
            + ", or the run's models/model.pt."
        )
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state, changed = {k[len("module.") :]: v for k, v in state.items()}, True
    return state, changed


def _check_fits(state: Mapping, network: Any, weights: Path, hint: str) -> None:
    """Fail with a clear message unless ``state`` loads strictly into ``network``."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or resized:
        found = (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape (file vs config)", resized),
        )
        parts = [
            f"{label} ({len(items)}): {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
            for label, items in found
            if items
        ]
        raise ExportError(
            f"weights {weights} do not match network_def of configs/inference.json: "
            + "; ".join(parts)
            + f". {hint}"
        )


def _check_io(network: Any, meta: Mapping[str, Any]) -> None:
    """One forward pass of ``network`` on a random input shaped as ``metadata.json`` says
    (``(1, num_channels, *spatial_shape)``), so a config/metadata mismatch stops the export here
    with a clear message rather than in ``verify_net_in_out`` later."""
    import torch

    fmt = meta["network_data_format"]
    (in_key, spec), (out_key, out_spec) = (
        next(iter(fmt[io].items())) for io in ("inputs", "outputs")
    )
    shape = (1, int(spec["num_channels"]), *(int(s) for s in spec["spatial_shape"]))
    network.eval()
    try:
        with torch.no_grad():
            out = network(torch.rand(*shape))
    except (RuntimeError, ValueError) as error:
        raise ExportError(
            f"network_def of configs/inference.json does not take the input metadata.json "
            f"describes ({in_key}: {shape}): {error}"
        ) from error
    if out.shape[1] != int(out_spec["num_channels"]):
        raise ExportError(
            f"network_def gives {out.shape[1]} output channel(s), metadata.json says "
            f"{out_spec['num_channels']} ({out_key})"
        )


def _network_def(config: Mapping[str, Any], bundle: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(dict(config)))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def")


def _package_versions(import_names: Sequence[str]) -> dict[str, str]:
    """Installed ``distribution -> version`` for third-party import names (base ones left out)."""
    versions = {}
    for name, dist in sorted(distributions_of(import_names).items()):
        if name in BASE_PACKAGES:
            continue
        if dist is None:
            raise ExportError(
                f"the vendored code imports {name!r}, which is not installed here, so its "
                "version cannot be recorded in metadata.json"
            )
        versions[dist] = importlib_metadata.version(dist)
    return versions


def exported_metadata(
    source: Mapping[str, Any],
    packages: Mapping[str, str],
    baked: Mapping[str, Any],
    scores: Mapping[str, float],
) -> dict[str, Any]:
    """``metadata.json`` of the export: no ``tumoraware`` requirement (it is vendored), the
    packages the vendored code imports added, ``spatial_shape`` = the merged ``spatial_size``,
    ``eval_metrics`` = the achieved scores when known."""
    meta = copy.deepcopy(dict(source))
    required = {k: v for k, v in meta.get("required_packages_version", {}).items() if k != PACKAGE}
    for dist, version in packages.items():
        required.setdefault(dist, version)
    meta["required_packages_version"] = dict(sorted(required.items()))
    size = baked.get("spatial_size")
    if isinstance(size, list):
        for io in ("inputs", "outputs"):
            for spec in meta.get("network_data_format", {}).get(io, {}).values():
                if len(spec.get("spatial_shape", [])) == len(size):
                    spec["spatial_shape"] = list(size)
    if scores:
        meta["eval_metrics"] = dict(scores)
    return meta


def _onnx_names(meta: Mapping[str, Any]) -> dict[str, Any]:
    """ONNX tensor names from the metadata (``image`` -> ``pred``) with batch and spatial axes
    left dynamic: a sliding-window inferer feeds batches of ``sw_batch_size`` windows."""
    fmt = meta["network_data_format"]
    names = {}
    for io in ("inputs", "outputs"):
        key, spec = next(iter(fmt[io].items()))
        axes = {0: "batch", **{2 + i: f"spatial{i}" for i in range(len(spec["spatial_shape"]))}}
        names[io] = (key, axes)
    (inp, in_axes), (out, out_axes) = names["inputs"], names["outputs"]
    return {"input_names": [inp], "output_names": [out],
            "dynamic_axes": {inp: in_axes, out: out_axes}}  # fmt: skip


def _copy_bundle_files(bundle: Path, stage: Path) -> None:
    """LICENSE, docs (README regenerated later), non-JSON configs (logging.conf), other files."""
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle)
        if rel.parts[0] in _SKIPPED or any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_dir() or path.suffix == ".pyc":
            continue
        if rel.parts[0] == "configs" and path.suffix == ".json":
            continue  # written from the rewritten content
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def _write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=4, ensure_ascii=False) + "\n")


def _monai_bundle(stage: Path, args: list[str], what: str) -> None:
    result = run_isolated(stage, ["export", *args])
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ExportError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(tail))


def export_bundle(
    bundle: str | Path,
    weights: str | Path,
    out_dir: str | Path = "dist",
    overrides: str | Sequence[str] | None = None,
    key: str | None = None,
    report: str | Path | None = _DEMO_REPORT,
    onnx: bool | None = None,
) -> ExportResult:
    """Export ``bundle`` with ``weights`` to ``out_dir/NAME`` and ``out_dir/NAME.zip``.

    Args:
        bundle: the source bundle folder (``bundles/lung_mri_tumor_segmentation``).
        weights: state_dict of the inference network (``.../train/models/model.pt``).
        out_dir: where ``NAME/`` and ``NAME.zip`` go (replaced if present).
        overrides: override config files the weights were trained with, relative to the bundle
            (``configs/profiles/demo.json``), comma-separated or a list; merged into the exported
            configs. Default: those in the weights' ``stage.json`` (written by ``tumoraware
            demo``/``reproduce``) except data recipes (``configs/variants/``), else none.
            ``""`` forces none.
        key: take the network ``key`` from a nested checkpoint (``g_ct2mri``).
        report: the study ``report.json`` whose numbers go into docs and ``eval_metrics``.
        onnx: write ``models/model.onnx``; default: when ``onnx`` and ``onnxscript`` (which
            ``torch.onnx.export`` needs since torch 2.9) are installed.
    """
    bundle, weights, out_dir = Path(bundle).resolve(), Path(weights), Path(out_dir)
    name = bundle.name
    configs_dir = bundle / "configs"
    for required in ("configs/metadata.json", "configs/inference.json", "configs/train.json",
                     "docs/README.md"):  # fmt: skip
        if not (bundle / required).is_file():
            raise ExportError(f"{bundle} is not a bundle to export: {required} is missing")
    if not weights.is_file():
        raise ExportError(
            f"weights file {weights} not found: train the bundle first (`make demo` writes "
            "the demo study's weights; `--study DIR --seed N --method M` picks a study's) or pass "
            "--weights PATH"
        )
    override_files, origin = _override_list(overrides, weights)
    override_content = {}
    for rel in override_files:
        path = (bundle / rel) if not Path(rel).is_absolute() else Path(rel)
        if not path.is_file():
            raise ExportError(f"override file {rel} (from {origin}) not found in {bundle}")
        override_content[rel] = json.loads(path.read_text())

    configs = _load_json_configs(configs_dir)
    baked_configs, baked, paper = bake_overrides(configs, override_content)
    if paper and "profiles/paper.json" not in baked_configs:
        baked_configs["profiles/paper.json"] = paper
    baked_configs, _ = localise_dataset_dir(baked_configs)  # the data folder of the export

    state, changed = _state_dict(weights, key)
    hint = (
        "Export with the override files the weights were trained with, e.g. --overrides "
        "configs/profiles/demo.json (a study run's stage.json lists them)"
        + (f"; merged now: {', '.join(override_files)}" if override_files else "")
        + "."
    )
    network = _network_def(baked_configs["inference.json"], bundle)
    _check_fits(state, network, weights, hint)
    source_meta = json.loads((configs_dir / "metadata.json").read_text())
    _check_io(network, exported_metadata(source_meta, {}, baked, {}))

    try:
        rewritten, plan = vendor_configs(baked_configs)
    except VendorError as error:
        raise ExportError(f"cannot vendor {PACKAGE} for {name}: {error}") from error

    study = load_study(report)
    provenance = find_provenance(weights, study)
    kind = provenance.kind if provenance else bundle_kind(bundle)

    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".{name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    stage = work / name
    try:
        stage.mkdir(parents=True)
        _copy_bundle_files(bundle, stage)
        for rel, content in rewritten.items():
            _write_json(stage / "configs" / rel, content)
        (stage / DATA_FOLDER).mkdir(exist_ok=True)
        (stage / DATA_FOLDER / "README.md").write_text(data_readme(name, rewritten))
        vendored = write_vendored(plan, stage / "scripts", __version__)
        imports = third_party_imports(p for p in vendored if p.suffix == ".py")
        meta = exported_metadata(
            source_meta, _package_versions(sorted(imports)), baked,
            eval_metrics(study, provenance) if provenance and provenance.kind == kind else {},
        )  # fmt: skip
        _write_json(stage / "configs" / "metadata.json", meta)

        (stage / "models").mkdir()
        if changed:
            save_torch_atomic(state, stage / "models" / "model.pt")
        else:
            shutil.copyfile(weights, stage / "models" / "model.pt")
        common = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"]
        _monai_bundle(
            stage,
            ["ckpt_export", "network_def", "--filepath", "models/model.ts",
             "--ckpt_file", "models/model.pt", *common, "--bundle_root", "."],
            "python -m monai.bundle ckpt_export",
        )  # fmt: skip
        missing = [m for m in ("onnx", "onnxscript") if find_spec(m) is None]
        want_onnx = not missing if onnx is None else onnx
        onnx_status = f"skipped: {', '.join(missing)} not installed (pip install tumoraware[onnx])"
        if want_onnx:
            _monai_bundle(
                stage,
                ["onnx_export", "network_def", "--filepath", "models/model.onnx",
                 "--ckpt_file", "models/model.pt", *common, "--bundle_root", ".",
                 "--converter_kwargs", repr(_onnx_names(meta))],
                "python -m monai.bundle onnx_export",
            )  # fmt: skip
            onnx_status = "written (dynamic batch and spatial axes)"

        # the source docs name the repository's manifests; the export has its own folder
        readme = (bundle / "docs" / "README.md").read_text()
        readme = readme.replace(SOURCE_DATA_PATH, f"{DATA_FOLDER}/")
        manifest_ids = [i for i in ("ct_manifest", "mri_manifest")
                        if i in baked_configs["inference.json"]]  # fmt: skip
        docs = render_readme(readme, meta, name, kind, study, provenance, report, baked,
                             override_files, manifest_ids)  # fmt: skip
        (stage / "docs").mkdir(exist_ok=True)
        (stage / "docs" / "README.md").write_text(docs)
        large = write_large_files(stage)
        zip_tmp = write_zip(stage, work / f"{name}.zip")

        final, final_zip = out_dir / name, out_dir / f"{name}.zip"
        old = work / f"{name}.old"
        if final.exists():
            final.rename(old)
        try:
            stage.rename(final)
        except OSError:
            if old.exists():
                old.rename(final)  # put the previous export back
            raise
        zip_tmp.replace(final_zip)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(
        bundle_dir=final, zip_path=final_zip, overrides=override_files, baked=baked,
        vendored_modules=sorted(plan.modules), onnx=onnx_status, large_files=large,
    )  # fmt: skip


def main_summary(result: ExportResult) -> str:
    """The lines ``tumoraware export_zoo`` prints."""
    lines = [
        f"export_zoo: {result.bundle_dir} and {result.zip_path}",
        f"  merged overrides: {', '.join(result.overrides) or 'none'}",
        f"  vendored {len(result.vendored_modules)} modules into scripts/{PACKAGE}/",
        f"  models/model.onnx: {result.onnx}",
        f"  large files (> 25 MB): {', '.join(e['path'] for e in result.large_files) or 'none'}",
    ]
    return "\n".join(lines)
