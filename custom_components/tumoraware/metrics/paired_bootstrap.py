"""Paired bootstrap confidence intervals over cases *and* seeds, for claims between methods.

A claim such as "tumour-aware keeps tumours better than CycleGAN" is a mean paired difference
``d[s, c] = A[s, c] - B[s, c]`` over seeds ``s`` and cases ``c`` (the same cases in every seed).
Both are sources of variation: another seed trains another model, another case is another patient.
The interval resamples both at once, as a crossed two-way (pigeonhole) bootstrap (Owen, "The
pigeonhole bootstrap", Ann. Appl. Stat. 2007): each replicate draws seeds with replacement and,
independently, cases with replacement, and takes the mean of ``d`` over the drawn grid. With one
seed it is the ordinary paired bootstrap over cases.

Written by hand: :func:`scipy.stats.bootstrap` resamples one axis of paired observations, not two
crossed ones. The percentile interval is used (no BCa: with three seeds the jackknife behind BCa
is degenerate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_mean_ci", "judge", "paired_matrix"]


def bootstrap_mean_ci(
    values: Any,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of a ``(seeds, cases)`` array and its crossed-bootstrap percentile interval.

    Args:
        values: ``(n_seeds, n_cases)`` (or ``(n_cases,)`` for one seed) per-case values, e.g.
            paired differences; NaN entries are left out of each mean.
        n_resamples: bootstrap replicates.
        confidence: coverage of the interval.
        seed: seed of the resampling (the interval is deterministic for a given seed).

    Returns:
        ``{"mean", "low", "high", "n_seeds", "n_cases", "confidence"}``; ``nan`` bounds when
        there are no finite values.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2:
        raise ValueError(f"expected values of shape (seeds, cases), got {data.shape}.")
    n_seeds, n_cases = data.shape
    out = {"n_seeds": n_seeds, "n_cases": n_cases, "confidence": confidence}
    if not np.isfinite(data).any():
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), **out}
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    cols = rng.integers(0, n_cases, size=(n_resamples, n_cases))
    finite = np.isfinite(data)
    filled = np.where(finite, data, 0.0)
    # sum and count over the drawn grid: (R, S) rows x (R, C) cols -> per replicate
    sums = np.einsum("rs,sc,rc->r", _counts(rows, n_seeds), filled, _counts(cols, n_cases))
    counts = np.einsum("rs,sc,rc->r", _counts(rows, n_seeds), finite, _counts(cols, n_cases))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    means = means[np.isfinite(means)]
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"mean": float(np.nanmean(data)), "low": float(low), "high": float(high), **out}


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """How often each index was drawn per replicate: ``(R, k)`` draws → ``(R, n)`` counts."""
    counts = np.zeros((draws.shape[0], n))
    np.add.at(counts, (np.arange(draws.shape[0])[:, None], draws), 1.0)
    return counts


def judge(ci: dict[str, float], op: str, threshold: float = 0.0) -> bool:
    """Whether ``mean op threshold`` is established by the interval.

    ``>``: the whole interval lies above ``threshold``; ``<``: below it. ``>=`` and ``<=`` are the
    weaker "not significantly worse": the interval reaches ``threshold`` or beyond (``high >=
    threshold``, ``low <= threshold``). Non-finite bounds never establish anything.
    """
    low, high = ci["low"], ci["high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return False
    checks = {
        ">": low > threshold,
        "<": high < threshold,
        ">=": high >= threshold,
        "<=": low <= threshold,
    }
    if op not in checks:
        raise ValueError(f"op must be one of {sorted(checks)}, got {op!r}.")
    return bool(checks[op])


def paired_matrix(
    a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], seeds: Sequence[int]
) -> np.ndarray:
    """``(seeds, cases)`` differences ``a - b`` over the cases both have in every seed.

    ``a`` and ``b`` map a seed to ``{case: value}``; a case missing from one side in some seed
    is left out of every seed (the design stays paired and crossed).
    """
    cases = None
    for seed in seeds:
        common = set(a.get(seed, {})) & set(b.get(seed, {}))
        cases = common if cases is None else cases & common
    ordered = sorted(cases or ())
    return np.array(
        [[a[s][c] - b[s][c] for c in ordered] for s in seeds], dtype=np.float64
    ).reshape(len(seeds), len(ordered))
