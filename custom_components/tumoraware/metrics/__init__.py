"""Metrics of the tumour-aware pipeline.

- :class:`TumourKLMetric`: tumour-region KL divergence between synthetic and real MRI (the
  paper's synthesis metric, §3.3), with :func:`tumour_histogram`, :func:`kl_divergence` and
  :func:`js_divergence` underneath.
- :class:`HausdorffDistanceMM`: HD95 in millimetres as an ignite / MONAI evaluator handler,
  MONAI's ``HausdorffDistanceMetric`` with each case's voxel spacing read from its affine
  (MONAI's own ``monai.handlers.HausdorffDistance`` drops the spacing and measures in voxels).

Dice for the segmentation comes from MONAI (``monai.metrics.DiceMetric``).
"""

from tumoraware.metrics.hausdorff_mm import HausdorffDistanceMM
from tumoraware.metrics.tumour_kl import (
    TumourKLMetric,
    js_divergence,
    kl_divergence,
    tumour_histogram,
)

__all__ = [
    "HausdorffDistanceMM",
    "TumourKLMetric",
    "js_divergence",
    "kl_divergence",
    "tumour_histogram",
]
