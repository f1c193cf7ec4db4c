"""Metrics of the tumour-aware pipeline.

- :class:`TumourKLMetric`, :class:`TumourKLIgniteMetric`: tumour-region KL divergence between
  synthetic and real MRI (the paper's synthesis metric, §3.3), with :func:`tumour_histogram`,
  :func:`kl_divergence` and :func:`js_divergence` underneath.

Dice and HD95 for the segmentation come from MONAI (``monai.metrics.DiceMetric``,
``monai.metrics.HausdorffDistanceMetric(percentile=95)``).
"""

from tumoraware.metrics.tumour_kl import (
    TumourKLIgniteMetric,
    TumourKLMetric,
    js_divergence,
    kl_divergence,
    tumour_histogram,
)

__all__ = [
    "TumourKLIgniteMetric",
    "TumourKLMetric",
    "js_divergence",
    "kl_divergence",
    "tumour_histogram",
]
