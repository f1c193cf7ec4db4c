"""The tumour-aware CycleGAN's training engine (a ``monai.engines.Trainer`` subclass), nothing else.

- :class:`CycleGANTrainer`: one iteration = the paper's alternating G, D, U updates (§2.1).
- :class:`CycleGANEvents`: events fired after each of the three optimizer steps.
- :class:`ImagePool`: the CycleGAN history buffer of generated images (hand-written).
- :class:`ResumableDataLoader`, :class:`RandomStates`: the data pipeline's position and random
  states as checkpoint items, so a resumed run repeats an uninterrupted one.

The event handlers the configs attach (warm-up, lr decay, validation, report writers) live in
:mod:`tumoraware.handlers`; the config glue in :mod:`tumoraware.bundle_helpers`.
"""

from tumoraware.engines.cyclegan_trainer import CycleGANEvents, CycleGANTrainer
from tumoraware.engines.image_pool import ImagePool
from tumoraware.engines.resume import RandomStates, ResumableDataLoader

__all__ = ["CycleGANEvents", "CycleGANTrainer", "ImagePool", "RandomStates", "ResumableDataLoader"]
