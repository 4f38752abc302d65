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


def seed_draws(seeds: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples x seeds) seed indices drawn with replacement: the outer level of the hierarchical bootstrap."""
    if seeds < 1:
        raise ValueError("cannot pool over zero seeds")
    return np.random.default_rng(seed).integers(0, seeds, size=(resamples, seeds))


def pooled_over_seeds(per_seed: list[Distribution], draws: np.ndarray) -> Distribution:
    """The seed-averaged model with seeds in its interval: resample seeds (``draws``), then posts.

    Every seed's model is scored on the same posts and bootstrapped on the same post resamples, so resample ``b``
    is the mean, over the seeds drawn in row ``b`` of ``draws``, of those seeds' metrics on post resample ``b``.
    Two pooled models built with the same ``draws`` stay paired (same seeds, same posts) for
    :func:`paired_difference`. The point estimate is the plain mean over the seeds.
    """
    if draws.shape[0] != len(next(iter(per_seed[0].samples.values()))):
        raise ValueError(f"{draws.shape[0]} seed draws for {len(next(iter(per_seed[0].samples.values())))} resamples")
    rows = np.arange(draws.shape[0])[:, None]
    return Distribution(
        {name: float(np.mean([d.point[name] for d in per_seed])) for name in per_seed[0].point},
        {name: np.stack([d.samples[name] for d in per_seed])[draws, rows].mean(axis=1) for name in per_seed[0].point},
    )


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the order given:
    ``p_adj(i) = max over k <= i of min(1, (m - k + 1) p_(k))`` with the p sorted ascending."""
    order = np.argsort(p_values, kind="stable")
    m, running, adjusted = len(p_values), 0.0, [float("nan")] * len(p_values)
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class FamilyMember:
    """One comparison of a Holm family: the raw difference, its Holm-adjusted p-value, and the interval at its
    Holm step's level ``1 - (1 - level) / (m - rank)`` (rank 0 for the smallest p)."""

    name: str
    difference: Difference
    p_holm: float
    adjusted_level: float
    adjusted_low: float
    adjusted_high: float


def holm_family(
    comparisons: dict[str, tuple[Distribution, Distribution]], metric: str, level: float = 0.95
) -> list[FamilyMember]:
    """Every ``a - b`` of one family of comparisons, Holm-corrected together (the family is what is printed)."""
    names = list(comparisons)
    raw = [paired_difference(a, b, metric, level) for a, b in comparisons.values()]
    adjusted = holm_adjust([d.p_value for d in raw])
    ranks = np.empty(len(names), dtype=int)
    ranks[np.argsort([d.p_value for d in raw], kind="stable")] = np.arange(len(names))
    members = []
    for name, difference, p_holm, rank in zip(names, raw, adjusted, ranks):
        a, b = comparisons[name]
        step_level = 1 - (1 - level) / (len(names) - rank)
        deltas = a.samples[metric] - b.samples[metric]
        low, high = _interval(deltas[~np.isnan(deltas)], step_level)
        members.append(FamilyMember(name, difference, p_holm, step_level, low, high))
    return members
