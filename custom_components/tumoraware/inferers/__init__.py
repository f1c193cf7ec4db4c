"""Inferers that chain networks or passes.

- :class:`SynthesiseThenReadInferer`: G_CT→MRI over a CT volume, then a reader segmenter over the
  synthetic MRI (the tumour-preservation score, :mod:`tumoraware.metrics.preservation`).
- :func:`load_reader`: the reader, built from the segmentation bundle's own config and weights.
- :class:`CoarseToFineInferer`: whole-scan segmentation, a coarse network over every slice shrunk
  to its scale and the network at its own scale only around what it proposes;
  :func:`whole_scan_inferer` builds it or the sliding window (the segmentation bundle's
  ``inference.json``, ``whole_scan_mode``).
"""

from tumoraware.inferers.coarse_to_fine import (
    CoarseToFineInferer,
    whole_scan_inferer,
    windows_per_slice,
)
from tumoraware.inferers.synthesise_then_read import SynthesiseThenReadInferer, load_reader

__all__ = [
    "CoarseToFineInferer",
    "SynthesiseThenReadInferer",
    "load_reader",
    "whole_scan_inferer",
    "windows_per_slice",
]
