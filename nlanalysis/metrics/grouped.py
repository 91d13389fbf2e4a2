"""The table engine: per group of rows, each statistic's mean and confidence interval.

Every result table is built here: GCNet's Table 1 groups an NL run's rows by ``(variant, block)``
(:func:`nlanalysis.tables.summarise`), the ViT tables by ``(layer, head)``
(:func:`nlanalysis.analyze_vit.layer_table`, :mod:`nlanalysis.report.vit`), a result set's summary
by ``block`` (:func:`nlanalysis.extract.results.summarize`).

Intervals (:mod:`.intervals`): over the rows of a group (one per image) with :func:`mean_ci`; where
a ``unit`` column says the rows come from several independent units (training seeds), over the
unit means with :func:`hierarchical_mean_ci` (images nested in seeds). With one unit per row
(images only) the two agree: the hierarchical interval over single-image groups is the
t-interval over images (tested), so a group with one unit keeps :func:`mean_ci`.

Ratios (``geometric=``, e.g. ``own_object_lift``: own-object density of the real maps / of the mean-map
null) are summarised as the geometric mean with the interval of the mean log-ratio, exponentiated: a
ratio's spread is multiplicative (2x and 0.5x are equally far from 1), its per-image values are skewed
to the right, and the log makes them additive and nearer to normal, so the t interval holds its level
better than on the raw ratios or than a ratio of means; the interval is asymmetric, stays positive, and
contains 1 exactly when the mean log-ratio's contains 0 (no effect).

It lives in the bottom floor (pandas is imported only here, not by ``nlanalysis.metrics``) so
that every layer that builds a table can use it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .intervals import Interval, Method, hierarchical_mean_ci, mean_ci

__all__ = ["group_interval", "grouped_intervals"]


def group_interval(values: pd.Series, units: pd.Series | None = None, *, level: float = 0.95, method: Method = "t") -> Interval:
    """Mean and CI of one group's ``values``: hierarchical over ``units`` where there are several."""
    if units is not None and units.nunique() > 1:
        return hierarchical_mean_ci(values.to_numpy(float), units.to_numpy(), level=level, method=method)
    return mean_ci(values.to_numpy(float), level=level, method=method)


def grouped_intervals(
    frame: pd.DataFrame,
    keys: Sequence[str],
    stats: Sequence[str],
    *,
    unit: str | None = None,
    level: float = 0.95,
    method: Method = "t",
    bounds: Mapping[str, tuple[float, float] | None] | None = None,
    sort: bool = False,
    facts: Callable[[pd.DataFrame], dict[str, Any]] | None = None,
    geometric: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per group of ``keys``: ``facts(group)``, then ``STAT``, ``STAT_low``, ``STAT_high``.

    Args:
        frame: one row per image (and site, run, ...).
        keys: group columns (NaN keys form their own group).
        stats: statistic columns (NaN values are dropped; an all-NaN group gives NaN).
        unit: column of independent units (seeds): groups with several are hierarchical.
        level, method: of :func:`mean_ci` / :func:`hierarchical_mean_ci`.
        bounds: ``{stat: (low, high)}``: each interval is cut to its statistic's range (a
            t-interval over few images can reach beyond it; cutting keeps its coverage).
        sort: groups in key order (default: in the order they first appear).
        facts: more columns per group, placed after the keys (e.g. the number of images); a ``ci`` among them
            that is callable is called with ``{STAT: K}``, the number of units (values, without ``unit``) each
            statistic's interval is over, and its text kept (how the intervals were formed, counted as used).
        geometric: ratio columns among ``stats``: geometric mean and the exponentiated interval of the
            mean log (module docstring); values that are not positive and finite are left out; no ``bounds``.

    Returns:
        A DataFrame, one row per group.
    """
    keys = list(keys)
    geometric = [s for s in geometric if s in stats]
    if geometric:
        frame = frame.assign(**{s: np.log(frame[s].where((frame[s] > 0) & np.isfinite(frame[s]))) for s in geometric})
    rows = []
    for key, part in frame.groupby(keys, sort=sort, dropna=False):
        row: dict[str, Any] = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        if facts is not None:
            row.update(facts(part))
        units = part[unit] if unit is not None else None
        used = {}  # per statistic, the units (values) its interval is over: a unit where it is all NaN is not
        for s in stats:
            ci = group_interval(part[s], units, level=level, method=method)
            used[s] = ci.n
            mean, low, high = ci.mean, ci.low, ci.high
            if s in geometric:
                mean, low, high = float(np.exp(mean)), float(np.exp(low)), float(np.exp(high))
            elif bounds is not None and bounds.get(s) is not None:
                lo, hi = bounds[s]
                low, high = float(np.clip(low, lo, hi)), float(np.clip(high, lo, hi))
            row.update({s: mean, f"{s}_low": low, f"{s}_high": high})
        if callable(row.get("ci")):
            row["ci"] = row["ci"](used)
        rows.append(row)
    return pd.DataFrame(rows)
