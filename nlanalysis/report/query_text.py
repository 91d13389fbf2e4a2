"""The report's reading of the query-dependence suite: *what kind* of query dependence a block or head
has, in words, with the intervals (:func:`query_reading`, :func:`query_lines`).

A summary row (:func:`nlanalysis.tables.summarise`, or a ViT heads/layers table: ``STAT``,
``STAT_low``, ``STAT_high``) is read against thresholds that the text states (:data:`THRESHOLDS`);
a category is claimed only when the whole interval meets its threshold (for a ratio of two
statistics: the ratio of the interval ends that is least favourable), otherwise the text says
the intervals cannot tell. A statistic the row lacks (absent or NaN) is not mentioned.

Readings (:func:`kind`):

- ``sign``: signed maps (dot product) whose ``att`` comes from signs: ``att_abs`` (the rows'
  absolute values) at most :data:`SIGN_SHARE` of ``att``: one map with a signed gain per query;
- ``one map``: the gain-only reconstruction (one key profile, a temperature per query) reaches at
  least :data:`ONE_MAP_SHARE` of ``att`` at a total-variation distance of at most :data:`ONE_MAP_TV`;
- ``not one map``: it reaches less than :data:`NOT_ONE_MAP_SHARE` of ``att`` or its TV exceeds
  :data:`NOT_ONE_MAP_TV`: the maps differ between queries in more than sharpness;
- ``partly``: in between, or intervals that straddle a threshold;
- ``rank 1``: maps that are not a softmax (no gain-only reconstruction) whose centred maps are at
  least :data:`RANK1` rank 1; ``flat``: ``att`` practically 0 (below :data:`FLAT_ATT`), nothing to read.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ..schema import HEAD_MEAN
from ..tables import ci_text, format_ci
from .ratio_ends import times

__all__ = ["THRESHOLDS", "kind", "layer_lines", "query_lines", "query_reading"]

ONE_MAP_SHARE, ONE_MAP_TV = 0.8, 0.05
NOT_ONE_MAP_SHARE, NOT_ONE_MAP_TV = 0.5, 0.15
SIGN_SHARE = 0.5
RANK1 = 0.95
LIFT = 1.1
FLAT_ATT = 1e-3
#: modes whose maps are not a softmax of logits (the suite's rank-1 share is of the map itself).
NOT_SOFTMAX = ("concatenation", "dot_product")

#: the thresholds, as the report states them before its readings.
THRESHOLDS = (
    f"How the readings are worded: **one shared map at different sharpness** where the gain-only reconstruction (one key "
    f"profile, a temperature per query) reproduces at least {ONE_MAP_SHARE:.0%} of `att` with a total-variation distance "
    f"(TV) to the real maps of at most {ONE_MAP_TV}; **not one map at different sharpness** where it reproduces less than "
    f"{NOT_ONE_MAP_SHARE:.0%} or its TV exceeds {NOT_ONE_MAP_TV}; **a sign flip of one map** (signed maps) where `att` of "
    f"the rows' absolute values is at most {SIGN_SHARE:.0%} of `att`; **more on the own object** where the own-object "
    f"lift against the object-query null exceeds {LIFT} (10% more mass per unit area on the query's own object than the "
    "object queries' mean map gives it: object-specific context, or locality alone, which the lift does not tell apart: "
    "maps by spatial distance only, at a trained block's entropy, read 2.3 on the query-specific scenes; set it beside the "
    "attention distance and the 3x3 mass), **no object-specific context** where it stays below; a unary term holding more than half of the logits' "
    "variance across keys **dominates**. A reading is claimed only when the whole 95% interval meets the threshold (for a "
    "share: the least favourable ratio of the interval ends); otherwise the text says the intervals cannot tell."
)


def _has(r: pd.Series, stat: str) -> bool:
    value = r.get(stat, math.nan)
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and pd.notna(value)


def _ends(r: pd.Series, stat: str) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``stat`` (the mean for a missing end)."""
    mean = float(r[stat])
    low, high = (float(r.get(f"{stat}_{e}", math.nan)) for e in ("low", "high"))
    return mean, (mean if math.isnan(low) else low), (mean if math.isnan(high) else high)


def _read(r: pd.Series, *stats: str) -> bool:
    """Whether every one of ``stats`` has both interval ends: a reading needs the whole interval (a group of one image or
    one seed has none, and its mean alone decides nothing)."""
    return all(math.isfinite(float(r.get(f"{s}_{e}", math.nan))) for s in stats for e in ("low", "high"))


def _pct(r: pd.Series, stat: str) -> str:
    mean, low, high = (float(r.get(s, math.nan)) for s in (stat, f"{stat}_low", f"{stat}_high"))
    pct = lambda v: f"{100 * v:.1f}" if abs(100 * v) < 99.95 or v >= 1 else f"{math.floor(10000 * v) / 100:.2f}"  # < 1: never "100.00"
    return f"{pct(mean)}%" if math.isnan(low) else f"{pct(mean)}% [{pct(low)}, {pct(high)}]"


def _gain_kind(r: pd.Series) -> str | None:
    """``one map`` / ``not one map`` / ``partly`` from the gain-only reconstruction (None without it)."""
    if not (_has(r, "att_gain_only") and _has(r, "gain_only_tv") and _has(r, "att")):
        return None
    if not _read(r, "att", "att_gain_only", "gain_only_tv"):
        return None
    att, att_lo, att_hi = _ends(r, "att")
    gain, gain_lo, gain_hi = _ends(r, "att_gain_only")
    tv, tv_lo, tv_hi = _ends(r, "gain_only_tv")
    worst = gain_lo / att_hi if att_hi > 0 else math.nan
    best = gain_hi / att_lo if att_lo > 0 else math.inf
    if worst >= ONE_MAP_SHARE and tv_hi <= ONE_MAP_TV:
        return "one map"
    if best < NOT_ONE_MAP_SHARE or tv_lo > NOT_ONE_MAP_TV:
        return "not one map"
    return "partly"


def _sign_kind(r: pd.Series) -> bool:
    """Signed maps whose ``att`` is mostly sign: ``att_abs`` at most :data:`SIGN_SHARE` of ``att`` (interval ends)."""
    if not (_has(r, "att_abs") and _has(r, "att") and _read(r, "att", "att_abs")):
        return False
    _, att_lo, _ = _ends(r, "att")
    _, _, abs_hi = _ends(r, "att_abs")
    return att_lo > 0 and abs_hi <= SIGN_SHARE * att_lo


def kind(r: pd.Series) -> str | None:
    """The row's reading (module docstring): ``flat``, ``sign``, ``one map``, ``not one map``, ``partly``,
    ``rank 1``, or None when the row has none of the statistics that decide it."""
    if _has(r, "att") and not _read(r, "att"):
        return None  # no interval: no reading
    if _has(r, "att") and _ends(r, "att")[2] < FLAT_ATT:
        return "flat"
    if _sign_kind(r):
        return "sign"
    gain = _gain_kind(r)
    if gain is not None:
        return gain
    if _has(r, "logit_rank1") and _read(r, "logit_rank1") and _ends(r, "logit_rank1")[1] >= RANK1:
        return "rank 1"
    return None


#: each reading as the text's heading words.
KIND_WORDS = {
    "flat": "practically no query dependence (`att` ~ 0)",
    "sign": "a sign flip of one map",
    "one map": "one shared map at different sharpness",
    "not one map": "not one map at different sharpness: query-specific maps",
    "partly": "partly one shared map at different sharpness (between the thresholds)",
    "rank 1": f"nearly one map (centred maps at least {RANK1:.0%} rank 1)",
}


def _decomposition(r: pd.Series, mode: str) -> list[str]:
    """The sentences of the shared-map decomposition and the signed maps (``att`` first)."""
    out = []
    att = f"`att` {ci_text(r, 'att')}" if _has(r, "att") else ""
    if _has(r, "att_gain_only") and _has(r, "att") and r["att"] > 0:
        text = (f"{att}, of which the gain-only reconstruction reproduces {ci_text(r, 'att_gain_only')} "
                f"({r['att_gain_only'] / r['att']:.0%})" + (f", at TV {ci_text(r, 'gain_only_tv')} from the real maps"
                                                           if _has(r, "gain_only_tv") else ""))  # fmt: skip
        out.append(text + (f" ({_partly_reason(r)})" if _gain_kind(r) == "partly" else ""))
    elif _has(r, "att_abs"):
        text = f"{att} but `att` of the rows' absolute values {ci_text(r, 'att_abs')}"
        if _has(r, "att_norm_weighted"):
            text += f" and weighted by row norms {ci_text(r, 'att_norm_weighted')}"
        out.append(text + (": most of the cosine distance is the sign of one map" if _sign_kind(r) else ""))
    if _has(r, "logit_rank1"):
        what = "centred maps" if mode in NOT_SOFTMAX else "row-centred logits"
        rank1 = f"the {what} are {_pct(r, 'logit_rank1')} rank 1"
        gain = "a signed gain" if mode == "dot_product" else "a gain"
        out.append(rank1 + (f" (one key profile times {gain} per query)" if _read(r, "logit_rank1") and _ends(r, "logit_rank1")[1] >= RANK1 else ""))
    if out and not out[0].startswith("`att`") and att:
        out.insert(0, att)
    return out


def _partly_reason(r: pd.Series) -> str:
    """Why a row reads ``partly``: which threshold of ``one map`` its interval ends miss."""
    _, att_lo, att_hi = _ends(r, "att")
    _, gain_lo, _ = _ends(r, "att_gain_only")
    _, _, tv_hi = _ends(r, "gain_only_tv")
    missed = []
    if not (att_hi > 0 and gain_lo / att_hi >= ONE_MAP_SHARE):
        missed.append(f"the share's lower end {gain_lo / att_hi:.0%} is below {ONE_MAP_SHARE:.0%}")
    if tv_hi > ONE_MAP_TV:
        missed.append(f"TV's upper end {tv_hi:.3g} is above {ONE_MAP_TV}")
    return " and ".join(missed) or "between the thresholds"


def _dnl(r: pd.Series) -> list[str]:
    """The DNL split's sentences (unary share, the pairwise term's own att)."""
    out = []
    if _has(r, "unary_var_share"):
        _, low, high = _ends(r, "unary_var_share")
        word = ("no interval to read" if not _read(r, "unary_var_share") else "dominates" if low > 0.5
                else "holds less than half" if high < 0.5 else "is not shown to dominate nor to hold less than half (the interval spans 50%)")  # fmt: skip
        out.append(f"the unary (key-only) term holds {_pct(r, 'unary_var_share')} of the logits' variance across keys: it {word}")
    if _has(r, "att_pairwise_only") and _has(r, "att"):
        text = f"the whitened pairwise term alone would give `att` {ci_text(r, 'att_pairwise_only')}"
        _, p_lo, p_hi = _ends(r, "att_pairwise_only")
        _, a_lo, a_hi = _ends(r, "att")
        if p_lo > a_hi:
            text += " (more than the real maps: adding the key-only term makes the maps more alike)"
        elif p_hi < a_lo:
            text += " (less than the real maps)"
        out.append(text)
    return out


def _objects(r: pd.Series) -> list[str]:
    """The object-context sentence: the lift against the object-query null (and against all queries)."""
    stat = "own_object_lift_objects" if _has(r, "own_object_lift_objects") else "own_object_lift" if _has(r, "own_object_lift") else None
    if stat is None:
        return []
    null = "the object-query null" if stat == "own_object_lift_objects" else "the image's mean map"
    _, low, high = _ends(r, stat)
    if not _read(r, stat):
        word = "no interval to read"
    elif low > LIFT:
        word = "more on its own object (object-specific context or locality: the lift does not tell them apart)"
    elif high < 1:
        word = "no object-specific context (the own object gets less than the null gives it)"
    elif high <= LIFT:
        word = f"no object-specific context (at most {high - 1:.{0 if high - 1 >= 0.01 else 1}%} above the null)"
    elif low > 1:
        word = f"a small lift above 1 whose interval reaches below {LIFT}: the intervals cannot tell whether the own object gets more"
    else:
        word = "the intervals cannot tell"
    text = f"own-object lift {ci_text(r, stat)} against {null}: {word}"
    if stat == "own_object_lift_objects" and _has(r, "own_object_lift") and _ends(r, "own_object_lift")[1] > LIFT and high <= LIFT:
        text += (f"; against all queries' mean map it is {ci_text(r, 'own_object_lift')}: object queries attend more sharply "
                 "than background ones to the same map")
    return [text]


def _others(r: pd.Series, mode: str) -> list[str]:
    """Form control, mutual information, attention distance, local mass: the numbers."""
    out = []
    if _has(r, "ctrl_form_att") and r["ctrl_form_att"] > 0 and _has(r, "att"):
        form = {"concatenation": "ReLU(a_i + b_j)", "dot_product": "signed q.k"}.get(mode, "softmax, sharpness matched per query")
        out.append(f"random projections in the block's own form ({form}) give `att` {ci_text(r, 'ctrl_form_att')}: the trained "
                   f"maps differ between queries {times(r['att'] / r['ctrl_form_att'], 2)}× as much")  # fmt: skip
    if _has(r, "qk_nmi"):
        out.append(f"query-key NMI {ci_text(r, 'qk_nmi')} (0: where the weight goes does not depend on the query)")
    if _has(r, "att_distance_px"):
        text = f"mean attention distance {ci_text(r, 'att_distance_px')} px"
        if _has(r, "att_local") and _has(r, "att_local_uniform"):
            text += f", 3x3 mass {ci_text(r, 'att_local')} (uniform: {format_ci(r['att_local_uniform'])})"
        out.append(text)
    return out


def query_reading(r: pd.Series, name: str) -> str | None:
    """One row's reading in words (``name``: the row's heading, e.g. ``embedded_gaussian · layer1.1``), or
    None when the row has no statistic of the suite (or one map by construction)."""
    if bool(r.get("query_independent", False)):
        return None
    mode = str(r.get("mode", "") or "")
    parts = _decomposition(r, mode) + _dnl(r) + _objects(r) + _others(r, mode)
    what = kind(r)
    if not (_decomposition(r, mode) or _dnl(r) or _objects(r)):
        return None
    head = f"{name}: **{KIND_WORDS[what]}**" if what else f"{name}: the suite's statistics do not decide the kind"
    return head + ". " + "; ".join(p[0].upper() + p[1:] if i == 0 else p for i, p in enumerate(parts)) + "."


def query_lines(summary: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """:func:`query_reading` of each row of ``summary`` (named ``names``), with the thresholds first;
    empty when no row has the suite."""
    lines = [line for (_, r), name in zip(summary.iterrows(), names) if (line := query_reading(r, name))]
    return [THRESHOLDS, *lines] if lines else []


def layer_lines(per_head: pd.DataFrame) -> list[str]:
    """A ViT's reading per layer: its head-mean map's (:func:`query_reading`) and how its single heads
    group by reading (:func:`kind`), with the thresholds first; empty when the rows have no suite.

    ``per_head``: a heads table (:func:`~nlanalysis.report.vit_tables.heads_table`: ``layer``, ``head``,
    ``STAT``/``STAT_low``/``STAT_high``), ``head == HEAD_MEAN`` the head-mean rows."""
    lines = []
    for layer, rows in per_head.groupby("layer", sort=True):
        mean_rows = rows[rows["head"] == HEAD_MEAN]
        reading = query_reading(mean_rows.iloc[0], f"layer {int(layer)}, head-mean map") if len(mean_rows) else None
        heads = rows[rows["head"] != HEAD_MEAN]
        groups: dict[str, list[str]] = {}
        for _, r in heads.iterrows():
            what = kind(r)
            if what is not None or query_reading(r, "") is not None:
                groups.setdefault(KIND_WORDS[what] if what else "not decided", []).append(f"h{int(r['head'])}")
        if not groups and reading is None:
            continue
        text = reading or f"layer {int(layer)}:"
        if groups:
            text += f" Its {len(heads)} heads: " + "; ".join(f"{words}: {', '.join(names)}" for words, names in groups.items()) + "."
        lines.append(text)
    return [THRESHOLDS, *lines] if lines else []
