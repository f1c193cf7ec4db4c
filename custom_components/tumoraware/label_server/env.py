"""The MONAI Label 0.8.5 environment: its own virtual environment, built once and cached.

MONAI Label 0.8.5 needs ``pydicom<3`` (tumoraware uses pydicom 3) and a torchvision that
imports (the CPU torch 2.13 wheel has none that works), so it cannot share tumoraware's
environment; real users run it in its own, and so do we. On these machines
``torch==2.14.1 torchvision==0.29.1`` install from local wheels. The environment lives under
``~/.cache/tumoraware/`` (``$TUMORAWARE_CACHE`` or ``cache_dir`` to move it), named by a hash of
what is installed, so a changed requirement list builds a new one beside the old.

A stamp file, written atomically after the last step succeeded, marks a finished environment;
without it the folder is removed and built again, so an interrupted install never counts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tumoraware.atomic import write_json_atomic

__all__ = [
    "MONAILABEL_VERSION",
    "LabelEnv",
    "default_cache_dir",
    "ensure_label_env",
]

MONAILABEL_VERSION = "0.8.5"

# Step 1: the torch pair with a working torchvision (local wheels on these machines).
TORCH_REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1")
# Step 2: MONAI Label itself without its dependencies: its metadata asks for ``sam2`` (an sdist
# whose build installs a second torch, ~1 min, and that is only used with ``--conf sam2 true``,
# which needs a download) and for MONAI's ``itk`` / ``mlflow`` / ``openslide`` / ``lmdb`` extras
# (1.5 GB of ITK filters and an experiment tracker the bundle server never imports).
MONAILABEL_REQUIREMENT = f"monailabel=={MONAILABEL_VERSION}"
# Step 3: what MONAI Label imports (its own requirement list minus the above), ITK's core + IO
# for its NIfTI writer, and what the exported tumoraware bundles import (their vendored code).
# MONAI 1.5.2, not 1.6: 1.6's Spacingd calls ``.update`` on every ``image_*`` key of a NIfTI
# sample, and MONAI Label puts the string ``image_path`` there (AttributeError on /infer).
DEPENDENCIES = (
    "monai[fire,ignite,nibabel,pillow,psutil,skimage,tensorboard,tqdm]==1.5.2",
    "pydicom>=2.4.4,<3",
    "itk-core>=5.3",
    "itk-io>=5.3",
    "uvicorn>=0.29.0",
    "pydantic>=2.7.0",
    "pydantic-settings>=2.2.1",
    "python-dotenv>=1.0.1",
    "fastapi>=0.110.2",
    "python-multipart>=0.0.9",
    "httpx>=0.27.0",
    "schedule>=1.2.1",
    "dicomweb-client[gcp]>=0.59.1",
    "timeloop>=1.0.2",
    "expiringdict>=1.2.2",
    "expiring_dict>=1.1.0",
    "cachetools>=5.3.3",
    "watchdog>=4.0.0",
    "pydicom-seg>=0.4.1",
    "pynetdicom>=2.0.2",
    "pynrrd>=1.0.0",
    "numpymaxflow>=0.0.7",
    "girder-client>=3.2.3",
    "ninja>=1.11.1.1",
    "einops>=0.7.0",
    "pyyaml>=6.0.1",
    "filelock>=3.11.0",
    "passlib>=1.7.4",
    "pyjwt>=2.8.0",
    "bcrypt>=4.1.2",
    "shapely>=2.0.4",
    "requests>=2.31.0",
    "requests-toolbelt>=1.0.0",
    "urllib3>=2.2.1",
    "scikit-learn",
    "scipy",
    "google-auth>=2.29.0",
    "nibabel>=5.2",
    "matplotlib>=3.8",
    # pydicom-seg (DICOM SEG output) pins jsonschema<4; the vendored manifest code imports it
    # but validates only in `tumoraware manifest`, which never runs here.
    "jsonschema",
)
# What must import in a finished environment (torchvision's C++ ops included).
SMOKE_TEST = (
    "import torch, torchvision, monai, monailabel, pydicom, itk, nibabel; "
    "from monailabel.tasks.infer.bundle import BundleInferTask; "
    "from monailabel.tasks.train.bundle import BundleTrainTask; "
    "torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5); "
    "assert int(pydicom.__version__.split('.')[0]) < 3, pydicom.__version__; "
    "print(torch.__version__, torchvision.__version__, monai.__version__, monailabel.__version__)"
)
STAMP_NAME = ".tumoraware-env.json"


def default_cache_dir() -> Path:
    """``$TUMORAWARE_CACHE``, else ``$XDG_CACHE_HOME/tumoraware``, else ``~/.cache/tumoraware``."""
    if os.environ.get("TUMORAWARE_CACHE"):
        return Path(os.environ["TUMORAWARE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tumoraware"


def _steps() -> list[tuple[str, list[str]]]:
    """The pip steps, in order: ``(title, pip install arguments)``."""
    return [
        ("torch + torchvision", list(TORCH_REQUIREMENTS)),
        (f"MONAI Label {MONAILABEL_VERSION}", ["--no-deps", MONAILABEL_REQUIREMENT]),
        ("MONAI + MONAI Label's dependencies", list(DEPENDENCIES)),
    ]


def env_key(python: str | os.PathLike = sys.executable) -> str:
    """Folder name of the environment: MONAI Label version, Python version, requirement hash."""
    version = subprocess.run(
        [str(python), "-c", "import sys; print(f'{sys.version_info[0]}{sys.version_info[1]}')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    spec = json.dumps([_steps(), platform.machine(), version], sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:10]
    return f"monailabel-{MONAILABEL_VERSION}-py{version}-{digest}"


@dataclass(frozen=True)
class LabelEnv:
    """A finished MONAI Label environment.

    Attributes:
        root: the virtual environment's folder.
        python: its interpreter (run MONAI Label as ``python -m monailabel.main``).
        versions: ``torch torchvision monai monailabel`` as the smoke test printed them.
    """

    root: Path
    python: Path
    versions: str

    def run_env(self) -> dict[str, str]:
        """Environment variables for a process of this environment: its ``bin`` first on
        ``PATH``, and nothing of the calling environment's Python path (the exported bundle
        must run without tumoraware installed)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["VIRTUAL_ENV"] = str(self.root)
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), env.get("PATH", "")])
        return env


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so two processes never build the same environment at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, n_chars: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-n_chars:]


def _run_logged(args: Sequence[str], log: Path, what: str) -> None:
    """Run ``args`` with output appended to ``log``; a failure raises with the log's tail."""
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(args)}\n")
        handle.flush()
        code = subprocess.run(list(args), stdout=handle, stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(
            f"MONAI Label environment: {what} failed (exit {code}). Last lines of {log}:\n"
            f"{_tail(log)}\nFix: read the pip error above (no network to PyPI? disk full? "
            "`df -h ~/.cache`), then run the command again; the half-built environment is "
            "removed and rebuilt."
        )


def _read_stamp(root: Path) -> dict | None:
    stamp = root / STAMP_NAME
    try:
        return json.loads(stamp.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def ensure_label_env(
    cache_dir: str | os.PathLike | None = None,
    python: str | os.PathLike = sys.executable,
    verbose: bool = True,
) -> LabelEnv:
    """Return the cached MONAI Label environment, building it first when it is missing.

    Cold, on a 2-core machine with the torch wheels on local disk, the build takes a few
    minutes and ~7 GB (torch 2.14.1 is a CUDA build); afterwards this returns at once.

    Args:
        cache_dir: where environments live (default :func:`default_cache_dir`).
        python: the interpreter that creates the environment (3.11 finds the local torch
            wheels; another version downloads torch from PyPI).
        verbose: print one line per step.

    Raises:
        RuntimeError: a step failed; the message quotes the end of the install log.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = env_key(python)
    root, log = cache / key, cache / f"{key}.log"

    def say(message: str) -> None:
        if verbose:
            print(f"monailabel env: {message}", flush=True)

    with _locked(cache / f"{key}.lock"):
        stamp = _read_stamp(root)
        if stamp is not None and (root / "bin" / "python").exists():
            return LabelEnv(root, root / "bin" / "python", stamp["versions"])
        if root.exists():
            say(f"{root} has no stamp (an interrupted build): removing it")
            shutil.rmtree(root)
        log.unlink(missing_ok=True)
        say(f"building {root} (once; log {log})")
        start = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            _run_logged([str(python), "-m", "venv", str(root)], log, "creating the venv")
            env_python = root / "bin" / "python"
            # --no-compile: byte-compiling all of torch costs more than compiling, on first
            # import, the few modules a server uses.
            pip = [str(env_python), "-m", "pip", "install", "--disable-pip-version-check",
                   "--progress-bar", "off", "--no-compile"]  # fmt: skip
            for number, (title, args) in enumerate(_steps(), start=1):
                step_start = time.perf_counter()
                say(f"[{number}/{len(_steps())}] {title} ...")
                _run_logged([*pip, *args], log, f"installing {title}")
                timings[title] = round(time.perf_counter() - step_start, 1)
                say(f"[{number}/{len(_steps())}] {title}: {timings[title]:.0f} s")
            smoke_env = LabelEnv(root, env_python, "").run_env()
            smoke = subprocess.run(
                [str(env_python), "-c", SMOKE_TEST], capture_output=True, text=True, env=smoke_env
            )
            if smoke.returncode:
                raise RuntimeError(
                    "MONAI Label environment: installed, but the import check failed:\n"
                    f"{smoke.stderr[-3000:]}\nFix: see {log}; a torchvision that does not match "
                    f"torch is the usual cause ({' '.join(TORCH_REQUIREMENTS)} expected)."
                )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)  # never leave a half-built environment
            raise
        versions = smoke.stdout.strip().splitlines()[-1]
        total = round(time.perf_counter() - start, 1)
        write_json_atomic(root / STAMP_NAME, {"key": key, "versions": versions, "steps": _steps(),
                                              "seconds": timings, "total_s": total})  # fmt: skip
        say(f"ready in {total:.0f} s: torch/torchvision/monai/monailabel {versions}")
        return LabelEnv(root, env_python, versions)
