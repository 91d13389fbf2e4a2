"""Confidence intervals for per-image statistics.

GCNet (arXiv 1904.11492, Sec. 3, Table 1) reports one number per quantity: the
average pairwise distance over validation images. To say how sure such a
number is, each image's distance is treated as one independent sample, and
images from several training seeds form a two-level (hierarchical) sample.

* :func:`mean_ci`: Student-t interval ``mean -/+ t_{(1+level)/2, n-1} s/sqrt(n)``
  over independent values, or a bootstrap percentile interval (Efron &
  Tibshirani 1993) as a distribution-free alternative.
* :func:`hierarchical_mean_ci`: values nested in groups (e.g. images within
  seeds). The estimate is the mean of the group means (each group weighs the
  same). The t interval is taken over the group means with G - 1 degrees of
  freedom; the bootstrap resamples groups, then items within each chosen
  group. Both account for between-group variation, which an interval over
  all items pooled ignores.

NaN values are dropped (``Interval.n`` reports what was used); inf raises.
With fewer than 2 samples (items, or groups for the hierarchical version)
``low`` and ``high`` are NaN. scipy is imported only when a t quantile is
needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["Interval", "hierarchical_mean_ci", "mean_ci"]

Method = Literal["t", "bootstrap"]

# Bootstrap draws are made in blocks of at most this many indices.
_BOOT_BLOCK = 1 << 20


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval.

    Attributes:
        mean: The estimate.
        low: Lower end (NaN if it cannot be formed).
        high: Upper end.
        n: Samples used: values after dropping NaN for :func:`mean_ci`,
            groups for :func:`hierarchical_mean_ci`.
        level: Confidence level, e.g. 0.95.
        method: ``"t"``, ``"bootstrap"``, ``"hierarchical-t"`` or
            ``"hierarchical-bootstrap"``.
    """

    mean: float
    low: float
    high: float
    n: int
    level: float
    method: str


def _as_1d(values: Any, what: str = "values") -> np.ndarray:
    """Flatten array-likes (lists, numpy, torch tensors) to float64."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).ravel()
    if np.isinf(arr).any():
        raise ValueError(f"{what} contain inf")
    return arr


def _check(level: float, method: str, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if method not in ("t", "bootstrap"):
        raise ValueError(f"unknown method {method!r}; use 't' or 'bootstrap'")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _t_interval(x: np.ndarray, level: float) -> tuple[float, float, float]:
    """Mean and Student-t interval of ``x`` (n >= 2)."""
    from scipy import stats

    n = x.size
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf((1.0 + level) / 2.0, n - 1)) * sem
    return mean, mean - half, mean + half


def _percentile(boot_means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot_means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _resampled_means(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` means of size-``len(x)`` resamples of ``x`` with replacement."""
    n = x.size
    out = np.empty(count, dtype=np.float64)
    rows = max(1, _BOOT_BLOCK // n)
    for start in range(0, count, rows):
        stop = min(count, start + rows)
        out[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def mean_ci(
    values: Iterable[float] | np.ndarray,
    *,
    level: float = 0.95,
    method: Method = "t",
    n_boot: int = 10000,
    seed: int = 0,
) -> Interval:
    """Confidence interval for the mean of independent values (e.g. per image).

    Args:
        values: Any array-like (flattened). NaNs are dropped.
        level: Confidence level.
        method: ``"t"`` (Student-t) or ``"bootstrap"`` (percentile interval).
        n_boot: Bootstrap replicates.
        seed: Seed of the bootstrap RNG (numpy ``default_rng``).

    Returns:
        :class:`Interval`; ``mean`` is NaN if no value remains, ``low``/``high``
        are NaN if fewer than 2 remain.
    """
    _check(level, method, n_boot)
    x = _as_1d(values)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n < 2:
        mean = float(x[0]) if n == 1 else math.nan
        return Interval(mean, math.nan, math.nan, n, level, method)
    if method == "t":
        mean, low, high = _t_interval(x, level)
    else:
        mean = float(x.mean())
        low, high = _percentile(_resampled_means(x, n_boot, np.random.default_rng(seed)), level)
    return Interval(mean, low, high, n, level, method)


def hierarchical_mean_ci(
    values: Iterable[float] | np.ndarray,
    groups: Iterable[Any] | np.ndarray,
    *,
    level: float = 0.95,
    method: Method = "t",
    n_boot: int = 10000,
    seed: int = 0,
) -> Interval:
    """Confidence interval for a two-level sample (items nested in groups).

    Typical use: per-image distances (items) from models trained with several
    seeds (groups). The estimate is the mean of the group means.

    * ``method="t"``: Student-t interval over the G group means (G - 1 degrees
      of freedom).
    * ``method="bootstrap"``: each replicate draws G groups with replacement,
      then, inside each drawn group, its items with replacement; the
      percentile interval of the replicate means of group means.

    Args:
        values: Item values, any array-like (flattened). NaN items are dropped.
        groups: One hashable label per item, same length as ``values``.
        level: Confidence level.
        method: ``"t"`` or ``"bootstrap"``.
        n_boot: Bootstrap replicates.
        seed: Seed of the bootstrap RNG.

    Returns:
        :class:`Interval` with ``n`` = number of groups with at least one
        value; ``low``/``high`` are NaN if fewer than 2 groups remain.
    """
    _check(level, method, n_boot)
    x = _as_1d(values)
    labels = np.asarray(list(groups) if not isinstance(groups, np.ndarray) else groups).ravel()
    if labels.size != x.size:
        raise ValueError(f"values and groups must have the same length, got {x.size} and {labels.size}")
    keep = ~np.isnan(x)
    x, labels = x[keep], labels[keep]
    _, codes = np.unique(labels, return_inverse=True)
    members = [x[codes == g] for g in range(int(codes.max()) + 1)] if x.size else []
    g_count = len(members)
    group_means = np.array([m.mean() for m in members], dtype=np.float64)
    name = f"hierarchical-{method}"
    if g_count < 2:
        mean = float(group_means[0]) if g_count == 1 else math.nan
        return Interval(mean, math.nan, math.nan, g_count, level, name)
    if method == "t":
        mean, low, high = _t_interval(group_means, level)
        return Interval(mean, low, high, g_count, level, name)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, g_count, size=(n_boot, g_count))  # groups drawn per replicate
    within = np.empty(chosen.shape, dtype=np.float64)  # item-resampled mean of each drawn group
    for g, items in enumerate(members):
        where = chosen == g
        within[where] = _resampled_means(items, int(where.sum()), rng)
    low, high = _percentile(within.mean(axis=1), level)
    return Interval(float(group_means.mean()), low, high, g_count, level, name)
