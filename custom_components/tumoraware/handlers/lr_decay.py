"""CycleGAN's learning-rate schedule: constant, then linear decay towards 0 over the last epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["LinearDecayLR"]


class LinearDecayLR:
    """Set every optimizer's lr from the epoch about to run and the trainer's own ``max_epochs``.

    With ``E`` = ``engine.state.max_epochs`` and ``D = min(decay_epochs, E)``,
    ``lr(e) = base_lr · (1 − max(0, e − (E − D)) / (D + 1))`` for epoch ``e = 1 … E``: constant
    for ``E − D`` epochs, then falling linearly towards 0 (the last epoch trains at
    ``base_lr / (D + 1)``, never at 0 or below), as in the reference CycleGAN.

    Hand-written rather than a ``torch.optim.lr_scheduler`` or ignite ``PiecewiseLinear``: those
    keep their own step count, which a resumed run would restart unless it was checkpointed too;
    this reads the trainer's restored ``epoch``, so a resumed run continues the schedule (its
    ``state_dict``, the initial lrs the decay scales, goes into the checkpoint too). ``E`` is
    read from the running trainer, not from the config, so a caller that sets only the trainer's
    ``max_epochs`` (MONAI Label's ``/train`` overrides ``train#trainer#max_epochs``) still gets a
    schedule that ends at its last epoch.

    Args:
        optimizers: the optimizers to schedule (e.g. G, D and U); None entries are skipped.
        decay_epochs: epochs of linear decay at the end (0 keeps lr constant; more than the
            trainer's ``max_epochs`` decays over the whole run).
    """

    def __init__(
        self, optimizers: Sequence[torch.optim.Optimizer | None], decay_epochs: int
    ) -> None:
        if int(decay_epochs) < 0:
            raise ValueError(f"LinearDecayLR: expected decay_epochs >= 0, got {decay_epochs}.")
        self.optimizers = [o for o in optimizers if o is not None]
        self.base_lrs = [[g["lr"] for g in o.param_groups] for o in self.optimizers]
        self.decay_epochs = int(decay_epochs)

    def factor(self, epoch: int, max_epochs: int) -> float:
        """The lr multiplier for (1-based) ``epoch`` of a ``max_epochs`` run."""
        decay = min(self.decay_epochs, max_epochs)
        return 1.0 - max(0, epoch - (max_epochs - decay)) / float(decay + 1)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)

    def epoch_started(self, engine: Engine) -> None:
        scale = self.factor(engine.state.epoch, engine.state.max_epochs)
        for optimizer, base in zip(self.optimizers, self.base_lrs, strict=True):
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * scale

    def state_dict(self) -> dict[str, Any]:
        """``base_lrs`` (per optimizer, per param group: the lr the decay scales; a restored
        optimizer only shows the decayed one) and ``decay_epochs``."""
        return {"base_lrs": [list(b) for b in self.base_lrs], "decay_epochs": self.decay_epochs}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the checkpoint's schedule: its initial lrs (one list per optimizer, one lr
        per param group, as these optimizers have)."""
        base = [[float(lr) for lr in b] for b in state_dict["base_lrs"]]
        shapes = [len(o.param_groups) for o in self.optimizers]
        if [len(b) for b in base] != shapes:
            raise ValueError(
                f"LinearDecayLR: the checkpoint schedules {[len(b) for b in base]} param groups "
                f"per optimizer, this run {shapes}; resume with the same optimizers."
            )
        self.base_lrs = base
