"""``input / att`` (or ``input / output``) with the ends of the two statistics' intervals, for the
reports' "10x below input" verdicts (GCNet's finding: ``att`` one to two orders of magnitude below
``input``).

A ratio of two statistics with 95% intervals has a point estimate ``input / att``, a
*conservative* end ``input_low / att_high`` (as far from GCNet's finding as the intervals allow)
and a *liberal* end ``input_high / att_low`` (as close to it as they allow). A tier (10x, 100x,
1000x) is *reached* when the conservative end reaches it, *not reached* when even the liberal end
stays below it, and *undecided* when the two ends straddle it (:meth:`RatioEnds.reaches`). A row
without the four ends (one image or one seed: NaN ends, or no such columns) falls back to the
point estimate, and the text says that no interval was available.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NO_INTERVAL", "RatioEnds", "ends_text", "ratio_ends", "times"]

#: what the text says where a ratio has no interval.
NO_INTERVAL = "point estimate; no interval available"


def _float(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key, math.nan)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _div(a: float, b: float) -> float:
    """``a / b`` for a distance ``b >= 0``: infinite where ``b`` is 0 and ``a`` positive, NaN for 0 / 0."""
    if b > 0:
        return a / b
    return math.inf if a > 0 else math.nan


@dataclass(frozen=True)
class RatioEnds:
    """``point``: ``input / att``; ``low``: the conservative end ``input_low / att_high``; ``high``: the
    liberal end ``input_high / att_low`` (both NaN where the row has no interval)."""

    point: float
    low: float = math.nan
    high: float = math.nan

    @property
    def interval(self) -> bool:
        """Whether both ends are known (otherwise every verdict rests on the point estimate)."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def reaches(self, tier: float) -> bool | None:
        """True: at least ``tier`` (the conservative end, or the point without an interval); False: below it
        (the liberal end, or the point); None: the intervals' ends straddle ``tier``."""
        if not self.interval:
            return self.point >= tier
        if self.low >= tier:
            return True
        if self.high < tier:
            return False
        return None

    def inverse(self) -> RatioEnds:
        """``att / input`` with its ends (the conservative end of the inverse is the liberal one's inverse)."""
        inv = lambda x: math.nan if math.isnan(x) else (math.inf if x == 0 else 1 / x)
        return RatioEnds(inv(self.point), inv(self.high), inv(self.low))


def ratio_ends(row: Mapping[str, Any], num: str = "input", den: str = "att", *, num_from: Mapping[str, Any] | None = None) -> RatioEnds:
    """``row[num] / row[den]`` and its conservative and liberal ends (``STAT_low`` / ``STAT_high`` columns;
    ``num_from``: another row that holds ``num`` and its ends, e.g. a head's layer). The ends are NaN
    unless all four are finite numbers."""
    top = row if num_from is None else num_from
    point = _div(_float(top, num), _float(row, den))
    ends = [_float(top, f"{num}_low"), _float(top, f"{num}_high"), _float(row, f"{den}_low"), _float(row, f"{den}_high")]
    if not all(math.isfinite(e) for e in ends):
        return RatioEnds(point)
    num_low, num_high, den_low, den_high = ends
    low, high = _div(num_low, den_high), _div(num_high, den_low)  # 0 / 0: the end allows anything
    return RatioEnds(point, 0.0 if math.isnan(low) else low, math.inf if math.isnan(high) else high)


#: the tiers a ratio's text must not reach by rounding up (9.97 would print as 10.0 beside "not 10x").
_TIERS = (1, 10, 100, 1000)


def times(x: float, decimals: int = 1) -> str:
    """A ratio as a number: ``decimals`` decimals, but two significant digits below ``10 ** -decimals``
    (never ``0.00``), ``∞`` for an infinite one and a power of ten from 100000 on. A ratio below 1, 10,
    100 or 1000 never prints as that tier: it gets one more decimal, cut rather than rounded (9.97, not 10.0)."""
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    if abs(x) >= 1e5:
        return f"{x:.1e}"
    if abs(x) < 10.0**-decimals:  # fixed decimals would show one significant digit, or none
        return f"{x:.2g}"
    text = f"{x:.{decimals}f}"
    if any(abs(x) < tier <= abs(float(text)) for tier in _TIERS):
        more = decimals + 1
        text = f"{math.trunc(x * 10**more) / 10**more:.{more}f}"
    return text


def ends_text(ends: RatioEnds, fmt: Callable[[float], str], sign: str) -> str:
    """The ends in words: ``8.9–14× at the intervals' ends`` (``fmt``: a number's text, ``sign``: ``×`` or
    ``x``), ``the same at the intervals' ends`` where they print as the point does, or :data:`NO_INTERVAL`."""
    if not ends.interval:
        return NO_INTERVAL
    low, high = fmt(ends.low), fmt(ends.high)
    if low == high == fmt(ends.point):
        return "the same at the intervals' ends"
    return f"{low}–{high}{sign} at the intervals' ends"
