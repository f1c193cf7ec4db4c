"""Small glue the bundle configs call: what to log and what a resumable checkpoint holds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["attach_all", "checkpoint_dict", "scalar_losses"]

_STATE_PARTS = (
    "g_ct2mri", "g_mri2ct", "d_mri", "d_ct", "tumour_nets",
    "g_optimizer", "d_optimizer", "u_optimizer",
)  # fmt: skip


def scalar_losses(output: Mapping[str, Any]) -> dict[str, float]:
    """The named scalar losses of a :class:`CycleGANTrainer` iteration output (no images).

    Used as ``output_transform`` of StatsHandler / TensorBoardStatsHandler, which log every
    key of a returned dict.
    """
    return {k: float(v) for k, v in output.items() if isinstance(v, (int, float))}


def checkpoint_dict(trainer: Any) -> dict[str, Any]:
    """Everything a resumed run needs: the networks, the optimizers and the trainer itself.

    Parts the trainer does not use (``tumour_nets`` and ``u_optimizer`` of the CycleGAN
    baselines) are left out, so the same config saves and loads every variant.
    """
    parts = {name: getattr(trainer, name, None) for name in _STATE_PARTS}
    return {"trainer": trainer, **{k: v for k, v in parts.items() if v is not None}}


def attach_all(handlers: list[Any], engine: Any) -> None:
    """Attach ``handlers`` that refer to ``engine`` itself (so cannot be built before it)."""
    for handler in handlers:
        handler.attach(engine)
