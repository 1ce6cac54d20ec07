"""Statistics over seeds: the mean and its percentile-bootstrap confidence interval.

Seeds are few (3 to 10), so the interval is the plain percentile bootstrap of the mean over
seeds, as in rliable's per-task intervals; it is deterministic given `seed`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.stats


def bootstrap_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` (one per seed) and its bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D sequence of values, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"bootstrap_ci needs finite values, got {x.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    # Every resample of constant data is the same number: the interval is a point, and scipy
    # rejects such degenerate data, so answer directly.
    if (x == x[0]).all():
        v = float(x[0])
        return v, v, v
    result = scipy.stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return float(x.mean()), float(ci.low), float(ci.high)


def paired_difference_ci(
    values: Sequence[float],
    baseline: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """bootstrap_ci of values[i] - baseline[i]; the caller matches the pairs (same seed)."""
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, confidence=confidence, n_resamples=n_resamples, seed=seed)
