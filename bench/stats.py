"""Statistics over seeds, as rliable recommends for RL benchmarks (Agarwal et al., 2021, "Deep RL at
the edge of the statistical precipice"): point estimates with percentile-bootstrap 95% intervals, the
interquartile mean (IQM), stratified bootstrap intervals for aggregates over tasks, and the
probability of improvement of one method over another.

Resampling is scipy's `scipy.stats.bootstrap` (percentile method, rliable's default), not the `rliable`
package: rliable pins an old `arch` release that has no wheel for current Python versions. scipy
resamples each sample it is given independently, which is exactly rliable's stratified bootstrap when
each sample is one task's seeds: the runs of every task are resampled within that task. For one cell
(one task) the stratified bootstrap is the plain bootstrap over seeds. Every interval is deterministic
given `seed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats

CONFIDENCE = 0.95
N_RESAMPLES = 10_000


Values = Sequence[float] | np.ndarray
"""One cell's values, one per seed: a sequence or a 1-D array."""


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (a quarter cut from each end, as rliable)."""
    return scipy.stats.trim_mean(values, 0.25, axis=axis)


def _as_samples(samples: Sequence[Values]) -> list[np.ndarray]:
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    for a in arrays:
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"each sample must be a non-empty 1-D sequence of values, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"statistics need finite values, got {a.tolist()}")
    if not arrays:
        raise ValueError("statistics need at least one sample")
    return arrays


def stratified_bootstrap_ci(
    samples: Sequence[Values],
    statistic: Callable[..., np.ndarray],
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high) of `statistic(*samples, axis=-1)` with each sample resampled on its own.

    samples: one 1-D array per stratum (e.g. per task, the values of its seeds; sizes may differ).
    statistic: vectorized over a leading batch of resamples: sample i arrives as (..., n_i).
    """
    arrays = _as_samples(samples)
    estimate = float(statistic(*arrays, axis=-1))
    # A one-value stratum resamples to itself, and scipy refuses it, so it is held fixed.
    moving = [i for i, a in enumerate(arrays) if a.size > 1 and (a != a[0]).any()]
    if not moving:
        return estimate, estimate, estimate

    def with_fixed(*resampled, axis=-1):
        batch = resampled[0].shape[:-1]
        full = [np.broadcast_to(a, (*batch, a.size)) for a in arrays]
        for i, r in zip(moving, resampled):
            full[i] = r
        return statistic(*full, axis=axis)

    result = scipy.stats.bootstrap(
        tuple(arrays[i] for i in moving),
        with_fixed,
        n_resamples=N_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        paired=False,
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return estimate, float(ci.low), float(ci.high)


def bootstrap_ci(
    values: Values, statistic: Callable[..., np.ndarray] = np.mean, seed: int = 0
) -> tuple[float, float, float]:
    """(estimate, low, high): `statistic` (np.mean or iqm) of one cell's values, one per seed, and its
    bootstrap interval over seeds."""
    x = _as_samples([values])[0]
    if (x == x[0]).all():
        return (float(x[0]),) * 3  # exactly, where np.mean([0.7] * 3) would round to 0.6999...
    return stratified_bootstrap_ci([x], statistic, seed)


def paired_difference_ci(values: Values, baseline: Values, seed: int = 0) -> tuple[float, float, float]:
    """bootstrap_ci of the mean of values[i] - baseline[i]; the caller matches the pairs (same seed)."""
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}")
    return bootstrap_ci(a - b, seed=seed)


def kendall_tau(pairs: list[tuple[float, float]]) -> float:
    """Kendall's tau (tau-a) between two orders of the same items, each item given as its pair of values (in the first
    order, in the second): (concordant - discordant pairs of items) / all pairs; a tie in either order counts as
    neither. At least two items."""
    signs = [np.sign(a1 - a2) * np.sign(b1 - b2) for i, (a1, b1) in enumerate(pairs) for a2, b2 in pairs[i + 1 :]]
    return float(np.sum(signs)) / len(signs)


def pooled(statistic: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """`statistic` over all the runs of all strata together (rliable's aggregate mean and IQM)."""

    def over_all(*samples, axis=-1):
        return statistic(np.concatenate(samples, axis=axis), axis=axis)

    return over_all


def _probability_of_improvement(*samples, axis=-1):
    """Mean over tasks of P(X > Y) + P(X = Y) / 2; samples alternate x_task1, y_task1, x_task2, ..."""
    per_task = []
    for x, y in zip(samples[0::2], samples[1::2]):
        x, y = x[..., :, None], y[..., None, :]
        per_task.append(((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1)))
    return np.mean(per_task, axis=0)


def probability_of_improvement(
    x_per_task: Sequence[Values],
    y_per_task: Sequence[Values],
    seed: int = 0,
) -> tuple[float, float, float]:
    """(P, low, high): the probability that a run of X beats a run of Y on a task drawn at random (the
    Mann-Whitney U statistic averaged over tasks), with a stratified bootstrap interval. Values must
    be oriented so that higher is better. x_per_task[t], y_per_task[t]: the seeds' values on task t."""
    if len(x_per_task) != len(y_per_task) or not x_per_task:
        raise ValueError(
            f"probability of improvement needs the same tasks on both sides, got "
            f"{len(x_per_task)} and {len(y_per_task)}"
        )
    interleaved = [s for pair in zip(x_per_task, y_per_task) for s in pair]
    return stratified_bootstrap_ci(interleaved, _probability_of_improvement, seed)
