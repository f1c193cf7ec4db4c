"""Small glue the bundle configs call: what to log, and attaching handlers that need the trainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["attach_all", "scalar_losses"]


def scalar_losses(output: Mapping[str, Any]) -> dict[str, float]:
    """The named scalar losses of a :class:`CycleGANTrainer` iteration output (no images).

    Used as ``output_transform`` of StatsHandler / TensorBoardStatsHandler, which log every
    key of a returned dict.
    """
    return {k: float(v) for k, v in output.items() if isinstance(v, (int, float))}


def attach_all(handlers: list[Any], engine: Any) -> None:
    """Attach ``handlers`` that refer to ``engine`` itself (so cannot be built before it)."""
    for handler in handlers:
        handler.attach(engine)
