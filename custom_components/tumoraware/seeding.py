"""Seeding for the bundle configs, with a switch for cuDNN's fast non-deterministic mode.

A module of its own, importing nothing else of ours, so that ``inference.json`` can use it
without the Model Zoo export vendoring the training glue along with it.
"""

from __future__ import annotations

__all__ = ["seed_run"]


def seed_run(seed: int, deterministic: bool | str = True) -> None:
    """Seed every random generator (``monai.utils.set_determinism``, which also makes cuDNN
    deterministic and turns its autotuner off).

    ``deterministic=False`` keeps the seeds but gives cuDNN back its autotuner and its fastest,
    non-deterministic kernels (``cudnn.benchmark``): faster on a GPU with fixed input sizes, not
    repeatable bit for bit. ``"false"``, ``"0"`` and ``"no"`` (a command line's strings) count
    as False.
    """
    import torch
    from monai.utils import set_determinism

    if isinstance(deterministic, str):
        deterministic = deterministic.strip().lower() not in ("false", "0", "no")
    set_determinism(seed=seed)
    if not deterministic:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
