"""Ignite/MONAI event handlers the bundle configs attach to the trainer and the evaluators.

Kept apart from :mod:`tumoraware.engines`, as MONAI keeps ``monai.handlers`` apart from
``monai.engines``: an engine runs iterations, a handler reacts to its events.

Training (synthesis bundle, ``train.json``):

- :class:`TumourLossWarmup`: holds λtumour at 0, then ramps it up (``tumour_warmup``).
- :class:`LinearDecayLR`: the CycleGAN learning rate, constant then linear decay (``lr_decay``).
- :class:`UMRIPretraining`: pre-trains U_MRI on labelled real MRI before the first iteration
  (``u_mri_pretraining``).

Checkpoints (both bundles' ``train.json``):

- :class:`CheckpointSaver`, :class:`CheckpointLoader`: MONAI's, with files written atomically
  (the previous file removed only once the new one is complete), a resumable best-metric
  record, and errors that name the file (``checkpoint``).

Synthesis validation and inference:

- :class:`TumourKLHandler`, :class:`SynthesisGridHandler`, :class:`TumourNetworkCheck`: tumour
  KL divergence, the CT | synthetic MRI | reconstructed CT grid, the position-leak probes
  (``synthesis_validation``).
- :class:`TumourPreservationWriter`: the tumour-preservation score per case, by site and size
  (``preservation_writer``).
- :class:`PairedManifestWriter`: the (synthetic MRI, label) manifest for the segmentation
  bundle (``manifest_writer``).

Segmentation evaluation:

- :class:`SegmentationPanelWriter`, :class:`SegmentationSummaryWriter`: Fig. 4 panels and the
  Table 1 row (``segmentation_report``; the panels are drawn by :mod:`tumoraware.visualize`).

:mod:`tumoraware.handlers.cases` reads an evaluator's output case by case for these writers.
"""

from tumoraware.handlers.checkpoint import CheckpointLoader, CheckpointSaver
from tumoraware.handlers.lr_decay import LinearDecayLR
from tumoraware.handlers.manifest_writer import PairedManifestWriter
from tumoraware.handlers.preservation_writer import TumourPreservationWriter
from tumoraware.handlers.segmentation_report import (
    SegmentationPanelWriter,
    SegmentationSummaryWriter,
)
from tumoraware.handlers.synthesis_validation import (
    SynthesisGridHandler,
    TumourKLHandler,
    TumourNetworkCheck,
)
from tumoraware.handlers.tumour_warmup import TumourLossWarmup
from tumoraware.handlers.u_mri_pretraining import UMRIPretraining

__all__ = [
    "CheckpointLoader",
    "CheckpointSaver",
    "LinearDecayLR",
    "PairedManifestWriter",
    "SegmentationPanelWriter",
    "SegmentationSummaryWriter",
    "SynthesisGridHandler",
    "TumourKLHandler",
    "TumourLossWarmup",
    "TumourNetworkCheck",
    "TumourPreservationWriter",
    "UMRIPretraining",
]
