"""Confidence intervals against scipy.stats and by coverage simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from nlanalysis.metrics import Interval, hierarchical_mean_ci, mean_ci


def scipy_t(x: np.ndarray, level: float) -> tuple[float, float]:
    low, high = stats.t.interval(level, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    return float(low), float(high)


@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
def test_t_matches_scipy(level: float) -> None:
    x = np.array([0.41, 0.38, 0.45, 0.52, 0.33, 0.40, 0.47, 0.39])
    ci = mean_ci(x, level=level)
    low, high = scipy_t(x, level)
    assert isinstance(ci, Interval) and ci.method == "t" and ci.n == 8 and ci.level == level
    assert abs(ci.mean - 0.41875) < 1e-12
    assert abs(ci.low - low) < 1e-12 and abs(ci.high - high) < 1e-12


def test_known_small_sample_by_hand() -> None:
    # x = [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302652729911275
    ci = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert abs(ci.low - (2 - half)) < 1e-9 and abs(ci.high - (2 + half)) < 1e-9


def test_nan_dropped_and_inputs() -> None:
    x = [0.2, float("nan"), 0.4, 0.3, float("nan")]
    ci = mean_ci(torch.tensor(x, dtype=torch.float64))
    low, high = scipy_t(np.array([0.2, 0.4, 0.3]), 0.95)
    assert ci.n == 3 and abs(ci.mean - 0.3) < 1e-12
    assert abs(ci.low - low) < 1e-12 and abs(ci.high - high) < 1e-12


def test_degenerate_sizes() -> None:
    one = mean_ci([0.7, float("nan")])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean)
    one_b = mean_ci([0.7], method="bootstrap")
    assert math.isnan(one_b.low)
    const = mean_ci([0.5] * 6)
    assert const.low == const.high == 0.5


def test_errors() -> None:
    with pytest.raises(ValueError, match="inf"):
        mean_ci([1.0, float("inf")])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="method"):
        mean_ci([1.0, 2.0], method="normal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        hierarchical_mean_ci([1.0, 2.0], [0])


def test_bootstrap_close_to_t_for_normal_data() -> None:
    x = np.random.default_rng(0).normal(0.4, 0.1, size=200)
    b = mean_ci(x, method="bootstrap", n_boot=4000, seed=1)
    t = mean_ci(x)
    assert b.method == "bootstrap" and b.n == 200
    assert b.low < x.mean() < b.high and abs(b.mean - x.mean()) < 1e-12
    assert abs(b.low - t.low) < 0.15 * (t.high - t.low)
    assert abs(b.high - t.high) < 0.15 * (t.high - t.low)


def test_bootstrap_percentiles_by_hand() -> None:
    # two values: every resample mean is 1, 1.5 or 2 with prob 1/4, 1/2, 1/4
    ci = mean_ci([1.0, 2.0], method="bootstrap", n_boot=20000, level=0.5)
    assert ci.low == 1.5 and ci.high == 1.5
    ci = mean_ci([1.0, 2.0], method="bootstrap", n_boot=20000, level=0.9)
    assert ci.low == 1.0 and ci.high == 2.0


def test_t_coverage_by_simulation() -> None:
    rng = np.random.default_rng(42)
    hits = 0
    for _ in range(400):
        ci = mean_ci(rng.normal(3.0, 2.0, size=20))
        hits += ci.low <= 3.0 <= ci.high
    assert 0.92 <= hits / 400 <= 0.98


def test_bootstrap_coverage_by_simulation() -> None:
    rng = np.random.default_rng(43)
    hits = 0
    for r in range(200):
        ci = mean_ci(rng.normal(3.0, 2.0, size=30), method="bootstrap", n_boot=1000, seed=r)
        hits += ci.low <= 3.0 <= ci.high
    assert 0.88 <= hits / 200 <= 0.99  # the percentile bootstrap undercovers slightly at small n


def _grouped(rng: np.random.Generator, g: int, m: int, between: float, within: float) -> tuple[np.ndarray, np.ndarray]:
    effects = rng.normal(0.0, between, size=g)
    values = (1.0 + effects[:, None] + rng.normal(0.0, within, size=(g, m))).ravel()
    return values, np.repeat(np.arange(g), m)


def test_hierarchical_t_is_t_over_group_means() -> None:
    rng = np.random.default_rng(1)
    values, groups = _grouped(rng, 5, 12, 0.5, 0.2)
    labels = np.array(["seed%d" % k for k in groups])
    values[3] = np.nan  # dropped item
    means = np.array([np.nanmean(values[groups == k]) for k in range(5)])
    ci = hierarchical_mean_ci(values, labels)
    low, high = scipy_t(means, 0.95)
    assert ci.method == "hierarchical-t" and ci.n == 5
    assert abs(ci.mean - means.mean()) < 1e-12
    assert abs(ci.low - low) < 1e-12 and abs(ci.high - high) < 1e-12


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_hierarchical_wider_than_naive_with_group_effects(method: str) -> None:
    rng = np.random.default_rng(2)
    values, groups = _grouped(rng, 10, 30, 1.0, 0.3)
    naive = mean_ci(values, method=method, n_boot=2000)
    hier = hierarchical_mean_ci(values, groups, method=method, n_boot=2000)
    assert hier.high - hier.low > 2.5 * (naive.high - naive.low)
    assert hier.low < hier.mean < hier.high


def test_hierarchical_coverage_vs_naive() -> None:
    rng = np.random.default_rng(3)
    reps, hier_hits, naive_hits = 300, 0, 0
    for _ in range(reps):
        values, groups = _grouped(rng, 8, 10, 0.5, 0.5)
        h = hierarchical_mean_ci(values, groups)
        n = mean_ci(values)
        hier_hits += h.low <= 1.0 <= h.high
        naive_hits += n.low <= 1.0 <= n.high
    assert 0.90 <= hier_hits / reps <= 0.99
    assert naive_hits / reps < 0.75


def test_hierarchical_bootstrap_matches_t_roughly_and_single_group() -> None:
    rng = np.random.default_rng(4)
    values, groups = _grouped(rng, 12, 8, 0.5, 0.3)
    b = hierarchical_mean_ci(values, groups, method="bootstrap", n_boot=3000, seed=5)
    t = hierarchical_mean_ci(values, groups)
    assert b.method == "hierarchical-bootstrap" and b.n == 12
    width = t.high - t.low
    assert abs(b.low - t.low) < 0.25 * width and abs(b.high - t.high) < 0.25 * width
    single = hierarchical_mean_ci([0.1, 0.2, 0.3], [7, 7, 7])
    assert single.n == 1 and abs(single.mean - 0.2) < 1e-12 and math.isnan(single.low)
