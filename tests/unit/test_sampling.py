"""source_balanced_weights: every source gets the same share of a weighted sampler's draws."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset, WeightedRandomSampler

from tumoraware.data.sampling import source_balanced_weights


def _source(size: int, value: float) -> TensorDataset:
    return TensorDataset(torch.full((size,), value))


def test_each_source_sums_to_the_same_share_in_concat_order():
    weights = source_balanced_weights([_source(9, 0.0), _source(3, 1.0)])
    assert len(weights) == 12
    assert weights[:9] == pytest.approx([1 / 18] * 9) and weights[9:] == pytest.approx([1 / 6] * 3)
    assert sum(weights[:9]) == pytest.approx(sum(weights[9:])) == pytest.approx(0.5)


def test_a_weighted_sampler_draws_a_small_source_as_often_as_a_large_one():
    sources = [_source(300, 0.0), _source(20, 1.0)]
    concat = ConcatDataset(sources)
    generator = torch.Generator().manual_seed(0)
    sampler = WeightedRandomSampler(source_balanced_weights(sources), 4000, generator=generator)
    small_share = sum(int(concat[i][0]) for i in sampler) / 4000
    assert 0.45 < small_share < 0.55  # uniform draws would give 20 / 320 = 0.06


@pytest.mark.parametrize("sources", [[], [_source(4, 0.0), _source(0, 1.0)]])
def test_no_source_or_an_empty_one_is_refused(sources):
    with pytest.raises(ValueError, match="source"):
        source_balanced_weights(sources)
