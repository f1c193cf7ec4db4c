"""Training engines for the tumour-aware CycleGAN (a ``monai.engines.Trainer`` subclass).

- :class:`CycleGANTrainer`: one iteration = the paper's alternating G, D, U updates (§2.1).
- :class:`CycleGANEvents`: events fired after each of the three optimizer steps.
- :class:`ImagePool`: the CycleGAN history buffer of generated images (hand-written).
- :class:`SegmentationPanelWriter`, :class:`SegmentationSummaryWriter`: evaluator handlers for
  the segmentation figure (Fig. 4) and table (Table 1).
"""

from tumoraware.engines.cyclegan_trainer import CycleGANEvents, CycleGANTrainer
from tumoraware.engines.image_pool import ImagePool
from tumoraware.engines.segmentation_report import (
    SegmentationPanelWriter,
    SegmentationSummaryWriter,
)

__all__ = [
    "CycleGANEvents",
    "CycleGANTrainer",
    "ImagePool",
    "SegmentationPanelWriter",
    "SegmentationSummaryWriter",
]
