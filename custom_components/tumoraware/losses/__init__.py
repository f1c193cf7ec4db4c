"""Losses of the tumour-aware CT to MRI synthesis (Jiang et al., MICCAI 2018, eqs. 3-5).

``L_adv`` and ``L_cyc`` are library losses (``monai.losses.PatchAdversarialLoss`` and
``torch.nn.L1Loss``); see :mod:`tumoraware.losses.tumour_aware`.
"""

from tumoraware.losses.tumour_aware import FeatureLoss, TumourAwareObjective, TumourLoss

__all__ = ["FeatureLoss", "TumourAwareObjective", "TumourLoss"]
