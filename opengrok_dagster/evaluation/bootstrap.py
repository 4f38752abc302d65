"""Percentile bootstrap intervals and paired bootstrap differences on shared resamples.

Every model of a task is scored on the same items, and every resample draws the same item indices for all of
them (one seeded index matrix per task), so a paired difference is the per-resample difference of two
models' metrics: the comparison keeps the pairing and the same seed gives the same numbers on rerun.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples x n) item indices drawn with replacement."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty sample")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Distribution:
    """A model's metrics on the full sample, and on every resample."""

    point: dict[str, float]
    samples: dict[str, np.ndarray]

    def estimate(self, metric: str, level: float = 0.95) -> Estimate:
        low, high = _interval(self.samples[metric], level)
        return Estimate(self.point[metric], low, high)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    finite = samples[~np.isnan(samples)]
    if not finite.size:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(scores, indices: np.ndarray) -> Distribution:
    """``scores`` has ``metrics(idx) -> dict``; each row of ``indices`` is one resample."""
    point = scores.metrics(None)
    rows = [scores.metrics(row) for row in indices]
    return Distribution(point, {name: np.array([row[name] for row in rows], dtype=float) for name in point})


@dataclass(frozen=True)
class Difference:
    """``a - b`` on one metric: the observed difference, its interval, and a two-sided bootstrap p-value."""

    value: float
    low: float
    high: float
    p_value: float


def paired_difference(a: Distribution, b: Distribution, metric: str, level: float = 0.95) -> Difference:
    """p is twice the share of resamples on the far side of zero (capped at 1): the chance of a difference
    this large in the opposite direction if the two models were interchangeable on these items."""
    deltas = a.samples[metric] - b.samples[metric]
    deltas = deltas[~np.isnan(deltas)]
    low, high = _interval(deltas, level)
    p_value = float(min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean()))) if deltas.size else float("nan")
    return Difference(a.point[metric] - b.point[metric], low, high, p_value)
