"""Warm-up of the tumour-loss weight λtumour in the generators' objective (not in the paper).

Why: with λtumour = 5 from the first iteration, the generator is pushed towards whatever the
still-random U_MRI reads as tumour. On the phantom world (tumour near iso-dense on CT) the two
then agree on an arbitrary code, a dotted or grey tumour that U_MRI segments and no real MRI
shows, and the tumour KL rises (a collapse seen in demo runs). Holding λtumour at 0 while G
learns the MRI appearance from the adversarial and cycle terms, then ramping it up, gives the
tumour loss a realistic image to preserve. U_CT and U_MRI keep training throughout (their own
objective has no λtumour), so they are ready when the ramp starts.

Written by hand: ignite's ``StateParamScheduler`` counts its own calls (a resumed run would
restart the ramp) and writes ``engine.state``, not the objective; this handler derives the weight
from ``engine.state.iteration``, which MONAI's ``CheckpointLoader`` restores. Its
``state_dict`` (the schedule and the current weight, in the trainer's checkpoint) puts the
objective's weight back before the first resumed iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["TumourLossWarmup"]


class TumourLossWarmup:
    """Sets ``objective.lambda_tumour`` before every iteration: 0, then a linear ramp, then full.

    The final weight ``target`` is the objective's ``lambda_tumour`` when the handler is built
    (the config's ``lambda_tumour``, paper: 5; the objective has already checked it). With ``i``
    the 0-based index of the iteration about to run, the weight is 0 for ``i < hold_iterations``
    and ``target · min(1, (i - hold_iterations + 1) / ramp_iterations)`` after, so the ramp
    reaches ``target`` on its last iteration; ``ramp_iterations = 0`` is a step at
    ``hold_iterations``. ``hold_iterations = ramp_iterations = 0`` leaves the weight at
    ``target`` from the first iteration (the paper's schedule).

    Args:
        objective: the :class:`~tumoraware.losses.TumourAwareObjective` the trainer uses.
        hold_iterations: iterations at weight 0.
        ramp_iterations: iterations of the linear ramp after the hold.

    Raises:
        ValueError: if a length is negative.
    """

    def __init__(self, objective: Any, hold_iterations: int = 0, ramp_iterations: int = 0) -> None:
        if hold_iterations < 0 or ramp_iterations < 0:
            raise ValueError(
                "hold_iterations and ramp_iterations must be >= 0, got "
                f"{hold_iterations} and {ramp_iterations}."
            )
        self.objective = objective
        self.target = float(objective.lambda_tumour)
        self.hold_iterations = int(hold_iterations)
        self.ramp_iterations = int(ramp_iterations)

    def weight(self, iteration: int) -> float:
        """λtumour for the 0-based iteration index ``iteration``."""
        done = iteration - self.hold_iterations
        if done < 0:
            return 0.0
        if self.ramp_iterations == 0:
            return self.target
        return self.target * min(1.0, (done + 1) / self.ramp_iterations)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        # ignite increments state.iteration before ITERATION_STARTED fires: it is 1-based here
        self.objective.lambda_tumour = self.weight(engine.state.iteration - 1)

    def state_dict(self) -> dict[str, float | int]:
        """The schedule (``target``, ``hold_iterations``, ``ramp_iterations``) and the weight
        the objective has now (``lambda_tumour``)."""
        return {
            "target": self.target,
            "hold_iterations": self.hold_iterations,
            "ramp_iterations": self.ramp_iterations,
            "lambda_tumour": float(self.objective.lambda_tumour),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Put the objective's weight back; the schedule stays the configured one (the weight of
        every later iteration follows from it and the restored iteration count)."""
        self.objective.lambda_tumour = float(state_dict["lambda_tumour"])
