"""Per-sample weights that give every training source the same share of the draws.

The semi-supervised segmentation trains on a ``ConcatDataset`` of synthetic MRI (hundreds of
slices) and labelled real MRI (tens): drawn uniformly, nine draws in ten are synthetic and the
real MRI, the only data from the target domain, barely counts. With these weights a
``torch.utils.data.WeightedRandomSampler`` (or MONAI's ``DistributedWeightedRandomSampler``
under ``torchrun``) draws each source equally often. Written here because neither torch nor
MONAI derives weights from a list of datasets; the sampling itself is theirs.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized

__all__ = ["source_balanced_weights"]


def source_balanced_weights(sources: Sequence[Sized]) -> list[float]:
    """One weight per sample of ``ConcatDataset(sources)``, in its order: ``1 / (S · len(s))``
    for every sample of source ``s`` among ``S`` sources, so each source's weights sum to
    ``1 / S`` and the weights to 1.

    Args:
        sources: the datasets in the order they are concatenated.

    Raises:
        ValueError: no source, or an empty source (it could never be drawn; the error names it).
    """
    if not sources:
        raise ValueError("source_balanced_weights needs at least one training source, got none.")
    sizes = [len(source) for source in sources]
    for index, size in enumerate(sizes):
        if size == 0:
            raise ValueError(
                f"training source {index} ({type(sources[index]).__name__}) has no samples: "
                "check its manifest split and that its volumes hold labelled slices."
            )
    return [1.0 / (len(sizes) * size) for size in sizes for _ in range(size)]
