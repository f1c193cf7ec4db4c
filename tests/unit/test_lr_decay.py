"""LinearDecayLR: the reference CycleGAN schedule, it survives a resume, and it follows the
trainer's own max_epochs (MONAI Label overrides only ``train#trainer#max_epochs``)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from tumoraware.handlers.lr_decay import LinearDecayLR


def _optimizers(lr: float = 1e-4) -> list[torch.optim.Optimizer]:
    return [torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr) for _ in range(2)]


def _run(handler: LinearDecayLR, max_epochs: int, start_epoch: int = 0) -> list[float]:
    seen: list[float] = []
    engine = Engine(lambda e, b: seen.append(handler.optimizers[0].param_groups[0]["lr"]))
    handler.attach(engine)
    engine.state.max_epochs = None
    if start_epoch:  # as a resumed trainer: epoch restored from the checkpoint
        engine.load_state_dict({"epoch": start_epoch, "max_epochs": max_epochs, "epoch_length": 1})
    engine.run([0], max_epochs=max_epochs)
    return seen


def test_constant_then_linear_decay_like_the_reference():
    optimizers = _optimizers(1e-4)
    lrs = _run(LinearDecayLR(optimizers, decay_epochs=2), max_epochs=4)
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4 * 2 / 3, 1e-4 / 3])
    assert optimizers[1].param_groups[0]["lr"] == pytest.approx(1e-4 / 3)  # all optimizers


def test_resumed_run_continues_the_schedule():
    handler = LinearDecayLR(_optimizers(1e-4), decay_epochs=2)
    assert _run(handler, max_epochs=4, start_epoch=3) == pytest.approx([1e-4 / 3])


def test_a_longer_trainer_than_the_config_never_reaches_zero_or_below():
    # a bundle trained for 3 epochs with decay over all 3, then asked for 6 by MONAI Label
    lrs = _run(LinearDecayLR(_optimizers(1e-4), decay_epochs=3), max_epochs=6)
    assert lrs == pytest.approx([1e-4] * 3 + [1e-4 * 3 / 4, 1e-4 / 2, 1e-4 / 4])
    # and decay_epochs beyond the trainer's max_epochs decays over the whole run
    lrs = _run(LinearDecayLR(_optimizers(1e-4), decay_epochs=15), max_epochs=2)
    assert lrs == pytest.approx([1e-4 * 2 / 3, 1e-4 / 3])


def test_no_decay_keeps_lr_and_bad_arguments_fail():
    assert _run(LinearDecayLR(_optimizers(), 0), 3) == pytest.approx([1e-4] * 3)
    with pytest.raises(ValueError, match="decay_epochs >= 0"):
        LinearDecayLR(_optimizers(), decay_epochs=-1)
