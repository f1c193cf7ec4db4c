"""TumourKLHandler: the real-MRI side is pooled once; every run gets the same real histogram."""

from __future__ import annotations

import torch
from ignite.engine import Engine

from tumoraware.handlers.synthesis_validation import TumourKLHandler


class CountingLoader:
    """A list of batches that counts how often it is iterated."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_real_histogram_is_pooled_once_and_reused():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    real = CountingLoader([{"image": torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, "label": mask}])
    synthetic = [{"pred": torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, "label": mask}]
    handler = TumourKLHandler(real)
    results = []
    for _ in range(3):  # three validation runs, as ValidationHandler would start them
        engine = Engine(lambda e, batch: batch)
        handler.attach(engine)
        engine.run(synthetic, max_epochs=1)
        results.append(dict(engine.state.metrics))
    assert real.passes == 1
    assert results[0] == results[1] == results[2]
    assert int(handler.metric.real_counts.sum()) == 2 * 16  # not accumulated across runs
