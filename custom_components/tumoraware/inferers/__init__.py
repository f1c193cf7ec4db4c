"""Inferers that chain networks for evaluation.

- :class:`SynthesiseThenReadInferer`: G_CT→MRI over a CT volume, then a reader segmenter over the
  synthetic MRI (the tumour-preservation score, :mod:`tumoraware.metrics.preservation`).
- :func:`load_reader`: the reader, built from the segmentation bundle's own config and weights.
"""

from tumoraware.inferers.synthesise_then_read import SynthesiseThenReadInferer, load_reader

__all__ = ["SynthesiseThenReadInferer", "load_reader"]
