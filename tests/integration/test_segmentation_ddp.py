"""Multi-process training of the segmentation bundle: ``torchrun`` + ``multi_gpu_train.json``.

Two processes on CPU (gloo), the ``test`` profile, semi-supervised (synthetic MRI from the
synthesis bundle + the tiny world's week-1 MRI). Validation runs on every rank (each on its share
of the volumes; MONAI's metric handlers gather them), so ``--val_interval 1`` exercises the
collectives; a hang fails after 300 s. A test-only override (``probe.json``) replaces
``finalize`` so that every rank saves its unwrapped U-Net weights and the sample indices its
samplers drew, before leaving the process group. The training sampler is MONAI's
``DistributedWeightedRandomSampler`` (each source drawn at its configured share, as on one
process).
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets import UNet

from ..conftest import REPO_ROOT
from .bundle_runner import torchrun_bundle

pytestmark = pytest.mark.slow

BUNDLE = REPO_ROOT / "bundles" / "lung_mri_tumor_segmentation"
CONFIGS = ["configs/train.json", "configs/profiles/test.json", "configs/multi_gpu_train.json"]
TEST_PROFILE = json.loads((BUNDLE / "configs" / "profiles" / "test.json").read_text())
NPROC = 2

PROBE = {
    "finalize": [
        "$torch.save({'weights': @network.module.state_dict(),"
        " 'wrapper': type(@network).__name__,"
        " 'train_indices': list(@train#sampler), 'train_len': len(@train#concat_dataset),"
        " 'sampler': type(@train#sampler).__name__, 'real_len': len(@train#real_dataset),"
        " 'sample_weights': list(@train#sampler.weights), 'synthetic_share': @synthetic_share,"
        " 'val_indices': list(@validate#sampler), 'val_len': len(@validate#dataset)},"
        " @output_dir + '/probe_rank' + str(dist.get_rank()) + '.pt')",
        "$dist.is_initialized() and dist.destroy_process_group()",
    ]
}


@pytest.fixture(scope="module")
def ddp_run(tiny_world, tiny_synthetic_mri, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("seg_ddp")
    probe = tmp / "probe.json"
    probe.write_text(json.dumps(PROBE))
    models, runs = tmp / "models", tmp / "runs"
    code, log = torchrun_bundle(BUNDLE, [*CONFIGS, str(probe)], nproc=NPROC,
                                mri_manifest=tiny_world[1], synthetic_manifest=tiny_synthetic_mri,
                                ckpt_dir=models, output_dir=runs, val_interval=1)  # fmt: skip
    assert code == 0, log[-4000:]
    probes = [torch.load(runs / f"probe_rank{r}.pt", weights_only=True) for r in range(NPROC)]
    return {"models": models, "log": log, "probes": probes}


def test_both_ranks_train_the_same_network_on_disjoint_shares(ddp_run):
    steps = TEST_PROFILE["max_epochs"] * TEST_PROFILE["epoch_length"]
    for rank in range(NPROC):
        assert f"rank {rank}/{NPROC} (gloo): trained {steps} iterations" in ddp_run["log"]
    first, second = ddp_run["probes"]
    assert first["wrapper"] == second["wrapper"] == "DistributedDataParallel"
    assert all(torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"])
    # synthetic + real MRI: each rank draws at the configured source shares from its own slices;
    # only even_divisible's padding (len % 2 samples) is in both shares
    assert first["sampler"] == second["sampler"] == "DistributedWeightedRandomSampler"
    ranks = set(first["train_indices"]), set(second["train_indices"])
    assert len(ranks[0] & ranks[1]) <= -first["train_len"] % NPROC
    n_synthetic = first["train_len"] - first["real_len"]
    assert n_synthetic > first["real_len"] > 0
    weights = [float(w) for w in first["sample_weights"]]
    assert sum(weights[:n_synthetic]) == pytest.approx(first["synthetic_share"])
    assert sum(weights[n_synthetic:]) == pytest.approx(1.0 - first["synthetic_share"])
    # validation volumes are split, not duplicated: every volume once over the two ranks
    assert sorted(first["val_indices"] + second["val_indices"]) == list(range(first["val_len"]))


def test_rank0_saves_a_plain_state_dict_and_logs_once(ddp_run):
    state = torch.load(ddp_run["models"] / "model.pt", map_location="cpu")
    assert not any(k.startswith("module.") for k in state)
    net = UNet(2, 1, 2, TEST_PROFILE["unet_channels"], TEST_PROFILE["unet_strides"],
               num_res_units=TEST_PROFILE["unet_res_units"], norm="batch")  # fmt: skip
    net.load_state_dict(state)
    log = ddp_run["log"]
    assert log.count("Key metric: val_mean_dice best value") == TEST_PROFILE["max_epochs"]
    full = torch.load(ddp_run["models"] / "checkpoint_final.pt", weights_only=False)
    assert full["trainer"]["iteration"] == TEST_PROFILE["max_epochs"] * TEST_PROFILE["epoch_length"]
    assert all(torch.equal(full["network"][k], ddp_run["probes"][0]["weights"][k]) for k in state)
