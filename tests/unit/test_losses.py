"""Unit tests of tumoraware.losses on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tumoraware.losses import FeatureLoss, TumourAwareObjective, TumourLoss

LN2, LN3 = math.log(2.0), math.log(3.0)

# ---------------------------------------------------------------------------------- TumourLoss
#
# A 2 x 2 example. sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4; BCE(p, y) = -[y ln p + (1 - y) ln(1 - p)].
#   logits_ct  = [[0, ln 3], [ln 3, 0]],  target = [[1, 1], [0, 0]]
#     BCE map  = [[-ln 1/2, -ln 3/4], [-ln 1/4, -ln 1/2]] = [[ln 2, 2 ln 2 - ln 3], [2 ln 2, ln 2]]
#     sum      = 6 ln 2 - ln 3 = 3.060271,  mean = 0.765068
#   logits_mri = zeros: every element ln 2, sum = 4 ln 2 = 2.772589, mean = ln 2 = 0.693147
#   L_tumour (mean) = 0.765068 + 0.693147 = 1.458215 = (10 ln 2 - ln 3) / 4
#   L_tumour (sum)  = 10 ln 2 - ln 3 = 5.832860


def example():
    logits_ct = torch.tensor([[0.0, LN3], [LN3, 0.0]]).reshape(1, 1, 2, 2)
    logits_mri = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[1, 1], [0, 0]], dtype=torch.uint8).reshape(1, 1, 2, 2)
    return logits_ct, logits_mri, target


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("mean", 1.458215),
        ("sum", 5.832860),
        ("none", [[2 * LN2, 3 * LN2 - LN3], [3 * LN2, 2 * LN2]]),
    ],
)
def test_tumour_loss_hand_computed_2x2(reduction, expected):
    loss = TumourLoss(reduction=reduction)(*example())  # integer target is cast to float
    expected = torch.tensor(expected, dtype=torch.float32)
    if reduction == "none":
        expected = expected.reshape(1, 1, 2, 2)
    assert loss.shape == expected.shape
    assert torch.allclose(loss, expected, atol=1e-5)


def test_tumour_loss_default_is_mean_and_both_terms_get_gradients():
    logits_ct, logits_mri, target = example()
    logits_ct.requires_grad_(True)
    logits_mri.requires_grad_(True)
    loss = TumourLoss()(logits_ct, logits_mri, target)
    assert loss.item() == pytest.approx((10 * LN2 - LN3) / 4, abs=1e-6)
    loss.backward()
    # d mean-BCE / d logit = (sigmoid(logit) - y) / N; for U_MRI: (1/2 - y) / 4
    assert torch.allclose(logits_mri.grad.flatten(), torch.tensor([-0.125, -0.125, 0.125, 0.125]))
    # for U_CT: (1/2 - 1, 3/4 - 1, 3/4 - 0, 1/2 - 0) / 4
    assert torch.allclose(logits_ct.grad.flatten(), torch.tensor([-0.125, -0.0625, 0.1875, 0.125]))


def test_tumour_loss_rejects_mismatched_shapes_and_reductions():
    logits_ct, logits_mri, target = example()
    with pytest.raises(
        ValueError, match=r"logits_ct \(1, 1, 2, 2\), logits_mri \(1, 2, 2\), target \(1, 1, 2, 2\)"
    ):
        TumourLoss()(logits_ct, logits_mri[0], target)
    with pytest.raises(ValueError, match=r"target \(1, 1, 4, 4\)"):
        TumourLoss()(logits_ct, logits_mri, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"reduction must be one of \('none', 'mean', 'sum'\)"):
        TumourLoss(reduction="average")


# --------------------------------------------------------------------------------- FeatureLoss
#
# B = 2 samples of (C, H, W) = (3, 2, 2), C*H*W = 12:
#   sample 0: ones vs zeros       -> 12 * 1^2 / 12 = 1.0
#   sample 1: 2.5 vs 0.5 (diff 2) -> 12 * 2^2 / 12 = 4.0
#   none = [1, 4], mean = 2.5, sum = 5.0


def features():
    ct = torch.stack([torch.ones(3, 2, 2), torch.full((3, 2, 2), 2.5)])
    mri = torch.stack([torch.zeros(3, 2, 2), torch.full((3, 2, 2), 0.5)])
    return ct, mri


@pytest.mark.parametrize(
    ("reduction", "expected"), [("none", [1.0, 4.0]), ("mean", 2.5), ("sum", 5.0)]
)
def test_feature_loss_hand_computed(reduction, expected):
    loss = FeatureLoss(reduction=reduction)(*features())
    expected = torch.tensor(expected)
    assert loss.shape == expected.shape
    assert torch.allclose(loss, expected)


def test_feature_loss_divides_by_the_feature_size_not_the_batch():
    # one sample, difference 1 in one of C*H*W = 2*3*4 = 24 entries -> 1 / 24
    ct = torch.zeros(1, 2, 3, 4)
    mri = ct.clone()
    mri[0, 1, 2, 3] = 1.0
    assert FeatureLoss()(ct, mri).item() == pytest.approx(1 / 24)
    # mean over equally sized samples is torch's MSELoss
    a, b = torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6)
    assert torch.allclose(FeatureLoss()(a, b), torch.nn.MSELoss()(a, b))


def test_feature_loss_gradients_reach_both_networks():
    ct, mri = features()
    ct.requires_grad_(True)
    mri.requires_grad_(True)
    FeatureLoss(reduction="sum")(ct, mri).backward()
    # d/d ct of sum_b mean((ct - mri)^2) = 2 (ct - mri) / 12
    assert torch.allclose(ct.grad[0], torch.full((3, 2, 2), 2 / 12))
    assert torch.allclose(ct.grad[1], torch.full((3, 2, 2), 4 / 12))
    assert torch.allclose(mri.grad, -ct.grad)


def test_feature_loss_rejects_mismatched_shapes():
    with pytest.raises(
        ValueError, match=r"features_ct \(2, 128, 4, 4\), features_mri \(2, 16, 32, 32\)"
    ):
        FeatureLoss()(torch.zeros(2, 128, 4, 4), torch.zeros(2, 16, 32, 32))
    with pytest.raises(ValueError, match=r"features_ct \(5,\), features_mri \(5,\)"):
        FeatureLoss()(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="reduction must be one of"):
        FeatureLoss(reduction="batchmean")


# ------------------------------------------------------------------------ TumourAwareObjective


def test_objective_defaults_are_the_papers_weights():
    objective = TumourAwareObjective()
    assert (objective.lambda_cyc, objective.lambda_tumour, objective.lambda_feat) == (10, 5, 1)
    assert objective.lambda_identity == 0
    # adv 0.5, cyc 0.1, tumour 0.2, feat 0.3 -> 0.5 + 10*0.1 + 5*0.2 + 1*0.3 = 2.8
    assert objective.generator_loss(0.5, 0.1, 0.2, 0.3) == pytest.approx(2.8)
    # identity has weight 0 by default: ignored
    assert objective.generator_loss(0.5, 0.1, 0.2, 0.3, identity=7.0) == pytest.approx(2.8)
    # None terms count as 0: 0.5 + 10*0.1 = 1.5
    assert objective.generator_loss(0.5, 0.1) == pytest.approx(1.5)
    # tumour networks: tumour + lambda_feat * feat = 0.2 + 1*0.3 = 0.5 (lambda_tumour not used)
    assert objective.tumour_network_loss(0.2, 0.3) == pytest.approx(0.5)
    assert objective.tumour_network_loss(0.2) == pytest.approx(0.2)


def test_objective_overridden_weights():
    objective = TumourAwareObjective(
        lambda_cyc=2.0, lambda_tumour=3.0, lambda_feat=4.0, lambda_identity=0.5
    )
    # 1 + 2*0.1 + 3*0.2 + 4*0.3 + 0.5*2 = 1 + 0.2 + 0.6 + 1.2 + 1.0 = 4.0
    assert objective.generator_loss(1.0, 0.1, 0.2, 0.3, identity=2.0) == pytest.approx(4.0)
    # 0.2 + 4*0.3 = 1.4
    assert objective.tumour_network_loss(0.2, 0.3) == pytest.approx(1.4)
    assert "lambda_identity=0.5" in repr(objective)


def test_objective_plain_cyclegan_baseline_ignores_switched_off_terms():
    baseline = TumourAwareObjective(lambda_tumour=0.0, lambda_feat=0.0)
    total = baseline.generator_loss(
        torch.tensor(0.5), torch.tensor(0.1), torch.tensor(float("nan")), torch.tensor(float("inf"))
    )
    assert total.item() == pytest.approx(1.5)


def test_objective_keeps_gradients_with_the_weights():
    adv, cyc, tumour, feat = (torch.tensor(v, requires_grad=True) for v in (0.5, 0.1, 0.2, 0.3))
    total = TumourAwareObjective().generator_loss(adv, cyc, tumour, feat)
    assert total.item() == pytest.approx(2.8)
    total.backward()
    assert [t.grad.item() for t in (adv, cyc, tumour, feat)] == [1.0, 10.0, 5.0, 1.0]


@pytest.mark.parametrize("name", ["lambda_cyc", "lambda_tumour", "lambda_feat", "lambda_identity"])
def test_objective_rejects_negative_or_non_finite_weights(name):
    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0, got -1.0"):
        TumourAwareObjective(**{name: -1.0})
    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0, got nan"):
        TumourAwareObjective(**{name: float("nan")})
