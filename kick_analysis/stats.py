"""Paired statistics for dense-vs-compressed comparisons (pure Python + numpy).

* :func:`mcnemar_exact` -- McNemar's exact test: a two-sided binomial test
  (p = 1/2) on the discordant pairs. Same value as
  ``scipy.stats.binomtest(b, b + c, 0.5).pvalue`` (checked in the tests).
* :func:`bootstrap_mean_ci` -- percentile bootstrap interval of the mean of
  paired differences, seeded (reproducible).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value.

    ``b``: pairs where only the first system is correct (dense right,
    compressed wrong); ``c``: pairs where only the second is correct. Under
    H0 the discordant pairs split 50/50, so ``min(b, c)`` is Binomial(b+c, 1/2);
    the two-sided p-value is twice the smaller tail, capped at 1 (the binomial
    with p = 1/2 is symmetric, so this equals scipy's "sum of probabilities no
    larger than the observed one" definition). No discordant pairs -> 1.0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p = Fraction(2 * tail, 2**n)
    return float(min(p, Fraction(1)))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "ci_low": self.low, "ci_high": self.high, "ci_level": self.level}


def bootstrap_mean_ci(
    values: Sequence[float],
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 250,
) -> Interval:
    """Percentile bootstrap interval for the mean of ``values`` (e.g. paired differences).

    Resamples items with replacement ``n_resamples`` times with a
    ``numpy.random.default_rng(seed)`` generator, so the same inputs and seed
    give the same interval. An empty input raises ``ValueError``; a single
    item gives a zero-width interval.
    """
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    estimate = float(x.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=float)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(estimate, float(low), float(high), level)
