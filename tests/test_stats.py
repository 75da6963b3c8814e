"""Bootstrap intervals have the width statistics predicts, and say when a difference is noise."""

from __future__ import annotations

import math

import numpy as np

from align.core.stats import mean_interval, statistic_interval, within_noise


def test_the_interval_of_a_mean_has_the_expected_width():
    rng = np.random.default_rng(1)
    for n, p in ((400, 0.5), (100, 0.2)):
        values = (rng.random(n) < p).astype(float)
        low, high = mean_interval(values, resamples=4000, seed=0)
        expected = 2 * 1.96 * math.sqrt(values.mean() * (1 - values.mean()) / n)  # the normal approximation
        assert abs((high - low) - expected) < 0.15 * expected
        assert low < values.mean() < high


def test_small_samples_read_as_noise_and_clear_differences_do_not():
    assert within_noise(mean_interval([1, 0, 0.5, 1, 0, 0.5, 1, 0]), 0.5)  # 8 answers, win-rate 50%
    assert not within_noise(mean_interval([1.0] * 180 + [0.0] * 20), 0.5)  # 90% of 200
    assert within_noise(mean_interval([1.0] * 5 + [0.0] * 3), 0.5)  # 62% of 8 is still noise
    assert mean_interval([]) is None and mean_interval([1.0] * 4) is None and within_noise(None, 0.5)


def test_a_corpus_statistic_is_resampled_over_prompts():
    values = np.array([0.0] * 50 + [1.0] * 50)
    low, high = statistic_interval(len(values), lambda draw: float(values[draw].mean()), resamples=2000)
    assert low < 0.5 < high and 0.15 < high - low < 0.25
    assert statistic_interval(5, lambda draw: 1.0) == (1.0, 1.0) and statistic_interval(4, lambda draw: 1.0) is None
