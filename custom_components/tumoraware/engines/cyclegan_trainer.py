"""Tumour-aware CycleGAN training (Jiang et al., MICCAI 2018, §2.1) as a MONAI ``Trainer``.

One iteration is the paper's alternating update (end of §2.1), in the reference CycleGAN's order:

(a) generators G = G_CT→MRI and F = G_MRI→CT, descending L_adv + λcyc·L_cyc + λtumour·L_tumour
    + λfeat·L_feat (eq. 5; + an optional identity term), with D and U frozen;
(b) discriminators D_MRI and D_CT, descending the LSGAN loss on real images vs pooled fakes;
(c) tumour networks U = (U_CT, U_MRI), descending L_tumour + λfeat·L_feat on the CT image and the
    detached synthetic MRI of step (a) (ours, optional: + a BCE of U_MRI on labelled real MRI).

Each generator runs exactly twice per iteration (G: x_c and F(x_m); F: G(x_c) and x_m), plus
once each for the identity term when it is on; steps (b) and (c) reuse the fakes of step (a).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from ignite.engine import EventEnum
from monai.data import MetaTensor
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.losses import PatchAdversarialLoss
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from tumoraware.engines.image_pool import ImagePool

if TYPE_CHECKING:
    from ignite.metrics import Metric

__all__ = ["CycleGANEvents", "CycleGANTrainer"]

LOSS_KEYS = (
    "loss_G", "loss_D", "loss_U", "adv_G", "cycle", "tumour", "feature", "identity", "real_mri",
)  # fmt: skip


class CycleGANEvents(EventEnum):
    """Events fired by :class:`CycleGANTrainer` once per iteration, after each optimizer step.

    ``GENERATOR_COMPLETED`` after step (a), ``DISCRIMINATOR_COMPLETED`` after step (b),
    ``TUMOUR_NETWORK_COMPLETED`` after step (c) (not fired without tumour networks).
    """

    GENERATOR_COMPLETED = "cyclegan_generator_completed"
    DISCRIMINATOR_COMPLETED = "cyclegan_discriminator_completed"
    TUMOUR_NETWORK_COMPLETED = "cyclegan_tumour_network_completed"


def _plain(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A plain tensor view: MetaTensor bookkeeping on every op of four networks is pure cost."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def _logits(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The patch logits of a discriminator: MONAI's ``PatchDiscriminator`` returns a list of
    intermediate features whose last item is the logit map; a plain tensor is taken as is."""
    return output[-1] if isinstance(output, (list, tuple)) else output


def _set_requires_grad(nets: Iterable[torch.nn.Module | None], flag: bool) -> None:
    for net in nets:
        if net is not None:
            net.requires_grad_(flag)


class CycleGANTrainer(Trainer):
    """Unpaired CT → MRI translation with the paper's tumour-aware loss, inherits ``Trainer``.

    The CT loader drives the epoch; the MRI loader is drawn from alongside it and restarted
    with a fresh iterator whenever it runs out, so the two datasets need not have the same
    size. Per iteration, with x_c, y_c a CT batch and x_m an MRI batch (see the module
    docstring for the order of the three updates):

    - G step: ``fake_mri = G(x_c)``, ``rec_ct = F(fake_mri)``, ``fake_ct = F(x_m)``,
      ``rec_mri = G(fake_ct)``; ``adv_G = LSGAN(D_MRI(fake_mri), real) + LSGAN(D_CT(fake_ct),
      real)``; ``cycle = L1(rec_ct, x_c) + L1(rec_mri, x_m)`` (eq. 2); with tumour networks,
      ``tumour = TumourLoss(U_CT(x_c), U_MRI(fake_mri), y_c)`` (eq. 3) and
      ``feature = FeatureLoss(φ_CT(x_c), φ_MRI(fake_mri))`` (eq. 4); with
      ``objective.lambda_identity > 0``, ``identity = L1(G(x_m), x_m) + L1(F(x_c), x_c)``;
      ``loss_G = objective.generator_loss(adv_G, cycle, tumour, feature, identity)``.
      D and U are frozen (``requires_grad_(False)``) during this step, as the reference
      freezes D; gradients still flow *through* D and U into G.
    - D step: ``loss_D = 0.5·[LSGAN(D_MRI(x_m), real) + LSGAN(D_MRI(pool(fake_mri)), fake)]
      + 0.5·[LSGAN(D_CT(x_c), real) + LSGAN(D_CT(pool(fake_ct)), fake)]`` on detached fakes.
    - U step: U recomputed on x_c and on ``fake_mri.detach()`` (no new G pass);
      ``loss_U = objective.tumour_network_loss(tumour, feature)``; with ``real_mri_loader``
      (ours, not the paper's), ``+ real_mri_weight · BCE(U_MRI(x_r), y_r)`` on a batch of
      labelled real MRI, so U_MRI learns what a tumour looks like on real MRI and the tumour
      loss asks G for tumours that look that way, not for a code that only G and U_MRI share.

    ``masked=True`` is the masked CycleGAN baseline (the paper's ref. [8]): the tumour mask is an
    extra channel of the generators' input and output (CT: ``cat(image, 2·label − 1)``; MRI:
    ``cat(image, 2·label − 1)`` when the MRI batch has a label, else a constant −1 "no tumour"
    channel); the cycle loss covers both channels and the discriminators see both channels, so
    G, F, D_MRI and D_CT must have 2 input (G, F: and output) channels. The tumour networks, if
    any, see only the image channel.

    Iteration output (``engine.state.output`` and the return value of ``_iteration``): python
    floats ``loss_G``, ``loss_D``, ``loss_U``, ``adv_G``, ``cycle``, ``tumour``, ``feature``,
    ``identity``, ``real_mri`` (a term that is off is ``0.0``), ``mri_has_tumour`` (1.0 when the
    MRI batch has a label with a tumour pixel, 0.0 without; absent for unlabelled MRI), and
    ``images``: detached tensors ``ct``,
    ``fake_mri``, ``rec_ct`` (image channel only, ``(B, 1, H, W)``) and ``label`` (``y_c``, or
    ``None`` when the CT batch has none) for handlers that draw previews. With ``log_every`` N >
    1 the losses and ``mri_has_tumour`` are python floats only on iterations that are multiples
    of N (the ones to log); on the others they stay detached 0-dim tensors on the device, because
    reading a GPU value back (``.item()``) waits for every queued kernel and stalls the step
    pipeline. Log with handlers that fire every N iterations
    (:func:`tumoraware.bundle_helpers.every_n_iterations`).

    Events: ``IterationEvents.FORWARD_COMPLETED`` (generator forward passes done),
    ``LOSS_COMPLETED`` (``loss_G`` computed) and ``BACKWARD_COMPLETED`` (G gradients ready, before
    the G optimizer step, e.g. for clipping) refer to the generator step; ``MODEL_COMPLETED``
    fires once all three steps are done. :class:`CycleGANEvents` fire after each optimizer step.

    Checkpointing: :meth:`checkpoint_objects` returns every object with a ``state_dict`` that a
    resumed run needs (networks, optimizers, AMP scalers when used, the image pools, the
    loaders' positions, the random states, the stateful ``train_handlers``, and this trainer,
    whose ``state_dict`` carries ``iteration``/``epoch`` and how often each MRI loader was
    restarted); give it to ``CheckpointSaver(save_dict=...)`` and
    ``CheckpointLoader(load_dict=...)``. With :class:`~tumoraware.engines.ResumableDataLoader`
    loaders (the bundle's), a run resumed from a checkpoint written between iterations repeats
    the uninterrupted run bit for bit (one process, same threads, loader workers not
    persistent); plain loaders restart.

    Args:
        device: the device to train on, e.g. ``"cuda:0"`` or ``torch.device("cpu")``.
        max_epochs: number of passes over the CT loader.
        train_data_loader: CT batches, dicts with ``image`` ``(B, 1, H, W)`` in [-1, 1] and
            ``label`` ``(B, 1, H, W)`` binary (needed with tumour networks or ``masked``). It
            drives the epoch.
        mri_data_loader: MRI batches, dicts with ``image`` ``(B, 1, H, W)`` in [-1, 1] and an
            optional ``label``; cycled (fresh iterator, ``DistributedSampler.set_epoch`` bumped)
            whenever exhausted. Must not be empty.
        g_ct2mri: generator G_CT→MRI, ``(B, C, H, W) -> (B, C, H, W)`` (C = 1, or 2 if masked).
        g_mri2ct: generator G_MRI→CT, same shapes.
        d_mri: discriminator D_MRI (patch logits, or a list whose last item is the logits).
        d_ct: discriminator D_CT, likewise.
        g_optimizer: one optimizer over the parameters of both generators.
        d_optimizer: one optimizer over the parameters of both discriminators.
        objective: weights of eq. (5); a ``TumourAwareObjective`` (``generator_loss(adv, cyc,
            tumour=None, feat=None, identity=None)``, ``tumour_network_loss(tumour, feat)``,
            ``lambda_identity``).
        tumour_nets: the tied U-Nets, called as ``tumour_nets(x, domain="ct")`` (U_CT) and
            ``tumour_nets(x, domain="mri")`` (U_MRI), each returning ``(logits, features)``
            (``TiedTumourUNets.forward``). Called through ``forward``, never ``forward_ct``/
            ``forward_mri``, so a ``DistributedDataParallel`` wrapper (which only wraps
            ``forward``) sees and syncs every U pass. ``None`` trains a plain (or masked)
            CycleGAN without tumour terms.
        u_optimizer: optimizer over ``tumour_nets.parameters()``; required with tumour networks.
        real_mri_loader: labelled real MRI batches (``image``, ``label`` ``(B, 1, H, W)``) for
            U_MRI's real-MRI term, cycled like ``mri_data_loader``; ``None`` (the paper) leaves
            the term out. Needs tumour networks.
        real_mri_weight: weight of that term in the U objective.
        u_mri_synthetic_weight: weight of U_MRI's BCE on ``G(x_c)`` in the U objective (1, the
            paper; ours: 0 with ``real_mri_loader`` makes U_MRI a detector of real-MRI tumours
            that G must satisfy, not a partner that learns G's code). Uses plain BCE terms
            instead of ``tumour_loss`` when not 1.
        freeze_u_mri: ours: U_MRI (with the penultimate block it shares with U_CT) is never
            updated; U's objective keeps U_CT's BCE and the feature loss towards the fixed
            φ_MRI. For a U_MRI pre-trained on real MRI
            (:class:`~tumoraware.handlers.u_mri_pretraining.UMRIPretraining`).
        adversarial_loss: ``loss(logits, target_is_real, for_discriminator)``; default MONAI's
            ``PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)``
            (LSGAN, as the reference CycleGAN).
        cycle_loss: ``loss(reconstruction, original)``; default ``torch.nn.L1Loss()`` (eq. 2).
            Also used for the identity term.
        tumour_loss: ``loss(logits_ct, logits_mri, target)`` (eq. 3); default ``TumourLoss()``.
        feature_loss: ``loss(phi_ct, phi_mri)`` (eq. 4); default ``FeatureLoss()``.
        pool_size: size of each discriminator's fake-image history buffer (reference: 50;
            0 disables it).
        pool_seed: seed of the two buffers' random generators (``None``: non-deterministic).
        masked: train the masked CycleGAN baseline (see above).
        amp: mixed precision (``torch.autocast`` + one ``GradScaler`` per optimizer); honoured
            only when ``device`` is CUDA. On CPU it is ignored with a logged warning (CPU autocast
            is much slower than float32 there, not faster).
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: non-blocking host-to-device copies in ``prepare_batch`` (useful with a
            loader that pins memory).
        log_every: losses become python floats every this many iterations (1: every one);
            see the iteration output above. With N > 1 keep ``decollate`` False: decollating
            reads every scalar back, every iteration.
        prepare_batch: ``prepare_batch(batchdata, device, non_blocking, **to_kwargs)`` applied to
            CT and MRI batches alike; must return ``(image, label_or_None)``.
        iteration_update: replaces :meth:`_iteration` when given (ignite process function).
        postprocessing: transform applied to ``(batch, output)`` at ``MODEL_COMPLETED``.
        key_train_metric: ignite metric(s) computed on the iteration output; the key one.
        additional_metrics: more ignite metrics.
        metric_cmp_fn: ``fn(current, best) -> bool``, default "greater than".
        train_handlers: handlers with an ``attach`` method (StatsHandler, CheckpointSaver, ...);
            those with ``state_dict``/``load_state_dict`` go into :meth:`checkpoint_objects`.
        event_names: additional custom events to register.
        event_to_attr: map from event to a ``engine.state`` attribute, see ignite.
        decollate: decollate batch and output at ``MODEL_COMPLETED``; default ``False`` because
            the output is a dict of scalars plus an ``images`` dict.
        optim_set_to_none: ``zero_grad(set_to_none=...)`` for all three optimizers.
        to_kwargs: extra ``Tensor.to`` arguments for ``prepare_batch``.
        amp_kwargs: extra ``torch.autocast("cuda", ...)`` arguments.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        mri_data_loader: Iterable | DataLoader,
        g_ct2mri: torch.nn.Module,
        g_mri2ct: torch.nn.Module,
        d_mri: torch.nn.Module,
        d_ct: torch.nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        objective: Any,
        tumour_nets: torch.nn.Module | None = None,
        u_optimizer: Optimizer | None = None,
        real_mri_loader: Iterable | DataLoader | None = None,
        real_mri_weight: float = 1.0,
        u_mri_synthetic_weight: float = 1.0,
        freeze_u_mri: bool = False,
        adversarial_loss: Callable | None = None,
        cycle_loss: Callable | None = None,
        tumour_loss: Callable | None = None,
        feature_loss: Callable | None = None,
        pool_size: int = 50,
        pool_seed: int | None = None,
        masked: bool = False,
        amp: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        log_every: int = 1,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = True,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        device = torch.device(device)
        amp_ignored = bool(amp) and device.type != "cuda"
        event_names = [*(event_names or []), CycleGANEvents]
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=bool(amp) and not amp_ignored,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        if amp_ignored:
            self.logger.warning(
                f"amp=True ignored on device {device}: mixed precision is used on CUDA only "
                "(CPU autocast is far slower than fp32); training in fp32."
            )
        if int(log_every) < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}.")
        self.log_every = int(log_every)
        if tumour_nets is not None and u_optimizer is None:
            raise ValueError("tumour_nets were given without u_optimizer; pass both or neither.")
        if real_mri_loader is not None and tumour_nets is None:
            raise ValueError("real_mri_loader trains U_MRI, so it needs tumour_nets.")
        self.mri_data_loader = mri_data_loader
        self.real_mri_loader = real_mri_loader
        self.real_mri_weight = float(real_mri_weight)
        self.u_mri_synthetic_weight = float(u_mri_synthetic_weight)
        if freeze_u_mri and tumour_nets is None:
            raise ValueError("freeze_u_mri needs tumour_nets.")
        self.freeze_u_mri = bool(freeze_u_mri)
        self.g_ct2mri, self.g_mri2ct = g_ct2mri, g_mri2ct
        self.d_mri, self.d_ct = d_mri, d_ct
        self.tumour_nets = tumour_nets
        self.g_optimizer, self.d_optimizer, self.u_optimizer = g_optimizer, d_optimizer, u_optimizer
        self.objective = objective
        if adversarial_loss is None:
            adversarial_loss = PatchAdversarialLoss(
                criterion="least_squares", no_activation_leastsq=True
            )
        self.adversarial_loss = adversarial_loss
        self.cycle_loss = torch.nn.L1Loss() if cycle_loss is None else cycle_loss
        if tumour_nets is not None and (tumour_loss is None or feature_loss is None):
            from tumoraware.losses import FeatureLoss, TumourLoss

            tumour_loss = TumourLoss() if tumour_loss is None else tumour_loss
            feature_loss = FeatureLoss() if feature_loss is None else feature_loss
        self.tumour_loss, self.feature_loss = tumour_loss, feature_loss
        seeds = (None, None) if pool_seed is None else (pool_seed, pool_seed + 1)
        self.pool_mri = ImagePool(pool_size, seed=seeds[0])
        self.pool_ct = ImagePool(pool_size, seed=seeds[1])
        self.masked = masked
        self.optim_set_to_none = optim_set_to_none
        # one scaler per optimizer (as monai's AdversarialTrainer): an overflow in one step
        # must not shrink the loss scale of the others
        self.g_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.d_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.u_scaler = (
            torch.amp.GradScaler("cuda") if self.amp and tumour_nets is not None else None
        )
        self._iterators: dict[str, Iterator | None] = {"mri": None, "real_mri": None}
        self._passes: dict[str, int] = {"mri": 0, "real_mri": 0}
        self._train_handlers = list(train_handlers or [])

    # ----------------------------------------------------------------------------------------
    # public helpers

    def checkpoint_objects(self, include_pools: bool = True) -> dict[str, Any]:
        """Everything a resumed run needs, for ``CheckpointSaver``/``CheckpointLoader``.

        Keys: ``g_ct2mri``, ``g_mri2ct``, ``d_mri``, ``d_ct``, ``g_optimizer``, ``d_optimizer``,
        ``trainer``, ``random_states`` (:class:`~tumoraware.engines.RandomStates` of the three
        loaders); plus ``tumour_nets``, ``u_optimizer`` with tumour networks; ``g_scaler``,
        ``d_scaler`` (and ``u_scaler``) with AMP; ``pool_mri``, ``pool_ct`` unless
        ``include_pools`` is False (the discriminators' fake history: without it a resumed run
        refills the pools and differs); ``loaders`` (``{"ct", "mri", "real_mri"}``, those with a
        ``state_dict``, i.e. :class:`~tumoraware.engines.ResumableDataLoader`); ``handlers``
        (the ``train_handlers`` with ``state_dict``/``load_state_dict``, by snake-case class
        name, e.g. ``tumour_loss_warmup``).
        """
        from tumoraware.engines.resume import RandomStates
        from tumoraware.handlers.checkpoint import StateGroup, stateful_handlers

        objects: dict[str, Any] = {
            "g_ct2mri": self.g_ct2mri,
            "g_mri2ct": self.g_mri2ct,
            "d_mri": self.d_mri,
            "d_ct": self.d_ct,
            "g_optimizer": self.g_optimizer,
            "d_optimizer": self.d_optimizer,
        }
        if self.tumour_nets is not None:
            objects.update(tumour_nets=self.tumour_nets, u_optimizer=self.u_optimizer)
        for name in ("g_scaler", "d_scaler", "u_scaler"):
            if getattr(self, name) is not None:
                objects[name] = getattr(self, name)
        if include_pools:
            objects.update(pool_mri=self.pool_mri, pool_ct=self.pool_ct)
        objects["trainer"] = self
        named = {
            "ct": self.data_loader,
            "mri": self.mri_data_loader,
            "real_mri": self.real_mri_loader,
        }
        loaders = {k: v for k, v in named.items() if callable(getattr(v, "state_dict", None))}
        if loaders:  # groups, not dicts: ignite 0.4 (MONAI 1.5) takes no nested dicts
            objects["loaders"] = StateGroup(loaders)
        objects["random_states"] = RandomStates(list(named.values()))
        handlers = stateful_handlers(self._train_handlers)
        if handlers:
            objects["handlers"] = StateGroup(handlers)
        return objects

    def state_dict(self) -> dict[str, Any]:
        """ignite's engine state (``iteration``, ``epoch_length``, ``max_epochs``) and
        ``loader_passes``: how often the MRI (and real-MRI) loader was restarted, which a
        ``DistributedSampler`` uses as its epoch."""
        state = super().state_dict()
        state["loader_passes"] = dict(self._passes)
        return state

    def load_state_dict(self, state_dict: Any) -> None:
        """Restore :meth:`state_dict` (a checkpoint without ``loader_passes`` restarts at 0)."""
        state = dict(state_dict)
        passes = state.pop("loader_passes", None)
        super().load_state_dict(state)
        if passes:
            self._passes.update({k: int(v) for k, v in passes.items()})

    # ----------------------------------------------------------------------------------------
    # one iteration

    def _next_batch(self, which: str = "mri") -> Any:
        """The next batch of the ``"mri"`` or ``"real_mri"`` loader, restarting it whenever it
        is exhausted."""
        loader = self.mri_data_loader if which == "mri" else self.real_mri_loader
        for _ in range(2):
            if self._iterators[which] is None:
                # a ResumableDataLoader restored from a checkpoint continues that pass, whose
                # sampler epoch it restores itself: not a new pass
                resumed = bool(getattr(loader, "resume_pending", False))
                sampler = getattr(loader, "sampler", None)
                if isinstance(sampler, DistributedSampler) and not resumed:
                    sampler.set_epoch(self._passes[which])
                self._iterators[which] = iter(loader)
                self._passes[which] += 0 if resumed else 1
            try:
                return next(self._iterators[which])
            except StopIteration:
                self._iterators[which] = None
        raise ValueError(f"{which}_data_loader yielded no batch: it must hold at least one batch.")

    def _next_mri_batch(self) -> Any:
        """The next MRI batch, restarting the MRI loader whenever it is exhausted."""
        return self._next_batch("mri")

    def _prepare(self, engine: CycleGANTrainer, batchdata: Any, what: str) -> tuple:
        batch = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        image, label = (batch, None) if isinstance(batch, torch.Tensor) else tuple(batch)[:2]
        image, label = _plain(image), _plain(label)
        if image.ndim != 4:
            raise ValueError(f"{what} image must be (B, C, H, W), got shape {tuple(image.shape)}.")
        if label is not None:
            label = label.to(image.dtype)
        return image, label

    def _autocast(self, engine: CycleGANTrainer) -> contextlib.AbstractContextManager:
        if engine.amp:
            return torch.autocast("cuda", **engine.amp_kwargs)
        return contextlib.nullcontext()

    @staticmethod
    def _step(optimizer: Optimizer, scaler: Any) -> None:
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()

    @staticmethod
    def _backward(loss: torch.Tensor, scaler: Any) -> None:
        (loss if scaler is None else scaler.scale(loss)).backward()

    def _iteration(self, engine: CycleGANTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One alternating update of G, D and U (see the class docstring).

        Args:
            engine: the trainer running this iteration.
            batchdata: a CT batch from ``train_data_loader``; the MRI batch is drawn here.

        Returns:
            The iteration output dict (loss floats and ``images``), also set as
            ``engine.state.output``.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x_c, y_c = self._prepare(engine, batchdata, "CT")
        x_m, y_m = self._prepare(engine, engine._next_mri_batch(), "MRI")
        tumour_nets = engine.tumour_nets
        if (tumour_nets is not None or engine.masked) and y_c is None:
            raise ValueError(
                "the CT batch has no 'label', which tumour networks and masked=True need."
            )
        if engine.masked:
            ct_in = torch.cat([x_c, y_c * 2 - 1], dim=1)
            mri_mask = -torch.ones_like(x_m) if y_m is None else y_m * 2 - 1
            mri_in = torch.cat([x_m, mri_mask], dim=1)
        else:
            ct_in, mri_in = x_c, x_m
        use_identity = float(getattr(engine.objective, "lambda_identity", 0.0) or 0.0) > 0
        adv = engine.adversarial_loss
        nets = [engine.g_ct2mri, engine.g_mri2ct, engine.d_mri, engine.d_ct, tumour_nets]
        for net in nets:
            if net is not None:
                net.train()
        out: dict[str, Any] = dict.fromkeys(LOSS_KEYS, 0.0)
        engine.state.output = out

        # U_CT(x_c) once per iteration, with U's graph: step (a) uses it detached (it does not
        # depend on G), step (c) backpropagates it (U's weights do not change in between).
        u_ct = None
        if tumour_nets is not None:
            with self._autocast(engine):
                u_ct = tumour_nets(x_c, domain="ct")

        # (a) generators; D and U frozen, gradients flow through them into G and F
        _set_requires_grad([engine.d_mri, engine.d_ct, tumour_nets], False)
        try:
            engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            with self._autocast(engine):
                fake_mri = engine.g_ct2mri(ct_in)
                rec_ct = engine.g_mri2ct(fake_mri)
                fake_ct = engine.g_mri2ct(mri_in)
                rec_mri = engine.g_ct2mri(fake_ct)
                engine.fire_event(IterationEvents.FORWARD_COMPLETED)
                adv_g = adv(_logits(engine.d_mri(fake_mri)), True, False) + adv(
                    _logits(engine.d_ct(fake_ct)), True, False
                )
                cycle = engine.cycle_loss(rec_ct, ct_in) + engine.cycle_loss(rec_mri, mri_in)
                tumour = feature = identity = None
                if tumour_nets is not None:
                    # U_CT(x_c) does not depend on G: its detached value is what the G step needs
                    logits_mri, phi_mri = tumour_nets(fake_mri[:, :1], domain="mri")
                    tumour = engine.tumour_loss(u_ct[0].detach(), logits_mri, y_c)
                    feature = engine.feature_loss(u_ct[1].detach(), phi_mri)
                if use_identity:
                    identity = engine.cycle_loss(
                        engine.g_ct2mri(mri_in), mri_in
                    ) + engine.cycle_loss(engine.g_mri2ct(ct_in), ct_in)
                loss_g = engine.objective.generator_loss(
                    adv_g, cycle, tumour=tumour, feat=feature, identity=identity
                )
            terms = {"loss_G": loss_g, "adv_G": adv_g, "cycle": cycle, "tumour": tumour}
            terms.update(feature=feature, identity=identity)
            out.update({key: value for key, value in terms.items() if value is not None})
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            self._backward(loss_g, engine.g_scaler)
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self._step(engine.g_optimizer, engine.g_scaler)
        finally:
            _set_requires_grad([engine.d_mri, engine.d_ct, tumour_nets], True)
        engine.fire_event(CycleGANEvents.GENERATOR_COMPLETED)

        # (b) discriminators on real images vs pooled, detached fakes
        fake_mri, fake_ct = fake_mri.detach(), fake_ct.detach()
        engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with self._autocast(engine):
            pooled_mri = engine.pool_mri.query(fake_mri)
            pooled_ct = engine.pool_ct.query(fake_ct)
            loss_d_mri = 0.5 * (
                adv(_logits(engine.d_mri(mri_in)), True, True)
                + adv(_logits(engine.d_mri(pooled_mri)), False, True)
            )
            loss_d_ct = 0.5 * (
                adv(_logits(engine.d_ct(ct_in)), True, True)
                + adv(_logits(engine.d_ct(pooled_ct)), False, True)
            )
            loss_d = loss_d_mri + loss_d_ct
        self._backward(loss_d, engine.d_scaler)
        self._step(engine.d_optimizer, engine.d_scaler)
        out["loss_D"] = loss_d
        engine.fire_event(CycleGANEvents.DISCRIMINATOR_COMPLETED)

        # (c) tumour networks on the CT image and the (detached) synthetic MRI of step (a)
        if tumour_nets is not None:
            engine.u_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            if engine.freeze_u_mri:  # its weights (and the tied block) stay as pre-trained
                getattr(tumour_nets, "module", tumour_nets).u_mri.requires_grad_(False)
            with self._autocast(engine):
                logits_mri, phi_mri = tumour_nets(fake_mri[:, :1], domain="mri")
                if engine.freeze_u_mri:
                    tumour_u = F.binary_cross_entropy_with_logits(u_ct[0], y_c)
                    phi_mri = phi_mri.detach()
                elif engine.u_mri_synthetic_weight == 1.0:
                    tumour_u = engine.tumour_loss(u_ct[0], logits_mri, y_c)
                else:  # ours: U_MRI learns less (or nothing) from G's own synthetic MRI
                    tumour_u = F.binary_cross_entropy_with_logits(u_ct[0], y_c) + (
                        engine.u_mri_synthetic_weight
                        * F.binary_cross_entropy_with_logits(logits_mri, y_c)
                    )
                loss_u = engine.objective.tumour_network_loss(
                    tumour_u, engine.feature_loss(u_ct[1], phi_mri)
                )
                if engine.real_mri_loader is not None and not engine.freeze_u_mri:
                    x_r, y_r = self._prepare(engine, engine._next_batch("real_mri"), "real MRI")
                    if y_r is None:
                        raise ValueError("real_mri_loader batches need a 'label'.")
                    real_mri = F.binary_cross_entropy_with_logits(
                        tumour_nets(x_r, domain="mri")[0], y_r
                    )
                    loss_u = loss_u + engine.real_mri_weight * real_mri
                    out["real_mri"] = real_mri
            self._backward(loss_u, engine.u_scaler)
            self._step(engine.u_optimizer, engine.u_scaler)
            out["loss_U"] = loss_u
            engine.fire_event(CycleGANEvents.TUMOUR_NETWORK_COMPLETED)

        # a GPU value read back waits for the whole queue: only on the iterations that log
        synced = engine.state.iteration % engine.log_every == 0
        for key in LOSS_KEYS:
            if isinstance(out[key], torch.Tensor):
                value = out[key].detach().float()
                out[key] = value.item() if synced else value
        if y_m is not None:  # how often D_MRI's real side shows a tumour (a diagnostic)
            has_tumour = (y_m.detach().sum() > 0).float()
            out["mri_has_tumour"] = has_tumour.item() if synced else has_tumour
        out["loss"] = out["loss_G"]  # MONAI's conventional key (e.g. `--tracking mlflow` logs it)
        out["images"] = {
            "ct": x_c.detach(),
            "fake_mri": fake_mri[:, :1],
            "rec_ct": rec_ct[:, :1].detach(),
            "label": None if y_c is None else y_c.detach(),
        }
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
