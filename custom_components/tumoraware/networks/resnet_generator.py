"""The CycleGAN ResNet generator G (Johnson et al. 2016; Zhu et al. 2017, the paper's [5]).

Jiang et al. (MICCAI 2018, §2.3): "The generators G ... were implemented similar to that in [5]".
The layers below follow the architecture table of Zhu et al. (appendix 7.2), written in Johnson's
notation, with ``ngf = 64``, ``n_downsampling = 2`` and ``n_blocks = 9`` for 256 x 256 images::

    c7s1-64   reflection pad 3, 7x7 conv stride 1, InstanceNorm, ReLU       (B,  64, H,   W)
    d128      3x3 conv stride 2, InstanceNorm, ReLU                         (B, 128, H/2, W/2)
    d256      3x3 conv stride 2, InstanceNorm, ReLU                         (B, 256, H/4, W/4)
    R256 x 9  x + [pad, 3x3 conv, IN, ReLU, pad, 3x3 conv, IN](x)           (B, 256, H/4, W/4)
    u128      3x3 transposed conv stride 1/2, InstanceNorm, ReLU            (B, 128, H/2, W/2)
    u64       3x3 transposed conv stride 1/2, InstanceNorm, ReLU            (B,  64, H,   W)
    c7s1-1    reflection pad 3, 7x7 conv stride 1, tanh                     (B,   1, H,   W)

The layers of :class:`ResnetGenerator` carry these names (``c7s1_64``, ``d128``, ``d256``,
``R256_1`` ... ``R256_9``, ``u128``, ``u64``, ``c7s1_out``, ``tanh``), so ``print(generator)``
reads like the table. Details match junyanz's ``ResnetGenerator`` (``norm='instance'``,
``padding_type='reflect'``): InstanceNorm without affine parameters, conv bias on (that code uses a
bias whenever the norm is InstanceNorm), zero padding in the stride-2 convs, weights N(0, 0.02).

Reused from MONAI: each conv + norm + activation unit is :class:`monai.networks.blocks.Convolution`
and the N(0, 0.02) initialisation is :func:`monai.networks.utils.normal_init`. Written by hand
(no library has them): the residual block with reflection padding and no activation after its
second norm (MONAI's ``ResidualUnit`` zero-pads and ends in an activation), and the assembly.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from monai.networks.blocks import Convolution
from monai.networks.utils import normal_init
from torch import nn

from tumoraware.networks._checks import check_2d_input

__all__ = ["PADDING_MODES", "UPSAMPLE_MODES", "ResnetBlock", "ResnetGenerator", "init_weights"]

PADDING_MODES = ("reflect", "replicate", "zeros")
"""Padding of the stride-1 convs: ``"reflect"`` (the reference), ``"replicate"``, ``"zeros"``."""

UPSAMPLE_MODES = ("deconv", "resize")
"""``u_k`` layers: 3x3 transposed convs (the reference) or resize-convolution (ours: nearest 2x
upsampling, then a 3x3 conv; Odena et al., "Deconvolution and checkerboard artifacts", Distill
2016), which cannot produce the transposed conv's checkerboard."""


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Initialise ``module`` and all its submodules as the reference CycleGAN does.

    Conv, transposed-conv and linear weights are drawn from N(0, ``std``) and their biases set to
    0; batch-norm weights from N(1, ``std``), biases 0; InstanceNorm without affine parameters has
    nothing to initialise. This is :func:`monai.networks.utils.normal_init` applied to every
    submodule (a module shared by two parents is initialised once).

    Args:
        module: the network to initialise, in place.
        std: standard deviation of the normal distribution (0.02 in the reference).

    Returns:
        ``module`` itself, for chaining.
    """
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}.")
    return module.apply(partial(normal_init, std=std))


def _pad_then_conv(padding_mode: str, pad: int) -> tuple[list[nn.Module], int]:
    """The explicit pad layer (none for ``"zeros"``) and the conv's own padding for ``pad``."""
    if padding_mode == "reflect":
        return [nn.ReflectionPad2d(pad)], 0
    if padding_mode == "replicate":
        return [nn.ReplicationPad2d(pad)], 0
    return [], pad


def _conv_in_relu(
    c_in: int,
    c_out: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    transposed: bool = False,
    act: str | None = "RELU",
    dropout: float = 0.0,
) -> Convolution:
    """Conv (bias on) -> InstanceNorm (no affine) -> [ReLU] -> [dropout], as one MONAI block."""
    return Convolution(
        spatial_dims=2,
        in_channels=c_in,
        out_channels=c_out,
        strides=stride,
        kernel_size=kernel_size,
        padding=padding,
        output_padding=1 if transposed else None,
        is_transposed=transposed,
        adn_ordering="NAD",
        norm="INSTANCE",
        act=act,
        dropout=dropout or None,
        bias=True,
    )


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")


class ResnetBlock(nn.Module):
    """Residual block ``R{channels}`` of the generator: ``x + block(x)``.

    ``block`` = pad 1, 3x3 conv, InstanceNorm, ReLU, [dropout], pad 1, 3x3 conv, InstanceNorm
    (no activation after the sum, as in Johnson et al. and the reference CycleGAN). Hand-written:
    MONAI's ``ResidualUnit`` zero-pads and ends its last subunit with an activation.

    Args:
        channels: number of input and output channels ``C``.
        padding_mode: one of :data:`PADDING_MODES`; ``"reflect"`` in the reference.
        dropout: dropout probability after the first ReLU; 0 (the reference default) adds no
            dropout layer.

    Shapes:
        ``(B, C, H, W) -> (B, C, H, W)``.

    Weights keep PyTorch's default initialisation; :class:`ResnetGenerator` re-draws them with
    :func:`init_weights`.
    """

    def __init__(self, channels: int, padding_mode: str = "reflect", dropout: float = 0.0) -> None:
        super().__init__()
        _check_padding_mode(padding_mode)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        pad, conv_padding = _pad_then_conv(padding_mode, 1)
        pad2, _ = _pad_then_conv(padding_mode, 1)
        self.block = nn.Sequential(
            *pad,
            _conv_in_relu(channels, channels, 3, padding=conv_padding, dropout=dropout),
            *pad2,
            _conv_in_relu(channels, channels, 3, padding=conv_padding, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet image-to-image generator: ``G_CT->MRI`` and ``G_MRI->CT`` of the paper.

    ``c7s1-ngf, d(2 ngf), ..., R(ngf 2**n_downsampling) x n_blocks, ..., u(ngf), c7s1-out, tanh``;
    see the module docstring for the table. With the defaults and one channel in and out it has
    11,365,633 parameters (the reference's 3-channel version: 11,378,179). Weights are drawn from
    N(0, 0.02) by :func:`init_weights`.

    Args:
        in_channels: channels of the input image (1 for a CT or MRI slice).
        out_channels: channels of the output image.
        ngf: filters of the first conv; doubled by each downsampling.
        n_blocks: residual blocks at the lowest resolution (9 for 256 x 256 in the paper, 6 for
            128 x 128 in the reference).
        n_downsampling: stride-2 convs (and as many transposed convs back up).
        dropout: dropout probability inside the residual blocks (0 in the reference CycleGAN).
        padding_mode: padding before the stride-1 convs, one of :data:`PADDING_MODES`.
        upsample_mode: ``"deconv"`` (the reference) or ``"resize"`` (ours), see
            :data:`UPSAMPLE_MODES`; the same shapes and, as ``u_k``, the same layer names.

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``, values in [-1, 1]. ``H`` and ``W``
        must be multiples of ``2**n_downsampling`` (so the transposed convs restore them) leaving
        more than one pixel at the lowest resolution, and, with reflection padding, at least
        ``2**(n_downsampling + 1)``.

    Raises:
        ValueError: on a non-positive size, an unknown ``padding_mode``, or (in ``forward``) an
            input of the wrong rank, channels or spatial size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        ngf: int = 64,
        n_blocks: int = 9,
        n_downsampling: int = 2,
        dropout: float = 0.0,
        padding_mode: str = "reflect",
        upsample_mode: str = "deconv",
    ) -> None:
        super().__init__()
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(
                f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}."
            )
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("ngf", ngf, 1),
            ("n_blocks", n_blocks, 0),
            ("n_downsampling", n_downsampling, 0),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        _check_padding_mode(padding_mode)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_downsampling = n_downsampling
        self.padding_mode = padding_mode
        pad7, conv_padding7 = _pad_then_conv(padding_mode, 3)
        pad7_out, _ = _pad_then_conv(padding_mode, 3)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        # c7s1-ngf: 7x7 conv, stride 1, InstanceNorm, ReLU.
        layers[f"c7s1_{ngf}"] = nn.Sequential(
            *pad7,
            _conv_in_relu(in_channels, ngf, 7, padding=conv_padding7),
        )
        # d_k: 3x3 conv, stride 2 (zero padding 1), InstanceNorm, ReLU; channels double.
        for i in range(n_downsampling):
            c_in, c_out = ngf * 2**i, ngf * 2 ** (i + 1)
            layers[f"d{c_out}"] = _conv_in_relu(c_in, c_out, 3, stride=2, padding=1)
        # R_k: residual blocks at the lowest resolution.
        c_res = ngf * 2**n_downsampling
        for i in range(n_blocks):
            layers[f"R{c_res}_{i + 1}"] = ResnetBlock(c_res, padding_mode, dropout)
        # u_k: 3x3 transposed conv, stride 1/2 (or 2x nearest resize + 3x3 conv), InstanceNorm,
        # ReLU; channels halve.
        for i in range(n_downsampling, 0, -1):
            c_in, c_out = ngf * 2**i, ngf * 2 ** (i - 1)
            if upsample_mode == "deconv":
                layers[f"u{c_out}"] = _conv_in_relu(
                    c_in, c_out, 3, stride=2, padding=1, transposed=True
                )
            else:
                pad1, conv_padding1 = _pad_then_conv(padding_mode, 1)
                layers[f"u{c_out}"] = nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    *pad1,
                    _conv_in_relu(c_in, c_out, 3, padding=conv_padding1),
                )
        # c7s1-out: 7x7 conv to the output channels, no norm, tanh.
        layers["c7s1_out"] = nn.Sequential(
            *pad7_out,
            Convolution(2, ngf, out_channels, kernel_size=7, padding=conv_padding7, conv_only=True),
        )
        layers["tanh"] = nn.Tanh()
        self.model = nn.Sequential(layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate a batch of images.

        Args:
            x: ``(B, in_channels, H, W)``, typically in [-1, 1].

        Returns:
            ``(B, out_channels, H, W)`` in [-1, 1].
        """
        factor = int(2**self.n_downsampling)  # int for TorchScript (int ** int is float there)
        check_2d_input(x, self.in_channels, factor, "2**n_downsampling")
        h, w = x.shape[-2:]
        if self.padding_mode == "reflect" and min(h, w) < 2 * factor:
            raise ValueError(
                f"with reflection padding, H and W must be at least 2 * 2**n_downsampling = "
                f"{2 * factor} (a 1-pixel side cannot be reflected), got H={h}, W={w}."
            )
        return self.model(x)
