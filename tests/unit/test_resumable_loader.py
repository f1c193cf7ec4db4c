"""A ``ResumableDataLoader`` restored from a checkpoint continues its pass exactly, with the
loading done in the main process (the CPU default) or in worker processes that are not
persistent (the GPU default): the same batches, the same random transforms, and the next pass
the same too. (Persistent workers keep their transforms' random states from pass to pass, out of
the checkpoint's reach: the bundles document that limit.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from monai.data import Dataset
from monai.transforms import Randomizable

from tumoraware.engines import RandomStates, ResumableDataLoader


class Draw(Randomizable):
    """A random per-sample transform: the sample's index and a number from its own ``R``."""

    def randomize(self, data: Any = None) -> None:
        self.value = int(self.R.randint(1 << 30))

    def __call__(self, item: dict[str, int]) -> dict[str, int]:
        self.randomize()
        return {"i": item["i"], "r": self.value}


def _loader(workers: int) -> ResumableDataLoader:
    data = [{"i": i} for i in range(10)]
    return ResumableDataLoader(
        Dataset(data, transform=Draw()), batch_size=2, shuffle=True, num_workers=workers
    )


def _flat(batches: list[dict[str, torch.Tensor]]) -> list[tuple[int, int]]:
    return [(int(i), int(r)) for b in batches for i, r in zip(b["i"], b["r"], strict=True)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_restored_loader_continues_its_pass_and_the_next_exactly(workers):
    torch.manual_seed(0)
    loader = _loader(workers)
    list(loader)  # a checkpoint in a later pass: its workers were not the first ones
    batches = iter(loader)
    seen = [next(batches), next(batches)]
    position, states = loader.state_dict(), RandomStates([loader]).state_dict()
    rest = _flat([*batches, *loader])  # the rest of this pass, then a whole new one

    torch.manual_seed(123)  # a new process: other random states until the checkpoint loads
    resumed = _loader(workers)
    RandomStates([resumed]).load_state_dict(states)
    resumed.load_state_dict(position)
    again = _flat([*resumed, *resumed])
    assert len(_flat(seen)) == 4 and len(rest) == 16
    assert again == rest
