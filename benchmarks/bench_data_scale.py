"""Training data at the paper's scale: build time, peak memory and load time against the cohort.

    python benchmarks/bench_data_scale.py [--patients 25,100,377] [--memory_patients 10,25,50]
        [--bundles synthesis,segmentation] [--work runs/benchmarks/data_scale]
        [--out runs/benchmarks] [--step_ms 20] [--batches 40]

Both bundles' ``configs/train.json`` build their training sets as ``python -m monai.bundle run``
does (``monai.bundle.ConfigParser``, the paper's 256² windows, batch 1 / 10), on phantom cohorts
of growing size: the first ``N`` CT patients of one phantom world (the ``demo`` grids, one
tumour slab per CT) with ``N`` up to the paper's 377. The segmentation bundle trains on
synthetic MRI of those ``N`` patients; here the synthesis bundle's inference preprocessing
(window, tumour-region crop) writes a stand-in of the same grid and value range for each, so no
generator has to be trained (the data's size and cost are what is measured, not its look).

Every measurement runs in a child process of its own (peak memory is per process):

- ``store``: the on-disk slice store (``slice_cache_dir``), first on an empty cache (build
  time), then again on the built one (the time to the first batch of a run that finds it);
- ``memory``: slices kept in memory (``slice_cache_dir`` null), the former default, on the
  smaller cohorts only, for the slope it grows with;
- ``persistent``: MONAI's ``PersistentDataset`` on the same volume transform (one cached item
  per volume), for the time to read one random slice.

Reported per row: ``build_s`` (datasets instantiated), ``first_batch_s`` (process start to the
first training batch), ``peak_rss_mb`` (``ru_maxrss`` of the process; its loader workers
separately), ``load_ms`` (one random sample as the loader gets it: read + the per-sample random
transforms), and ``data_ms`` per training batch with ``num_workers`` 0 and 2: the time the
training loop waits in ``next()`` while a stand-in GPU step (``--step_ms`` of sleep, no CPU) runs
between batches. Linear fits of peak memory and build time against ``N`` are printed. Prints a
table, writes ``bench_data_scale.json``.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {
    "synthesis": REPO / "bundles" / "lung_ct2mri_synthesis",
    "segmentation": REPO / "bundles" / "lung_mri_tumor_segmentation",
}
SYNTHETIC_HEADER = {
    "name": "synthetic MRI stand-ins", "labels": {"0": "background", "1": "tumor"},
    "description": "CT windowed and cropped as the synthesis inference does (benchmark data).",
    "base_dir": ".", "generator": {"tool": "bench_data_scale", "version": "0.1.0"},
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the cohort
# ---------------------------------------------------------------------------------------------
def _make_scan(args: tuple) -> None:
    from tumoraware.atomic import save_volume_atomic
    from tumoraware.data.phantoms.world import synthesise_scan

    seed, plan, profile, folder = args
    image_path, label_path = plan.paths(Path(folder))
    if image_path.exists() and label_path.exists():
        return
    scan = synthesise_scan(seed, plan, profile)
    save_volume_atomic(scan.label, scan.grid.affine, label_path)
    save_volume_atomic(scan.image, scan.grid.affine, image_path)


def make_world(work: Path, n_ct: int) -> Path:
    """A phantom world with ``n_ct`` CT patients (``demo`` grids), scans made in parallel."""
    import multiprocessing

    from tqdm.auto import tqdm

    from tumoraware.data.phantoms import PROFILES, generate_world
    from tumoraware.data.phantoms.world import plan_world

    name = f"scale{n_ct}"
    profile = dataclasses.replace(PROFILES["demo"], name=name, n_ct=n_ct)
    PROFILES[name] = profile
    folder, manifest = work / "world", work / "world" / "phantoms.json"
    plans = plan_world(profile, 0)
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        jobs = [(0, p, profile, str(folder)) for p in plans]
        for _ in tqdm(pool.imap_unordered(_make_scan, jobs), total=len(jobs), desc="phantoms"):
            pass
    generate_world(folder, seed=0, profile=name, manifest=manifest, progress=False)
    return manifest


def _stand_in(args: tuple[dict, str]) -> dict:
    """The synthesis inference's preprocessing of one CT, written as a synthetic-MRI stand-in."""
    import nibabel as nib
    import numpy as np
    from monai.bundle import ConfigParser

    item, folder = args
    name = Path(item["image"]).name.replace("_image.nii.gz", "")
    image_path, label_path = (
        Path(folder) / f"{name}_mri.nii.gz",
        Path(folder) / f"{name}_lab.nii.gz",
    )
    if not (image_path.exists() and label_path.exists()):
        parser = ConfigParser()
        parser.read_config(BUNDLES["synthesis"] / "configs" / "inference.json")
        out = parser.get_parsed_content("preprocessing")(item)
        affine = np.asarray(out["image"].affine)
        image = out["image"][0].numpy().astype(np.float32)
        label = out["label"][0].numpy().astype(np.uint8)
        nib.save(nib.Nifti1Image(label, affine), label_path)
        nib.save(nib.Nifti1Image(image, affine), image_path)
    return {"image": image_path.name, "label": label_path.name, "modality": "MR", "patient": name}


def cohort_manifests(world: Path, work: Path, sizes: list[int]) -> dict[int, dict[str, Path]]:
    """Per cohort size: a CT manifest with the first N ``ct_train`` patients and a synthetic-MRI
    manifest (split ``synthetic_train``) of their stand-ins."""
    import multiprocessing

    from tqdm.auto import tqdm

    from tumoraware.data.manifest import load_split

    data = json.loads(world.read_text())
    items = load_split(world, "ct_train")
    folder = work / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        jobs = [(item, str(folder)) for item in items[: max(sizes)]]
        synthetic = list(tqdm(pool.imap(_stand_in, jobs), total=len(jobs), desc="stand-ins"))
    out = {}
    for n in sizes:
        ct = {**data, "ct_train": data["ct_train"][:n]}
        ct_path = world.with_name(f"ct_{n}.json")
        ct_path.write_text(json.dumps(ct))
        syn_path = folder / f"synthetic_{n}.json"
        syn_path.write_text(json.dumps({**SYNTHETIC_HEADER, "synthetic_train": synthetic[:n]}))
        out[n] = {"ct": ct_path, "synthetic": syn_path}
    return out


# ---------------------------------------------------------------------------------------------
# one measurement (child process)
# ---------------------------------------------------------------------------------------------
def _parser(bundle: str, spec: dict) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(BUNDLES[bundle] / "configs" / "metadata.json")
    parser.read_config(BUNDLES[bundle] / "configs" / "train.json")
    tmp = Path(spec["tmp"])
    overrides = {
        "bundle_root": str(BUNDLES[bundle]), "ckpt_dir": str(tmp / "models"),
        "output_dir": str(tmp / "out"), "device": "$torch.device('cpu')",
        "slice_cache_dir": spec["cache"], "slice_cache_workers": None,
    }  # fmt: skip
    if bundle == "synthesis":
        overrides |= {"ct_manifest": spec["ct"], "mri_manifest": spec["world"]}
    else:
        overrides |= {"mri_manifest": spec["world"], "synthetic_manifest": spec["synthetic"]}
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _data_ms(loaders: list, batches: int, step_s: float, workers: int) -> float:
    """Mean ms the loop waits in ``next()`` per training iteration (one batch of each loader)."""
    import torch

    rebuilt = [
        torch.utils.data.DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
            num_workers=workers, collate_fn=loader.collate_fn,
            persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
        )
        for loader in loaders
    ]  # fmt: skip
    iterators = [iter(loader) for loader in rebuilt]
    waited = []
    for index in range(batches + 3):
        start, restarted = time.perf_counter(), False
        for position, it in enumerate(iterators):
            try:
                next(it)
            except StopIteration:  # a small cohort's epoch is over: a new one (not timed)
                iterators[position] = iter(rebuilt[position])
                next(iterators[position])
                restarted = True
        if index >= 3 and not restarted:  # the first batches start the workers
            waited.append(time.perf_counter() - start)
        time.sleep(step_s)
    del iterators, rebuilt
    return 1000.0 * sum(waited) / max(1, len(waited))


def measure(spec: dict) -> dict:
    import random

    import torch

    from tumoraware.seeding import seed_run

    torch.set_num_threads(1)
    bundle, mode = spec["bundle"], spec["mode"]
    parser = _parser(bundle, spec)
    seed_run(0)
    start = time.perf_counter()
    if mode == "persistent":
        return _persistent(parser, spec)
    if bundle == "synthesis":
        loaders = [
            parser.get_parsed_content(k) for k in ("train#dataloader", "train#mri_dataloader")
        ]
        parser.get_parsed_content("validate#ct_slices")
        parser.get_parsed_content("validate#mri_dataset")
        samples = loaders[0].dataset
    else:
        loaders = [parser.get_parsed_content("train#dataloader")]
        samples = loaders[0].dataset
    build_s = time.perf_counter() - start
    next(iter(loaders[0]))
    first_batch_s = time.perf_counter() - PROCESS_START
    rng = random.Random(0)
    picks = [rng.randrange(len(samples)) for _ in range(200)]
    start = time.perf_counter()
    for index in picks:
        samples[index]
    load_ms = 1000.0 * (time.perf_counter() - start) / len(picks)
    row = {
        "build_s": round(build_s, 2), "first_batch_s": round(first_batch_s, 2),
        "samples": len(samples), "load_ms": round(load_ms, 3),
    }  # fmt: skip
    for workers in spec["workers"]:
        row[f"data_ms_w{workers}"] = round(
            _data_ms(loaders, spec["batches"], spec["step_ms"] / 1000.0, workers), 3
        )
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    row["peak_rss_children_mb"] = round(children, 1)
    return row


def _persistent(parser: Any, spec: dict) -> dict:
    """MONAI ``PersistentDataset`` on the same volume transform: a random slice costs its volume."""
    import random

    from monai.data import PersistentDataset

    from tumoraware.data.manifest import load_split

    if spec["bundle"] == "synthesis":
        data, transform = load_split(spec["ct"], "ct_train"), "train#ct_preprocessing"
    else:
        data = load_split(spec["synthetic"], "synthetic_train")
        transform = "train#synthetic_volume_preprocessing"
    dataset = PersistentDataset(data, parser.get_parsed_content(transform), cache_dir=spec["cache"])
    start = time.perf_counter()
    sizes = [len(dataset[i]) for i in range(len(dataset))]
    build_s = time.perf_counter() - start
    rng = random.Random(0)
    picks = [rng.randrange(len(dataset)) for _ in range(50)]
    start = time.perf_counter()
    for index in picks:
        dataset[index][0]
    load_ms = 1000.0 * (time.perf_counter() - start) / len(picks)
    return {
        "build_s": round(build_s, 2), "samples": sum(sizes), "load_ms": round(load_ms, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def run_child(spec: dict) -> dict:
    print(f"  {spec['bundle']:12s} {spec['mode']:10s} N={spec['n']:<4d} {spec['label']} ...",
          flush=True)  # fmt: skip
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement failed ({spec}):\n{proc.stderr[-3000:]}")
    return {**{k: spec[k] for k in ("bundle", "mode", "n", "label")}, **json.loads(lines[-1][7:])}


def fit(rows: list[dict], key: str) -> dict | None:
    """Least-squares ``key = a + b * N`` over ``rows``."""
    points = [(r["n"], r[key]) for r in rows if r.get(key) is not None]
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return {"intercept": round(mean_y - slope * mean_x, 2), "per_patient": round(slope, 3),
            "at_377": round(mean_y + slope * (377 - mean_x), 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--patients", default="25,100,377")
    parser.add_argument("--memory_patients", default="10,25,50")
    parser.add_argument("--persistent_patients", default="25")
    parser.add_argument("--bundles", default="synthesis,segmentation")
    parser.add_argument("--work", default=str(REPO / "runs" / "benchmarks" / "data_scale"))
    parser.add_argument("--out", default=str(REPO / "runs" / "benchmarks"))
    parser.add_argument("--step_ms", type=float, default=20.0)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(json.loads(args.child))), flush=True)
        return
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    store_n, memory_n, persistent_n = (
        ints(args.patients),
        ints(args.memory_patients),
        ints(args.persistent_patients),
    )
    work = Path(args.work)
    world = make_world(work, max(store_n + memory_n + persistent_n))
    manifests = cohort_manifests(world, work, sorted(set(store_n + memory_n + persistent_n)))
    rows = []
    for bundle in args.bundles.split(","):
        for mode, sizes in (("memory", memory_n), ("persistent", persistent_n), ("store", store_n)):
            for n in sizes:
                cache = work / "cache" / f"{bundle}_{mode}_{n}"
                shutil.rmtree(cache, ignore_errors=True)
                spec = {
                    "bundle": bundle, "mode": mode, "n": n, "world": str(world),
                    "ct": str(manifests[n]["ct"]), "synthetic": str(manifests[n]["synthetic"]),
                    "cache": str(cache) if mode != "memory" else None, "tmp": str(work / "tmp"),
                    "workers": [0, 2] if mode != "persistent" else [], "batches": args.batches,
                    "step_ms": args.step_ms, "label": "cold",
                }  # fmt: skip
                rows.append(run_child(spec))
                if mode == "store":
                    rows.append(run_child({**spec, "label": "warm"}))
                if mode != "memory":
                    shutil.rmtree(cache, ignore_errors=True)
    fits = {}
    for bundle in args.bundles.split(","):
        for mode, label in (("memory", "cold"), ("store", "cold"), ("store", "warm")):
            chosen = [
                r for r in rows if (r["bundle"], r["mode"], r["label"]) == (bundle, mode, label)
            ]
            fits[f"{bundle} {mode} {label}"] = {
                "peak_rss_mb": fit(chosen, "peak_rss_mb"),
                "build_s": fit(chosen, "build_s"),
            }
    columns = ["bundle", "mode", "label", "n", "samples", "build_s", "first_batch_s",
               "peak_rss_mb", "peak_rss_children_mb", "load_ms", "data_ms_w0",
               "data_ms_w2"]  # fmt: skip
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in columns))
    print("linear fits (value = intercept + per_patient * N; at_377 extrapolated):")
    for name, value in fits.items():
        print(f"  {name}: {value}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "step_ms": args.step_ms, "batches": args.batches, "rows": rows, "fits": fits,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }  # fmt: skip
    (out / "bench_data_scale.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'bench_data_scale.json'}")


if __name__ == "__main__":
    main()
