"""The seed-hierarchical bootstrap and Holm's correction: what every seed-pooled figure and family of comparisons
of the efficacy bench is stated with."""

import numpy as np
import pytest

from opengrok_dagster.evaluation.bootstrap import (
    Distribution,
    bootstrap,
    holm_adjust,
    holm_family,
    paired_difference,
    pooled_over_seeds,
    resample_indices,
    seed_draws,
)
from opengrok_dagster.evaluation.metrics import ClassificationScores


def _accuracy_per_seed(rates: list[float], n: int = 400, resamples: int = 2000):
    """Seeds whose students are right on a share ``rate`` of the same n posts, bootstrapped on shared resamples."""
    rng = np.random.default_rng(0)
    gold = np.zeros(n, dtype=int)
    indices = resample_indices(n, resamples, 0)
    return [bootstrap(ClassificationScores(gold, (rng.random(n) > rate).astype(int), 2), indices) for rate in rates]


def _width(distribution: Distribution) -> float:
    estimate = distribution.estimate("accuracy")
    return estimate.high - estimate.low


def test_seed_variance_widens_the_interval_that_resampling_posts_alone_gives():
    per_seed = _accuracy_per_seed([0.43, 0.53, 0.45, 0.55, 0.48])  # seeds as far apart as the 0.426 / 0.530
    posts_only = Distribution(
        {"accuracy": float(np.mean([d.point["accuracy"] for d in per_seed]))},
        {"accuracy": np.mean([d.samples["accuracy"] for d in per_seed], axis=0)},
    )
    hierarchical = pooled_over_seeds(per_seed, seed_draws(len(per_seed), 2000, 1))
    assert hierarchical.point["accuracy"] == pytest.approx(posts_only.point["accuracy"])
    assert _width(hierarchical) > 1.5 * _width(posts_only)


def test_seeds_that_agree_leave_the_interval_as_posts_alone_make_it():
    per_seed = _accuracy_per_seed([0.5, 0.5, 0.5])
    same = [per_seed[0]] * 3  # three identical students: resampling seeds changes nothing
    hierarchical = pooled_over_seeds(same, seed_draws(3, 2000, 1))
    assert np.allclose(hierarchical.samples["accuracy"], per_seed[0].samples["accuracy"])


def test_pooled_resample_is_the_mean_of_the_drawn_seeds_on_that_post_resample():
    seeds = [
        Distribution({"m": 0.0}, {"m": np.array([0.0, 1.0])}),
        Distribution({"m": 1.0}, {"m": np.array([2.0, 3.0])}),
    ]
    draws = np.array([[0, 0], [1, 0]])
    pooled = pooled_over_seeds(seeds, draws)
    assert pooled.point["m"] == 0.5 and pooled.samples["m"].tolist() == [0.0, 2.0]  # (0+0)/2, (3+1)/2


def test_two_pooled_models_on_the_same_draws_stay_paired_by_seed():
    a = [Distribution({"m": v}, {"m": np.full(4, v)}) for v in (0.2, 0.8)]
    b = [Distribution({"m": v - 0.1}, {"m": np.full(4, v - 0.1)}) for v in (0.2, 0.8)]
    draws = seed_draws(2, 4, 0)
    difference = paired_difference(pooled_over_seeds(a, draws), pooled_over_seeds(b, draws), "m")
    assert difference.low == pytest.approx(0.1) and difference.high == pytest.approx(0.1)  # each seed gains 0.1


def test_holm_adjusted_p_values_match_a_hand_computed_family():
    # sorted p 0.01, 0.02, 0.03, 0.04 (given out of order): x4, x3, x2, x1 -> 0.04, 0.06, 0.06 (monotone), 0.06
    assert holm_adjust([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([0.003]) == [0.003]


def test_holm_family_widens_the_interval_of_the_smallest_p_most():
    rng = np.random.default_rng(0)
    base = Distribution({"m": 0.0}, {"m": np.zeros(4000)})
    strong = Distribution({"m": 0.3}, {"m": rng.normal(0.3, 0.1, 4000)})
    weak = Distribution({"m": 0.05}, {"m": rng.normal(0.05, 0.1, 4000)})
    first, second = holm_family({"strong - base": (strong, base), "weak - base": (weak, base)}, "m")
    assert first.name == "strong - base" and first.adjusted_level == pytest.approx(0.975)  # rank 1 of 2: alpha / 2
    assert second.adjusted_level == pytest.approx(0.95)
    assert first.adjusted_high - first.adjusted_low > first.difference.high - first.difference.low
    assert second.p_holm >= first.p_holm and second.p_holm == pytest.approx(
        max(second.difference.p_value, first.p_holm)
    )
