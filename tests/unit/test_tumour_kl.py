"""Tumour-region KL divergence: the divergences, the histogram, the accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tumoraware.metrics import (
    TumourKLMetric,
    js_divergence,
    kl_divergence,
    tumour_histogram,
)

LN2 = math.log(2.0)


def _disc_mask(b: int, size: int = 24, radius: float = 7.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= radius**2
    return disc[None, None].repeat(b, 1, 1, 1).float()


def _tumour_images(seed: int, mean: float, std: float, b: int = 4, size: int = 24):
    """``(images, masks)``: background noise, the tumour disc ~ N(mean, std) clipped to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    masks = _disc_mask(b, size)
    background = torch.randn(b, 1, size, size, generator=g) * 0.3 - 0.5
    tumour = torch.randn(b, 1, size, size, generator=g) * std + mean
    return torch.where(masks > 0.5, tumour, background).clamp(-1, 1), masks


# ----------------------------------------------------------------------------- divergences
def test_two_bin_kl_by_hand():
    # P = (0.5, 0.5), Q = (0.9, 0.1):
    # KL(P||Q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = -0.293893 + 0.804719 = 0.510826
    # KL(Q||P) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) =  0.529008 - 0.160944 = 0.368064
    forward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert forward == pytest.approx(0.510826, abs=1e-6)
    assert kl_divergence([0.5, 0.5], [0.9, 0.1], eps=0) == pytest.approx(forward, abs=1e-12)
    assert kl_divergence([0.5, 0.5], [0.9, 0.1], eps=0) == pytest.approx(0.5108, abs=1e-4)
    assert kl_divergence([0.5, 0.5], [0.9, 0.1], eps=0) > 0.51  # not a trivially tolerant check
    assert kl_divergence([0.9, 0.1], [0.5, 0.5], eps=0) == pytest.approx(reverse, abs=1e-12)
    # counts instead of probabilities: same value (normalised first); default eps barely moves it
    assert kl_divergence([50, 50], [90, 10], eps=0) == pytest.approx(forward, abs=1e-12)
    assert kl_divergence(torch.tensor([5.0, 5.0]), np.array([9, 1])) == pytest.approx(
        forward, abs=1e-5
    )


def test_identical_distributions_give_zero():
    counts = torch.tensor([3.0, 0.0, 7.0, 1.0, 0.0, 12.0])
    assert kl_divergence(counts, counts) == pytest.approx(0.0, abs=1e-9)
    assert kl_divergence(counts, 10 * counts) == pytest.approx(0.0, abs=1e-9)  # scale-free
    assert js_divergence(counts, counts) == pytest.approx(0.0, abs=1e-9)
    images, masks = _tumour_images(0, 0.4, 0.2)
    metric = TumourKLMetric()
    metric.update_synthetic(images, masks)
    metric.update_real(images, masks)
    result = metric.aggregate()
    assert result["kl_real_synth"] == pytest.approx(0.0, abs=1e-9)
    assert result["kl_synth_real"] == pytest.approx(0.0, abs=1e-9)
    assert result["js"] == pytest.approx(0.0, abs=1e-9)
    assert result["n_synth_voxels"] == result["n_real_voxels"] == int(masks.sum())


def test_kl_nonnegative_asymmetric_and_js_bounded():
    rng = np.random.default_rng(0)
    asymmetric = 0
    for _ in range(50):
        p, q = rng.integers(0, 20, size=(2, 16)).astype(float)
        p[0] += 1
        q[1] += 1  # never all zero
        kl_pq, kl_qp, js = kl_divergence(p, q), kl_divergence(q, p), js_divergence(p, q)
        assert kl_pq > 0 and kl_qp > 0
        assert 0 < js <= LN2
        assert js == pytest.approx(js_divergence(q, p), abs=1e-12)  # JS symmetric
        asymmetric += abs(kl_pq - kl_qp) > 1e-3
    assert asymmetric >= 45
    # disjoint supports: JS reaches ln 2 (up to the smoothing), KL is large but finite
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(LN2, abs=1e-4)
    assert js_divergence([1, 0], [0, 1], eps=0) == pytest.approx(LN2, abs=1e-12)
    assert 10 < kl_divergence([1, 0], [0, 1]) < math.inf
    assert kl_divergence([1, 0], [0, 1], eps=0) == math.inf


def test_divergence_input_errors():
    with pytest.raises(ValueError, match=r"expected as many bins as p_counts \(2\), got 3"):
        kl_divergence([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="all zeros"):
        kl_divergence([0, 0], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        js_divergence([1, -1], [1, 1])
    with pytest.raises(ValueError, match="eps: expected a finite number >= 0, got -1"):
        kl_divergence([1, 1], [1, 1], eps=-1)
    with pytest.raises(ValueError, match=r"expected a 1-D histogram, got shape \(2, 2\)"):
        kl_divergence([[1, 1], [1, 1]], [1, 1])


# ----------------------------------------------------------------------------- histogram
def test_histogram_counts_only_masked_voxels_and_clips():
    images = torch.tensor([-5.0, -1.0, -0.1, 0.0, 0.3, 0.999, 1.0, 1e30, math.nan, 0.5])
    masks = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])  # the NaN voxel is outside the mask
    counts = tumour_histogram(images.view(1, 1, 2, 5), masks.view(1, 1, 2, 5), bins=4)
    # bins over [-1, 1]: [-1, -0.5) [-0.5, 0) [0, 0.5) [0.5, 1]; -5 -> first, 1e30 -> last bin
    assert counts.dtype == torch.float64 and counts.shape == (4,)
    assert counts.tolist() == [2.0, 1.0, 2.0, 3.0]
    assert float(counts.sum()) == 8  # the masked-out 0.5 is not counted either

    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 1, 10, 12, 5, generator=g)  # 3-D (B, 1, H, W, D), beyond [-1, 1]
    masks = torch.rand(3, 1, 10, 12, 5, generator=g) > 0.7
    counts = tumour_histogram(images, masks, bins=64, value_range=(-1.0, 1.0))
    expected, _ = np.histogram(images[masks].clamp(-1, 1).numpy(), bins=64, range=(-1, 1))
    np.testing.assert_array_equal(counts.numpy(), expected)
    assert float(counts.sum()) == int(masks.sum())
    # float masks are thresholded at 0.5, numpy input works
    assert float(tumour_histogram(images.numpy(), masks.float().numpy() * 0.6).sum()) == int(
        masks.sum()
    )
    assert float(tumour_histogram(images, masks.float() * 0.4).sum()) == 0
    from monai.data import MetaTensor  # here: DDP workers import this module, keep it light

    meta = MetaTensor(images, meta={"filename_or_obj": "synthetic.nii.gz"})
    torch.testing.assert_close(tumour_histogram(meta, MetaTensor(masks)), counts)


def test_histogram_input_errors():
    images, masks = _tumour_images(0, 0.4, 0.1, b=2)
    with pytest.raises(ValueError, match=r"expected shape \(B, 1, H, W\).*got \(2, 2, 24, 24\)"):
        tumour_histogram(images.repeat(1, 2, 1, 1), masks.repeat(1, 2, 1, 1))
    with pytest.raises(ValueError, match=r"expected shape \(B, 1, H, W\).*got \(1, 24, 24\)"):
        tumour_histogram(images[0], masks[0])
    with pytest.raises(ValueError, match=r"masks: expected the shape of images .* got \(1, 1"):
        tumour_histogram(images, masks[:1])
    with pytest.raises(ValueError, match="bins: expected a positive integer, got 0"):
        tumour_histogram(images, masks, bins=0)
    with pytest.raises(ValueError, match="value_range: expected finite low < high"):
        tumour_histogram(images, masks, value_range=(1.0, -1.0))
    images[0, 0, 12, 12] = math.nan  # inside the disc
    with pytest.raises(ValueError, match="got 1 NaN/Inf of"):
        tumour_histogram(images, masks)


# ----------------------------------------------------------------------------- accumulator
def test_pooling_across_updates_equals_one_update():
    synth, synth_masks = _tumour_images(1, 0.3, 0.2, b=6)
    real, real_masks = _tumour_images(2, 0.5, 0.1, b=6)
    pooled = TumourKLMetric()
    for lo, hi in ((0, 1), (1, 4), (4, 6)):
        pooled.update_synthetic(synth[lo:hi], synth_masks[lo:hi])
    pooled.update_real(real[:3], real_masks[:3])
    pooled.update(real=list(real[3:]), real_mask=list(real_masks[3:]))  # decollated samples
    once = TumourKLMetric()
    once.update(synth, synth_masks, real, real_masks)
    torch.testing.assert_close(pooled.synthetic_counts, once.synthetic_counts, rtol=0, atol=0)
    torch.testing.assert_close(pooled.real_counts, once.real_counts, rtol=0, atol=0)
    assert pooled.aggregate() == once.aggregate()
    assert once.aggregate()["kl_real_synth"] > 0.1
    once.reset()
    assert float(once.synthetic_counts.sum()) == 0 and float(once.real_counts.sum()) == 0


def test_unfaithful_synthetic_tumours_score_worse_in_paper_order():
    """Toy Table: tumour-aware (faithful) < masked CycleGAN (shifted) < CycleGAN (dimmed)."""
    real = _tumour_images(10, mean=0.5, std=0.12)
    methods = {
        "tumour-aware": _tumour_images(11, mean=0.5, std=0.12),  # same distribution
        "masked CycleGAN": _tumour_images(12, mean=0.35, std=0.15),  # somewhat shifted
        "CycleGAN": _tumour_images(13, mean=-0.3, std=0.2),  # tumour dimmed into background
    }
    scores = {}
    for name, (images, masks) in methods.items():
        metric = TumourKLMetric()
        metric.update_synthetic(images, masks)
        metric.update_real(*real)
        scores[name] = metric.aggregate()
    kl = [scores[m]["kl_real_synth"] for m in methods]
    js = [scores[m]["js"] for m in methods]
    assert kl[0] < kl[1] < kl[2], kl
    assert js[0] < js[1] < js[2] <= LN2, js
    assert kl[0] < 0.2 and kl[2] > 3.0, kl


def test_empty_side_errors_say_which_and_how():
    images, masks = _tumour_images(0, 0.4, 0.1, b=2)
    metric = TumourKLMetric()
    metric.update_real(images, masks)
    metric.update_synthetic(images, torch.zeros_like(masks))  # masks with no tumour voxel
    with pytest.raises(ValueError, match=r"got 0 synthetic and \d+ real.*synthetic side") as e:
        metric.aggregate()
    assert "real side" not in str(e.value) and "CT tumour masks" in str(e.value)
    metric.reset()
    metric.update_synthetic(images, masks)
    with pytest.raises(ValueError, match=r"real side: .*expert MRI tumour masks") as e:
        metric.aggregate()
    assert "synthetic side" not in str(e.value)
    with pytest.raises(ValueError, match=r"synthetic side.*real side"):
        TumourKLMetric().aggregate()
    with pytest.raises(ValueError, match=r"synthetic: expected both .* got only the images"):
        metric.update(synthetic=images)
    with pytest.raises(ValueError, match=r"real: expected both .* got only the masks"):
        metric.update(real_mask=masks)
