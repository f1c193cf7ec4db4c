"""Multi-process training of the synthesis bundle: ``torchrun`` + ``configs/multi_gpu_train.json``.

Two processes on CPU (gloo), the ``test`` profile (32², ngf 8), on the session's tiny phantom
world. A test-only override (``probe.json``, written here) replaces ``finalize`` so that every
rank, before leaving the process group, saves what the bundle's own files cannot show: the
unwrapped state of all five networks, the DDP wrapper types, which parameters each optimizer
steps, the handlers each rank built and the indices its samplers drew. Validation runs every
epoch (``--val_interval 1``), so rank-0-only validation is exercised. About 50 s on 2 cores (two
torchrun starts); a hang (e.g. a collective called on rank 0 only) fails after 300 s.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tumoraware.networks import ResnetGenerator

from .bundle_runner import torchrun_bundle

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "bundles" / "lung_ct2mri_synthesis"
CONFIGS = ["configs/train.json", "configs/profiles/test.json", "configs/multi_gpu_train.json"]
NPROC = 2
TIMEOUT_S = 300
NETS = ("g_ct2mri", "g_mri2ct", "d_mri", "d_ct", "tumour_nets")
# train#handlers that must exist on rank 0 only (validation runs there, the others wait in
# their next all-reduce); any other handler must be on every rank
RANK0_ONLY = {"ValidationHandler", "StatsHandler", "TensorBoardStatsHandler", "CheckpointSaver"}

# Runs on every rank at the end, instead of multi_gpu_train.json's finalize (whose one
# expression, destroy_process_group, is repeated last).
PROBE = {
    "finalize": [
        "$torch.save({"
        "'nets': dict(g_ct2mri=@g_ct2mri.module.state_dict(),"
        " g_mri2ct=@g_mri2ct.module.state_dict(), d_mri=@d_mri.module.state_dict(),"
        " d_ct=@d_ct.module.state_dict(), tumour_nets=@tumour_nets.module.state_dict()),"
        " 'wrappers': [type(n).__name__ for n in"
        " (@g_ct2mri, @g_mri2ct, @d_mri, @d_ct, @tumour_nets)],"
        " 'optimised': [[id(p) for g in o.param_groups for p in g['params']] for o in"
        " (@g_optimizer, @d_optimizer, @u_optimizer)],"
        " 'modules': [[id(p) for n in ns for p in n.module.parameters()] for ns in"
        " ((@g_ct2mri, @g_mri2ct), (@d_mri, @d_ct), (@tumour_nets,))],"
        " 'samplers': [type(@train#dataloader.sampler).__name__,"
        " type(@train#mri_dataloader.sampler).__name__],"
        " 'ct_indices': list(@train#sampler), 'ct_len': len(@train#dataset),"
        " 'mri_indices': list(@train#mri_sampler),"
        " 'handlers': [type(h).__name__ for h in @train#handlers],"
        " 'state_handlers': [type(h).__name__ for h in @train#state_handlers]},"
        " @output_dir + '/probe_rank' + str(dist.get_rank()) + '.pt')",
        "$dist.is_initialized() and dist.destroy_process_group()",
    ]
}


def torchrun(tmp: Path, manifest: Path, models: Path, runs: Path, *extra: str) -> tuple[int, str]:
    """2-process training from the bundle folder, on CPU, with the probe; validation after
    every epoch (``--val_interval 1``), so rank-0-only validation is exercised."""
    probe = tmp / "probe.json"
    probe.write_text(json.dumps(PROBE))
    overrides = dict(zip([e.lstrip("-") for e in extra[::2]], extra[1::2], strict=True))
    return torchrun_bundle(BUNDLE, [*CONFIGS, str(probe)], nproc=NPROC, timeout_s=TIMEOUT_S,
                           ct_manifest=manifest, mri_manifest=manifest, ckpt_dir=models,
                           output_dir=runs, val_interval=1, **overrides)  # fmt: skip


def tail(log: str) -> str:
    return "output tail:\n" + log[-4000:]


@pytest.fixture(scope="module")
def ddp_run(tiny_world, tmp_path_factory) -> dict:
    """One 2-process training run of the test profile (2 epochs x 2 iterations)."""
    _, manifest = tiny_world
    tmp = tmp_path_factory.mktemp("ddp")
    models, runs = tmp / "models", tmp / "runs"
    code, log = torchrun(tmp, manifest, models, runs)
    assert code == 0, tail(log)
    return {"tmp": tmp, "manifest": manifest, "models": models, "runs": runs, "log": log}


def test_both_ranks_train_in_lockstep_and_only_rank0_logs_and_saves(ddp_run):
    log, tmp, runs = ddp_run["log"], ddp_run["tmp"], ddp_run["runs"]
    for rank in range(NPROC):
        assert f"rank {rank}/{NPROC} (gloo): trained 4 iterations" in log, tail(log)
    # StatsHandler on rank 0 only: each iteration is logged once
    for epoch in (1, 2):
        for it in (1, 2):
            assert log.count(f"Epoch: {epoch}/2, Iter: {it}/2 --") == 1, tail(log)
    # TensorBoard writer and both CheckpointSavers on rank 0 only
    assert len(list(runs.glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in tmp.rglob("model.pt")] == ["model.pt"]
    assert len(list(tmp.rglob("checkpoint_final.pt"))) == 1
    assert (runs / "tumour_kl.json").exists() and (runs / "synthesis_epoch0002.png").exists()

    probes = [torch.load(runs / f"probe_rank{r}.pt", weights_only=True) for r in range(NPROC)]
    # which handlers each rank built (the override disables train.json's list items by index,
    # so a reordered train.json shows up here, not as a silently duplicated handler)
    on_rank0, on_rank1 = (set(p["handlers"]) for p in probes)
    assert on_rank0 >= RANK0_ONLY, probes[0]["handlers"]
    assert on_rank1 == on_rank0 - RANK0_ONLY, probes[1]["handlers"]
    assert probes[0]["state_handlers"] == ["CheckpointSaver"]  # resume off: no loader
    assert probes[1]["state_handlers"] == []
    for probe in probes:
        assert probe["wrappers"] == ["DistributedDataParallel"] * len(NETS)
        assert probe["samplers"] == ["DistributedSampler"] * 2
        # each optimizer steps exactly the wrapped modules' own parameter tensors
        assert probe["optimised"] == probe["modules"]
    # every network is the same on both ranks after training on different samples: the
    # gradients were all-reduced (each rank starts from its own seed, seed + rank)
    for name in NETS:
        for key, value in probes[0]["nets"][name].items():
            assert torch.equal(value, probes[1]["nets"][name][key]), f"{name}.{key}"
    # the CT samples are split between the ranks (MONAI's even_divisible pads the shorter)
    ct = [set(p["ct_indices"]) for p in probes]
    assert ct[0] | ct[1] == set(range(probes[0]["ct_len"]))
    assert len(probes[0]["ct_indices"]) == len(probes[1]["ct_indices"])
    assert probes[0]["mri_indices"] != probes[1]["mri_indices"]


def test_model_pt_is_the_plain_generator_state_dict(ddp_run):
    state = torch.load(ddp_run["models"] / "model.pt", weights_only=True)
    assert state and not any(key.startswith("module.") for key in state)
    profile = json.loads((BUNDLE / "configs" / "profiles" / "test.json").read_text())
    generator = ResnetGenerator(1, 1, ngf=profile["ngf"], n_blocks=profile["n_blocks"])
    generator.load_state_dict(state, strict=True)
    final = torch.load(ddp_run["runs"] / "probe_rank0.pt", weights_only=True)["nets"]["g_ct2mri"]
    for key, value in generator.state_dict().items():
        assert torch.equal(value, final[key]), key
    full = torch.load(ddp_run["models"] / "checkpoint_final.pt", weights_only=True)
    for name in NETS:
        assert not any(key.startswith("module.") for key in full[name]), name


def test_resume_loads_the_checkpoint_on_every_rank(ddp_run, tmp_path):
    """``--resume True`` with one more epoch: every rank must load ``checkpoint_final.pt``
    (a rank that did not would run 3 epochs against rank 0's 1 and the run would hang)."""
    models = tmp_path / "models"
    shutil.copytree(ddp_run["models"], models)
    resume = ("--resume", "True", "--max_epochs", "3")
    code, log = torchrun(tmp_path, ddp_run["manifest"], models, tmp_path / "runs", *resume)
    assert code == 0, tail(log)
    assert f"Restored all variables from {models / 'checkpoint_final.pt'}" in log, tail(log)
    for rank in range(NPROC):
        assert f"rank {rank}/{NPROC} (gloo): trained 6 iterations" in log, tail(log)
    assert log.count("Epoch: 3/3, Iter: 2/2 --") == 1, tail(log)
    probes = [
        torch.load(tmp_path / "runs" / f"probe_rank{r}.pt", weights_only=True) for r in range(NPROC)
    ]
    assert probes[0]["state_handlers"] == ["CheckpointLoader", "CheckpointSaver"]
    assert probes[1]["state_handlers"] == ["CheckpointLoader"]
