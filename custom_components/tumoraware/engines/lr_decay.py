"""CycleGAN's learning-rate schedule: constant, then linear decay to zero over the last epochs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

__all__ = ["LinearDecayLR"]


class LinearDecayLR:
    """Set every optimizer's lr from the epoch about to run (resume-safe).

    ``lr(e) = base_lr · (1 − max(0, e − (max_epochs − decay_epochs)) / (decay_epochs + 1))`` for
    epoch ``e = 1 … max_epochs``: constant for ``max_epochs − decay_epochs`` epochs, then falling
    linearly towards 0, as in the reference CycleGAN. Hand-written rather than a
    ``torch.optim.lr_scheduler`` or ignite ``PiecewiseLinear``: those keep their own step count,
    which a resumed run would restart unless it was checkpointed too; this reads the trainer's
    restored ``epoch``, so a resumed run continues the schedule.

    Args:
        optimizers: the optimizers to schedule (e.g. G, D and U).
        max_epochs: the trainer's ``max_epochs``.
        decay_epochs: epochs of linear decay at the end (0 keeps lr constant).
    """

    def __init__(
        self, optimizers: Sequence[torch.optim.Optimizer | None], max_epochs: int, decay_epochs: int
    ) -> None:
        if not 0 <= decay_epochs <= max_epochs:
            raise ValueError(
                f"LinearDecayLR: expected 0 <= decay_epochs <= max_epochs, got decay_epochs="
                f"{decay_epochs}, max_epochs={max_epochs}."
            )
        self.optimizers = [o for o in optimizers if o is not None]
        self.base_lrs = [[g["lr"] for g in o.param_groups] for o in self.optimizers]
        self.max_epochs, self.decay_epochs = int(max_epochs), int(decay_epochs)

    def factor(self, epoch: int) -> float:
        """The lr multiplier for (1-based) ``epoch``."""
        start = self.max_epochs - self.decay_epochs
        return 1.0 - max(0, epoch - start) / float(self.decay_epochs + 1)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)

    def epoch_started(self, engine: Engine) -> None:
        scale = self.factor(engine.state.epoch)
        for optimizer, base in zip(self.optimizers, self.base_lrs, strict=True):
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * scale
