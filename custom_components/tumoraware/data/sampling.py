"""Per-sample weights that give each training source a chosen share of the draws.

The semi-supervised segmentation trains on a ``ConcatDataset`` of synthetic MRI (hundreds of
slices) and labelled real MRI (tens): drawn uniformly, nine draws in ten are synthetic and the
real MRI, the only data from the target domain, barely counts. With these weights a
``torch.utils.data.WeightedRandomSampler`` (or MONAI's ``DistributedWeightedRandomSampler``
under ``torchrun``) draws each source with the share the config asks for, whatever its size.
Written here because neither torch nor MONAI derives weights from a list of datasets; the
sampling itself is theirs.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized

__all__ = ["source_share_weights"]


def source_share_weights(sources: Sequence[Sized], shares: Sequence[float]) -> list[float]:
    """One weight per sample of ``ConcatDataset(sources)``, in its order: ``share / len(s)``
    for every sample of source ``s``, so source ``s``'s weights sum to its share and all
    weights to 1.

    Args:
        sources: the datasets in the order they are concatenated.
        shares: the share of the draws each source gets, in the same order; each in (0, 1],
            summing to 1.

    Raises:
        ValueError: no source, shares that do not match the sources or do not sum to 1, or an
            empty source (it could never be drawn; the error names it).
    """
    if not sources:
        raise ValueError("source_share_weights needs at least one training source, got none.")
    if len(shares) != len(sources) or not all(0.0 < s <= 1.0 for s in shares):
        raise ValueError(
            f"expected one share in (0, 1] per training source ({len(sources)}), got "
            f"{list(shares)}. Fix: set synthetic_share strictly between 0 and 1, or null for "
            "the natural mix."
        )
    if abs(sum(shares) - 1.0) > 1e-6:
        raise ValueError(f"the source shares {list(shares)} must sum to 1, got {sum(shares)}.")
    sizes = [len(source) for source in sources]
    for index, size in enumerate(sizes):
        if size == 0:
            raise ValueError(
                f"training source {index} ({type(sources[index]).__name__}) has no samples: "
                "check its manifest split and that its volumes hold labelled slices."
            )
    return [share / size for share, size in zip(shares, sizes, strict=True) for _ in range(size)]
