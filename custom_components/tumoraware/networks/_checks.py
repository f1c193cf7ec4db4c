"""Input checks shared by the 2D networks: a clear error instead of a shape error deep inside."""

from __future__ import annotations

import torch

__all__ = ["check_2d_input"]


def _shape_text(x: torch.Tensor) -> str:
    """``(1, 2, 32, 32)``, built so TorchScript can compile it (it has no ``tuple(x.shape)``),
    which the Model Zoo export needs (``ckpt_export`` scripts the network)."""
    return "(" + ", ".join([str(s) for s in x.shape]) + ")"


def check_2d_input(x: torch.Tensor, in_channels: int, factor: int, why: str) -> None:
    """Raise ValueError unless ``x`` is ``(B, in_channels, H, W)`` with H, W multiples of
    ``factor`` that leave more than one pixel at the lowest resolution (InstanceNorm needs it).

    ``why`` names the factor in the message, e.g. ``"2**n_downsampling"``.
    """
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected input of shape (B, {in_channels}, H, W), got {_shape_text(x)}.")
    h, w = x.shape[-2:]
    if h % factor or w % factor or h * w <= factor**2:
        raise ValueError(
            f"H and W must be multiples of {why} = {factor} leaving more than one pixel at the "
            f"lowest resolution (InstanceNorm needs it), got H={h}, W={w} (input shape "
            f"{_shape_text(x)}). Fix: set the bundle's spatial_size (and crop sizes derived "
            f"from it) to a multiple of {factor} greater than {factor}, e.g. 64, 128 or 256."
        )
