"""Segmentation bundle inference speed: seconds per MRI volume and peak memory, on CPU.

    python benchmarks/bench_seg_inference.py [--repeats 3] [--threads 0] [--skip-slow]
        [--retries 1] [--bundle bundles/lung_mri_tumor_segmentation] [--out runs/benchmarks]
        [--device cpu] [--rows 1,3] [--shape 256,256,48] [--profile profiles/test.json]

``--device cuda`` runs the rows on the GPU (the config's ``device``; its CUDA defaults for the
loader): the device is synchronised before each phase's time stamp, the JSON gets each row's
``peak_gpu_mb`` (``torch.cuda.max_memory_allocated``) and is named
``bench_seg_inference_cuda.json``. ``--rows``, ``--shape`` and ``--profile`` (an override file
added to every row) shrink the run, e.g. for the device check's CPU dry run.

End-to-end time of ``bundles/lung_mri_tumor_segmentation``'s ``configs/inference.json`` as a
user runs it (``monai.bundle.ConfigWorkflow``, ``workflow_type="infer"``) on a 256 x 256 x 48
T2w-like MRI volume (5 mm slices): the evaluator's load (NIfTI, gzip), preprocessing
(``Orientationd`` to RAS, ``RobustMRINormalized``, ``Spacingd`` to the working in-plane spacing
``crop_mm / spatial_size``), ``SliceInferer`` (2D sliding windows of ``spatial_size``, overlap
``sw_overlap``, gaussian blending), ``Invertd`` back to the input grid, argmax and ``SaveImaged``.

The test volume is written once to a temporary folder as float32 NIfTI with an LPS-like affine
``diag(-s, -s, 5)``: a smooth random texture inside an elliptic "body", a few bright blobs and a
dark background (the content sets the normalisation percentiles, not the cost). The network has
random weights: it is built from the row's own config (``network_def``) and saved as a plain
``state_dict``, which the bundle's ``CheckpointLoader`` loads.

Every row runs in a fresh subprocess (this script with ``--child``), so the peak RSS is that row's
alone; it includes Python, torch, MONAI and the built workflow. It is the child's ``VmHWM``
(/proc/self/status): its ``getrusage(RUSAGE_SELF).ru_maxrss`` (also in the JSON) is no good here, as
Linux carries the parent's peak RSS into a child's ``ru_maxrss`` at ``exec``. In the child
``ConfigWorkflow.initialize()`` and building the evaluator are untimed, then one forward of a single
window under ``torch.utils.flop_counter.FlopCounterMode`` gives the GFLOP per window (conv/matmul
FLOPs, untimed), then ``workflow.run()`` processes ``--repeats`` copies of the volume (distinct file
names): a copy's time runs from the dataloader's fetch (``GET_BATCH_STARTED``) to the end of its
iteration, so it includes loading, preprocessing, inference, inversion and saving; the first copy is
a warm-up and the median of the others is reported. Every saved mask is checked to exist with the
input's shape. Around every copy the time some task waited for a CPU (Linux PSI) and the cores other
processes kept busy are read; a copy with > 5 % stall or > 0.1 other cores is contended (shared
machine): the row is run again in a fresh process, up to ``--retries`` times, and the clean attempt
(else the fastest, flagged ``*``) is reported. Contention costs far more than the lost CPU share:
with torch's default 2 threads on 2 busy cores, OpenMP threads wait on each other at every op, and
the more and the smaller the ops of a volume (the demo profile's 2352 windows of 64^2), the worse.

Rows, all with the paper's U-Net (channels 32..512, strides 2, 2 residual units) unless stated:

1. the volume at the working spacing (0.375 mm = 96 mm / 256): one 256^2 window per slice;
   the issue's target, <= 5 s per volume on 2 cores;
2. a 1.5 mm volume (384 mm FOV) at the default working spacing: resampled to 1021^2 per slice
   (``Spacingd`` keeps the first and last voxel centres: 255 x 4 + 1), 49 windows per slice
   at the default ``sw_overlap`` 0.5;
   slow (over a minute), so one timed copy without warm-up; left out with ``--skip-slow``;
3. the 1.5 mm volume with ``crop_mm`` 384 (working spacing 1.5 mm): one window per slice;
4. the demo profile (``configs/profiles/demo.json``: 64^2 windows, channels 16..128, 3 strides;
   working spacing 96 mm / 64 = 1.5 mm) on the 1.5 mm volume.

Rows 2 and 4 set ``whole_scan_mode`` to ``"sliding"`` (every window of every slice): with random
weights the coarse pass of ``"coarse_to_fine"`` proposes nothing meaningful, so its time would
mean nothing either; ``bench_whole_scan.py`` times that mode (rows 1 and 3 fit one window per
slice, where both modes are the same sliding window).

Prints a table (and the split of each copy's time into phases), writes
``bench_seg_inference.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from contention import busy_s, cpu_pressure, own_cpu_s, stall_us  # benchmarks/contention.py

from tumoraware.data.names import case_name

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lung_mri_tumor_segmentation"
SHAPE = (256, 256, 48)
SLICE_MM = 5.0
TARGET_S = 5.0  # s per volume, row 1, 2 cores
MAX_STALL, MAX_OTHERS = 0.05, 0.1  # a copy beyond either is flagged contended
ROWS: list[dict[str, Any]] = [
    {"name": "paper net, volume at the working spacing", "short": "paper, vol at working sp.",
     "spacing": 0.375, "configs": ["inference.json"], "overrides": {}, "slow": False,
     "target": True},
    {"name": "paper net, 1.5 mm volume (384 mm FOV), default working spacing",
     "short": "paper, 1.5mm vol, default", "spacing": 1.5, "configs": ["inference.json"],
     "overrides": {"whole_scan_mode": "sliding"}, "slow": True, "target": False},
    {"name": "paper net at 1.5 mm working spacing", "short": "paper, crop_mm 384",
     "spacing": 1.5, "configs": ["inference.json"], "overrides": {"crop_mm": 384.0},
     "slow": False, "target": False},
    {"name": "demo profile", "short": "demo profile", "spacing": 1.5,
     "configs": ["inference.json", "profiles/demo.json"],
     "overrides": {"whole_scan_mode": "sliding"}, "slow": False, "target": False},
]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# test volume, checkpoint


def make_volume(seed: int = 0) -> np.ndarray:
    """A T2w-like float32 volume: smooth texture in an elliptic body, bright blobs, dark air."""
    import torch
    from torch.nn import functional as nnf

    rng = np.random.default_rng(seed)
    nx, ny, nz = SHAPE
    coarse = torch.from_numpy(rng.standard_normal((1, 1, nx // 16, ny // 16, nz // 4)))
    texture = nnf.interpolate(coarse.float(), size=SHAPE, mode="trilinear", align_corners=False)
    texture = texture[0, 0].numpy()
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), np.linspace(-1, 1, nz), indexing="ij"
    )
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2 < 1.0
    image = np.where(body, 400.0 + 80.0 * texture, 0.0)
    for _ in range(4):
        cx, cy = rng.uniform(-0.4, 0.4, 2)
        cz, radius = rng.uniform(-0.6, 0.6), rng.uniform(0.05, 0.12)
        r2 = (x - cx) ** 2 + (y - cy) ** 2 + ((z - cz) * 0.3) ** 2
        image += 900.0 * np.exp(-r2 / (2 * radius**2))
    image += np.abs(rng.normal(0.0, 10.0, SHAPE))  # Rician-like floor, also in the air
    return image.astype(np.float32)


def write_copies(image: np.ndarray, spacing: float, count: int, folder: Path) -> list[str]:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-spacing, -spacing, SLICE_MM, 1.0])  # LPS-like: i -> left, j -> posterior
    first = folder / "vol_0.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), first)
    paths = [first]
    for i in range(1, count):
        paths.append(folder / f"vol_{i}.nii.gz")
        shutil.copyfile(first, paths[-1])
    return [str(p) for p in paths]


def row_parser(row: dict, bundle: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in row["configs"]])
    parser.update(row["overrides"])
    return parser


def write_checkpoint(row: dict, bundle: Path, path: Path) -> None:
    """A random-init state_dict of the row's ``network_def``."""
    import torch

    torch.manual_seed(0)
    net = row_parser(row, bundle).get_parsed_content("network_def")
    torch.save(net.state_dict(), path)


# ------------------------------------------------------------------------------------------------
# child: one row in a fresh process


def max_rss_mb() -> float:
    """Peak RSS of this process image, MB: ``VmHWM`` of /proc/self/status where there is one.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss`` alone: Linux carries the parent's peak over into
    the child's ``ru_maxrss`` at ``exec`` (a child of a 630 MB parent reports >= 630 MB), whereas
    ``VmHWM`` is the new image's own high-water mark.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def windows_per_slice(in_plane: tuple[int, int], roi: list[int], overlap: float) -> int:
    """Sliding windows per slice, as MONAI's inferer places them (after padding to the roi)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size = [max(s, r) for s, r in zip(in_plane, roi, strict=True)]
    interval = _get_scan_interval(size, roi, 2, (overlap, overlap))
    return len(dense_patch_slices(size, roi, interval))


def window_gflop(net: Any, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, size, size))
    return counter.get_total_flops() / 1e9


def child(spec: dict) -> None:
    import nibabel as nib
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    from monai.engines import IterationEvents

    rss_imported = max_rss_mb()  # Python, torch, MONAI, nibabel, ignite
    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=spec["configs"],
        workflow_type="infer",
        bundle_root=spec["bundle"],
        datalist=spec["datalist"],
        ckpt_path=spec["ckpt_path"],
        output_dir=spec["output_dir"],
        **spec["overrides"],
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")  # cached: run() uses this one
    build_s = time.perf_counter() - start
    parser = workflow.parser
    roi, overlap = list(parser["spatial_size"]), float(parser["sw_overlap"])
    net = parser.get_parsed_content("network")
    net.eval()
    gflop = window_gflop(net, roi[0])
    gflop_256 = window_gflop(net, 256)
    params = sum(p.numel() for p in net.parameters())
    rss_before_run = max_rss_mb()

    copies: list[dict] = []

    def stamp(key: str) -> Any:
        def handler(engine: Any) -> None:
            copies[-1][key] = time.perf_counter()

        return handler

    def fetch_started(engine: Any) -> None:
        copies.append({"t0": time.perf_counter(), "stall0": stall_us(), "busy0": busy_s(),
                       "own0": own_cpu_s()})  # fmt: skip

    def fetched(engine: Any) -> None:
        copies[-1]["t_fetched"] = time.perf_counter()
        copies[-1]["working_shape"] = list(engine.state.batch["image"].shape[2:])

    def done(engine: Any) -> None:
        c = copies[-1]
        c["t_done"] = time.perf_counter()
        seconds = c["t_done"] - c["t0"]
        stall1, busy1 = stall_us(), busy_s()
        c["stall"] = 0.0 if c["stall0"] is None or stall1 is None else (
            (stall1 - c["stall0"]) / 1e6 / seconds)  # fmt: skip
        c["other_cores"] = 0.0 if c["busy0"] is None or busy1 is None else max(
            (busy1 - c["busy0"] - own_cpu_s() + c["own0"]) / seconds, 0.0)  # fmt: skip

    inferer = evaluator.inferer

    def inferred(engine: Any) -> None:
        copies[-1]["t_inferred"] = time.perf_counter()
        copies[-1]["inferer_stats"] = dict(getattr(inferer, "last_stats", {}))

    device = torch.device(parser.get_parsed_content("device"))
    if device.type == "cuda":  # each phase's stamp must see the device done with that phase
        for event in (IterationEvents.FORWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):
            evaluator.add_event_handler(event, lambda _: torch.cuda.synchronize(device))
        torch.cuda.reset_peak_memory_stats(device)
    evaluator.add_event_handler(Events.GET_BATCH_STARTED, fetch_started)
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, fetched)
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, inferred)
    evaluator.add_event_handler(IterationEvents.MODEL_COMPLETED, stamp("t_postprocessed"))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, done)

    start = time.perf_counter()
    workflow.run()
    run_s = time.perf_counter() - start

    if len(copies) != len(spec["datalist"]):
        raise RuntimeError(f"{len(copies)} iterations for {len(spec['datalist'])} volumes")
    for path in spec["datalist"]:
        stem = case_name(path)
        mask_path = Path(spec["output_dir"]) / f"{stem}_seg.nii.gz"
        if not mask_path.is_file():
            raise RuntimeError(f"no mask {mask_path} for {path}: {os.listdir(spec['output_dir'])}")
        mask_shape = nib.load(mask_path).shape
        shape = spec.get("shape") or nib.load(path).shape
        if tuple(mask_shape) != tuple(shape):
            raise RuntimeError(f"mask {mask_path} has shape {mask_shape}, input {shape}")
    working = copies[0]["working_shape"]
    result = {
        "torch_threads": torch.get_num_threads(),
        "build_s": build_s,
        "run_s": run_s,
        "run_overhead_s": run_s - sum(c["t_done"] - c["t0"] for c in copies),
        "roi": roi,
        "overlap": overlap,
        "pixdim": [float(v) for v in parser.get_parsed_content("pixdim")],
        "working_shape": working,
        "windows_per_slice": windows_per_slice((working[0], working[1]), roi, overlap),
        "params": params,
        "gflop_per_window": gflop,
        "gflop_per_256_window": gflop_256,
        "rss_after_imports_mb": rss_imported,
        "rss_before_run_mb": rss_before_run,
        "peak_rss_mb": max_rss_mb(),
        "peak_gpu_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "ru_maxrss_mb": ru_maxrss_mb(),  # >= the parent's peak: see max_rss_mb
        "copies": [
            {"s": c["t_done"] - c["t0"], "load_preprocess_s": c["t_fetched"] - c["t0"],
             "inference_s": c["t_inferred"] - c["t_fetched"],
             "postprocess_s": c["t_postprocessed"] - c["t_inferred"],
             "rest_s": c["t_done"] - c["t_postprocessed"], "stall": c["stall"],
             "other_cores": c["other_cores"], "working_shape": c["working_shape"],
             "inferer_stats": c["inferer_stats"]}
            for c in copies
        ],
    }  # fmt: skip
    Path(spec["result"]).write_text(json.dumps(result, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# parent


def bundle_state(bundle: Path) -> dict:
    """The bundle's folder, the repository commit and the SHA-256 of the configs used."""
    configs = sorted({c for row in ROWS for c in row["configs"]})
    git = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=bundle, check=False
    )
    return {
        "path": str(bundle.resolve()),
        "commit": git.stdout.strip() or None,
        "config_sha256": {
            c: hashlib.sha256((bundle / "configs" / c).read_bytes()).hexdigest() for c in configs
        },
    }


def run_child(spec: dict, what: str) -> dict:
    """Run one spec in a fresh process (this script with ``--child``) and read its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed, exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return json.loads(Path(spec["result"]).read_text())


def run_row(row: dict, index: int, args: argparse.Namespace, tmp: Path, image: np.ndarray) -> dict:
    copies = 1 if row["slow"] else max(args.repeats, 2)
    warmup = 0 if row["slow"] else 1
    folder = tmp / f"row{index}"
    datalist = write_copies(image, row["spacing"], copies, folder / "in")
    ckpt = folder / "model.pt"
    bundle = Path(args.bundle).resolve()
    write_checkpoint(row, bundle, ckpt)
    spec = {
        "bundle": str(bundle),
        "configs": [str(bundle / "configs" / c) for c in row["configs"]],
        "overrides": row["overrides"],
        "datalist": datalist,
        "ckpt_path": str(ckpt),
        "output_dir": str(folder / "out"),
        "threads": args.threads,
        "shape": list(SHAPE),
        "result": str(folder / "result.json"),
    }
    result = run_child(spec, f"row {index} ({row['name']})")
    timed = result["copies"][warmup:]
    seconds = [c["s"] for c in timed]
    median = float(np.median(seconds))
    contended = any(c["stall"] > MAX_STALL or c["other_cores"] > MAX_OTHERS for c in timed)
    n_slices = result["working_shape"][2]
    gflop_volume = result["gflop_per_window"] * result["windows_per_slice"] * n_slices
    inference = float(np.median([c["inference_s"] for c in timed]))
    phases = ("load_preprocess_s", "inference_s", "postprocess_s", "rest_s")
    return {
        "row": index, "name": row["name"], "short": row["short"], "configs": row["configs"],
        "overrides": row["overrides"], "volume_shape": list(SHAPE),
        "volume_spacing_mm": [row["spacing"], row["spacing"], SLICE_MM],
        "working_spacing_mm": result["pixdim"][0], "copies": copies, "warmup": warmup,
        "s_per_volume": median, "s_timed": seconds, "contended": contended,
        "phase_median_s": {p: float(np.median([c[p] for c in timed])) for p in phases},
        "gflop_per_volume": gflop_volume, "inference_gflop_per_s": gflop_volume / inference,
        "target": ("met" if median <= TARGET_S else "missed") if row["target"] else None,
        **{k: v for k, v in result.items() if k != "copies"}, "copy_details": result["copies"],
    }  # fmt: skip


def print_tables(rows: list[dict], skipped: list[dict]) -> None:
    header = (
        f"{'row':30} {'vol mm':>6} {'work mm':>7} {'win/sl':>6} {'s/volume':>9} "
        f"{'peak RSS MB':>11} {'params M':>8} {'GFLOP/win':>9} {'target':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        mark = "*" if r["contended"] else " "
        print(
            f"{r['row']} {r['short']:28} {r['volume_spacing_mm'][0]:6.3g} "
            f"{r['working_spacing_mm']:7.3g} {r['windows_per_slice']:6d} "
            f"{r['s_per_volume']:8.2f}{mark} {r['peak_rss_mb']:11.0f} {r['params'] / 1e6:8.2f} "
            f"{r['gflop_per_window']:9.2f} {r['target'] or '—':>6}"
        )
    for s in skipped:
        print(f"{s['row']} {s['short']:28} skipped (--skip-slow)")
    if any(r["contended"] for r in rows):
        print(f"* some timed copy waited > {MAX_STALL:.0%} for a CPU or shared it with others")
    header = (
        f"{'row':3} {'working shape':>17} {'load+pre s':>10} {'infer s':>8} {'post s':>7} "
        f"{'GFLOP/vol':>9} {'GFLOP/s':>7} {'RSS pre-run':>11} {'timed':>5}"
    )
    print("\nper-volume phases (medians): load+preprocess, inference, Invertd+argmax+save")
    print(header)
    print("-" * len(header))
    for r in rows:
        p = r["phase_median_s"]
        shape = "x".join(str(s) for s in r["working_shape"])
        print(
            f"{r['row']:<3} {shape:>17} {p['load_preprocess_s']:10.2f} {p['inference_s']:8.2f} "
            f"{p['postprocess_s']:7.2f} {r['gflop_per_volume']:9.0f} "
            f"{r['inference_gflop_per_s']:7.1f} {r['rss_before_run_mb']:11.0f} "
            f"{len(r['s_timed']):5d}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="copies per row, the first a warm-up (min 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0 = torch's default (the cores)"
    )
    parser.add_argument("--skip-slow", action="store_true", help="leave out row 2 (~1024^2)")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="run a row again (fresh process) up to this often while its timed copies were "
        "contended; the clean (else the fastest) attempt is reported",
    )
    parser.add_argument("--bundle", default=str(BUNDLE), help="the bundle's folder")
    parser.add_argument("--out", default="runs/benchmarks")
    parser.add_argument("--device", default="cpu", help="the config's device, e.g. cuda")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (default: all)")
    parser.add_argument("--shape", default="", help="volume shape X,Y,Z (default 256,256,48)")
    parser.add_argument("--profile", default="", help="override file added to every row")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    global SHAPE
    if args.shape:
        SHAPE = tuple(int(v) for v in args.shape.split(","))
    wanted = {int(v) for v in args.rows.split(",") if v.strip()}

    import monai
    import torch

    load_before, pressure_before = os.getloadavg(), cpu_pressure()
    print(
        f"volume {'x'.join(map(str, SHAPE))}, {SLICE_MM:g} mm slices, repeats {args.repeats}, "
        f"threads {args.threads or 'default'} (os.cpu_count {os.cpu_count()}), "
        f"load avg {load_before[0]:.2f}",
        flush=True,
    )
    image = make_volume()
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="bench_seg_") as tmp:
        for index, row in enumerate(ROWS, start=1):
            if wanted and index not in wanted:
                continue
            row = {
                **row,
                "configs": [*row["configs"], *([args.profile] if args.profile else [])],
                "overrides": {**row["overrides"], "device": f"$torch.device('{args.device}')"},
            }
            if row["slow"] and args.skip_slow:
                skipped.append({"row": index, "name": row["name"], "short": row["short"]})
                continue
            print(f"  row {index}: {row['name']} ...", flush=True)
            attempts = [run_row(row, index, args, Path(tmp), image)]
            while attempts[-1]["contended"] and len(attempts) <= args.retries:
                print("    contended (another process used the CPUs), run again", flush=True)
                attempts.append(run_row(row, index, args, Path(tmp), image))
            r = min(attempts, key=lambda a: (a["contended"], a["s_per_volume"]))
            r["attempts"] = [
                {"s_per_volume": a["s_per_volume"], "contended": a["contended"]} for a in attempts
            ]
            rows.append(r)
            laps = ", ".join(f"{c['s']:.2f}" for c in r["copy_details"])
            print(
                f"    {r['s_per_volume']:.2f} s/volume (copies {laps} s), "
                f"peak RSS {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    print()
    print_tables(rows, skipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = rows[0]["torch_threads"] if rows else torch.get_num_threads()
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "torch_threads": threads,
            "torch_threads_note": "torch default (= cores)" if args.threads <= 0 else "--threads",
        },
        "bundle": bundle_state(Path(args.bundle)),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "cpu_pressure_before": pressure_before,
        "cpu_pressure_after": cpu_pressure(),
        "config": {k: v for k, v in vars(args).items() if k != "child"}
        | {
            "volume_shape": list(SHAPE),
            "slice_mm": SLICE_MM,
            "target_s": TARGET_S,
            "max_stall": MAX_STALL,
            "max_others": MAX_OTHERS,
        },
        "rows": rows,
        "skipped": skipped,
    }
    kind = torch.device(args.device).type
    name = "bench_seg_inference.json" if kind == "cpu" else f"bench_seg_inference_{kind}.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
