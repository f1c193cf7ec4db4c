"""TumourLossWarmup: hold at 0, linear ramp, full weight; it follows a resumed iteration count."""

from __future__ import annotations

import pytest
from ignite.engine import Engine

from tumoraware.handlers.tumour_warmup import TumourLossWarmup
from tumoraware.losses import TumourAwareObjective


def _run(handler: TumourLossWarmup, iterations: int, start_iteration: int = 0) -> list[float]:
    """λtumour as seen by each iteration's process function (one epoch of ``iterations``)."""
    seen: list[float] = []
    engine = Engine(lambda e, b: seen.append(handler.objective.lambda_tumour))
    handler.attach(engine)
    if start_iteration:  # as a resumed trainer: iteration restored from the checkpoint
        engine.load_state_dict(
            {"iteration": start_iteration, "max_epochs": 2, "epoch_length": iterations}
        )
    engine.run(range(iterations), max_epochs=2 if start_iteration else 1)
    return seen


def test_hold_then_linear_ramp_then_full_weight():
    objective = TumourAwareObjective(lambda_tumour=5.0)
    handler = TumourLossWarmup(objective, hold_iterations=2, ramp_iterations=4)
    assert _run(handler, 8) == pytest.approx([0, 0, 1.25, 2.5, 3.75, 5, 5, 5])


def test_step_without_ramp_and_a_resumed_run_continues_the_schedule():
    step = TumourLossWarmup(TumourAwareObjective(lambda_tumour=5.0), hold_iterations=3)
    assert _run(step, 5) == pytest.approx([0, 0, 0, 5, 5])
    resumed = TumourLossWarmup(TumourAwareObjective(), hold_iterations=2, ramp_iterations=4)
    # the second epoch of 4 iterations: global iterations 4..7 (0-based)
    assert _run(resumed, 4, start_iteration=4) == pytest.approx([3.75, 5, 5, 5])


def test_target_is_the_objectives_weight_and_bad_lengths_fail():
    handler = TumourLossWarmup(TumourAwareObjective(lambda_tumour=2.0), hold_iterations=1)
    assert _run(handler, 3) == pytest.approx([0, 2, 2])
    with pytest.raises(ValueError, match="hold_iterations"):
        TumourLossWarmup(TumourAwareObjective(), hold_iterations=-1)
    with pytest.raises(ValueError, match="ramp_iterations"):
        TumourLossWarmup(TumourAwareObjective(), ramp_iterations=-1)
