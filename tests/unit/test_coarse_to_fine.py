"""CoarseToFineInferer: finds what the whole-slice sliding window finds, with far fewer windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.inferers import SliceInferer
from monai.inferers.utils import _get_scan_interval
from torch import nn

from tumoraware.inferers import CoarseToFineInferer, whole_scan_inferer, windows_per_slice

SEGMENTATION = Path(__file__).resolve().parents[2] / "bundles" / "lung_mri_tumor_segmentation"


class BrightIsTumour(nn.Module):
    """A pixel-wise 'network': tumour logit ``10 (x - 0.5)``, background 0; ``(N, 1, h, w)`` →
    ``(N, 2, h, w)``. Pixel-wise, so every window placement gives the same logits: differences
    from the sliding window can only come from where windows were (not) evaluated.

    Counts the windows it sees.
    """

    def __init__(self) -> None:
        super().__init__()
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return torch.cat([torch.zeros_like(x), 10.0 * (x - 0.5)], dim=1)


def blob_volume(
    shape: tuple[int, int, int] = (512, 384, 12),
    blobs: tuple[tuple[int, int, int, int, int], ...] = ((300, 200, 4, 8, 30),),
) -> torch.Tensor:
    """``(1, 1, H, W, D)``: faint noise with bright discs ``(x, y, first slice, end, radius)``."""
    generator = torch.Generator().manual_seed(0)
    volume = 0.1 * torch.rand((1, 1, *shape), generator=generator)
    xs = torch.arange(shape[0]).view(-1, 1)
    ys = torch.arange(shape[1]).view(1, -1)
    for x, y, z0, z1, radius in blobs:
        disc = ((xs - x) ** 2 + (ys - y) ** 2) <= radius**2
        volume[0, 0, :, :, z0:z1][disc] = 1.0
    return volume


def sliding(volume: torch.Tensor, network: nn.Module, roi: int = 64) -> torch.Tensor:
    inferer = SliceInferer(roi_size=(roi, roi), sw_batch_size=8, overlap=0.5, spatial_dim=2)
    return inferer(volume, network)


def test_finds_the_blob_and_matches_the_sliding_window_there():
    volume = blob_volume()
    network = BrightIsTumour()
    expected = sliding(volume, network)
    sliding_windows, network.windows = network.windows, 0
    inferer = CoarseToFineInferer(roi_size=(64, 64), sw_batch_size=8, coarse_factor=4.0)
    out = inferer(volume, network)

    assert out.shape == expected.shape == (1, 2, 512, 384, 12)
    blob = volume[0, 0] > 0.5
    assert blob.sum() > 0
    assert torch.equal(out.argmax(1)[0], expected.argmax(1)[0]), "same mask everywhere"
    torch.testing.assert_close(out[0, :, blob], expected[0, :, blob])
    stats = inferer.last_stats
    assert stats["mode"] == "coarse_to_fine" and stats["regions"] == 1
    assert stats["coarse_windows"] + stats["fine_windows"] == network.windows
    assert stats["sliding_windows"] == sliding_windows == 15 * 11 * 12


def test_evaluates_far_fewer_windows_than_the_sliding_window():
    volume = blob_volume()
    network = BrightIsTumour()
    sliding(volume, network)
    sliding_windows, network.windows = network.windows, 0
    CoarseToFineInferer(roi_size=64, sw_batch_size=8, coarse_factor=4.0)(volume, network)
    # coarse: 128 x 96 slices, 3 x 2 windows; fine: a 2 x 2 box on 4 + 2 slices
    assert network.windows <= sliding_windows / 20, (network.windows, sliding_windows)


def test_no_proposal_no_fine_window_and_background_everywhere():
    volume = blob_volume(blobs=())
    network = BrightIsTumour()
    inferer = CoarseToFineInferer(roi_size=64, coarse_factor=4.0)
    out = inferer(volume, network)
    assert inferer.last_stats["fine_windows"] == 0 and inferer.last_stats["regions"] == 0
    assert not out.argmax(1).any()


def test_max_regions_keeps_the_most_probable_proposals():
    big, small = (120, 100, 2, 10, 40), (400, 300, 5, 7, 20)
    volume = blob_volume(blobs=(big, small))
    network = BrightIsTumour()
    inferer = CoarseToFineInferer(roi_size=64, coarse_factor=4.0, max_regions=1)
    inferer(volume, network)
    assert inferer.last_stats["regions"] == 1
    (rows, cols, slices), *_ = inferer.proposals(
        inferer.tumour_probability(inferer.sliding(torch.nn.functional.avg_pool3d(
            volume, (4, 4, 1)), network))[0], (512, 384, 12))  # fmt: skip
    assert rows.start <= 120 < rows.stop and cols.start <= 100 < cols.stop
    assert (slices.start, slices.stop) == (1, 11), "slice_margin 1 on each side"


def test_a_slice_that_fits_the_window_is_a_plain_sliding_window():
    volume = blob_volume(shape=(64, 60, 5), blobs=((30, 30, 1, 3, 10),))
    network = BrightIsTumour()
    inferer = CoarseToFineInferer(roi_size=64, coarse_factor=4.0)
    out = inferer(volume, network)
    assert inferer.last_stats["mode"] == "sliding" and inferer.last_stats["coarse_windows"] == 0
    torch.testing.assert_close(out, sliding(volume, BrightIsTumour()))


@pytest.mark.parametrize("spatial_dim", [0, 2])
def test_shapes_batch_channels_slice_axis_and_meta(spatial_dim):
    shape = (200, 136, 6)
    volume = torch.cat([blob_volume(shape, ((50, 40, 1, 3, 12),)), blob_volume(shape, ())])  # B 2
    if spatial_dim == 0:
        volume = volume.permute(0, 1, 4, 2, 3)  # slices first: (B, 1, D, H, W)
    third = nn.Conv2d(2, 3, kernel_size=1)  # K = 3: background, tumour, a never-class
    with torch.no_grad():
        third.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])[..., None, None])
        third.bias.copy_(torch.tensor([0.0, 0.0, -10.0]))
    network = nn.Sequential(BrightIsTumour(), third)
    affine = torch.diag(torch.tensor([0.5, 0.5, 2.0, 1.0], dtype=torch.float64))
    image = MetaTensor(volume, affine=affine)
    inferer = CoarseToFineInferer(roi_size=(64, 64), coarse_factor=3.0, spatial_dim=spatial_dim)
    out = inferer(image, network)
    assert out.shape == (2, 3, *volume.shape[2:])
    assert inferer.last_stats["mode"] == "coarse_to_fine" and inferer.last_stats["regions"] == 1
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, affine)


def test_windows_per_slice_matches_monai():
    cases = [((1021, 1021), (256, 256), 0.5), ((280, 200), (64, 64), 0.25),
             ((50, 300), (64, 64), 0.5), ((256, 257), (256, 256), 0.0)]  # fmt: skip
    for size, roi, overlap in cases:
        padded = [max(s, r) for s, r in zip(size, roi, strict=True)]
        interval = _get_scan_interval(padded, roi, 2, (overlap, overlap))
        monai_count = len(dense_patch_slices(padded, roi, interval))
        assert windows_per_slice(size, roi, overlap) == monai_count


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roi_size": (64, 64, 1)}, "roi_size must be 2"),
        ({"roi_size": 64, "coarse_factor": 1.0}, "coarse_factor must be > 1"),
        ({"roi_size": 64, "threshold": 1.0}, "threshold must be a probability"),
        ({"roi_size": 64, "overlap": 1.0}, r"overlap must be in \[0, 1\)"),
        ({"roi_size": 64, "margin": -0.1}, "margin and slice_margin must be >= 0"),
        ({"roi_size": 64, "max_regions": 0}, "max_regions must be >= 1"),
        ({"roi_size": 64, "spatial_dim": 3}, "spatial_dim must be 0, 1 or 2"),
        ({"roi_size": 64, "sw_device": "cpu"}, "sw_device is not supported"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CoarseToFineInferer(**kwargs)


def test_a_volume_without_a_slice_axis_is_refused():
    with pytest.raises(ValueError, match=r"\(B, C, H, W, D\)"):
        CoarseToFineInferer(roi_size=64)(torch.zeros(1, 1, 128, 128), BrightIsTumour())


@pytest.mark.parametrize(
    ("mode", "coarse_weights", "expected"),
    [
        ("sliding", True, SliceInferer),
        ("auto", False, SliceInferer),
        ("auto", True, CoarseToFineInferer),
        ("coarse_to_fine", True, CoarseToFineInferer),
    ],
)
def test_the_bundle_picks_the_inferer_by_whole_scan_mode(tmp_path, mode, coarse_weights, expected):
    parser = ConfigParser()
    parser.read_config(str(SEGMENTATION / "configs" / "inference.json"))
    coarse = tmp_path / "coarse_model.pt"
    if coarse_weights:
        torch.save(parser.get_parsed_content("coarse_network_def").state_dict(), coarse)
    parser.update({"whole_scan_mode": mode, "coarse_ckpt_path": str(coarse), "device": "cpu"})
    inferer = parser.get_parsed_content("inferer")
    assert type(inferer) is expected
    assert tuple(inferer.roi_size)[:2] == tuple(parser["spatial_size"])
    if expected is CoarseToFineInferer:
        # the default coarse network works at crop_mm / spatial_size = 1.5 mm, the network 0.375
        assert inferer.coarse_factor == 4.0 and inferer.coarse_roi_size == [64, 64]


def test_coarse_to_fine_without_coarse_weights_says_how_to_fix_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"coarse_ckpt_path .* does not exist\. Fix"):
        whole_scan_inferer("coarse_to_fine", SliceInferer, CoarseToFineInferer, tmp_path / "no.pt")


def test_a_misspelt_mode_lists_the_choices():
    with pytest.raises(ValueError, match=r"\['auto', 'coarse_to_fine', 'sliding'\], got 'coarse'"):
        whole_scan_inferer("coarse", SliceInferer, CoarseToFineInferer)


class HalfScaleBright(nn.Module):
    """A 'proposer' with weights: tumour logit ``scale (x - 0.5)``; ``scale`` is a parameter so
    a checkpoint can set it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.0))
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return torch.cat([torch.zeros_like(x), self.scale * (x - 0.5)], dim=1)


def test_a_separate_coarse_network_proposes_with_its_own_window_and_lazy_weights(tmp_path):
    volume = blob_volume()
    proposer, network = HalfScaleBright(), BrightIsTumour()
    checkpoint = tmp_path / "coarse.pt"
    inferer = CoarseToFineInferer(roi_size=64, coarse_factor=4.0, coarse_network=proposer,
                                  coarse_roi_size=32, coarse_checkpoint=checkpoint)  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"coarse_checkpoint .*coarse\.pt does not exist"):
        inferer(volume, network)
    torch.save({"model": {"scale": torch.tensor(10.0)}}, checkpoint)
    out = inferer(volume, network)
    assert proposer.scale.item() == 10.0 and not proposer.training
    stats = inferer.last_stats
    # coarse slices 128 x 96 in 32-pixel windows: 7 x 5 a slice
    assert stats["coarse_windows"] == proposer.windows == 7 * 5 * 12
    assert stats["regions"] == 1 and stats["fine_windows"] == network.windows > 0
    expected = sliding(volume, BrightIsTumour())
    assert torch.equal(out.argmax(1), expected.argmax(1))


def test_a_single_window_slice_is_slid_even_with_a_coarse_network():
    volume = blob_volume(shape=(64, 60, 5), blobs=((30, 30, 1, 3, 10),))
    proposer = HalfScaleBright()
    inferer = CoarseToFineInferer(roi_size=64, coarse_network=proposer)
    inferer(volume, BrightIsTumour())
    assert inferer.last_stats["mode"] == "sliding" and proposer.windows == 0


def test_coarse_weights_that_do_not_fit_say_so(tmp_path):
    checkpoint = tmp_path / "coarse.pt"
    torch.save({"other": torch.zeros(3)}, checkpoint)
    inferer = CoarseToFineInferer(roi_size=64, coarse_network=HalfScaleBright(),
                                  coarse_checkpoint=checkpoint)  # fmt: skip
    with pytest.raises(ValueError, match="does not fit coarse_network"):
        inferer(blob_volume(), BrightIsTumour())


def test_coarse_weights_without_a_coarse_network_are_refused():
    with pytest.raises(ValueError, match="coarse_checkpoint needs a coarse_network"):
        CoarseToFineInferer(roi_size=64, coarse_checkpoint="coarse.pt")
