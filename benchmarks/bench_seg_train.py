"""Segmentation bundle training speed: iterations per second and how much of it is data loading.

    python benchmarks/bench_seg_train.py [--device cuda] [--workers default,0] [--iterations 30]
        [--warmup 5] [--profile ""] [--world tiny] [--repeat 50] [--out runs/benchmarks]

Runs ``bundles/lung_mri_tumor_segmentation``'s ``configs/train.json`` as a user does
(``monai.bundle.ConfigWorkflow``, the paper's 256² windows, batch 10, AMP on CUDA) in this
process, once per ``--workers`` value (``default`` is the config's own ``num_workers`` for the
device; the default list is ``default,0`` on CUDA, ``default`` elsewhere), on a phantom world
generated into a temporary folder (labelled week-1 MRI only, no synthetic MRI). The training set
is the labelled slices repeated ``--repeat`` times (``train#concat_dataset``), so that one pass
of the loader outlasts the timed iterations: a phantom world has few slices, and restarting the
loader (and its workers) every few batches is not what a real data set costs. Validation is off
(``val_interval`` beyond the run).

Timed: ``--iterations`` iterations after ``--warmup`` untimed ones (worker start, cuDNN and
allocator warm-up). ``data_share`` is the time the trainer waited for the loader (ignite's
``GET_BATCH_STARTED`` to ``GET_BATCH_COMPLETED``) over the wall time of the timed iterations;
on CUDA the device is synchronised at both ends, and the loop already waits for the device
every iteration where AMP's loss scaler checks its gradients. ``peak_memory_mb`` is
``torch.cuda.max_memory_allocated`` over the run (None elsewhere). The time some task waited
for a CPU during the timed iterations (Linux PSI, ``stall_fraction``) is recorded, not acted
on; worker processes are the run's own and count in it.

Prints a table, writes ``bench_seg_train_<device>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from contention import stall_us  # benchmarks/contention.py

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lung_mri_tumor_segmentation"


def make_world(folder: Path, profile: str) -> Path:
    """A phantom world (seed 0) under ``folder``; returns its manifest."""
    from tumoraware.data.phantoms import generate_world

    manifest = folder / "data_manifests" / "phantoms.json"
    generate_world(folder / "phantoms", seed=0, profile=profile, manifest=manifest, progress=False)
    return manifest


def train_once(args: argparse.Namespace, manifest: Path, workers: str, tmp: Path) -> dict:
    """One training run with ``num_workers`` = ``workers`` (``"default"``: the config's)."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    device = torch.device(args.device)
    configs = [str(BUNDLE / "configs" / "train.json")]
    if args.profile:
        configs.append(str(BUNDLE / "configs" / args.profile))
    folder = tmp / f"workers_{workers}"
    overrides: dict[str, Any] = {
        "bundle_root": str(BUNDLE),
        "device": f"$torch.device('{device}')",
        "mri_manifest": str(manifest),
        "synthetic_manifest": str(tmp / "no_synthetic_mri.json"),
        "max_epochs": 1,
        "epoch_length": args.warmup + args.iterations,
        "val_interval": 10**6,
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "runs"),
        "train#concat_dataset": f"$torch.utils.data.ConcatDataset(@train#sources * {args.repeat})",
    }
    if workers != "default":
        overrides["num_workers"] = int(workers)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    workflow = ConfigWorkflow(config_file=configs, workflow_type="train", **overrides)
    workflow.initialize()
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")  # cached: run() uses this one
    loader = parser.get_parsed_content("train#dataloader")
    build_s = time.perf_counter() - start
    if len(loader) < args.warmup + args.iterations:
        raise RuntimeError(
            f"one pass has {len(loader)} batches, fewer than the {args.warmup + args.iterations} "
            "iterations: raise --repeat"
        )
    fetches: list[tuple[float, float]] = []
    ends: list[float] = []

    def fetch_started(engine: Any) -> None:
        fetches.append((time.perf_counter(), float("nan")))

    def fetched(engine: Any) -> None:
        fetches[-1] = (fetches[-1][0], time.perf_counter())

    timed_ends = (args.warmup, args.warmup + args.iterations)
    stalls: list[int | None] = []

    def iteration_done(engine: Any) -> None:
        if engine.state.iteration in timed_ends:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stalls.append(stall_us())
        ends.append(time.perf_counter())

    trainer.add_event_handler(Events.GET_BATCH_STARTED, fetch_started)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, fetched)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, iteration_done)
    workflow.run()
    workflow.finalize()
    n = args.iterations
    wall = ends[args.warmup + n - 1] - ends[args.warmup - 1]
    data = sum(done - begin for begin, done in fetches[args.warmup : args.warmup + n])
    row = {
        "workers": workers,
        "num_workers": int(loader.num_workers),
        "pin_memory": bool(loader.pin_memory),
        "persistent_workers": bool(loader.persistent_workers),
        "non_blocking": bool(trainer.non_blocking),
        "amp": bool(trainer.amp),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "batch_size": int(loader.batch_size),
        "spatial_size": list(parser["spatial_size"]),
        "samples_per_pass": len(loader.dataset),
        "iterations": n,
        "warmup": args.warmup,
        "build_s": build_s,
        "it_per_s": n / wall,
        "s_per_it": wall / n,
        "data_s_per_it": data / n,
        "data_share": data / wall,
        "first_fetch_s": fetches[0][1] - fetches[0][0],
        "stall_fraction": None if None in stalls else (stalls[1] - stalls[0]) / 1e6 / wall,
        "peak_memory_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
    }
    del workflow, parser, trainer, loader
    gc.collect()
    return row


def run(args: argparse.Namespace) -> dict:
    """Every ``--workers`` value; prints a table, writes and returns the report."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device (torch {torch.__version__})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_seg_train_") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        manifest = make_world(tmp / "world", args.world)
        world_s = time.perf_counter() - start
        for workers in args.workers.split(","):
            rows.append(train_once(args, manifest, workers.strip(), tmp))
            r = rows[-1]
            memory = "" if r["peak_memory_mb"] is None else f", peak {r['peak_memory_mb']:.0f} MB"
            print(
                f"  num_workers {r['num_workers']} ({r['workers']}): {r['it_per_s']:.2f} it/s, "
                f"data {r['data_s_per_it'] * 1e3:.1f} ms/it = {r['data_share']:.0%} of the time"
                f"{memory}",
                flush=True,
            )
    report = {
        "machine": {
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "config": vars(args) | {"world_s": world_s},
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_seg_train_{device.type}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--workers",
        default=None,
        help="comma-separated num_workers, 'default' = the config's (default: default,0 on CUDA)",
    )
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--profile", default="", help="an override file under configs/, e.g. profiles/test.json"
    )
    parser.add_argument("--world", default="tiny", help="phantom world profile")
    parser.add_argument("--repeat", type=int, default=50, help="training set repeats")
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = "default,0" if torch.device(args.device).type == "cuda" else "default"
    if args.warmup < 1 or args.iterations < 1:
        parser.error("--warmup and --iterations must be >= 1")
    return args


if __name__ == "__main__":
    run(parse_args())
