"""The tumour-aware loss of Jiang et al. (MICCAI 2018, §2.1, eqs. 3-5).

- :class:`TumourLoss` (eq. 3): BCE of U_CT on ``x_c`` and of U_MRI on ``G(x_c)``, both against
  the CT label ``y_c``.
- :class:`FeatureLoss` (eq. 4): ``‖φ_CT(x_c) - φ_MRI(G(x_c))‖² / (C·H·W)`` per sample.
- :class:`TumourAwareObjective` (eq. 5 and the update rules below it): the weighted sums for the
  generators and for the tumour networks.

The other two terms of eq. 5 come from libraries and are not wrapped here: the adversarial loss
``L_adv`` is ``monai.losses.PatchAdversarialLoss(criterion="least_squares",
no_activation_leastsq=True)`` (least squares, as the reference CycleGAN uses in place of the log
loss written in eq. 1) and the cycle loss ``L_cyc`` (eq. 2) is ``torch.nn.L1Loss()``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["FeatureLoss", "TumourAwareObjective", "TumourLoss"]

_REDUCTIONS = tuple(r.value for r in LossReduction)


def _check_reduction(reduction: LossReduction | str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    return LossReduction(reduction).value


class TumourLoss(_Loss):
    """Tumour loss L_tumor, eq. 3: BCE of both tumour networks against the CT label.

    ``L_tumor = -E[log P(y_c | U_MRI(G(x_c)))] - E[log P(y_c | U_CT(x_c))]``, i.e.
    ``BCEWithLogits(logits_mri, y_c) + BCEWithLogits(logits_ct, y_c)`` (the paper prints eq. 3
    without the minus sign; a loss to minimise is the negative log-likelihood). Each term is
    :class:`torch.nn.BCEWithLogitsLoss`; this class only adds the two and checks shapes.

    Args:
        reduction: ``"mean"`` (default): each BCE averaged over all elements, then added, a
            scalar; ``"sum"``: each summed over all elements, then added, a scalar; ``"none"``:
            the element-wise sum of the two BCE maps, ``(B, 1, H, W)``.

    Shapes:
        ``logits_ct``: U_CT logits on ``x_c``, ``(B, 1, H, W)`` (any shape, the same for all three).
        ``logits_mri``: U_MRI logits on ``G(x_c)``, same shape.
        ``target``: the CT tumour label ``y_c`` in {0, 1} (soft values in [0, 1] also work), same
        shape; cast to the logits' dtype.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=_check_reduction(reduction))
        self.bce = nn.BCEWithLogitsLoss(reduction=self.reduction)

    def forward(
        self, logits_ct: torch.Tensor, logits_mri: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        if logits_ct.shape != logits_mri.shape or logits_ct.shape != target.shape:
            raise ValueError(
                "logits_ct, logits_mri and target must have the same shape (B, 1, H, W), got "
                f"logits_ct {tuple(logits_ct.shape)}, logits_mri {tuple(logits_mri.shape)}, "
                f"target {tuple(target.shape)}."
            )
        target = target.to(dtype=logits_ct.dtype)
        return self.bce(logits_ct, target) + self.bce(logits_mri, target)


class FeatureLoss(_Loss):
    """Tumour feature loss L_feat, eq. 4: ``‖φ_CT(x_c) - φ_MRI(G(x_c))‖² / (C·H·W)``.

    Per sample, the squared L2 norm of the feature difference over all of ``(C, H, W)`` divided
    by ``C·H·W``: the per-sample mean squared error (``F.mse_loss`` with ``reduction="none"``,
    averaged over all but the batch dimension). With ``reduction="mean"`` this equals
    ``torch.nn.MSELoss()`` since every sample has the same size.

    Args:
        reduction: over the batch: ``"mean"`` (default) or ``"sum"`` give a scalar, ``"none"``
            gives the per-sample values ``(B,)``.

    Shapes:
        ``features_ct``: φ_CT(x_c), ``(B, C, H, W)`` (any ``(B, ...)`` with at least one feature
        dimension). ``features_mri``: φ_MRI(G(x_c)), the same shape.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=_check_reduction(reduction))

    def forward(self, features_ct: torch.Tensor, features_mri: torch.Tensor) -> torch.Tensor:
        if features_ct.shape != features_mri.shape or features_ct.ndim < 2:
            raise ValueError(
                "features_ct and features_mri must have the same shape (B, C, H, W), got "
                f"features_ct {tuple(features_ct.shape)}, features_mri "
                f"{tuple(features_mri.shape)}."
            )
        per_sample = F.mse_loss(features_ct, features_mri, reduction="none").flatten(1).mean(1)
        if self.reduction == LossReduction.MEAN.value:
            return per_sample.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_sample.sum()
        return per_sample


class TumourAwareObjective:
    """The weighting of eq. 5 and the tumour networks' objective.

    Generators (eq. 5, plus the optional CycleGAN identity term)::

        L_G = L_adv + λcyc·L_cyc + λtumour·L_tumour + λfeat·L_feat + λidentity·L_identity

    Tumour networks U_CT, U_MRI (the paper's gradient ``-Δθ_U(L_tumor + λfeat·L_feat)``)::

        L_U = L_tumour + λfeat·L_feat

    The discriminators' objective is ``L_adv`` alone and needs no weighting. A term whose weight
    is 0 is left out of the sum altogether, so a baseline that sets it to 0 need not compute it
    (pass ``None``), and a NaN in a term that is switched off cannot reach the total.

    Args:
        lambda_cyc: weight of the cycle-consistency loss (paper: 10).
        lambda_tumour: weight of the tumour loss in the generators' objective (paper: 5).
        lambda_feat: weight of the feature loss, in both objectives (paper: 1).
        lambda_identity: weight of the identity loss ``‖G(y) - y‖₁`` (not in the paper: 0).
            Note: the reference CycleGAN's ``--lambda_identity 0.5`` is relative to λcyc, i.e.
            ``lambda_identity = 5`` here.

    The plain CycleGAN baseline of the paper's Table 1 is ``lambda_tumour = lambda_feat = 0``.

    Raises:
        ValueError: if a weight is negative or not finite.
    """

    def __init__(
        self,
        lambda_cyc: float = 10.0,
        lambda_tumour: float = 5.0,
        lambda_feat: float = 1.0,
        lambda_identity: float = 0.0,
    ) -> None:
        for name, value in (
            ("lambda_cyc", lambda_cyc),
            ("lambda_tumour", lambda_tumour),
            ("lambda_feat", lambda_feat),
            ("lambda_identity", lambda_identity),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        self.lambda_cyc = float(lambda_cyc)
        self.lambda_tumour = float(lambda_tumour)
        self.lambda_feat = float(lambda_feat)
        self.lambda_identity = float(lambda_identity)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lambda_cyc={self.lambda_cyc}, "
            f"lambda_tumour={self.lambda_tumour}, lambda_feat={self.lambda_feat}, "
            f"lambda_identity={self.lambda_identity})"
        )

    @staticmethod
    def _weighted_sum(
        first: torch.Tensor | float, *terms: tuple[float, torch.Tensor | float | None]
    ) -> torch.Tensor | float:
        total = first
        for weight, term in terms:
            if weight != 0.0 and term is not None:
                total = total + weight * term
        return total

    def generator_loss(
        self,
        adv: torch.Tensor | float,
        cyc: torch.Tensor | float,
        tumour: torch.Tensor | float | None = None,
        feat: torch.Tensor | float | None = None,
        identity: torch.Tensor | float | None = None,
    ) -> torch.Tensor | float:
        """``adv + λcyc·cyc + λtumour·tumour + λfeat·feat + λidentity·identity`` (eq. 5).

        Args:
            adv: adversarial loss of both generators, ``L_adv = L_adv^MRI + L_adv^CT``.
            cyc: cycle-consistency loss ``L_cyc`` of both directions (eq. 2).
            tumour: ``L_tumour`` (eq. 3); ``None`` counts as 0.
            feat: ``L_feat`` (eq. 4); ``None`` counts as 0.
            identity: identity loss; ``None`` counts as 0.

        Returns:
            The total, a tensor if any term is one (scalars in, scalar out).
        """
        return self._weighted_sum(
            adv,
            (self.lambda_cyc, cyc),
            (self.lambda_tumour, tumour),
            (self.lambda_feat, feat),
            (self.lambda_identity, identity),
        )

    def tumour_network_loss(
        self, tumour: torch.Tensor | float, feat: torch.Tensor | float | None = None
    ) -> torch.Tensor | float:
        """``tumour + λfeat·feat``: the objective of U_CT and U_MRI (``None`` feat counts as 0).

        λtumour does not scale this (the paper's gradient for U is ``L_tumor + λfeat·L_feat``).
        """
        return self._weighted_sum(tumour, (self.lambda_feat, feat))
