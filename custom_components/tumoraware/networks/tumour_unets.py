"""The tumour networks U_CT and U_MRI of the tumour-aware loss, with a tied penultimate layer.

Jiang et al. (MICCAI 2018, §2.1): "two parallel tumor detection networks using simplified models of
the Unet [10] for CT (U_CT) and the synthesized MRI (U_MRI)"; §2.3: "We tied the penultimate layer
in U_MRI and U_CT". The supplementary table with their exact sizes is not public, so the simplified
U-Net here is a plain 2D U-Net with few filters. With ``channels=(16, 32, 64, 128)`` (module
names as in :class:`TumourUNet`; conv3 = 3x3 conv, IN = InstanceNorm, LReLU = LeakyReLU(0.01),
upsample.k = 2x2 transposed conv, stride 2, halving the channels)::

    encoder.0    2 x conv3-IN-LReLU                             (B,  16, H,   W)    -> skip 0
    encoder.1    maxpool 2, 2 x conv3-IN-LReLU                  (B,  32, H/2, W/2)  -> skip 1
    encoder.2    maxpool 2, 2 x conv3-IN-LReLU                  (B,  64, H/4, W/4)  -> skip 2
    bottleneck   maxpool 2, 2 x conv3-IN-LReLU                  (B, 128, H/8, W/8)  φ "bottleneck"
    decoder.0    upsample.0, concat skip 2, 2 x conv3-IN-LReLU  (B,  64, H/4, W/4)
    decoder.1    upsample.1, concat skip 1, 2 x conv3-IN-LReLU  (B,  32, H/2, W/2)
    penultimate  upsample.2, concat skip 0, 2 x conv3-IN-LReLU  (B,  16, H,   W)    φ "penultimate"
    head         1x1 conv                                       (B, out, H,   W)    logits

"Penultimate layer" is read as the last conv block before the 1x1 output conv: in
:class:`TiedTumourUNets` it is one module object used by both U-Nets, so both tumour losses train
the same weights; everything else (encoders, transposed convs, other decoder blocks, heads) has
separate weights.

Reused from MONAI: the two-conv block is :class:`monai.networks.blocks.UnetBasicBlock` (3x3 convs
without bias, InstanceNorm without affine, LeakyReLU 0.01), the transposed conv is
:class:`monai.networks.blocks.UpSample` (``mode="deconv"``), the 1x1 head is
:class:`monai.networks.blocks.UnetOutBlock`. Written by hand: the U-Net assembly with an injected
(shareable) penultimate block and the feature tap; MONAI's ``BasicUNet``/``DynUNet`` build every
block themselves and return no intermediate features.

Initialisation: N(0, 0.02) (:func:`~tumoraware.networks.resnet_generator.init_weights`), like the
generators, rather than Kaiming, because (1) the paper built all its networks "similar to [5]",
whose code initialises every network so; (2) every 3x3 conv here is followed by InstanceNorm, which
cancels the weight scale, so Kaiming's variance argument only concerns the transposed convs and
the head; (3) a small head starts the tumour logits near 0 (p = 0.5, so L_tumour starts near
2 log 2), and the tumour gradient that reaches G while both are still random starts small.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetBasicBlock, UnetOutBlock, UpSample
from torch import nn

from tumoraware.networks._checks import check_2d_input
from tumoraware.networks.resnet_generator import init_weights

__all__ = ["DOMAINS", "FEATURE_TAPS", "TiedTumourUNets", "TumourUNet", "double_conv"]

FEATURE_TAPS = ("bottleneck", "penultimate")
"""Where φ is taken: the bottleneck output or the (tied) penultimate block's output."""

DOMAINS = ("ct", "mri")
"""``TiedTumourUNets.forward(x, domain)``: ``"ct"`` runs U_CT, ``"mri"`` runs U_MRI."""


def double_conv(in_channels: int, out_channels: int) -> UnetBasicBlock:
    """Two [3x3 conv (no bias), InstanceNorm (no affine), LeakyReLU(0.01)]: one U-Net level.

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """
    return UnetBasicBlock(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=3,
        stride=1,
        norm_name="instance",
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
    )


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    channels = tuple(channels)
    if len(channels) < 2 or any(int(c) != c or c < 1 for c in channels):
        raise ValueError(
            "channels must list at least two positive integers (one per level, the last one for "
            f"the bottleneck), got {channels!r}."
        )
    return channels


def _check_feature_tap(feature_tap: str) -> None:
    if feature_tap not in FEATURE_TAPS:
        raise ValueError(f"feature_tap must be one of {FEATURE_TAPS}, got {feature_tap!r}.")


class TumourUNet(nn.Module):
    """One simplified 2D U-Net tumour network (U_CT or U_MRI) that also returns features φ.

    Args:
        in_channels: image channels (1).
        out_channels: logit channels; 1 = tumour logit, for BCE with logits.
        channels: filters per level, the last one for the bottleneck; ``len(channels) - 1``
            2x2 max-pools in total.
        penultimate: the block applied after the last concat, mapping ``2 * channels[0]`` to
            ``channels[0]`` channels (e.g. :func:`double_conv`). Pass the same module to two
            U-Nets to tie them; it is used as given (not re-initialised). ``None`` builds an
            untied one.
        feature_tap: where the features φ are taken, one of :data:`FEATURE_TAPS`:

            - ``"bottleneck"``: output of the deepest block, the most abstract ("high-level",
              eq. 4) features, ``(B, channels[-1], H / 2**(L-1), W / 2**(L-1))`` with
              ``L = len(channels)``;
            - ``"penultimate"``: output of the penultimate block (the tied one in
              :class:`TiedTumourUNets`), ``(B, channels[0], H, W)``.

    Shapes:
        ``forward``: ``(B, in_channels, H, W) -> (logits (B, out_channels, H, W), φ)``; ``H`` and
        ``W`` must be multiples of ``2**(L-1)`` with more than one bottleneck pixel.

    Raises:
        ValueError: on invalid ``channels`` or ``feature_tap``, or an input of the wrong shape.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        penultimate: nn.Module | None = None,
        feature_tap: str = "bottleneck",
    ) -> None:
        super().__init__()
        channels = _check_channels(channels)
        _check_feature_tap(feature_tap)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.feature_tap = feature_tap
        levels = len(channels) - 1  # resolutions above the bottleneck = number of max-pools

        # Encoder: two convs per level, 2x2 max-pool between levels, then the bottleneck.
        encoder_in = (in_channels, *channels[: levels - 1])
        self.encoder = nn.ModuleList(double_conv(encoder_in[i], channels[i]) for i in range(levels))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = double_conv(channels[-2], channels[-1])
        # Decoder, deepest first: 2x2 transposed conv halving channels, concat skip, two convs.
        self.upsample = nn.ModuleList(
            UpSample(2, channels[i + 1], channels[i], scale_factor=2, mode="deconv")
            for i in reversed(range(levels))
        )
        self.decoder = nn.ModuleList(
            double_conv(2 * channels[i], channels[i]) for i in reversed(range(1, levels))
        )
        for module in (self.encoder, self.bottleneck, self.upsample, self.decoder):
            init_weights(module)
        if penultimate is None:
            penultimate = init_weights(double_conv(2 * channels[0], channels[0]))
        self.penultimate = penultimate
        # Head: 1x1 conv to the logits.
        self.head = init_weights(UnetOutBlock(2, channels[0], out_channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tumour logits and features φ of a batch of images.

        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            ``(logits, features)``: logits ``(B, out_channels, H, W)``; features as described by
            ``feature_tap`` in the class docstring.
        """
        check_2d_input(x, self.in_channels, 2 ** (len(self.channels) - 1), "2**(len(channels) - 1)")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        bottleneck = x = self.bottleneck(x)
        for up, block in zip(self.upsample, [*self.decoder, self.penultimate], strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        logits = self.head(x)
        return logits, (bottleneck if self.feature_tap == "bottleneck" else x)


class TiedTumourUNets(nn.Module):
    """U_CT and U_MRI: two :class:`TumourUNet` sharing ONE penultimate block.

    ``self.u_ct.penultimate is self.u_mri.penultimate``; all other weights are separate.
    ``parameters()`` yields the shared parameters once (``nn.Module`` deduplicates), so one
    optimizer over this module sees each parameter exactly once, and the gradients of the U_CT
    and U_MRI terms of eq. 3 add up in the shared block. ``state_dict()`` lists the shared
    tensors under both ``u_ct.penultimate.*`` and ``u_mri.penultimate.*`` (the same storage;
    loading fills the one module, the later key winning if a file disagreed).

    Args:
        in_channels: image channels (1).
        out_channels: logit channels; 1 = tumour logit, for BCE with logits.
        channels: filters per level of both U-Nets, the last one for the bottleneck.
        feature_tap: where φ is taken, ``"bottleneck"`` (default) or ``"penultimate"``; see
            :class:`TumourUNet`.

    Shapes:
        ``forward_ct(x)``, ``forward_mri(x)``, ``forward(x, domain)``:
        ``(B, in_channels, H, W) -> (logits (B, out_channels, H, W), φ)``, with φ
        ``(B, channels[-1], H / 2**(L-1), W / 2**(L-1))`` for ``"bottleneck"`` and
        ``(B, channels[0], H, W)`` for ``"penultimate"`` (``L = len(channels)``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        feature_tap: str = "bottleneck",
    ) -> None:
        super().__init__()
        channels = _check_channels(channels)
        penultimate = init_weights(double_conv(2 * channels[0], channels[0]))
        self.u_ct = TumourUNet(in_channels, out_channels, channels, penultimate, feature_tap)
        self.u_mri = TumourUNet(in_channels, out_channels, channels, penultimate, feature_tap)

    @property
    def penultimate(self) -> nn.Module:
        """The tied block (registered under ``u_ct`` and ``u_mri``, not a third time here)."""
        return self.u_ct.penultimate

    def forward_ct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U_CT on real CT ``x_c``: ``(logits, φ_CT)``."""
        return self.u_ct(x)

    def forward_mri(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U_MRI on (synthetic) MRI ``G(x_c)``: ``(logits, φ_MRI)``."""
        return self.u_mri(x)

    def forward(self, x: torch.Tensor, domain: str = "ct") -> tuple[torch.Tensor, torch.Tensor]:
        """U_CT (``domain="ct"``) or U_MRI (``domain="mri"``) on ``x``: ``(logits, φ)``."""
        if domain == "ct":
            return self.forward_ct(x)
        if domain == "mri":
            return self.forward_mri(x)
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}.")
