"""Synthesis training step speed: the CycleGAN engine vs a plain eager PyTorch step, on CPU.

    python benchmarks/bench_synthesis_step.py [--size 256] [--ngf 64] [--n_blocks 9]
        [--repeats 3] [--threads 0] [--max-stall 0.05] [--max-others 0.1] [--extra-rounds N]
        [--out runs/benchmarks]

Seconds per training step (batch 1) of four variants, built once each and timed *interleaved*
(A, B, C, D, A, B, C, D, ...; medians reported) because a shared machine is noisy:

- ``plain eager``: a CycleGAN step written here with no engine: G, F (``ResnetGenerator``),
  D_MRI, D_CT (``patch_discriminator``), LSGAN (MSE against ones/zeros on ``D(x)[-1]``), cycle
  L1 x 10, Adam(1e-4, (0.5, 0.999)); G step with D frozen, D step on detached fakes, no pool;
- ``engine cyclegan``: one ``CycleGANTrainer._iteration`` with ``tumour_nets=None``, same nets;
- ``engine masked``: ``masked=True`` (2-channel generators and discriminators);
- ``engine tumour-aware``: with ``TiedTumourUNets(channels=(32, 64, 128, 256))`` and its Adam.

All variants fetch their CT and MRI batches from tiny in-memory ``DataLoader``s (num_workers=0)
inside the timed region; the engines use the bundle's pool (50 images). Each variant gets one
untimed warm-up step, then one untimed step under ``torch.utils.flop_counter.FlopCounterMode``
(forward + backward FLOPs; the optimizer steps are not counted). No identity loss (the
bundle's default, λidentity = 0): at 256², ngf 64, 9 blocks a step is ≈ 1.27 TFLOP, and the
reference CycleGAN's λidentity = 0.5 would add two generator passes (≈ 1.85 TFLOP). The fp32
matmul peak is the best timing of 2048 x 2048 @ 2048 x 2048 (2 n^3 FLOP) over probes taken
before the steps, after every round and at the end; the per-round probe shows when another
process was competing for the cores. Contention is also read around every step: the time
some task waited for a CPU (Linux PSI, ``/proc/pressure/cpu``) and the cores that *other*
processes kept busy (``/proc/stat`` minus this process's CPU time). A round in which some step
waited more than ``--max-stall`` of its time, or others used more than ``--max-others`` cores,
is marked contended and repeated (at most ``--extra-rounds`` times); medians are taken over the
clean rounds (over all rounds, flagged, if none was clean). Besides the ratios of medians, the
JSON has paired ratios (median over rounds of the per-round ratio) and every round's times,
stall fractions, other processes' cores and matmul probe.

Targets: engine cyclegan <= 1.03 x plain eager; tumour-aware <= 1.15 x engine cyclegan;
every variant >= 60 % of the measured peak. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from contention import busy_s, cpu_pressure, own_cpu_s, stall_us  # benchmarks/contention.py
from torch.nn import functional as nnf
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from tumoraware.engines import CycleGANTrainer
from tumoraware.losses import TumourAwareObjective
from tumoraware.networks import ResnetGenerator, TiedTumourUNets, patch_discriminator

LR, BETAS, LAMBDA_CYC = 1e-4, (0.5, 0.999), 10.0
U_CHANNELS = (32, 64, 128, 256)
N_SAMPLES = 4  # distinct random slices per loader
VARIANTS = ("plain eager", "engine cyclegan", "engine masked", "engine tumour-aware")
TARGETS = {"engine_vs_plain": 1.03, "tumour_vs_engine": 1.15, "pct": 60.0}  # % of matmul peak


# ------------------------------------------------------------------------------------------------
# data and networks


def random_loaders(size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """CT slices in [-1, 1] with a random binary tumour disk, and MRI slices in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ct, mri = [], []
    for _ in range(N_SAMPLES):
        cy, cx = (torch.rand(2, generator=gen) * 0.5 + 0.25) * size
        radius = float(torch.empty(()).uniform_(size / 16, size / 6, generator=gen))
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).float()[None]
        image = torch.rand(1, size, size, generator=gen) * 2 - 1
        ct.append({"image": image, "label": disk})
        mri.append({"image": torch.rand(1, size, size, generator=gen) * 2 - 1})
    return DataLoader(ct, batch_size=1), DataLoader(mri, batch_size=1)


def cycle(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader


def build_gans(channels: int, args: argparse.Namespace) -> tuple[torch.nn.Module, ...]:
    """G, F, D_MRI, D_CT with ``channels`` in (and out), seeded so variants share weights."""
    torch.manual_seed(0)
    g = ResnetGenerator(channels, channels, ngf=args.ngf, n_blocks=args.n_blocks)
    f = ResnetGenerator(channels, channels, ngf=args.ngf, n_blocks=args.n_blocks)
    d_mri = patch_discriminator(channels, channels=args.ndf)
    d_ct = patch_discriminator(channels, channels=args.ndf)
    return g, f, d_mri, d_ct


def adam(*modules: torch.nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=LR, betas=BETAS)


# ------------------------------------------------------------------------------------------------
# the four step functions (each returns a callable that runs one full training step)


def plain_eager_step(args: argparse.Namespace) -> Callable[[], float]:
    g, f, d_mri, d_ct = build_gans(1, args)
    opt_g, opt_d = adam(g, f), adam(d_mri, d_ct)
    ct_loader, mri_loader = random_loaders(args.size, seed=1)
    ct_batches, mri_batches = cycle(ct_loader), cycle(mri_loader)

    def lsgan(logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return nnf.mse_loss(logits, target)

    def step() -> float:
        x_c, x_m = next(ct_batches)["image"], next(mri_batches)["image"]
        for net in (g, f, d_mri, d_ct):
            net.train()
        # G step, D frozen
        d_mri.requires_grad_(False)
        d_ct.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        fake_mri = g(x_c)
        rec_ct = f(fake_mri)
        fake_ct = f(x_m)
        rec_mri = g(fake_ct)
        adv = lsgan(d_mri(fake_mri)[-1], True) + lsgan(d_ct(fake_ct)[-1], True)
        cyc = nnf.l1_loss(rec_ct, x_c) + nnf.l1_loss(rec_mri, x_m)
        loss_g = adv + LAMBDA_CYC * cyc
        loss_g.backward()
        opt_g.step()
        d_mri.requires_grad_(True)
        d_ct.requires_grad_(True)
        # D step on detached fakes
        opt_d.zero_grad(set_to_none=True)
        fake_mri, fake_ct = fake_mri.detach(), fake_ct.detach()
        loss_d = 0.5 * (lsgan(d_mri(x_m)[-1], True) + lsgan(d_mri(fake_mri)[-1], False)) + 0.5 * (
            lsgan(d_ct(x_c)[-1], True) + lsgan(d_ct(fake_ct)[-1], False)
        )
        loss_d.backward()
        opt_d.step()
        return loss_g.item() + loss_d.item()

    return step


def engine_step(
    args: argparse.Namespace, masked: bool = False, tumour: bool = False
) -> Callable[[], float]:
    g, f, d_mri, d_ct = build_gans(2 if masked else 1, args)
    tumour_nets = TiedTumourUNets(channels=U_CHANNELS) if tumour else None
    ct_loader, mri_loader = random_loaders(args.size, seed=1)
    trainer = CycleGANTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=ct_loader,
        mri_data_loader=mri_loader,
        g_ct2mri=g,
        g_mri2ct=f,
        d_mri=d_mri,
        d_ct=d_ct,
        g_optimizer=adam(g, f),
        d_optimizer=adam(d_mri, d_ct),
        objective=TumourAwareObjective(lambda_cyc=LAMBDA_CYC),
        tumour_nets=tumour_nets,
        u_optimizer=adam(tumour_nets) if tumour else None,
        pool_size=50,
        pool_seed=0,
        masked=masked,
    )
    ct_batches = cycle(ct_loader)

    def step() -> float:
        out = trainer._iteration(trainer, next(ct_batches))
        return out["loss_G"] + out["loss_D"]

    return step


# ------------------------------------------------------------------------------------------------
# measurement


def matmul_peak(n: int = 2048, repeats: int = 8) -> float:
    """Best-of GFLOP/s of an fp32 ``n x n @ n x n`` matmul (2 n^3 FLOP)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def count_flops(step: Callable[[], float]) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def timed(step: Callable[[], float]) -> tuple[float, float, float]:
    """One step: seconds, the fraction of them some task waited for a CPU (Linux PSI), and the
    cores other processes kept busy meanwhile (0 where unknown).

    On its own this process stalls < 2 % of the time and others use ~0.01 cores; a competing
    process pushes one or both far up.
    """
    gc.collect()
    stall0, busy0, own0 = stall_us(), busy_s(), own_cpu_s()
    start = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - start
    stall1, busy1, own1 = stall_us(), busy_s(), own_cpu_s()
    if not np.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss} in a benchmark step")
    waited = 0.0 if stall0 is None or stall1 is None else (stall1 - stall0) / 1e6 / seconds
    others = 0.0 if busy0 is None or busy1 is None else (busy1 - busy0 - own1 + own0) / seconds
    return seconds, waited, max(others, 0.0)


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of the per-round ratio a/b (adjacent steps share the noise)."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


def measure(args: argparse.Namespace) -> tuple[list[dict], dict]:
    builders = {
        "plain eager": lambda: plain_eager_step(args),
        "engine cyclegan": lambda: engine_step(args),
        "engine masked": lambda: engine_step(args, masked=True),
        "engine tumour-aware": lambda: engine_step(args, tumour=True),
    }
    peaks = [matmul_peak()]  # one probe before, one per round, one after
    steps = {name: builders[name]() for name in VARIANTS}
    flops = {}
    for name, step in steps.items():
        timed(step)  # warm-up
        flops[name] = count_flops(step)
        print(f"  {name:20} warm-up done, {flops[name] / 1e12:.3f} TFLOP/step", flush=True)
    # interleaved rounds; a round in which another process competed for the CPUs (some step
    # waited > --max-stall of its time, or others kept > --max-others cores busy) is repeated,
    # up to --extra-rounds times
    rounds: list[dict] = []
    while sum(not r["contended"] for r in rounds) < args.repeats:
        if len(rounds) >= args.repeats + args.extra_rounds:
            break
        laps = {name: timed(step) for name, step in steps.items()}
        peaks.append(matmul_peak(repeats=3))
        stall = max(waited for _, waited, _ in laps.values())
        others = max(cores for _, _, cores in laps.values())
        contended = stall > args.max_stall or others > args.max_others
        rounds.append({
            "seconds": {name: lap[0] for name, lap in laps.items()},
            "stall_fraction": {name: lap[1] for name, lap in laps.items()},
            "other_cores": {name: lap[2] for name, lap in laps.items()},
            "matmul_gflop_per_s": peaks[-1], "contended": contended,
        })  # fmt: skip
        text = ", ".join(f"{name} {lap[0]:.2f}" for name, lap in laps.items())
        mark = "CONTENDED, repeated" if contended else "ok"
        print(
            f"  round {len(rounds)}: {text} s; matmul {peaks[-1]:.0f} GFLOP/s; max stall "
            f"{stall:.0%}, others {others:.2f} cores; {mark}",
            flush=True,
        )
    peaks.append(matmul_peak())
    peak = max(peaks)
    used = [r for r in rounds if not r["contended"]] or rounds
    seconds = {name: [r["seconds"][name] for r in used] for name in VARIANTS}
    median = {name: float(np.median(seconds[name])) for name in VARIANTS}
    rows = []
    for name in VARIANTS:
        gflops = flops[name] / median[name] / 1e9
        rows.append({
            "variant": name, "s_per_step": median[name], "s_used": seconds[name],
            "s_min": min(seconds[name]),
            "vs_plain": median[name] / median["plain eager"],
            "vs_engine": median[name] / median["engine cyclegan"],
            "vs_plain_paired": paired(seconds[name], seconds["plain eager"]),
            "vs_engine_paired": paired(seconds[name], seconds["engine cyclegan"]),
            "tflop_per_step": flops[name] / 1e12, "gflop_per_s": gflops,
            "pct_of_peak": 100 * gflops / peak,
        })  # fmt: skip
    info = {
        "matmul_peak_gflop_per_s": peak,
        "matmul_peak_samples": peaks,
        "rounds": rounds,
        "rounds_used": len(used),
        "rounds_used_clean": used is not rounds,
    }
    return rows, info


def check_targets(rows: list[dict]) -> list[dict]:
    by = {r["variant"]: r for r in rows}
    engine, tumour, peak = (TARGETS[k] for k in ("engine_vs_plain", "tumour_vs_engine", "pct"))
    checks = [
        (f"engine cyclegan <= {engine}x plain", by["engine cyclegan"]["vs_plain"], "<=", engine),
        (f"tumour-aware <= {tumour}x engine", by["engine tumour-aware"]["vs_engine"], "<=", tumour),
    ]  # fmt: skip
    checks += [
        (f"{r['variant']} >= {peak:.0f}% of peak", r["pct_of_peak"], ">=", peak) for r in rows
    ]
    return [
        {"target": text, "value": value, "op": op, "limit": limit,
         "pass": value <= limit if op == "<=" else value >= limit}
        for text, value, op, limit in checks
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--n_blocks", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0 = torch's default (the cores)"
    )
    parser.add_argument(
        "--max-stall",
        type=float,
        default=0.05,
        help="a round whose steps waited for a CPU more than this fraction is repeated",
    )
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.1,
        help="a round during which other processes kept more cores busy than this is repeated",
    )
    parser.add_argument(
        "--extra-rounds", type=int, default=None, help="most repeated rounds (default --repeats)"
    )
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args()
    if args.extra_rounds is None:
        args.extra_rounds = args.repeats
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_before, pressure_before = os.getloadavg(), cpu_pressure()
    print(
        f"size {args.size}, ngf {args.ngf}, ndf {args.ndf}, n_blocks {args.n_blocks}, "
        f"repeats {args.repeats}, torch threads {threads} (os.cpu_count {os.cpu_count()}), "
        f"load avg {load_before[0]:.2f}",
        flush=True,
    )
    rows, info = measure(args)
    checks = check_targets(rows)
    header = (
        f"{'variant':20} {'s/step':>7} {'min s':>7} {'vs plain':>8} {'vs engine':>9} "
        f"{'TFLOP':>6} {'GFLOP/s':>7} {'% peak':>6}"
    )
    print(
        f"\nfp32 matmul peak (2048^3, best of all probes): "
        f"{info['matmul_peak_gflop_per_s']:.1f} GFLOP/s; cpu pressure now: {cpu_pressure()}"
    )
    clean = "clean" if info["rounds_used_clean"] else "ALL CONTENDED, numbers unreliable:"
    print(f"medians over {info['rounds_used']} {clean} rounds of {len(info['rounds'])}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['variant']:20} {r['s_per_step']:7.2f} {r['s_min']:7.2f} {r['vs_plain']:8.3f} "
            f"{r['vs_engine']:9.3f} {r['tflop_per_step']:6.3f} {r['gflop_per_s']:7.1f} "
            f"{r['pct_of_peak']:6.1f}"
        )
    by = {r["variant"]: r for r in rows}
    print(
        "paired (median of per-round ratios): engine/plain "
        f"{by['engine cyclegan']['vs_plain_paired']:.3f}, tumour-aware/engine "
        f"{by['engine tumour-aware']['vs_engine_paired']:.3f}"
    )
    print()
    for c in checks:
        mark = "PASS" if c["pass"] else "FAIL"
        print(f"[{mark}] {c['target']}: {c['value']:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"bench_synthesis_step_{args.size}px_ngf{args.ngf}_b{args.n_blocks}.json"
    report = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "torch_threads_note": "torch default (= cores)" if args.threads <= 0 else "--threads",
        "cpu_count": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "cpu_pressure_before": pressure_before,
        "cpu_pressure_after": cpu_pressure(),
        "config": vars(args) | {"batch": 1, "lr": LR, "betas": BETAS, "u_channels": U_CHANNELS},
        **info,
        "rows": rows,
        "targets": checks,
    }
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
