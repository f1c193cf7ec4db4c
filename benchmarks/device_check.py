"""GPU device check: the numbers a GPU user needs, in one command of at most ~8 minutes.

    benchmarks/device_check.sh [--dry-run] [--out runs/benchmarks]
    DEVICE=cpu benchmarks/device_check.sh        # the same as --dry-run

Three steps, each one of the benchmark scripts in a fresh process with a time limit (so one that
fails or hangs costs only its own numbers), on ``DEVICE`` (default ``cuda``):

1. ``synthesis``: ``bench_synthesis_step.py --mode sequential`` at the paper's configuration
   (256², ngf 64, 9 blocks, batch 1): seconds per training step of a plain eager CycleGAN step,
   the engine's CycleGAN and the tumour-aware step with AMP off and on (and with cuDNN's
   autotuner, ``deterministic`` false), and each one's peak GPU memory
   (``torch.cuda.max_memory_allocated``);
2. ``segmentation_training``: ``bench_seg_train.py``: the segmentation bundle's ``train.json``
   (256², batch 10, AMP) on a generated phantom world, iterations per second and the share of
   the time spent waiting for the loader, with the config's CUDA ``num_workers`` and with none;
3. ``segmentation_inference``: ``bench_seg_inference.py --device cuda``: whole-scan
   ``inference.json`` seconds per volume (load, preprocess, slide the U-Net over every slice,
   invert, save) and peak GPU memory, for its four rows.

Writes ``<out>/device_check_<gpu>.json`` (the GPU name from ``torch.cuda.get_device_name``; it is
rewritten after every step) holding the machine, every step's status, time and full report, and
a summary; the steps' own JSON files go to ``<out>/device_check_<gpu>/``.

Without a CUDA device it says so and exits 2 having run nothing. ``--dry-run`` (or ``DEVICE=cpu``)
runs every step on the CPU at tiny sizes with one torch thread, to test the check itself; its
file is ``device_check_cpu_dry_run.json``. Exit 1 when a step failed or ran out of time, else 0.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# (name, script, arguments on a GPU, arguments of the CPU dry run, time limit in s on a GPU)
STEPS: list[tuple[str, str, list[str], list[str], int]] = [
    ("synthesis", "bench_synthesis_step.py",
     ["--mode", "sequential", "--steps", "20", "--warmup", "3", "--log-every", "50"],
     ["--mode", "sequential", "--size", "32", "--ngf", "8", "--ndf", "8", "--n_blocks", "1",
      "--steps", "2", "--warmup", "1", "--log-every", "2"], 120),
    ("segmentation_training", "bench_seg_train.py",
     ["--workers", "default,0", "--iterations", "100", "--warmup", "10"],
     ["--workers", "default,1", "--iterations", "3", "--warmup", "1", "--repeat", "20",
      "--profile", "profiles/test.json"], 150),
    ("segmentation_inference", "bench_seg_inference.py",
     ["--repeats", "3", "--retries", "0"],
     ["--rows", "4", "--shape", "64,64,8", "--repeats", "2", "--retries", "0"], 150),
]  # fmt: skip
DRY_RUN_LIMIT_S = 120


def slug(name: str) -> str:
    """A file-name-safe form of a device name, e.g. ``nvidia_h100_80gb_hbm3``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def machine(device: str) -> dict[str, Any]:
    """The device and software; torch is imported only for a GPU (the dry run's steps import it
    themselves, and a second import of seconds is what the dry run can least afford)."""
    info: dict[str, Any] = {
        "device": device,
        "torch": importlib.metadata.version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            torch_cuda=torch.version.cuda,
            gpu=torch.cuda.get_device_name(torch.device(device)),
            gpu_count=torch.cuda.device_count(),
            capability=[props.major, props.minor],
            gpu_memory_gb=props.total_memory / 2**30,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def run_step(
    name: str, script: str, argv: list[str], limit_s: int, folder: Path, threads: int = 0
) -> dict[str, Any]:
    """One benchmark script in a fresh process group; its JSON report, or why there is none.

    Past ``limit_s`` the whole group is killed: the script's own children (loader workers, a
    benchmark's per-row process) would otherwise outlive it and hold its output open.
    ``threads`` > 0 sets ``OMP_NUM_THREADS`` (torch's threads) for the step.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / script), *argv, "--out", str(folder)]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    started, start = time.time(), time.perf_counter()
    step: dict[str, Any] = {"command": cmd[1:], "limit_s": limit_s}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        step.update(status="timeout", seconds=time.perf_counter() - start,
                    log=stdout[-3000:] + stderr[-3000:])  # fmt: skip
        print(f"   ran past its {limit_s} s limit, killed", flush=True)
        return step
    step["seconds"] = time.perf_counter() - start
    print(stdout[-3000:], end="", flush=True)
    written = sorted(
        (p for p in folder.glob("*.json") if p.stat().st_mtime >= started - 1),
        key=lambda p: p.stat().st_mtime,
    )
    if proc.returncode != 0 or not written:
        step.update(status="failed", exit=proc.returncode, log=stdout[-3000:] + stderr[-5000:])
        print(f"   FAILED (exit {proc.returncode}):\n{stderr[-2000:]}", flush=True)
        return step
    step.update(status="ok", files=[str(p) for p in written])
    step["report"] = json.loads(written[-1].read_text())
    return step


def summary(steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers of every finished step, flat."""
    out: dict[str, Any] = {}
    synthesis = steps.get("synthesis", {}).get("report")
    if synthesis:
        for r in synthesis["rows"]:
            key = r["variant"].replace("engine ", "").replace(" ", "_")
            key += "_amp" if r["amp"] else "_fp32"
            key += "_autotune" if r["cudnn_benchmark"] else ""
            out[f"synthesis_{key}_s_per_step"] = r["s_per_step"]
            out[f"synthesis_{key}_peak_mb"] = r["peak_memory_mb"]
    training = steps.get("segmentation_training", {}).get("report")
    if training:
        for r in training["rows"]:
            key = f"segmentation_train_workers{r['num_workers']}"
            out[f"{key}_it_per_s"] = r["it_per_s"]
            out[f"{key}_data_share"] = r["data_share"]
            out[f"{key}_peak_mb"] = r["peak_memory_mb"]
    inference = steps.get("segmentation_inference", {}).get("report")
    if inference:
        for r in inference["rows"]:
            out[f"segmentation_infer_row{r['row']}_s_per_volume"] = r["s_per_volume"]
            out[f"segmentation_infer_row{r['row']}_peak_gpu_mb"] = r.get("peak_gpu_mb")
    return out


def cuda_present(device: str) -> bool:
    """Whether ``device`` is a CUDA device torch can use; says why not on stderr."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return True
    built = torch.version.cuda or "none: a CPU-only build"
    print(
        f"device_check: no CUDA device for DEVICE={device} (torch {torch.__version__}, CUDA "
        f"build {built}); this check measures a GPU and ran nothing. To try the check itself "
        "on the CPU at tiny sizes: benchmarks/device_check.sh --dry-run (or DEVICE=cpu).",
        file=sys.stderr,
    )
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="every step on CPU at tiny sizes (= DEVICE=cpu)"
    )
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    device = os.environ.get("DEVICE", "cuda").strip() or "cuda"
    dry = args.dry_run or device == "cpu"
    device = "cpu" if dry else device
    if not dry and not cuda_present(device):
        return 2
    info = machine(device)
    name = "cpu_dry_run" if dry else slug(info["gpu"])
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    path = out / f"device_check_{name}.json"
    report: dict[str, Any] = {
        "check": "GPU device check (benchmarks/device_check.sh)",
        "dry_run": dry,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "steps": {},
    }
    start = time.perf_counter()
    for step_name, script, gpu_argv, dry_argv, limit_s in STEPS:
        argv = ["--device", device, *(dry_argv if dry else gpu_argv)]
        limit = DRY_RUN_LIMIT_S if dry else limit_s
        # one torch thread in the dry run: on a small shared CPU, threads that wait for each
        # other at every tiny op cost far more than they give
        report["steps"][step_name] = run_step(
            step_name, script, argv, limit, out / path.stem, threads=1 if dry else 0
        )
        report["wall_s"] = time.perf_counter() - start
        report["summary"] = summary(report["steps"])
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'GPU device check' if not dry else 'device check (CPU dry run)'}: {path}")
    for key, value in report["summary"].items():
        print(f"  {key:55} {'—' if value is None else f'{value:.4g}'}")
    failed = [n for n, s in report["steps"].items() if s["status"] != "ok"]
    for step_name in failed:
        print(f"  step {step_name}: {report['steps'][step_name]['status']}")
    print(f"wall time {report['wall_s']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
