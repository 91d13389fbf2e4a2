"""GCNet's Table 1 from result sets: one row per run/variant and block, means with 95% CIs.

Cao et al., "GCNet", arXiv 1904.11492, Table 1 lists, per NL variant, the task metric and the
mean distance between the block's ``input`` features, its ``output`` (context term) and its
``att`` maps over all pairs of positions. Here each number is the mean over images of that
image's distance, with a confidence interval; beside it the diagnostics and controls of the
result set where it has them (JSD, random-projection control, entropy, max weight, zero rows,
own-object mass vs share).

Input: a *labelled metrics frame*, the ``metrics`` of one or more result sets with run columns
added (:func:`nlanalysis.report.load_runs` builds it):

=================  ========================================================================
``label``          the run (unique per result set)
``variant``        what the run is an instance of (rows of the table)
``seed``           training seed (NaN if unknown); runs of one variant with different seeds
                   are pooled hierarchically (:func:`~nlanalysis.metrics.hierarchical_mean_ci`)
``step``           training step of the checkpoint (NaN if unknown)
``metric_name``,   the checkpoint's task metric (e.g. ``miou``) and its value (NaN if unknown)
``metric``
=================  ========================================================================

Intervals come from the one table engine, :func:`nlanalysis.metrics.grouped.grouped_intervals`
(also behind the ViT tables): over images with :func:`~nlanalysis.metrics.mean_ci` (Student-t)
when a row comes from one run (or several runs of one seed); over seeds with
:func:`~nlanalysis.metrics.hierarchical_mean_ci` (images nested in seeds; the estimate is then
the mean of the seed means) when it pools runs of several seeds; cut to each statistic's range
(:mod:`nlanalysis.schema`).

Writers: CSV (numbers: ``STAT``, ``STAT_low``, ``STAT_high``), Markdown and LaTeX (formatted,
with the caption that names the distance convention).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from . import schema
from .metrics.grouped import grouped_intervals
from .metrics.intervals import mean_ci
from .metrics.locality_control import READABLE

__all__ = [
    "DIAGNOSTIC_STATS",
    "HEADLINE_STATS",
    "QUERY_STATS",
    "QUERY_TABLE_STATS",
    "TABLE_STATS",
    "caption",
    "ci_column",
    "ci_text",
    "final_steps",
    "format_ci",
    "format_table",
    "short_block_names",
    "with_locality_ratios",
    "summarise",
    "to_latex",
    "to_markdown",
    "word_columns",
    "write_table",
]

#: statistics summarised, in table order (:data:`nlanalysis.schema.TABLE1`); columns that are all NaN are left out.
TABLE_STATS = list(schema.TABLE1)

#: the query-dependence suite's headline columns (role ``query`` with a ``header``), after :data:`TABLE_STATS`:
#: in Table 1 only for runs that measured them (``--query-dependence``; otherwise absent or all NaN).
QUERY_STATS = [c for c in schema.names(roles=("query",), stored=None) if c in schema.headers()]

#: Table 1 proper (``tables/table1.*``): the paper's distances and the controls beside ``att``.
HEADLINE_STATS = list(schema.pick("input", "output", "att", "att_jsd", "ctrl_att", "ctrl_att_jsd", "ctrl_form_att", "att_entropy"))

#: the query-dependence table (``tables/query_dependence.*``): ``att`` and its form control, then what
#: kind of query dependence there is (:mod:`nlanalysis.measure.query_dep`, the object context).
QUERY_TABLE_STATS = list(schema.pick(
    "att", "ctrl_form_att", "logit_rank1", "att_gain_only", "gain_only_tv", "unary_var_share", "att_pairwise_only", "att_abs",
    "att_norm_weighted", "own_object_lift", "own_object_lift_objects", "own_object_lift_objects_vs_local",
    "same_category_lift_vs_local", "qk_nmi", "att_distance_px",
))  # fmt: skip

#: the diagnostics table (``tables/diagnostics.*``): the rest of :data:`TABLE_STATS` (sharpness, zero
#: rows, own-object mass against the share) and the 3x3 local mass.
DIAGNOSTIC_STATS = [s for s in TABLE_STATS if s not in HEADLINE_STATS + QUERY_TABLE_STATS] + list(
    schema.pick("att_local", "att_local_uniform"))

#: column headers of the formatted table: the run and group columns', then each statistic's
#: (:func:`nlanalysis.schema.headers`, and those of the columns the schema gives no Table 1 header).
HEADERS = {
    "variant": "variant", "step": "step", "block": "block", "mode": "mode", "images": "images", "seeds": "seeds",
    "att_abs": "att of |map|", "att_norm_weighted": "att, norm-weighted", "att_local": "3x3 mass",
    "att_local_uniform": "3x3 mass, uniform", "own_object_lift_objects_vs_local": "own-object lift / locality control",
    "same_category_lift_vs_local": "same-category lift / locality control", **schema.headers(),
}  # fmt: skip

#: how known task metrics are written in headers.
METRIC_NAMES = {"miou": "mIoU", "pixel_accuracy": "pixel acc.", "bbox_mAP": "box AP", "segm_mAP": "mask AP", "accuracy": "accuracy"}

#: what each query-dependence column is (:mod:`nlanalysis.measure.query_dep`), for the captions of the tables that have it.
QUERY_CAPTIONS = {
    "logit_rank1": "logit rank-1 share: share of the row-centred logits' energy in one key profile x a gain per query",
    "att_gain_only": "att / TV, gain only: att of the maps rebuilt from that profile with a temperature per query, and their "
                     "total-variation distance to the real maps (big att with a small TV: one map at different sharpness)",
    "unary_var_share": "unary var. share: the DNL split's share of the logits' variance across keys in the key-only term",
    "att_pairwise_only": "att, pairwise only: att of the maps of the whitened pairwise term alone",
    "att_abs": "att of |map|: att of the rows' absolute values, and att, norm-weighted: 1 − the mean cosine of query pairs "
               "weighted by their row norms (signed maps only: a sign flip of one map is not query dependence)",
    "qk_nmi": "q-k NMI: normalised query-key mutual information (Park et al. 2023; 0: where the weight goes does not depend on the query)",
    "att_distance_px": "att. distance: mean distance from query to attended key in input pixels",
    "own_object_lift_objects_vs_local": "/ locality control: each image's lift over that of maps by distance alone at its own "
                                        "att. distance (`--locality-control`; above 1: more than locality explains)",
}  # fmt: skip

CONVENTION_TEXT = {
    "1-cos": "1 − cos(v_i, v_j) (as scipy; 0 = same direction, 1 = orthogonal, 2 = opposite)",
    "(1-cos)/2": "(1 − cos(v_i, v_j)) / 2 (0 = same direction, 0.5 = orthogonal, 1 = opposite)",
}


def _group_keys(frame: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """``by`` without the columns that are missing or carry no information (all NaN)."""
    return [c for c in by if c in frame and frame[c].notna().any()]


def _units(frame: pd.DataFrame) -> pd.Series:
    """What a hierarchical interval treats as independent: the seed where known, else the run."""
    label = frame["label"].astype(str) if "label" in frame else pd.Series("run", index=frame.index)
    if "seed" not in frame:
        return label
    seed = frame["seed"]
    return ("seed " + seed.astype("Int64").astype(str)).where(seed.notna(), "run " + label)


#: ratio statistics (unit ``ratio``, e.g. ``own_object_lift``): summarised on the log scale
#: (:func:`~nlanalysis.metrics.grouped.grouped_intervals`'s ``geometric``).
RATIO_STATS = schema.RATIOS


#: the report-side ratios of a lift to its locality control (``extract --locality-control``): ``{ratio: (lift, control)}``
LOCALITY_RATIOS = {f"{lift}_vs_local": (lift, f"ctrl_local_{lift}") for lift in ("own_object_lift_objects", "same_category_lift")}


def with_locality_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each lift's ratio to its locality control per row (:data:`LOCALITY_RATIOS`), where both columns are in
    it (summarised, like every ratio, as a geometric mean: above 1 where the lift exceeds what locality explains); NaN
    where the control's lift is below :data:`~nlanalysis.metrics.locality_control.READABLE` (its Gaussian tail, not its
    locality, would set the ratio) or not finite."""
    found = {}
    for r, (lift, ctrl) in LOCALITY_RATIOS.items():
        if lift in frame and ctrl in frame:
            control = frame[ctrl].where(np.isfinite(frame[ctrl]) & (frame[ctrl] >= READABLE))
            found[r] = frame[lift] / control
    return frame.assign(**found) if found else frame


#: the columns that say which block and measurement a row is of: runs that differ in one are different models or
#: measurements, never pooled in one row.
ONE_MODEL = {"family": "block family", "mode": "block mode", "convention": "distance convention"}


def _one_model(part: pd.DataFrame) -> None:
    """Refuse a table row that would pool runs of different block families, modes or distance conventions (two models
    given one variant): naming the row, the runs and their values."""
    for col, what in ONE_MODEL.items():
        if col not in part or part[col].nunique() < 2:
            continue
        labels = part["label"] if "label" in part else pd.Series("?", index=part.index)
        where = ", ".join(f"{k} `{part[k].iloc[0]}`" for k in ("variant", "step", "block") if k in part and pd.notna(part[k].iloc[0]))
        said = "; ".join(f"{v!r} in " + ", ".join(f"`{r}`" for r in dict.fromkeys(labels[part[col] == v])) for v in part[col].dropna().unique())
        raise ValueError(f"a table row ({where}) would pool runs of different {what}s: {said}; they are different models "
                         "or measurements (report them separately, or give each its own variant)")  # fmt: skip


def _facts(part: pd.DataFrame, level: float) -> dict[str, object]:
    """The non-statistic columns of one Table 1 row (see :func:`summarise`); a row of different block families, modes or
    distance conventions is refused (:func:`_one_model`)."""
    _one_model(part)
    row: dict[str, object] = {}
    row["mode"] = part["mode"].iloc[0] if "mode" in part else ""
    row["query_independent"] = bool(part["query_independent"].iloc[0]) if "query_independent" in part else False
    row["images"] = part["image_id"].nunique() if "image_id" in part else len(part)
    row["rows"] = len(part)
    row["runs"] = part["label"].nunique() if "label" in part else 1
    n_units = part["_unit"].nunique()
    row["seeds"] = int(part["seed"].nunique()) if "seed" in part and part["seed"].notna().any() else math.nan
    metric: dict[str, int] = {}
    if "metric" in part and part["metric"].notna().any():
        per_unit = part.groupby("_unit", sort=False)["metric"].first()
        ci = mean_ci(per_unit.to_numpy(float), level=level)
        low = max(ci.low, 0.0) if (per_unit >= 0).all() and math.isfinite(ci.low) else ci.low  # mIoU, AP, accuracy >= 0
        row.update(metric_name=part["metric_name"].dropna().iloc[0], metric=ci.mean, metric_low=low, metric_high=ci.high)
        metric = {str(row["metric_name"]): ci.n}  # the seeds whose checkpoint recorded it
    row["ci"] = partial(_ci_text, level=level, n_units=n_units, metric=metric)  # given each statistic's count
    return row


def _ci_text(used: Mapping[str, int], *, level: float, n_units: int, metric: Mapping[str, int]) -> str:
    """A row's ``ci``: ``t over images``, or ``t over K seed means`` with K the most seeds any of its intervals is over
    (``K of N`` where that is fewer than the row's N seeds), then each statistic over fewer (``used``: per statistic,
    the seeds it was measured in; ``metric``: the task metric's; one measured in none is NaN, which says so)."""
    if n_units <= 1:
        return f"{level:.0%} t over images"
    counts = {s: n for s, n in {**used, **metric}.items() if n > 0}
    most = max(counts.values(), default=n_units)
    fewer = [f"{s} over {n}" for s, n in counts.items() if n < most]
    return (f"{level:.0%} t over {most if most == n_units else f'{most} of {n_units}'} seed means (images within seeds)"
            + (f"; {', '.join(fewer)} of them" if fewer else ""))  # fmt: skip


def summarise(
    frame: pd.DataFrame,
    *,
    by: Sequence[str] = ("variant", "step"),
    stats: Sequence[str] | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per group of ``by`` and block: each statistic's mean and CI, and the task metric.

    Args:
        frame: a labelled metrics frame (module docstring); ``label``, ``seed``, ``metric``
            may be missing (one run without checkpoint facts).
        by: group columns; those missing or all NaN are dropped (e.g. ``step`` of runs whose
            checkpoints do not record it).
        stats: statistic columns to summarise (those absent or all NaN in ``frame`` are skipped; default
            :data:`TABLE_STATS`, :data:`QUERY_STATS` and the rest of the three tables' columns); ratios (:data:`RATIO_STATS`): geometric mean and the interval of the mean log (:mod:`~nlanalysis.metrics.grouped`); infinite values are left out.
        level: confidence level.

    Returns:
        Columns: the group keys, ``block``, ``mode``, ``query_independent``, ``images``
        (distinct images), ``rows`` (image results: images x runs), ``runs``, ``seeds``,
        ``ci`` (how the intervals were formed: over images, or over K seed means, K the most seeds any of the row's
        intervals is over, each statistic or task metric over fewer named with its count), ``metric_name``,
        ``metric`` / ``metric_low`` / ``metric_high`` (over seeds), and ``STAT`` /
        ``STAT_low`` / ``STAT_high`` for each statistic, its interval cut to the statistic's
        range. Groups keep the order they first appear in, with steps in increasing order.
    """
    if frame.empty:
        raise ValueError("no metrics rows to summarise (did the runs analyse any image?)")
    stats = ALL_STATS if stats is None else stats
    if any(r in stats and r not in frame for r in LOCALITY_RATIOS):  # report-side: each image's lift over its control
        frame = with_locality_ratios(frame)
    keys = _group_keys(frame, by) + ["block"]
    # an infinite value (a locality control's sigma at the uniform limit) is a limit, not a number to average: left out
    infinite = [s for s in stats if s in frame and pd.api.types.is_float_dtype(frame[s]) and np.isinf(frame[s]).any()]
    if infinite:
        frame = frame.assign(**{s: frame[s].where(np.isfinite(frame[s])) for s in infinite})
    present = [s for s in stats if s in frame and frame[s].notna().any()]
    ratios = [s for s in present if s in RATIO_STATS]
    out = grouped_intervals(frame.assign(_unit=_units(frame)), keys, present, unit="_unit", level=level, geometric=ratios,
                            bounds=schema.frame_ranges(present, frame), facts=lambda part: _facts(part, level))  # fmt: skip
    if "step" in keys:  # steps in increasing order within each variant; variants in first-seen order
        rank = out["variant"].map({v: i for i, v in enumerate(dict.fromkeys(out["variant"]))}) if "variant" in keys else 0
        out = out.assign(_rank=rank).sort_values(["_rank", "step"], kind="stable").drop(columns="_rank").reset_index(drop=True)
    return out


#: every statistic the report's tables show: Table 1's, the query suite's, the diagnostics' (table order).
ALL_STATS = list(dict.fromkeys([*TABLE_STATS, *QUERY_STATS, *QUERY_TABLE_STATS, *DIAGNOSTIC_STATS]))

#: a summary's columns that are not statistics (kept in every table's CSV), in order.
FACT_COLUMNS = ("variant", "step", "block", "mode", "query_independent", "images", "rows", "runs", "seeds", "ci", "metric_name",
                "metric", "metric_low", "metric_high")  # fmt: skip


def select_stats(summary: pd.DataFrame, stats: Sequence[str], *, metric: bool = True) -> pd.DataFrame:
    """The columns of ``summary`` (:func:`summarise`) that one table shows: the facts (without the task
    metric unless ``metric``) and ``STAT``, ``STAT_low``, ``STAT_high`` of each of ``stats`` it has."""
    facts = [c for c in FACT_COLUMNS if c in summary and (metric or not c.startswith("metric"))]
    numbers = [c for s in stats if s in summary for c in (s, f"{s}_low", f"{s}_high") if c in summary]
    return summary[facts + numbers]


def final_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each variant's last training step (all rows where steps are unknown)."""
    if "step" not in frame or frame["step"].isna().all():
        return frame
    last = frame.groupby("variant", sort=False)["step"].transform("max")
    return frame[(frame["step"] == last) | last.isna()]


# -- formatting ---------------------------------------------------------------------------------


def short_block_names(names: Sequence[str]) -> dict[str, str]:
    """``{name: short name}``: the dotted names without the leading parts they all share.

    ``backbone.layer1.0.context_block`` and ``backbone.layer2.0.nonlocal_block`` become
    ``layer1.0.context_block`` and ``layer2.0.nonlocal_block``; a single name stays whole.
    """
    unique = list(dict.fromkeys(names))
    if len(unique) < 2:
        return {n: n for n in unique}
    parts = [n.split(".") for n in unique]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return {n: ".".join(p[common:]) for n, p in zip(unique, parts)}


AT_ONE = 1e-12  # a number this close to 1 is 1 up to float rounding (a geometric mean of ones: 1 +- ~1e-16)


def _num(v: float) -> str:
    """Three significant digits, trailing zeros kept (0.0900, not 0.09, for 0.08999); a number below 1 in
    magnitude never reads as 1 (0.9996 is 0.999, not 1.00: a share or entropy below 1 is not 1), unless it is 1
    up to float rounding (within :data:`AT_ONE`: a shared map's lift of 1 - 1e-16 reads 1.00, not 0.999)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    v = float(v)
    if abs(abs(v) - 1.0) <= AT_ONE:
        v = math.copysign(1.0, v)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) < 1e-4:
        return f"{v:.1e}"
    text = f"{v:#.3g}".rstrip(".")  # '#': the zeros that rounding leaves are kept; 99.96 -> '100.' -> '100'
    if abs(v) < 1 <= abs(float(text)):
        return f"{math.copysign(math.floor(abs(v) * 1000) / 1000, v):.3f}"
    return text


def ci_text(row: pd.Series, stat: str) -> str:
    """``row[stat]`` with its interval ``row[stat_low], row[stat_high]`` (where the row has them) as text."""
    return format_ci(row[stat], row.get(f"{stat}_low", math.nan), row.get(f"{stat}_high", math.nan))


def format_ci(mean: float, low: float = math.nan, high: float = math.nan) -> str:
    """``mean [low, high]`` with three significant digits (``mean`` alone without an interval)."""
    if isinstance(low, float) and math.isnan(low):
        return _num(mean)
    return f"{_num(mean)} [{_num(low)}, {_num(high)}]"


def ci_column(table: pd.DataFrame, stat: str) -> list[str]:
    """Each row's ``stat`` with its interval ``stat_low, stat_high`` (where the table has them) as text."""
    return [ci_text(row, stat) for _, row in table.iterrows()]


def format_table(summary: pd.DataFrame, *, stats: Sequence[str] | None = None) -> pd.DataFrame:
    """The summary as text cells: ``mean [low, high]`` per statistic, readable headers.

    ``stats``: the statistics shown, in order (default :data:`TABLE_STATS` then :data:`QUERY_STATS`;
    those the summary lacks are skipped). Blocks that share one map among all queries by
    construction (GC, simplified NL) are marked with a dagger (``†``).
    """
    out = pd.DataFrame(index=summary.index)
    for c in ("variant", "step"):
        if c in summary:
            out[HEADERS[c]] = summary[c].map(lambda v: "–" if pd.isna(v) else str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    names = short_block_names(summary["block"].tolist())
    dagger = summary.get("query_independent", pd.Series(False, index=summary.index)).astype(bool)
    out[HEADERS["block"]] = [names[b] + (" †" if d else "") for b, d in zip(summary["block"], dagger)]
    if "mode" in summary:
        out[HEADERS["mode"]] = summary["mode"].fillna("")
    out[HEADERS["images"]] = summary["images"].astype(int).astype(str)
    if "seeds" in summary and summary["seeds"].notna().any():
        out[HEADERS["seeds"]] = summary["seeds"].map(lambda v: "–" if pd.isna(v) else str(int(v)))
    if "metric" in summary and summary["metric"].notna().any():
        name = summary["metric_name"].dropna().iloc[0]
        out[METRIC_NAMES.get(name, name)] = ci_column(summary, "metric")
    for s in (*TABLE_STATS, *QUERY_STATS) if stats is None else stats:
        if s in summary:
            out[HEADERS[s]] = ci_column(summary, s)
    return out


def caption(summary: pd.DataFrame, convention: str = "1-cos", level: float = 0.95) -> str:
    """The table's caption: what each of its numbers is (only those it has), the distance convention, the intervals."""
    pooled = "ci" in summary and summary["ci"].str.contains("seed").any()
    cols = set(summary.columns)
    distances = {c.name for c in schema.REGISTRY if c.unit == "1-cos"} & cols
    parts = []
    if distances:
        parts.append("Each distance is an image's average over all ordered pairs of positions (i = j included; padding excluded), "
                     f"then averaged over images; cosine distance {CONVENTION_TEXT.get(convention, convention)}.")
        parts.append(("input: the block's input features x_i; output: the context it adds, z_i − x_i; " if "input" in cols else "")
                     + "att: the attention map of query i over the keys.")
    parts.append(f"Brackets: {level:.0%} confidence interval (cut to the statistic's range), Student-t over images"
                 + (", or over seed means where a variant pools several training seeds (its estimate is then the mean of the seed "
                    "means)." if pooled else "."))  # fmt: skip
    if "att_jsd" in cols:
        parts.append("att JSD: mean Jensen–Shannon divergence between the maps of two queries (bits; sampled pairs).")
    described = [text for stat, text in (("att_entropy", "entropy: of each query's map, normalised (1 = uniform)"),
                                         ("att_max", "max weight: the largest weight of a query's map"),
                                         ("att_zero_rows", "zero rows: share of all-zero maps")) if stat in cols]  # fmt: skip
    if described:
        parts.append("; ".join(described) + ".")
    if "att_own_object" in cols:
        parts.append("own-object mass: attention a query on an object puts on that object; own-object share: the share of keys the object covers.")
    if "own_object_density" in cols:
        parts.append("own-object density: mass per unit area a query on an object puts on it (1 = uniform).")
    if cols & {"own_object_lift", "own_object_lift_objects"}:
        parts.append("own-object lift: the mass per unit area a query on an object puts on it over what the image's mean map puts "
                     "there (object-query null: the mean map of object queries only), 1 = no object-specific context; lifts are "
                     "geometric means over images, interval of the mean log-lift.")
    if cols & {"ctrl_att", "ctrl_att_jsd", "ctrl_att_own_object"}:
        parts.append("random proj.: the same input features with random query/key projections at the trained maps' entropy.")
    if "ctrl_form_att" in cols:
        parts.append("form control: random projections in the block's own form (per-query entropy-matched softmax; "
                     "ReLU(a_i + b_j) at the trained share of zero weights for concatenation; signed q.k for dot product).")
    query = [text for stat, text in QUERY_CAPTIONS.items() if stat in cols]
    if query:
        parts.append("What kind of query dependence: " + "; ".join(query) + ". Missing (–): not defined for the block's maps.")
    if "att_local" in cols:
        parts.append("3x3 mass: weight a query puts on its own and the 8 neighbouring key cells; 3x3 mass, uniform: what a uniform map puts there.")
    uniform = [text for stat, text in (("att", "att = 0"), ("att_jsd", "JSD = 0"), ("att_entropy", "entropy 1"),
                                       ("att_own_object", "own-object mass = own-object share")) if stat in cols]  # fmt: skip
    if uniform:
        parts.append("Uniform attention would give " + ", ".join(uniform[:-1]) + (" and " if len(uniform) > 1 else "") + uniform[-1] + ".")
    if summary.get("query_independent", pd.Series(dtype=bool)).astype(bool).any():
        parts.append("†: one map is shared by all queries (GC / simplified NL), so att = 0 and output = 0 (up to float rounding) "
                     "by construction.")
    return " ".join(parts)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_NUMERIC_TEXT = re.compile(r"^[-–0-9.e+\[\], ]*$")


def word_columns(table: pd.DataFrame) -> set[str]:
    """Columns of words (left-aligned); columns of numbers are right-aligned."""
    return {c for c in table.columns if not all(_NUMERIC_TEXT.match(str(v)) for v in table[c])}


def to_markdown(table: pd.DataFrame, caption_text: str | None = None) -> str:
    """A pipe table of text cells (words left-aligned, numbers right-aligned), caption below."""
    cols = list(table.columns)
    left = word_columns(table)
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |",
             "|" + "|".join(":---" if c in left else "---:" for c in cols) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    text = "\n".join(lines) + "\n"
    return text + (f"\n{caption_text}\n" if caption_text else "")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--", "−": "$-$", "†": r"$^\dagger$", "·": r"$\cdot$",
        "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}  # fmt: skip  (OT1 set | < > as other glyphs)


def _tex(text: object) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(table: pd.DataFrame, caption_text: str | None = None, label: str = "tab:nl-query-independence") -> str:
    """A ``booktabs`` table (needs ``\\usepackage{booktabs}``) with the caption."""
    cols = list(table.columns)
    left = word_columns(table)
    spec = "".join("l" if c in left else "r" for c in cols)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]  # fmt: skip
    lines += [" & ".join(_tex(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption_text:
        lines.append(rf"\caption{{{_tex(caption_text)}}}")
    lines += [rf"\label{{{label}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(
    summary: pd.DataFrame,
    stem: str | os.PathLike[str],
    caption_text: str | None = None,
    *,
    text: pd.DataFrame | None = None,
    formats: Sequence[str] = ("csv", "md", "tex"),
    label: str | None = None,
) -> list[Path]:
    """Write ``stem.csv`` (the numbers), ``stem.md`` and ``stem.tex`` (``text``, by default
    :func:`format_table` of ``summary``, with the caption; LaTeX ``label`` default ``tab:STEM``),
    those of ``formats``; return their paths."""
    if set(formats) - {"csv", "md", "tex"}:
        raise ValueError(f"table formats {list(formats)}: use csv, md and tex")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in formats]
    if text is None and set(formats) - {"csv"}:
        text = format_table(summary)
    for ext, path in zip(formats, paths):
        if ext == "csv":
            summary.to_csv(path, index=False, float_format="%.6g", lineterminator="\n")
        elif ext == "md":
            path.write_text(to_markdown(text, caption_text))
        elif ext == "tex":
            path.write_text(to_latex(text, caption_text, label=label or f"tab:{stem.name}"))
    return paths
