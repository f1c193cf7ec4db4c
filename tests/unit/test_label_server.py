"""The MONAI Label glue that needs no MONAI Label: bundle checks, bundle copy, cache, ports.

The server itself is exercised for real in ``tests/e2e/test_monailabel.py``.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from tumoraware.atomic import write_json_atomic
from tumoraware.label_server import (
    LabelEnv,
    LabelServer,
    LabelServerError,
    check_bundle,
    default_cache_dir,
    ensure_label_env,
    install_bundle,
)
from tumoraware.label_server.env import (
    MONAILABEL_VERSION,
    RECIPES,
    STAMP_NAME,
    _steps,
    env_key,
    monailabel_version,
    read_requirements,
    smoke_test,
)
from tumoraware.label_server.serve import exposure_warning

from ..conftest import REPO_ROOT

SOURCE = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation"


@pytest.fixture
def exported_like(tmp_path) -> Path:
    """The shape of an exported bundle: configs, scripts/, models/model.pt."""
    bundle = tmp_path / "lung_mri_tumor_segmentation"
    shutil.copytree(SOURCE / "configs", bundle / "configs")
    (bundle / "scripts").mkdir()
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"weights v1")
    return bundle


def test_the_source_bundle_is_refused_with_the_export_command(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="export_zoo"):
        check_bundle(SOURCE)  # no weights in the repository, or tumoraware code without scripts/
    bundle = tmp_path / "b"
    shutil.copytree(SOURCE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="no scripts/ folder"):
        check_bundle(bundle)  # its configs name tumoraware, which the label env lacks


def test_an_exported_bundle_passes_and_needs_a_foreground_label(exported_like):
    assert check_bundle(exported_like) == "lung_mri_tumor_segmentation"
    meta_file = exported_like / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "background"}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no foreground label"):
        check_bundle(exported_like)


def test_the_app_copy_survives_a_restart_and_is_replaced_when_the_bundle_changes(
    exported_like, tmp_path
):
    app = tmp_path / "app"
    copy = install_bundle(app, exported_like)
    assert copy == app / "model" / "lung_mri_tumor_segmentation"
    (copy / "models" / "model.pt").write_bytes(b"trained in MONAI Label")
    install_bundle(app, exported_like)  # same source: the trained weights stay
    assert (copy / "models" / "model.pt").read_bytes() == b"trained in MONAI Label"
    (exported_like / "runs").mkdir(exist_ok=True)  # outputs of a run in the export: not copied,
    (exported_like / "runs" / "log.txt").write_text("inference")  # so not a new bundle
    install_bundle(app, exported_like)
    assert (copy / "models" / "model.pt").read_bytes() == b"trained in MONAI Label"
    (exported_like / "models" / "model.pt").write_bytes(b"weights v2")
    install_bundle(app, exported_like)  # a new export replaces the copy
    assert (copy / "models" / "model.pt").read_bytes() == b"weights v2"
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_the_cache_follows_tumoraware_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TUMORAWARE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TUMORAWARE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tumoraware"


def test_the_pins_come_from_the_shipped_requirements_file():
    steps = _steps()
    assert [title for title, _ in steps] == [
        "torch + torchvision", f"MONAI Label {MONAILABEL_VERSION}",
        "MONAI + MONAI Label's dependencies",
    ]  # fmt: skip
    assert steps[1][1] == ["--no-deps", f"monailabel=={MONAILABEL_VERSION}"]
    assert steps[2][1][0].startswith("monai[") and steps[2][1][-1] == "jsonschema"
    text = "# step: a\n# pip: --no-deps\nx==1  # why\n\n# step: b\n# a comment\ny>=2\n"
    assert read_requirements(text) == [("a", ["--no-deps", "x==1"]), ("b", ["y>=2"])]
    with pytest.raises(ValueError, match="before the first"):
        read_requirements("x==1\n# step: a\n")
    with pytest.raises(ValueError, match="must follow"):
        read_requirements("# step: a\nx==1\n# pip: --no-deps\n")


def test_the_monai16_recipe_installs_monai_label_as_users_do(tmp_path):
    steps = _steps("monai16")
    assert steps[0] == _steps()[0], "one torch pair for both environments"
    # with its dependencies, and pydicom<3: plain 0.8.5 resolves pydicom 3 and cannot start
    assert steps[1][1] == [f"monailabel=={MONAILABEL_VERSION}", "pydicom<3"]
    pinned_monai = [a for _, args in steps for a in args if a.split("[")[0].startswith("monai=")]
    assert not pinned_monai and monailabel_version("monai16") == MONAILABEL_VERSION
    assert env_key(recipe="monai16").startswith(f"monailabel-{MONAILABEL_VERSION}-monai16-py")
    assert env_key().startswith(f"monailabel-{MONAILABEL_VERSION}-py")  # the old name: reused
    plain = smoke_test("monai16")  # pip's pydicom, whatever it is: as users get it
    assert "startswith('1.6.')" in plain and "pydicom.__version__" not in plain
    assert "startswith('1.5.')" in smoke_test() and "pydicom.__version__" in smoke_test()
    with pytest.raises(ValueError, match="expected one of monai15, monai16"):
        ensure_label_env(tmp_path, verbose=False, recipe="monai17")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_stamped_environment_is_reused_without_installing(tmp_path, recipe):
    root = tmp_path / env_key(recipe=recipe)
    write_json_atomic(root / STAMP_NAME, {"versions": "2.14.1 0.29.1 1.5.2 0.8.5"})
    (root / "bin").mkdir()
    (root / "bin" / "python").symlink_to(sys.executable)
    env = ensure_label_env(tmp_path, verbose=False, recipe=recipe)
    assert env.root == root and env.versions == "2.14.1 0.29.1 1.5.2 0.8.5"
    assert "PYTHONPATH" not in env.run_env() and env.run_env()["PATH"].startswith(str(root))


def test_a_busy_port_is_refused_before_starting(tmp_path):
    env = LabelEnv(tmp_path, tmp_path / "bin" / "python", "")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = LabelServer(env, tmp_path, tmp_path, "m", port=port)
        with pytest.raises(LabelServerError, match=f"--port {port + 1}"):
            server.start()
    assert server.process is None
    assert "--host" in server.command() and "127.0.0.1" in server.command()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_hosts_serve_without_warning(host):
    assert exposure_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "myserver.example.org"])
def test_reachable_hosts_warn_that_there_is_no_authentication(host):
    warning = exposure_warning(host)
    assert warning is not None
    assert host in warning and "no authentication" in warning and "127.0.0.1" in warning
