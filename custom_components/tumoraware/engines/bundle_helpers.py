"""Small glue the bundle configs call: what to log, and attaching handlers that need the trainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["attach_all", "scalar_losses"]


def scalar_losses(output: Mapping[str, Any] | list[Mapping[str, Any]]) -> dict[str, float]:
    """The named scalar losses of a :class:`CycleGANTrainer` iteration output (no images).

    Used as ``output_transform`` of StatsHandler / TensorBoardStatsHandler, which log every
    key of a returned dict. A decollated output (a list of per-sample dicts, MONAI's
    convention, in which the scalar losses are replicated) is read from its first item.
    """
    if isinstance(output, list):
        output = output[0]
    return {
        k: float(v) for k, v in output.items() if isinstance(v, (int, float)) and k != "loss"
    }  # "loss" repeats loss_G under MONAI's conventional name


def attach_all(handlers: list[Any], engine: Any) -> None:
    """Attach ``handlers`` that refer to ``engine`` itself (so cannot be built before it)."""
    for handler in handlers:
        handler.attach(engine)
