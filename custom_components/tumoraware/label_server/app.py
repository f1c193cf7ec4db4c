"""The MONAI Label app (the stock ``monaibundle`` sample app) with a bundle in ``model/<name>``.

``python -m monailabel.main apps --download --name monaibundle --output DIR`` copies the app
from the installed MONAI Label package (no network). MONAI Label then loads the bundle named
by ``--conf models NAME`` from ``<app>/model/NAME`` when given ``--conf zoo_source local``.

The bundle is copied, not linked: MONAI Label's ``/train`` writes its checkpoints into
``<app>/model/NAME/models``. A copy is replaced only when the source bundle changed (a
fingerprint of its files), so weights trained in MONAI Label survive a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tumoraware.atomic import write_json_atomic
from tumoraware.label_server.env import LabelEnv

__all__ = ["bundle_fingerprint", "check_bundle", "install_bundle", "prepare_app"]

APP_NAME = "monaibundle"
SOURCE_MARKER = ".tumoraware-source.json"


def check_bundle(bundle: str | os.PathLike) -> str:
    """Check that ``bundle`` is a MONAI Label-ready bundle folder; return its name.

    MONAI Label needs ``configs/inference.json`` and ``configs/metadata.json`` with a
    non-background label in ``network_data_format.outputs.pred.channel_def``, and weights in
    ``models/model.pt`` (a state_dict) or ``models/model.ts``. The bundle must run without
    tumoraware installed (the MONAI Label environment has none): an exported bundle, whose
    ``scripts/`` carries the code its configs use.

    Raises:
        FileNotFoundError, ValueError: what is missing, and how to make it.
    """
    root = Path(bundle)
    export_hint = (
        "Fix: export it first (`tumoraware export_zoo --bundle "
        "bundles/lung_mri_tumor_segmentation --weights PATH/model.pt --out_dir dist/`) and pass "
        "--bundle dist/lung_mri_tumor_segmentation."
    )
    for name in ("configs/inference.json", "configs/metadata.json"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"bundle {root}: {name} not found. {export_hint}")
    if not any((root / "models" / w).is_file() for w in ("model.pt", "model.ts")):
        raise FileNotFoundError(
            f"bundle {root}: neither models/model.pt nor models/model.ts exists (MONAI Label "
            f"needs trained weights). {export_hint}"
        )
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    try:
        channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    except KeyError as error:
        raise ValueError(
            f"bundle {root}: metadata.json has no network_data_format.outputs.pred.channel_def "
            "(MONAI Label takes its label names from there)"
        ) from error
    if not [v for v in channels.values() if str(v).lower() != "background"]:
        raise ValueError(f"bundle {root}: channel_def {channels} names no foreground label")
    if not (root / "scripts").is_dir() and "tumoraware." in (
        (root / "configs" / "inference.json").read_text()
    ):
        raise ValueError(
            f"bundle {root} uses tumoraware code but has no scripts/ folder: it is the "
            f"source bundle, not the self-contained export MONAI Label can load. {export_hint}"
        )
    return root.resolve().name


# Folders of a bundle that are not copied into the app, so they must not change its fingerprint
# either (a re-copy replaces weights trained in MONAI Label).
_NOT_COPIED = ("__pycache__", "runs")


def bundle_fingerprint(bundle: str | os.PathLike) -> str:
    """sha256 over the relative paths and contents of every file in ``bundle`` that is copied."""
    root = Path(bundle)
    digest = hashlib.sha256()
    copied = (
        p for p in root.rglob("*")
        if p.is_file() and not set(p.relative_to(root).parts) & set(_NOT_COPIED)
    )  # fmt: skip
    for path in sorted(copied):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def prepare_app(env: LabelEnv, app_dir: str | os.PathLike) -> Path:
    """``app_dir`` holding MONAI Label's ``monaibundle`` app (copied once, offline).

    ``app_dir`` itself becomes the app (``app_dir/main.py``); an existing app is kept.
    """
    app = Path(app_dir)
    if (app / "main.py").is_file():
        return app
    if app.exists() and any(app.iterdir()):
        raise FileExistsError(
            f"{app} exists and is not a MONAI Label app (no main.py). Fix: pass an empty or "
            "new folder as --app_dir."
        )
    app.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=app.parent, prefix=f".{app.name}.") as tmp:
        result = subprocess.run(
            [str(env.python), "-m", "monailabel.main", "apps", "--download", "--name", APP_NAME,
             "--output", tmp],
            capture_output=True, text=True, env=env.run_env(),
        )  # fmt: skip
        if result.returncode or not (Path(tmp) / APP_NAME / "main.py").is_file():
            raise RuntimeError(
                f"monailabel apps --download --name {APP_NAME} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        if app.exists():
            app.rmdir()
        os.replace(Path(tmp) / APP_NAME, app)
    return app


def install_bundle(app_dir: str | os.PathLike, bundle: str | os.PathLike) -> Path:
    """Copy ``bundle`` to ``app_dir/model/<name>`` unless an identical copy is there.

    Returns the copy. A copy made from an older version of the bundle is replaced (with it
    any weights MONAI Label trained into it: they belong to the old bundle).
    """
    name = check_bundle(bundle)
    source = Path(bundle).resolve()
    target = Path(app_dir) / "model" / name
    fingerprint = bundle_fingerprint(source)
    marker = target / SOURCE_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.") as tmp:
        staged = Path(tmp) / name
        shutil.copytree(source, staged, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        write_json_atomic(staged / SOURCE_MARKER, {"source": str(source),
                                                   "fingerprint": fingerprint})  # fmt: skip
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target
