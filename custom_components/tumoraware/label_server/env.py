"""The MONAI Label 0.8.5 environment: its own virtual environment, built once and cached.

MONAI Label 0.8.5 needs ``pydicom<3`` (tumoraware uses pydicom 3) and a torchvision that
imports (the CPU torch 2.13 wheel has none that works), so it cannot share tumoraware's
environment; real users run it in its own, and so do we. On these machines
``torch==2.14.1 torchvision==0.29.1`` install from local wheels. The environment lives under
``~/.cache/tumoraware/`` (``$TUMORAWARE_CACHE`` or ``cache_dir`` to move it), named by a hash of
what is installed, so a changed requirement list builds a new one beside the old. The pins, in
pip's three steps, are in ``requirements.txt`` beside this module (shipped with the package).

Two recipes (:data:`RECIPES`): ``monai15``, the default, pins MONAI 1.5.2 and leaves out what the
bundle server never imports; ``monai16`` is ``pip install monailabel==0.8.5`` as users type it,
so pip picks MONAI 1.6.x (``requirements-monai16.txt``). The tests serve the bundle from both,
since MONAI 1.6's ``Spacingd`` broke MONAI Label's ``/infer`` (``SafeSpacingd`` works around it).

A stamp file, written atomically after the last step succeeded, marks a finished environment;
without it the folder is removed and built again, so an interrupted install never counts.
"""

from __future__ import annotations

import fcntl
import functools
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
from importlib import resources
from pathlib import Path

from tumoraware.atomic import write_json_atomic

__all__ = [
    "DEFAULT_RECIPE",
    "MONAILABEL_VERSION",
    "RECIPES",
    "EnvRecipe",
    "LabelEnv",
    "default_cache_dir",
    "ensure_label_env",
]

REQUIREMENTS_FILE = "requirements.txt"
"""The pinned requirements, shipped beside this module: one pip step per ``# step:`` section."""


@dataclass(frozen=True)
class EnvRecipe:
    """One way of installing MONAI Label: a requirements file beside this module, and what the
    finished environment must import.

    Attributes:
        name: the recipe's name (``--label_env`` on the command line).
        requirements: the requirements file (format: :func:`read_requirements`).
        monai_series: the start of the MONAI version the environment must have (``"1.6."``), so
            a test that means to serve under MONAI 1.6 never silently serves under another.
        checks: further Python statements the import check runs.
    """

    name: str
    requirements: str
    monai_series: str
    checks: tuple[str, ...] = ()


RECIPES = {
    recipe.name: recipe
    for recipe in (
        EnvRecipe("monai15", REQUIREMENTS_FILE, "1.5.",
                  ("assert int(pydicom.__version__.split('.')[0]) < 3, pydicom.__version__",)),
        EnvRecipe("monai16", "requirements-monai16.txt", "1.6."),
    )
}  # fmt: skip
"""The MONAI Label environments tumoraware can build, by name."""
DEFAULT_RECIPE = "monai15"


def recipe_named(name: str) -> EnvRecipe:
    """The recipe called ``name``; a clear error naming the others otherwise."""
    if name not in RECIPES:
        raise ValueError(
            f"no MONAI Label environment recipe {name!r}; expected one of {', '.join(RECIPES)}"
        )
    return RECIPES[name]


def read_requirements(
    text: str | None = None, name: str = REQUIREMENTS_FILE
) -> list[tuple[str, list[str]]]:
    """The pip steps of the requirements file ``name`` beside this module (or of ``text``), in
    order: ``(title, pip install arguments)``.

    A ``# step: TITLE`` line starts a step, a ``# pip: OPTIONS`` line (before the step's
    requirements) gives its pip options, every other non-comment line is a requirement.
    """
    if text is None:
        text = (resources.files(__package__) / name).read_text(encoding="utf-8")
    steps: list[tuple[str, list[str]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("#"):
            line = line.split(" #", 1)[0].strip()  # an inline comment
        where = f"{name} line {number}"
        if line.startswith("# step:"):
            steps.append((line[len("# step:") :].strip(), []))
        elif line.startswith("# pip:"):
            if not steps or steps[-1][1]:
                raise ValueError(f"{where}: '# pip:' must follow a '# step:' line directly")
            steps[-1][1].extend(line[len("# pip:") :].split())
        elif line and not line.startswith("#"):
            if not steps:
                raise ValueError(f"{where}: requirement {line!r} before the first '# step:'")
            steps[-1][1].append(line)
    return steps


@functools.cache
def _recipe_steps(name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    steps = read_requirements(name=recipe_named(name).requirements)
    return tuple((title, tuple(args)) for title, args in steps)


def monailabel_version(recipe: str = DEFAULT_RECIPE) -> str:
    """The MONAI Label version ``recipe`` installs (its ``monailabel==`` requirement)."""
    for _, args in _recipe_steps(recipe):
        for arg in args:
            if arg.startswith("monailabel=="):
                return arg.split("==", 1)[1]
    raise ValueError(f"{recipe_named(recipe).requirements} pins no monailabel== version")


_STEPS = read_requirements()
# Step 1: the torch pair with a working torchvision (local wheels on these machines).
TORCH_REQUIREMENTS = tuple(_STEPS[0][1])
# Step 2: MONAI Label itself, without its dependencies (why: see the requirements file).
MONAILABEL_REQUIREMENT = next(r for r in _STEPS[1][1] if r.startswith("monailabel=="))
MONAILABEL_VERSION = MONAILABEL_REQUIREMENT.split("==", 1)[1]
# Step 3: what MONAI Label and the exported tumoraware bundles import.
DEPENDENCIES = tuple(_STEPS[2][1])


def smoke_test(recipe: str = DEFAULT_RECIPE) -> str:
    """What must import in a finished environment (torchvision's C++ ops included), with the
    recipe's MONAI series and checks; prints ``torch torchvision monai monailabel`` versions."""
    spec = recipe_named(recipe)
    return "; ".join([
        "import torch, torchvision, monai, monailabel, pydicom, itk, nibabel",
        "from monailabel.tasks.infer.bundle import BundleInferTask",
        "from monailabel.tasks.train.bundle import BundleTrainTask",
        "torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)",
        f"assert monai.__version__.startswith({spec.monai_series!r}), monai.__version__",
        *spec.checks,
        "print(torch.__version__, torchvision.__version__, monai.__version__, "
        "monailabel.__version__)",
    ])  # fmt: skip


SMOKE_TEST = smoke_test()
STAMP_NAME = ".tumoraware-env.json"


def default_cache_dir() -> Path:
    """``$TUMORAWARE_CACHE``, else ``$XDG_CACHE_HOME/tumoraware``, else ``~/.cache/tumoraware``."""
    if os.environ.get("TUMORAWARE_CACHE"):
        return Path(os.environ["TUMORAWARE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tumoraware"


def _steps(recipe: str = DEFAULT_RECIPE) -> list[tuple[str, list[str]]]:
    """The pip steps, in order: ``(title, pip install arguments)``, from the recipe's file."""
    return [(title, list(args)) for title, args in _recipe_steps(recipe)]


def env_key(python: str | os.PathLike = sys.executable, recipe: str = DEFAULT_RECIPE) -> str:
    """Folder name of the environment: MONAI Label version, recipe (unless the default, so
    environments built before there were recipes are still found), Python version, hash of
    the requirements."""
    version = subprocess.run(
        [str(python), "-c", "import sys; print(f'{sys.version_info[0]}{sys.version_info[1]}')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    spec = json.dumps([_steps(recipe), platform.machine(), version], sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:10]
    named = "" if recipe == DEFAULT_RECIPE else f"-{recipe}"
    return f"monailabel-{monailabel_version(recipe)}{named}-py{version}-{digest}"


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
    recipe: str = DEFAULT_RECIPE,
) -> LabelEnv:
    """Return the cached MONAI Label environment, building it first when it is missing.

    Cold, the build takes minutes and gigabytes of disk (torch 2.14.1 is a CUDA build);
    afterwards this returns at once.

    Args:
        cache_dir: where environments live (default :func:`default_cache_dir`).
        python: the interpreter that creates the environment (3.11 finds the local torch
            wheels; another version downloads torch from PyPI).
        verbose: print one line per step.
        recipe: which environment (:data:`RECIPES`): ``monai15`` (pinned, the default) or
            ``monai16`` (``pip install monailabel==0.8.5`` as users install it).

    Raises:
        RuntimeError: a step failed; the message quotes the end of the install log.
        ValueError: no such recipe.
    """
    steps = _steps(recipe)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = env_key(python, recipe)
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
            for number, (title, args) in enumerate(steps, start=1):
                step_start = time.perf_counter()
                say(f"[{number}/{len(steps)}] {title} ...")
                _run_logged([*pip, *args], log, f"installing {title}")
                timings[title] = round(time.perf_counter() - step_start, 1)
                say(f"[{number}/{len(steps)}] {title}: {timings[title]:.0f} s")
            smoke_env = LabelEnv(root, env_python, "").run_env()
            smoke = subprocess.run([str(env_python), "-c", smoke_test(recipe)],
                                   capture_output=True, text=True, env=smoke_env)  # fmt: skip
            if smoke.returncode:
                raise RuntimeError(
                    f"MONAI Label environment ({recipe}): installed, but the import check "
                    f"failed:\n{smoke.stderr[-3000:]}\nFix: see {log}; a torchvision that does "
                    f"not match torch is the usual cause ({' '.join(steps[0][1])} expected), or "
                    f"pip chose a MONAI that is not {recipe_named(recipe).monai_series}x."
                )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)  # never leave a half-built environment
            raise
        versions = smoke.stdout.strip().splitlines()[-1]
        total = round(time.perf_counter() - start, 1)
        write_json_atomic(root / STAMP_NAME, {"key": key, "recipe": recipe, "versions": versions,
                                              "steps": steps, "seconds": timings,
                                              "total_s": total})  # fmt: skip
        say(f"ready in {total:.0f} s: torch/torchvision/monai/monailabel {versions}")
        return LabelEnv(root, env_python, versions)
