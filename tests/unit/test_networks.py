"""Unit tests of tumoraware.networks: generator, tied tumour U-Nets, PatchGAN factory."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import ADN
from monai.networks.nets import PatchDiscriminator
from torch import nn

from tumoraware.networks import (
    ResnetBlock,
    ResnetGenerator,
    TiedTumourUNets,
    TumourUNet,
    init_weights,
    patch_discriminator,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to OpenMP waits on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- ResnetGenerator


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "n_blocks", "n_down", "size"),
    [
        (1, 1, 2, 2, (32, 32)),
        (1, 1, 2, 2, (64, 32)),
        (2, 3, 1, 3, (64, 64)),
        (1, 1, 0, 2, (8, 8)),  # smallest size with reflection padding: 2 * 2**n_down
        (1, 2, 2, 0, (5, 7)),  # no downsampling: any size
    ],
)
def test_generator_output_shape_and_range(in_ch, out_ch, n_blocks, n_down, size):
    torch.manual_seed(0)
    g = ResnetGenerator(in_ch, out_ch, ngf=8, n_blocks=n_blocks, n_downsampling=n_down)
    x = 50.0 * torch.randn(2, in_ch, *size)  # large inputs: tanh must still bound the output
    y = g(x)
    assert y.shape == (2, out_ch, *size)
    assert y.abs().max() <= 1.0
    assert y.abs().max() > 0.5  # not a degenerate all-zero output


def test_generator_layers_read_like_the_architecture_table():
    g = ResnetGenerator(ngf=8, n_blocks=2)
    names = list(g.model._modules)
    assert names == ["c7s1_8", "d16", "d32", "R32_1", "R32_2", "u16", "u8", "c7s1_out", "tanh"]
    assert isinstance(g.model.c7s1_8[0], nn.ReflectionPad2d)
    assert g.model.c7s1_8[0].padding == (3, 3, 3, 3)
    assert g.model.c7s1_8[1].conv.kernel_size == (7, 7)
    assert g.model.d16.conv.stride == (2, 2)
    assert isinstance(g.model.u16.conv, nn.ConvTranspose2d)
    assert g.model.u16.conv.output_padding == (1, 1)
    norms = [m for m in g.modules() if isinstance(m, nn.InstanceNorm2d)]
    # 1 (c7s1) + 2 (d) + 2 per residual block x 2 + 2 (u) = 9, none with affine parameters.
    assert len(norms) == 9 and not any(m.affine for m in norms)
    # reflection pads: c7s1 in and out + 2 per residual block
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in g.modules()) == 2 + 2 * 2
    assert all(m.bias is not None for m in g.modules() if isinstance(m, nn.Conv2d))


def test_generator_rejects_sizes_not_divisible_and_wrong_channels():
    g = ResnetGenerator(ngf=8, n_blocks=1)
    with pytest.raises(ValueError, match=r"multiples of 2\*\*n_downsampling = 4.*H=30, W=32"):
        g(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"at least 2 \* 2\*\*n_downsampling = 8.*got H=4, W=8"):
        g(torch.zeros(1, 1, 4, 8))  # reflection pad 1 of a 1-pixel side is impossible
    with pytest.raises(
        ValueError, match=r"expected input of shape \(B, 1, H, W\), got \(1, 2, 32, 32\)"
    ):
        g(torch.zeros(1, 2, 32, 32))
    zero_padded = ResnetGenerator(ngf=8, n_blocks=1, padding_mode="zeros")
    assert zero_padded(torch.zeros(1, 1, 4, 8)).shape == (1, 1, 4, 8)
    with pytest.raises(
        ValueError, match=r"more than one\s+pixel at the lowest resolution.*H=4, W=4"
    ):
        zero_padded(torch.zeros(1, 1, 4, 4))  # 1 x 1 at the bottleneck: InstanceNorm fails


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        ResnetGenerator(padding_mode="circular")
    with pytest.raises(ValueError, match="ngf must be an integer >= 1, got 0"):
        ResnetGenerator(ngf=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        ResnetGenerator(ngf=8, n_blocks=1, dropout=1.0)


def test_generator_parameter_count_matches_the_reference_cyclegan():
    # ResNet-9, ngf 64, 1 channel in and out; conv weights k*k*c_in*c_out, + c_out biases;
    # InstanceNorm(affine=False) has none.
    #   c7s1-64   7*7*1*64 + 64     =      3,200
    #   d128      3*3*64*128 + 128  =     73,856
    #   d256      3*3*128*256 + 256 =    295,168
    #   R256 x 9  9 * 2 * (3*3*256*256 + 256) = 9 * 2 * 590,080 = 10,621,440
    #   u128      3*3*256*128 + 128 =    295,040
    #   u64       3*3*128*64 + 64   =     73,792
    #   c7s1-1    7*7*64*1 + 1      =      3,137
    #   total                         11,365,633
    # (with 3 channels in and out, as in junyanz's repo: + 2*7*7*64 + 2 = 11,378,179.)
    assert n_params(ResnetGenerator(1, 1, ngf=64, n_blocks=9)) == 11_365_633
    assert n_params(ResnetGenerator(3, 3, ngf=64, n_blocks=9)) == 11_378_179


def test_generator_init_is_normal_0_002_with_zero_bias():
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=64, n_blocks=1)
    weight = g.model.R256_1.block[1].conv.weight  # 3*3*256*256 = 589,824 samples
    assert 0.018 < weight.std().item() < 0.022
    assert abs(weight.mean().item()) < 1e-3
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 1 + 2 + 2 + 2 + 1
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    # init_weights re-draws with another std
    init_weights(g, std=0.1)
    assert 0.09 < weight.std().item() < 0.11
    with pytest.raises(ValueError, match="std must be > 0"):
        init_weights(g, std=0.0)


def test_resnet_block_is_identity_plus_residual():
    torch.manual_seed(0)
    block = ResnetBlock(8)
    x = torch.randn(2, 8, 16, 16)
    assert not torch.allclose(block(x), x)
    # zero the second conv: the residual branch gives IN(0) = 0, so the block returns x exactly.
    nn.init.zeros_(block.block[3].conv.weight)
    nn.init.zeros_(block.block[3].conv.bias)
    assert torch.equal(block(x), x)


def test_generator_dropout_only_when_asked():
    assert not any(isinstance(m, nn.Dropout) for m in ResnetGenerator(ngf=8, n_blocks=2).modules())
    torch.manual_seed(0)
    g = ResnetGenerator(ngf=8, n_blocks=2, dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in g.modules()) == 2  # one per residual block
    x = torch.randn(1, 1, 32, 32)
    assert not torch.allclose(g(x), g(x))  # train mode: random masks
    g.eval()
    assert torch.equal(g(x), g(x))


# ---------------------------------------------------------------------------- TiedTumourUNets


def test_tied_unets_share_exactly_the_penultimate_block():
    tied = TiedTumourUNets(channels=(4, 8, 16))
    assert tied.u_ct.penultimate is tied.u_mri.penultimate is tied.penultimate
    assert isinstance(tied.u_ct, TumourUNet) and isinstance(tied.u_mri, TumourUNet)
    for name in ("encoder", "bottleneck", "upsample", "decoder", "head"):
        assert getattr(tied.u_ct, name) is not getattr(tied.u_mri, name)
    ct_ids = {id(p) for p in tied.u_ct.parameters()}
    mri_ids = {id(p) for p in tied.u_mri.parameters()}
    assert ct_ids & mri_ids == {id(p) for p in tied.penultimate.parameters()}


def test_tied_unets_parameters_are_unique_and_counted_once():
    # Per U-Net, channels (4, 8, 16), 1 in, 1 out; 3x3 convs without bias (InstanceNorm follows):
    #   encoder.0   1->4:   3*3*1*4 + 3*3*4*4     =   36 +  144 =   180
    #   encoder.1   4->8:   3*3*4*8 + 3*3*8*8     =  288 +  576 =   864
    #   bottleneck  8->16:  3*3*8*16 + 3*3*16*16  = 1152 + 2304 = 3,456
    #   upsample.0  16->8 2x2 deconv + bias: 2*2*16*8 + 8 =        520
    #   upsample.1  8->4  2x2 deconv + bias: 2*2*8*4 + 4  =        132
    #   decoder.0   16->8:  3*3*16*8 + 3*3*8*8    = 1152 +  576 = 1,728
    #   penultimate 8->4:   3*3*8*4 + 3*3*4*4     =  288 +  144 =   432
    #   head        1x1 4->1 + bias               =    4 +    1 =     5
    #   one U-Net                                                  7,317
    # The pair shares the penultimate block: 2 * 7,317 - 432 = 14,202.
    tied = TiedTumourUNets(channels=(4, 8, 16))
    assert n_params(tied.u_ct) == n_params(tied.u_mri) == 7_317
    assert n_params(tied.penultimate) == 432
    params = list(tied.parameters())
    assert len(params) == len({id(p) for p in params})
    assert sum(p.numel() for p in params) == 14_202
    optimizer = torch.optim.Adam(tied.parameters(), lr=1e-4)
    seen = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(seen) == len(set(seen)) == len(params)


def test_training_u_mri_changes_the_shared_block_that_u_ct_uses():
    torch.manual_seed(0)
    tied = TiedTumourUNets(channels=(4, 8, 16))
    x = torch.randn(2, 1, 16, 16)
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    shared = tied.u_ct.penultimate.conv1.conv.weight
    shared_before = shared.detach().clone()
    ct_only_before = {n: p.detach().clone() for n, p in tied.u_ct.named_parameters()}
    logits_ct_before = tied.forward_ct(x)[0].detach()

    optimizer = torch.optim.SGD(tied.parameters(), lr=0.5)
    logits_mri, _ = tied.forward_mri(x)
    nn.functional.binary_cross_entropy_with_logits(logits_mri, target).backward()
    for name, p in tied.u_ct.named_parameters():
        assert (p.grad is not None) == name.startswith("penultimate."), name
    optimizer.step()

    assert not torch.equal(shared, shared_before)
    assert tied.u_mri.penultimate.conv1.conv.weight is shared
    for name, p in tied.u_ct.named_parameters():
        if not name.startswith("penultimate."):
            assert torch.equal(p, ct_only_before[name]), name
    # U_CT's own weights are untouched, yet its output moved: through the shared block only.
    assert not torch.allclose(tied.forward_ct(x)[0], logits_ct_before)


@pytest.mark.parametrize(
    ("tap", "size", "features_shape"),
    [
        ("bottleneck", (32, 32), (2, 128, 4, 4)),
        ("bottleneck", (32, 64), (2, 128, 4, 8)),
        ("penultimate", (32, 32), (2, 16, 32, 32)),
    ],
)
def test_tied_unets_logits_and_feature_taps(tap, size, features_shape):
    torch.manual_seed(0)
    tied = TiedTumourUNets(feature_tap=tap)  # channels (16, 32, 64, 128)
    x = torch.randn(2, 1, *size)
    for domain, method in (("ct", tied.forward_ct), ("mri", tied.forward_mri)):
        logits, features = method(x)
        assert logits.shape == (2, 1, *size)
        assert features.shape == features_shape
        logits_again, _ = tied(x, domain=domain)
        assert torch.equal(logits_again, logits)
    # the two U-Nets have different weights, so different outputs
    assert not torch.allclose(tied.forward_ct(x)[0], tied.forward_mri(x)[0])


def test_penultimate_tap_is_the_shared_block_output():
    torch.manual_seed(0)
    tied = TiedTumourUNets(channels=(4, 8), feature_tap="penultimate")
    seen = []
    tied.penultimate.register_forward_hook(lambda _m, _i, out: seen.append(out))
    _, features = tied.forward_mri(torch.randn(1, 1, 8, 8))
    assert len(seen) == 1 and features is seen[0]


def test_tied_unets_init_is_normal_0_002():
    torch.manual_seed(0)
    tied = TiedTumourUNets()
    weight = tied.u_ct.bottleneck.conv2.conv.weight  # 3*3*128*128 = 147,456 samples
    assert 0.018 < weight.std().item() < 0.022
    assert torch.count_nonzero(tied.u_mri.head.conv.conv.bias) == 0


def test_tied_unets_reject_bad_input_and_arguments():
    tied = TiedTumourUNets(channels=(4, 8, 16))
    with pytest.raises(
        ValueError, match=r"multiples of 2\*\*\(len\(channels\) - 1\) = 4.*H=18, W=16"
    ):
        tied.forward_ct(torch.zeros(1, 1, 18, 16))
    with pytest.raises(ValueError, match=r"more than one pixel at the lowest resolution.*H=4, W=4"):
        tied.forward_mri(torch.zeros(1, 1, 4, 4))
    with pytest.raises(
        ValueError, match=r"expected input of shape \(B, 1, H, W\), got \(1, 16, 16\)"
    ):
        tied.forward_ct(torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match=r"domain must be one of \('ct', 'mri'\), got 'MR'"):
        tied(torch.zeros(1, 1, 16, 16), domain="MR")
    with pytest.raises(ValueError, match="feature_tap must be one of"):
        TiedTumourUNets(feature_tap="encoder")
    with pytest.raises(ValueError, match="channels must list at least two"):
        TiedTumourUNets(channels=(16,))


# ------------------------------------------------------------------------ patch_discriminator


def test_patch_discriminator_is_monai_instance_norm_and_returns_a_list():
    d = patch_discriminator(channels=8)
    assert isinstance(d, PatchDiscriminator)
    norms = [m for m in d.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 and not any(m.affine for m in norms)
    out = d(torch.randn(1, 1, 256, 256))
    assert isinstance(out, list)
    # 256 -> 128 -> 64 -> 32 (stride 2) -> 31 -> 30 (two stride-1 4x4 convs, padding 1)
    assert out[-1].shape == (1, 1, 30, 30)


def test_patch_discriminator_receptive_field_is_70():
    torch.manual_seed(0)
    d = patch_discriminator(channels=4)
    for m in d.modules():  # InstanceNorm mixes all pixels; remove it to see the conv footprint
        if isinstance(m, ADN) and hasattr(m, "N"):
            m.N = nn.Identity()
    x = torch.randn(1, 1, 128, 128, requires_grad=True)
    logits = d(x)[-1]
    logits[0, 0, logits.shape[-2] // 2, logits.shape[-1] // 2].backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70
    assert cols.max() - cols.min() + 1 == 70


def test_resize_conv_generator_keeps_shapes_and_layer_names():
    from tumoraware.networks import ResnetGenerator

    deconv = ResnetGenerator(1, 1, ngf=8, n_blocks=1)
    resize = ResnetGenerator(1, 1, ngf=8, n_blocks=1, upsample_mode="resize")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert resize(x).shape == deconv(x).shape == x.shape
    assert [n for n, _ in resize.model.named_children()] == [
        n for n, _ in deconv.model.named_children()
    ]
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in resize.modules())
    with pytest.raises(ValueError, match="upsample_mode"):
        ResnetGenerator(upsample_mode="bilinear")


def test_spectral_norm_discriminator_bounds_every_conv():
    from tumoraware.networks import patch_discriminator

    plain = patch_discriminator(1, channels=8, num_layers_d=2)
    normed = patch_discriminator(1, channels=8, num_layers_d=2, spectral_norm=True)
    convs = [m for m in normed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    for conv in convs:  # largest singular value of each reshaped weight ~ 1 after a few calls
        for _ in range(20):
            conv.train()(torch.zeros(1, conv.in_channels, 16, 16))
        sigma = float(torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2))
        assert sigma == pytest.approx(1.0, abs=0.1)
