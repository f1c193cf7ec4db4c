"""source_share_weights: each source gets the share of a weighted sampler's draws it is given."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset, WeightedRandomSampler

from tumoraware.data.sampling import source_share_weights


def _source(size: int, value: float) -> TensorDataset:
    return TensorDataset(torch.full((size,), value))


def test_each_source_sums_to_its_share_in_concat_order():
    weights = source_share_weights([_source(9, 0.0), _source(3, 1.0)], [0.25, 0.75])
    assert len(weights) == 12
    assert weights[:9] == pytest.approx([0.25 / 9] * 9) and weights[9:] == pytest.approx([0.25] * 3)
    assert sum(weights[:9]) == pytest.approx(0.25) and sum(weights[9:]) == pytest.approx(0.75)


@pytest.mark.parametrize("small_share", [0.5, 0.75])
def test_a_weighted_sampler_draws_a_small_source_at_its_share(small_share):
    sources = [_source(300, 0.0), _source(20, 1.0)]
    concat = ConcatDataset(sources)
    generator = torch.Generator().manual_seed(0)
    weights = source_share_weights(sources, [1 - small_share, small_share])
    sampler = WeightedRandomSampler(weights, 4000, generator=generator)
    drawn = sum(int(concat[i][0]) for i in sampler) / 4000
    assert abs(drawn - small_share) < 0.05  # uniform draws would give 20 / 320 = 0.06


@pytest.mark.parametrize(
    ("sources", "shares", "message"),
    [
        ([], [], "at least one"),
        ([_source(4, 0.0), _source(0, 1.0)], [0.5, 0.5], "source 1 .* no samples"),
        ([_source(4, 0.0), _source(2, 1.0)], [1.0], "one share .* per training source"),
        ([_source(4, 0.0), _source(2, 1.0)], [0.0, 1.0], "synthetic_share"),
        ([_source(4, 0.0), _source(2, 1.0)], [0.5, 0.6], "sum to 1"),
    ],
)
def test_bad_sources_or_shares_are_refused(sources, shares, message):
    with pytest.raises(ValueError, match=message):
        source_share_weights(sources, shares)
