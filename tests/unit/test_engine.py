"""CycleGANTrainer (the paper's alternating G / D / U update) and the CycleGAN image pool.

Tiny sizes throughout: 32x32 images, ngf 8, one ResNet block, U-Net channels (4, 8).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import pytest
import torch
from ignite.engine import Events
from monai.handlers import CheckpointLoader, CheckpointSaver
from torch.utils.data import DataLoader

from tumoraware.engines import CycleGANEvents, CycleGANTrainer, ImagePool
from tumoraware.losses import TumourAwareObjective
from tumoraware.networks import ResnetGenerator, TiedTumourUNets, patch_discriminator

LOSS_KEYS = {
    "loss_G", "loss_D", "loss_U", "adv_G", "cycle", "tumour", "feature", "identity", "real_mri",
}  # fmt: skip
SIZE = 32


# ------------------------------------------------------------------------------------------------
# helpers


def ct_batch(batch: int = 2, label: bool = True) -> dict[str, torch.Tensor]:
    """A CT batch: image in [-1, 1], a square binary tumour."""
    data = {"image": torch.rand(batch, 1, SIZE, SIZE) * 2 - 1}
    if label:
        mask = torch.zeros(batch, 1, SIZE, SIZE)
        mask[..., 10:18, 12:20] = 1.0
        data["label"] = mask
    return data


def mri_batch(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"image": torch.rand(batch, 1, SIZE, SIZE) * 2 - 1}


class CountingLoader:
    """An MRI 'loader' that counts how often it is restarted and how many batches it gave."""

    def __init__(self, n_batches: int) -> None:
        self.batches = [mri_batch() for _ in range(n_batches)]
        self.restarts = 0
        self.served = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.restarts += 1
        for batch in self.batches:
            self.served += 1
            yield batch


def build_trainer(
    *,
    n_ct: int = 1,
    ct_loader=None,
    mri_loader=None,
    tumour: bool = True,
    masked: bool = False,
    max_epochs: int = 1,
    ct_label: bool = True,
    u_lr: float = 1e-3,
    u_sgd: bool = False,
    device: str = "cpu",
    **kwargs,
) -> CycleGANTrainer:
    channels = 2 if masked else 1
    g_ct2mri = ResnetGenerator(channels, channels, ngf=8, n_blocks=1).to(device)
    g_mri2ct = ResnetGenerator(channels, channels, ngf=8, n_blocks=1).to(device)
    d_mri = patch_discriminator(channels, channels=8, num_layers_d=2).to(device)
    d_ct = patch_discriminator(channels, channels=8, num_layers_d=2).to(device)
    g_params = [*g_ct2mri.parameters(), *g_mri2ct.parameters()]
    d_params = [*d_mri.parameters(), *d_ct.parameters()]
    tumour_nets = u_optimizer = None
    if tumour:
        tumour_nets = TiedTumourUNets(channels=(4, 8)).to(device)
        optim = torch.optim.SGD if u_sgd else torch.optim.Adam
        u_optimizer = optim(tumour_nets.parameters(), lr=u_lr)
    u_optimizer = kwargs.pop("u_optimizer", u_optimizer)
    if ct_loader is None:
        ct_loader = [ct_batch(label=ct_label) for _ in range(n_ct)]
    kwargs.setdefault("objective", TumourAwareObjective())
    return CycleGANTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=ct_loader,
        mri_data_loader=mri_loader if mri_loader is not None else [mri_batch()],
        g_ct2mri=g_ct2mri,
        g_mri2ct=g_mri2ct,
        d_mri=d_mri,
        d_ct=d_ct,
        g_optimizer=torch.optim.Adam(g_params, lr=1e-3),
        d_optimizer=torch.optim.Adam(d_params, lr=1e-3),
        tumour_nets=tumour_nets,
        u_optimizer=u_optimizer,
        masked=masked,
        pool_seed=0,
        **kwargs,
    )


def snapshot(*modules: torch.nn.Module | None) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules if m is not None for p in m.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------------
# ImagePool


def test_pool_fills_then_returns_about_half_old_images():
    pool = ImagePool(pool_size=50, seed=0)
    first = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1).expand(50, 1, 2, 2)
    for chunk in first.split(10):  # while filling, every image comes back as it is
        assert torch.equal(pool.query(chunk), chunk)
    assert len(pool) == 50
    stored_before = {float(img[0, 0, 0]) for img in pool.images}
    new = 100.0 + torch.arange(400, dtype=torch.float32).view(400, 1, 1, 1).expand(400, 1, 2, 2)
    old_returned = 0
    for image in new.split(1):
        out = pool.query(image)
        value = float(out[0, 0, 0, 0])
        if value != float(image[0, 0, 0, 0]):
            old_returned += 1
            assert value in stored_before or value >= 100.0  # a stored image, never made up
            assert value < float(image[0, 0, 0, 0])  # it was stored earlier
    assert len(pool) == 50
    assert 0.4 < old_returned / 400 < 0.6


def test_pool_is_deterministic_with_a_seed_and_returns_detached_clones():
    images = [torch.randn(3, 1, 4, 4) for _ in range(30)]
    runs = []
    for seed in (7, 7, 8):
        pool = ImagePool(pool_size=5, seed=seed)
        runs.append(torch.cat([pool.query(x) for x in images]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])

    pool = ImagePool(pool_size=5, seed=0)
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    out = pool.query(x)
    assert not out.requires_grad
    with torch.no_grad():
        x.add_(1.0)  # the pool keeps clones, not views of the caller's tensor
    assert torch.equal(pool.images[0], out[0])
    assert not torch.equal(pool.images[0], x[0].detach())


def test_pool_size_zero_is_identity_and_state_round_trips():
    x = torch.randn(4, 1, 4, 4)
    assert ImagePool(pool_size=0).query(x) is x
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(pool_size=-1)

    pool = ImagePool(pool_size=3, seed=1)
    for _ in range(3):
        pool.query(torch.randn(2, 1, 4, 4))
    copy = ImagePool(pool_size=3, seed=99)
    copy.load_state_dict(pool.state_dict())
    probe = torch.randn(6, 1, 4, 4)
    assert torch.equal(pool.query(probe), copy.query(probe))


# ------------------------------------------------------------------------------------------------
# one iteration


def test_one_iteration_returns_all_losses_finite_and_preview_images():
    trainer = build_trainer()
    trainer.run()
    out = trainer.state.output
    assert set(out) == LOSS_KEYS | {"loss", "images"}
    assert out["loss"] == out["loss_G"]  # MONAI's conventional key for the main objective
    for key in LOSS_KEYS:
        assert type(out[key]) is float, key
        assert math.isfinite(out[key]), key
    for key in ("loss_G", "loss_D", "loss_U", "adv_G", "cycle", "tumour", "feature"):
        assert out[key] > 0, key
    assert out["identity"] == 0.0
    assert out["real_mri"] == 0.0  # the paper's U objective has no real-MRI term
    assert "mri_has_tumour" not in out  # unlabelled MRI: nothing to count
    images = out["images"]
    assert set(images) == {"ct", "fake_mri", "rec_ct", "label"}
    for key in ("ct", "fake_mri", "rec_ct", "label"):
        assert images[key].shape == (2, 1, SIZE, SIZE), key
        assert not images[key].requires_grad, key


def test_gradient_routing_each_step_updates_only_its_networks():
    trainer = build_trainer()
    names = ("g_ct2mri", "g_mri2ct", "d_mri", "d_ct", "tumour_nets")
    snaps: dict[str, dict[str, list[torch.Tensor]]] = {}
    frozen_during_g = []

    def take(step):
        def handler(engine):
            snaps[step] = {name: snapshot(getattr(engine, name)) for name in names}

        return handler

    g_grads: dict[str, list[torch.Tensor]] = {}

    def no_grad_in_d_and_u(engine):
        nets = (engine.d_mri, engine.d_ct, engine.tumour_nets)
        frozen_during_g.append(all(p.grad is None for m in nets for p in m.parameters()))

    def keep_g_grads(step):
        def handler(engine):
            nets = (engine.g_ct2mri, engine.g_mri2ct)
            g_grads[step] = [p.grad.clone() for m in nets for p in m.parameters()]

        return handler

    trainer.add_event_handler(Events.ITERATION_STARTED, take("start"))
    trainer.add_event_handler(CycleGANEvents.GENERATOR_COMPLETED, take("G"))
    trainer.add_event_handler(CycleGANEvents.GENERATOR_COMPLETED, no_grad_in_d_and_u)
    trainer.add_event_handler(CycleGANEvents.DISCRIMINATOR_COMPLETED, take("D"))
    trainer.add_event_handler(CycleGANEvents.TUMOUR_NETWORK_COMPLETED, take("U"))
    trainer.add_event_handler(CycleGANEvents.GENERATOR_COMPLETED, keep_g_grads("G"))
    trainer.add_event_handler(CycleGANEvents.TUMOUR_NETWORK_COMPLETED, keep_g_grads("U"))
    trainer.run()

    def changed(before, after):
        return {name for name in names if not same(snaps[before][name], snaps[after][name])}

    assert changed("start", "G") == {"g_ct2mri", "g_mri2ct"}
    assert frozen_during_g == [True]  # D and U got no gradient from loss_G
    assert changed("G", "D") == {"d_mri", "d_ct"}
    assert changed("D", "U") == {"tumour_nets"}
    assert same(g_grads["G"], g_grads["U"])  # the D and U losses sent no gradient into G


def test_tied_penultimate_module_is_updated_once_per_u_step():
    lr = 0.5
    trainer = build_trainer(u_sgd=True, u_lr=lr)
    tied = list(trainer.tumour_nets.penultimate.parameters())
    assert trainer.tumour_nets.u_ct.penultimate is trainer.tumour_nets.u_mri.penultimate
    assert tied, "the tied module has parameters"
    ids = [id(p) for group in trainer.u_optimizer.param_groups for p in group["params"]]
    assert len(ids) == len(set(ids)), "a U parameter appears twice in u_optimizer"
    assert all(ids.count(id(p)) == 1 for p in tied)
    before = [p.detach().clone() for p in tied]
    trainer.run()
    # after SGD the step is exactly -lr x (the gradient summed over the U_CT and U_MRI paths):
    # one update, not one per path
    for p, p0 in zip(tied, before, strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0
        torch.testing.assert_close(p.detach() - p0, -lr * p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("lambda_identity", [0.0, 0.5])
def test_generators_run_twice_per_iteration_plus_identity(lambda_identity):
    trainer = build_trainer(n_ct=2, objective=TumourAwareObjective(lambda_identity=lambda_identity))
    calls = {"g_ct2mri": 0, "g_mri2ct": 0}
    for name in calls:
        getattr(trainer, name).register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    trainer.run()
    per_iteration = 3 if lambda_identity > 0 else 2
    assert calls == {"g_ct2mri": 2 * per_iteration, "g_mri2ct": 2 * per_iteration}
    assert (trainer.state.output["identity"] > 0) == (lambda_identity > 0)


def test_u_ct_runs_once_and_u_mri_twice_per_iteration():
    """U_CT(x_c) is shared by the G and U steps (it does not depend on G; U is unchanged in
    between); U_MRI must run twice: on G(x_c) with the graph into G, and on it detached."""
    trainer = build_trainer(n_ct=2)
    domains: list[str] = []
    trainer.tumour_nets.register_forward_hook(
        lambda module, args, kwargs, out: domains.append(kwargs.get("domain", args[1:2])),
        with_kwargs=True,
    )
    trainer.run()
    assert domains == ["ct", "mri", "mri"] * 2


def test_without_tumour_nets_it_is_a_plain_cyclegan():
    trainer = build_trainer(tumour=False, ct_label=False)
    assert trainer.u_optimizer is None
    fired = []
    trainer.add_event_handler(CycleGANEvents.TUMOUR_NETWORK_COMPLETED, lambda _: fired.append(1))
    trainer.run()
    out = trainer.state.output
    assert out["loss_U"] == out["tumour"] == out["feature"] == 0.0
    assert math.isfinite(out["loss_G"]) and out["loss_G"] > 0
    assert out["images"]["label"] is None
    assert fired == []
    assert "tumour_nets" not in trainer.checkpoint_objects()
    with pytest.raises(ValueError, match="u_optimizer"):
        build_trainer(tumour=True, u_optimizer=None)


def test_tumour_nets_need_a_ct_label():
    trainer = build_trainer(ct_label=False)
    with pytest.raises(ValueError, match="label"):
        trainer.run()


@pytest.mark.parametrize("tumour", [False, True])
def test_masked_cyclegan_feeds_the_mask_as_a_second_channel(tumour):
    trainer = build_trainer(masked=True, tumour=tumour)
    seen: dict[str, list[torch.Tensor]] = {"g_ct2mri": [], "g_mri2ct": [], "d_mri": [], "d_ct": []}
    for name, inputs in seen.items():
        getattr(trainer, name).register_forward_pre_hook(
            lambda _m, args, inputs=inputs: inputs.append(args[0].detach().clone())
        )
    trainer.run()
    assert all(x.shape[1] == 2 for xs in seen.values() for x in xs)
    ct, label = trainer.state.output["images"]["ct"], trainer.state.output["images"]["label"]
    # G's first call is G(x_c): the CT image plus the label mapped to {-1, 1}
    torch.testing.assert_close(seen["g_ct2mri"][0], torch.cat([ct, label * 2 - 1], dim=1))
    # F's second call is F(x_m): an unlabelled MRI gets a constant -1 "no tumour" channel
    assert torch.all(seen["g_mri2ct"][1][:, 1] == -1)
    assert math.isfinite(trainer.state.output["loss_G"])
    assert (trainer.state.output["loss_U"] > 0) == tumour  # U sees the image channel only
    assert trainer.state.output["images"]["fake_mri"].shape == (2, 1, SIZE, SIZE)


def test_mri_loader_is_cycled_when_shorter_than_ct():
    mri = CountingLoader(n_batches=2)
    trainer = build_trainer(n_ct=5, mri_loader=mri, tumour=False)
    trainer.run()
    assert trainer.state.iteration == 5
    assert mri.served == 5  # one MRI batch per iteration
    assert mri.restarts == 3  # 2 + 2 + 1

    with pytest.raises(ValueError, match="mri_data_loader"):
        build_trainer(mri_loader=CountingLoader(n_batches=0), tumour=False).run()


def test_two_epochs_on_a_dataloader_keep_losses_finite():
    ct_data = [{k: v[0] for k, v in ct_batch(batch=1).items()} for _ in range(4)]
    trainer = build_trainer(ct_loader=DataLoader(ct_data, batch_size=2), max_epochs=2)
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss_G"])
    )
    trainer.run()
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_amp_on_cpu_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        trainer = build_trainer(amp=True)
    assert trainer.amp is False
    assert trainer.g_scaler is None and trainer.d_scaler is None and trainer.u_scaler is None
    assert any("amp=True ignored" in r.getMessage() for r in caplog.records)
    trainer.run()
    assert trainer.state.output["images"]["fake_mri"].dtype == torch.float32
    assert math.isfinite(trainer.state.output["loss_G"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP is used on CUDA only")
def test_amp_on_cuda_uses_one_grad_scaler_per_optimizer():
    trainer = build_trainer(n_ct=2, amp=True, device="cuda")
    assert trainer.amp is True
    assert {"g_scaler", "d_scaler", "u_scaler"} <= set(trainer.checkpoint_objects())
    trainer.run()
    out = trainer.state.output
    assert all(math.isfinite(out[key]) for key in LOSS_KEYS)
    assert out["images"]["fake_mri"].is_cuda


def test_checkpoint_resume_continues_the_iteration_count(tmp_path):
    first = build_trainer(n_ct=2, max_epochs=1)
    saver = CheckpointSaver(
        str(tmp_path), save_dict=first.checkpoint_objects(), save_final=True, final_filename="a.pt"
    )
    saver.attach(first)
    first.run()
    assert first.state.iteration == 2
    checkpoint = torch.load(tmp_path / "a.pt", weights_only=False)
    expected = {"g_ct2mri", "g_mri2ct", "d_mri", "d_ct", "tumour_nets", "trainer"}
    expected |= {"g_optimizer", "d_optimizer", "u_optimizer", "pool_mri", "pool_ct"}
    assert expected | {"random_states"} == set(checkpoint)  # list loaders: no positions

    # what a bundle's CheckpointLoader does (ignite's Checkpoint.load_objects at STARTED, keeping
    # the new run's max_epochs)
    resumed = build_trainer(n_ct=2, max_epochs=2)
    CheckpointLoader(str(tmp_path / "a.pt"), resumed.checkpoint_objects()).attach(resumed)
    loaded = []

    def check_loaded(engine):
        loaded.append((engine.state.iteration, engine.state.epoch))
        for name in ("g_ct2mri", "d_ct", "tumour_nets"):
            assert same(snapshot(getattr(first, name)), snapshot(getattr(engine, name))), name

    resumed.add_event_handler(Events.STARTED, check_loaded)
    ran = []
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: ran.append(e.state.iteration))
    resumed.run()
    assert loaded == [(2, 1)]
    assert ran == [3, 4]
    assert resumed.state.epoch == 2


# ------------------------------------------------------------------------------------------------
# U_MRI on labelled real MRI (ours, optional)


def labelled_mri_batch() -> dict[str, torch.Tensor]:
    return {**mri_batch(), "label": ct_batch()["label"]}


def test_real_mri_term_trains_u_mri_on_labelled_real_mri():
    real = [labelled_mri_batch()]
    torch.manual_seed(0)
    plain = build_trainer(u_sgd=True)  # SGD: Adam's first step is ±lr whatever the gradient
    torch.manual_seed(0)  # the same networks and batches; only the real-MRI term differs
    anchored = build_trainer(u_sgd=True, real_mri_loader=real, real_mri_weight=2.0)
    plain.run()
    anchored.run()
    assert anchored.state.output["real_mri"] > 0
    expected = plain.state.output["loss_U"] + 2.0 * anchored.state.output["real_mri"]
    assert anchored.state.output["loss_U"] == pytest.approx(expected, rel=1e-5)
    head = "u_mri.head.conv.conv.weight"
    assert not torch.equal(
        plain.tumour_nets.state_dict()[head], anchored.tumour_nets.state_dict()[head]
    )
    u_ct = "u_ct.head.conv.conv.weight"  # U_CT gets no real-MRI gradient
    assert torch.equal(
        plain.tumour_nets.state_dict()[u_ct], anchored.tumour_nets.state_dict()[u_ct]
    )


def test_real_mri_term_needs_tumour_networks_and_labels():
    with pytest.raises(ValueError, match="needs tumour_nets"):
        build_trainer(tumour=False, real_mri_loader=[labelled_mri_batch()])
    trainer = build_trainer(real_mri_loader=[mri_batch()])
    with pytest.raises(ValueError, match="need a 'label'"):
        trainer.run()


def test_labelled_mri_batches_report_whether_d_saw_a_tumour():
    trainer = build_trainer(mri_loader=[labelled_mri_batch()])
    trainer.run()
    assert trainer.state.output["mri_has_tumour"] == 1.0


def test_pretrained_u_mri_is_trained_first_then_frozen():
    from tumoraware.handlers.u_mri_pretraining import UMRIPretraining

    trainer = build_trainer(freeze_u_mri=True, u_sgd=True, max_epochs=2)
    nets = trainer.tumour_nets
    initial = {k: v.clone() for k, v in nets.state_dict().items()}
    pretraining = UMRIPretraining(nets, [labelled_mri_batch()], iterations=5)
    pretraining.attach(trainer)
    after_pretraining = {}
    trainer.add_event_handler(  # runs after the pre-training, before the first iteration
        Events.ITERATION_STARTED(once=1), lambda _: after_pretraining.update(
            {k: v.clone() for k, v in nets.state_dict().items()})
    )  # fmt: skip
    trainer.run()
    state = nets.state_dict()
    assert len(pretraining.losses) == 5
    mri_head = "u_mri.head.conv.conv.weight"
    assert not torch.equal(initial[mri_head], after_pretraining[mri_head])  # pre-trained
    for key in state:
        if key.startswith("u_mri."):  # frozen during synthesis (the tied block included)
            assert torch.equal(state[key], after_pretraining[key]), key
    ct_head = "u_ct.head.conv.conv.weight"
    assert not torch.equal(state[ct_head], after_pretraining[ct_head])  # U_CT still learns


def test_pretraining_is_skipped_on_resume():
    from tumoraware.handlers.u_mri_pretraining import UMRIPretraining

    trainer = build_trainer(freeze_u_mri=True)
    pretraining = UMRIPretraining(trainer.tumour_nets, [labelled_mri_batch()], iterations=3)
    pretraining.attach(trainer)
    trainer.state.iteration = 8  # the first iteration of a run resumed after iteration 7
    pretraining.pretrain(trainer)
    assert pretraining.losses == []


def test_log_every_reads_losses_back_only_on_logged_iterations_and_trains_the_same():
    outputs = {}
    nets = {}
    for log_every in (1, 3):
        torch.manual_seed(0)
        trainer = build_trainer(
            n_ct=4, mri_loader=[labelled_mri_batch()], max_epochs=2, log_every=log_every
        )
        seen = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e, seen=seen: seen.append(dict(e.state.output))
        )
        trainer.run()
        outputs[log_every] = seen
        nets[log_every] = snapshot(trainer.g_ct2mri, trainer.d_mri, trainer.tumour_nets)
    assert same(nets[1], nets[3])  # when losses are read back changes nothing else
    computed = LOSS_KEYS - {"identity", "real_mri"} | {"mri_has_tumour"}  # the rest are off
    for iteration, (every, third) in enumerate(zip(outputs[1], outputs[3], strict=True), 1):
        for key in LOSS_KEYS | {"mri_has_tumour"}:
            assert type(every[key]) is float, key
            assert float(third[key]) == every[key], key
            if iteration % 3 == 0 or key not in computed:
                assert type(third[key]) is float, key
            else:  # not read back yet: a detached 0-dim tensor
                assert isinstance(third[key], torch.Tensor) and third[key].ndim == 0, key
                assert not third[key].requires_grad, key
    with pytest.raises(ValueError, match="log_every"):
        build_trainer(log_every=0)
