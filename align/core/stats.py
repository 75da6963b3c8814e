"""Percentile-bootstrap confidence intervals: every rate, grade and score of an evaluation comes with one, so that a
small sample is read as what it is. A difference whose interval holds the null value (0 for a difference, 0.5 for a
win-rate) is within noise.

Resampling is over prompts: for per-answer values the statistic is their mean; for corpus-level metrics (chrF++) the
statistic is recomputed on each resample of prompt indices. A fixed seed makes every interval reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
MIN_SAMPLE = 5  # fewer values give no interval (a bootstrap of one value has zero width): read as noise


def resampled_indices(n: int, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """`resamples` x `n` indices drawn with replacement: the same draws for every statistic of one comparison, so
    paired differences are resampled together."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval(samples: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    low, high = np.quantile(np.asarray(samples, dtype=float), [(1 - level) / 2, (1 + level) / 2])
    return round(float(low), 4), round(float(high), 4)


def mean_interval(
    values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """The interval of the mean of per-answer values (a win counts 1, a tie 1/2; a pass 1; a grade its value)."""
    values = np.asarray(values, dtype=float)
    if values.size < MIN_SAMPLE:
        return None
    draws = resampled_indices(values.size, resamples=resamples, seed=seed)
    return interval(values[draws].mean(axis=1), level)


def statistic_interval(
    n: int, statistic: Callable[[np.ndarray], float], *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """The interval of a statistic computed on resampled prompt indices (a corpus-level score such as chrF++)."""
    if n < MIN_SAMPLE:
        return None
    return interval([statistic(draw) for draw in resampled_indices(n, resamples=resamples, seed=seed)], level)


def within_noise(bounds: tuple[float, float] | None, null: float) -> bool:
    """Whether the interval holds the value that means "no difference" (no interval: too few values to tell)."""
    return bounds is None or bounds[0] <= null <= bounds[1]
