"""Run a bundle as users do: ``python -m monai.bundle run`` in a subprocess from its folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def run_bundle(
    bundle: Path, configs: list[str], expect_ok: bool = True, **overrides: object
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file [...] --key value`` from ``bundle``.

    With ``expect_ok`` (the default) a non-zero exit fails with the output tail.
    """
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(args, cwd=bundle, capture_output=True, text=True, timeout=600, env=env)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def torchrun_bundle(
    bundle: Path, configs: list[str], nproc: int = 2, timeout_s: int = 300, **overrides: object
) -> tuple[int, str]:
    """``torchrun --standalone --nproc_per_node=N -m monai.bundle run ...`` from ``bundle`` on
    CPU (gloo, one thread per process); returns ``(exit code, stdout + stderr)``. The whole
    process group is killed, and the test fails, if it outlives ``timeout_s`` (e.g. a
    collective that only some ranks call)."""
    import pytest

    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", f"--nproc_per_node={nproc}", "-m", "monai.bundle", "run"]
    cmd += ["--config_file", str(configs)]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.Popen(
        cmd,
        cwd=bundle,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a hang can be killed with workers
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun ran past {timeout_s} s; output tail:\n{out[-4000:]}")
    return proc.returncode, out


def property_problems(bundle: Path, workflow: str, config: str, tmp: Path, **ids: object) -> list:
    """What MONAI's ``ConfigWorkflow.check_properties`` finds missing in ``configs/<config>`` +
    the test profile, as a ``workflow`` ("train" / "infer") workflow; empty when clean."""
    from monai.bundle import ConfigWorkflow

    cwd = os.getcwd()
    os.chdir(bundle)  # the configs' paths are relative to the bundle folder
    try:
        flow = ConfigWorkflow(
            config_file=[f"configs/{config}", "configs/profiles/test.json"],
            meta_file="configs/metadata.json", logging_file="configs/logging.conf",
            workflow_type=workflow, bundle_root=".", output_dir=str(tmp / "out"),
            ckpt_dir=str(tmp / "models"), **{k: str(v) for k, v in ids.items()},
        )  # fmt: skip
        flow.initialize()
        return list(flow.check_properties() or [])
    finally:
        os.chdir(cwd)


SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "reference" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"


def verify_metadata(bundle: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle verify_metadata`` of the bundle against the Model Zoo schema
    (20240725, shipped beside the repository; the test is skipped where it is absent)."""
    import pytest

    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} not present (it ships beside the repository)")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
         str(bundle / "configs" / "metadata.json"), "--filepath", str(SCHEMA),
         "--hash_val", SCHEMA_MD5],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
