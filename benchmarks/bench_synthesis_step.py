"""Synthesis training step speed: the CycleGAN engine vs a plain eager PyTorch step.

    python benchmarks/bench_synthesis_step.py [--size 256] [--ngf 64] [--n_blocks 9]
        [--repeats 3] [--threads 0] [--max-stall 0.05] [--max-others 0.1] [--extra-rounds N]
        [--device cpu] [--mode interleaved|sequential] [--steps 20] [--warmup 3]
        [--log-every 50] [--out runs/benchmarks]

Two modes. ``interleaved`` (the default on CPU) is the comparison below. ``sequential`` (the
default on any other device, e.g. ``--device cuda``; see "Sequential mode" at the end) times
the rows of the GPU device check one at a time.

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

Sequential mode: the rows of ``SEQUENTIAL_ROWS`` (plain eager in fp32; engine CycleGAN and
engine tumour-aware with AMP off and on; tumour-aware with AMP and cuDNN's autotuner, what
``deterministic`` false gives) are each built alone, warmed up (``--warmup`` steps, untimed),
FLOP-counted (one untimed step), then ``--steps`` steps run back to back between two device
synchronisations: seconds per step is their mean, as a training loop sees it (the engine reads
its losses back every ``--log-every`` steps, as the bundle's ``log_every``). The peak device
memory (``torch.cuda.max_memory_allocated``, reset after the warm-up) covers the row's networks,
optimizer states, pools and one step's activations; each row is freed before the next. AMP is
honoured on CUDA only (the engine trains in fp32 elsewhere and says so). The time some task
waited for a CPU during the timed steps (Linux PSI) is recorded per row, not acted on: a GPU
machine is not shared. Writes ``bench_synthesis_step_<device>_<size>px_ngf<ngf>_b<blocks>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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
# sequential mode: (variant, AMP, cuDNN autotuner)
SEQUENTIAL_ROWS = (
    ("plain eager", False, False),
    ("engine cyclegan", False, False),
    ("engine cyclegan", True, False),
    ("engine tumour-aware", False, False),
    ("engine tumour-aware", True, False),
    ("engine tumour-aware", True, True),
)
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


def build_gans(
    channels: int, args: argparse.Namespace, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, ...]:
    """G, F, D_MRI, D_CT with ``channels`` in (and out), seeded so variants share weights."""
    torch.manual_seed(0)
    g = ResnetGenerator(channels, channels, ngf=args.ngf, n_blocks=args.n_blocks)
    f = ResnetGenerator(channels, channels, ngf=args.ngf, n_blocks=args.n_blocks)
    d_mri = patch_discriminator(channels, channels=args.ndf)
    d_ct = patch_discriminator(channels, channels=args.ndf)
    return tuple(net.to(device) for net in (g, f, d_mri, d_ct))


def adam(*modules: torch.nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=LR, betas=BETAS)


# ------------------------------------------------------------------------------------------------
# the four step functions (each returns a callable that runs one full training step)


def plain_eager_step(args: argparse.Namespace, device: str = "cpu") -> Callable[[], float]:
    g, f, d_mri, d_ct = build_gans(1, args, device)
    opt_g, opt_d = adam(g, f), adam(d_mri, d_ct)
    ct_loader, mri_loader = random_loaders(args.size, seed=1)
    ct_batches, mri_batches = cycle(ct_loader), cycle(mri_loader)
    log_every, steps = int(getattr(args, "log_every", 1)), [0]

    def lsgan(logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return nnf.mse_loss(logits, target)

    def step() -> float:
        x_c = next(ct_batches)["image"].to(device, non_blocking=True)
        x_m = next(mri_batches)["image"].to(device, non_blocking=True)
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
        total = loss_g.detach() + loss_d.detach()
        steps[0] += 1  # losses read back every log_every steps, as the engine does
        return total.item() if steps[0] % log_every == 0 else total  # type: ignore[return-value]

    return step


def engine_step(
    args: argparse.Namespace,
    masked: bool = False,
    tumour: bool = False,
    device: str = "cpu",
    amp: bool = False,
) -> Callable[[], float]:
    g, f, d_mri, d_ct = build_gans(2 if masked else 1, args, device)
    tumour_nets = TiedTumourUNets(channels=U_CHANNELS).to(device) if tumour else None
    ct_loader, mri_loader = random_loaders(args.size, seed=1)
    log_every = int(getattr(args, "log_every", 1))
    trainer = CycleGANTrainer(
        device=device,
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
        amp=amp,
        non_blocking=device != "cpu",
        log_every=log_every,
    )
    ct_batches = cycle(ct_loader)

    def step() -> float:
        trainer.state.iteration += 1  # as the engine's loop counts: losses read every log_every
        out = trainer._iteration(trainer, next(ct_batches))
        return out["loss_G"] + out["loss_D"]

    step.amp = trainer.amp  # type: ignore[attr-defined]  # False wherever AMP is not honoured
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


# ------------------------------------------------------------------------------------------------
# sequential mode (the GPU device check)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sequential_row(
    args: argparse.Namespace, variant: str, amp: bool, autotune: bool
) -> dict[str, object]:
    """One row of ``SEQUENTIAL_ROWS``, built, timed and measured alone (see the docstring)."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = autotune
    torch.backends.cudnn.deterministic = not autotune
    if variant == "plain eager":
        step = plain_eager_step(args, str(device))
        amp_used = False
    else:
        step = engine_step(args, tumour=variant == "engine tumour-aware", device=str(device),
                           amp=amp)  # fmt: skip
        amp_used = bool(step.amp)  # type: ignore[attr-defined]
    for _ in range(args.warmup):
        step()
    _sync(device)
    flops = count_flops(step)
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    stall0, start = stall_us(), time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    _sync(device)
    wall, stall1 = time.perf_counter() - start, stall_us()
    seconds = wall / args.steps
    if not math.isfinite(float(loss)):
        raise RuntimeError(f"non-finite loss {float(loss)} in {variant}")
    row = {
        "variant": variant, "amp": amp, "amp_used": amp_used, "cudnn_benchmark": autotune,
        "s_per_step": seconds, "steps_per_s": 1.0 / seconds, "steps": args.steps,
        "tflop_per_step": flops / 1e12, "tflop_per_s": flops / seconds / 1e12,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "stall_fraction": None if None in (stall0, stall1) else (stall1 - stall0) / 1e6 / wall,
    }  # fmt: skip
    del step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def device_info(device: torch.device) -> dict[str, object]:
    """The accelerator and the numerics flags the timings depend on."""
    info: dict[str, object] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            capability=[props.major, props.minor],
            memory_gb=props.total_memory / 2**30,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
        )
    else:
        info.update(
            processor=platform.processor() or platform.machine(),
            torch_threads=torch.get_num_threads(),
        )
    return info


def run_sequential(args: argparse.Namespace) -> dict[str, object]:
    """Every ``SEQUENTIAL_ROWS`` row; prints a table, writes and returns the report."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device (torch {torch.__version__})")
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    print(
        f"{device}: size {args.size}, ngf {args.ngf}, ndf {args.ndf}, n_blocks {args.n_blocks}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per row, losses read every "
        f"{args.log_every}",
        flush=True,
    )
    rows = []
    try:
        for variant, amp, autotune in SEQUENTIAL_ROWS:
            rows.append(sequential_row(args, variant, amp, autotune))
            r = rows[-1]
            memory = "" if r["peak_memory_mb"] is None else f", peak {r['peak_memory_mb']:.0f} MB"
            print(
                f"  {variant:20} AMP {'on ' if r['amp_used'] else 'off'} "
                f"autotune {'on ' if autotune else 'off'}: {r['s_per_step'] * 1e3:8.1f} ms/step, "
                f"{r['tflop_per_s']:.2f} TFLOP/s{memory}",
                flush=True,
            )
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
    config = vars(args) | {"batch": 1, "lr": LR, "betas": BETAS, "u_channels": U_CHANNELS}
    report = {"machine": device_info(device), "config": config, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"bench_synthesis_step_{device.type}_{args.size}px_ngf{args.ngf}_b{args.n_blocks}.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / name}")
    return report


# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--device", default="cpu", help="e.g. cuda (sequential mode)")
    parser.add_argument(
        "--mode",
        choices=("interleaved", "sequential"),
        default=None,
        help="default: interleaved on CPU, sequential elsewhere",
    )
    parser.add_argument("--steps", type=int, default=20, help="sequential: timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="sequential: untimed steps per row")
    parser.add_argument(
        "--log-every",
        type=int,
        default=None,
        help="read the losses back every N steps (default: 1 interleaved, 50 sequential)",
    )
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    if args.mode is None:
        args.mode = "interleaved" if torch.device(args.device).type == "cpu" else "sequential"
    if args.log_every is None:
        args.log_every = 1 if args.mode == "interleaved" else 50
    if args.extra_rounds is None:
        args.extra_rounds = args.repeats
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.mode == "sequential":
        run_sequential(args)
        return
    if args.device != "cpu":
        raise SystemExit("the interleaved comparison runs on CPU; use --mode sequential")
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
