"""Networks of the tumour-aware CT to MRI synthesis (Jiang et al., MICCAI 2018, §2.3).

- :class:`ResnetGenerator`: the CycleGAN ResNet generators ``G_CT->MRI`` and ``G_MRI->CT``.
- :class:`TiedTumourUNets`: the tumour networks U_CT and U_MRI with a tied penultimate block.
- :func:`patch_discriminator`: the discriminators ``D_CT`` and ``D_MRI``, MONAI's
  :class:`~monai.networks.nets.PatchDiscriminator` configured as the 70 x 70 PatchGAN.
"""

from monai.networks.nets import PatchDiscriminator
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from tumoraware.networks.resnet_generator import (
    PADDING_MODES,
    UPSAMPLE_MODES,
    ResnetBlock,
    ResnetGenerator,
    init_weights,
)
from tumoraware.networks.tumour_unets import (
    DOMAINS,
    FEATURE_TAPS,
    TiedTumourUNets,
    TumourUNet,
    double_conv,
)

__all__ = [
    "DOMAINS",
    "FEATURE_TAPS",
    "PADDING_MODES",
    "UPSAMPLE_MODES",
    "ResnetBlock",
    "ResnetGenerator",
    "TiedTumourUNets",
    "TumourUNet",
    "double_conv",
    "init_weights",
    "patch_discriminator",
]


def patch_discriminator(
    in_channels: int = 1, channels: int = 64, num_layers_d: int = 3, spectral_norm: bool = False
) -> PatchDiscriminator:
    """The CycleGAN 70 x 70 PatchGAN discriminator, as MONAI's ``PatchDiscriminator``.

    ``C64 - C128 - C256 - C512 - 1``: 4x4 convs, stride 2 for all but the last two, InstanceNorm
    (no affine) on all but the first and the last, LeakyReLU(0.2), weights N(0, 0.02). With the
    defaults each output logit sees a 70 x 70 input patch. Differences from the reference
    (junyanz ``NLayerDiscriminator``): the normalised convs have no bias (the reference's bias
    is cancelled by the following InstanceNorm anyway, so the function is the same).

    Args:
        in_channels: image channels (1).
        channels: filters of the first conv (``ndf``), doubled in each following layer.
        num_layers_d: convs between the first and the last (3 for the 70 x 70 PatchGAN).
        spectral_norm: ours, not the paper's: every conv weight under
            :func:`torch.nn.utils.parametrizations.spectral_norm` (Miyato et al., ICLR 2018), which
            bounds D's Lipschitz constant and so how sharply it can push G.

    Returns:
        A :class:`monai.networks.nets.PatchDiscriminator`. Its ``forward`` returns a **list**:
        the outputs of every layer, the last item being the patch logits ``(B, 1, h, w)``
        (``h = w = 30`` for a 256 x 256 input). Give ``discriminator(x)[-1]`` to
        ``monai.losses.PatchAdversarialLoss``: given the whole list, it would take every
        intermediate feature map for the output of another discriminator (multi-scale) and
        average the loss over all of them.
    """
    network = PatchDiscriminator(
        spatial_dims=2,
        channels=channels,
        in_channels=in_channels,
        out_channels=1,
        num_layers_d=num_layers_d,
        kernel_size=4,
        norm="INSTANCE",
    )
    if spectral_norm:
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                _spectral_norm(module)
    return network
