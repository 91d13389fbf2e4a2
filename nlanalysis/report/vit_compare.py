"""The ViT report beside an NL Table 1: one row per NL variant, ViT layer and drawn head
(:func:`compare_table`), and the comparison section in words (:func:`comparison`)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..analyze_vit import HEAD_MEAN
from ..plots.vit_heads import head_name
from ..tables import ci_column, final_steps
from .pages import Report
from .ratio_ends import NO_INTERVAL, ratio_ends, times
from .vit_text import fixed_peak, is_local

__all__ = ["comparison", "compare_table", "read_nl_table"]


def read_nl_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A Table 1 CSV of ``nlanalysis report`` (e.g. ``reports/trained/tables/table1.csv``), each
    variant's last training step only."""
    table = pd.read_csv(path)
    missing = {"variant", "block", "input", "att"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a Table 1 of `nlanalysis report` (no column(s) {sorted(missing)})")
    return final_steps(table).reset_index(drop=True)


def _ratio(input_: float, att: float, by_construction: bool = False) -> str:
    if by_construction:
        return "∞ (by construction)"
    if not (att > 0 and math.isfinite(att)):
        return "–"
    return f"{times(input_ / att)}x"


def compare_table(nl: pd.DataFrame, layers: pd.DataFrame, heads: pd.DataFrame, chosen: dict[tuple[int, int], str],
                  n_photos: int, model_name: str) -> pd.DataFrame:  # fmt: skip
    """The NL variants of a Table 1 and the ViT's layers (head-mean maps) and chosen heads, one row
    each: ``att``, ``input``, their ratio and the maps' entropy (numbers; text cells in :func:`_compare_text`).

    ``input_over_att`` is ``inf`` for maps query-independent by construction and NaN where ``att`` is
    not a positive, finite number (no ratio to state)."""
    def row(model: str, where: str, data: str, r: Any, by_construction: bool = False) -> dict[str, Any]:
        return {"model": model, "where": where, "data": data, **{k: r.get(k, math.nan) for k in _NUMBERS[:7]},
                "by_construction": by_construction, **{k: r.get(k, math.nan) for k in _NUMBERS[7:]}}  # fmt: skip

    rows = []
    for d in nl.to_dict("records"):
        seeds = d.get("seeds")
        data = f"NL Table 1: {int(d['images'])} images" + (f" x {int(seeds)} seeds" if pd.notna(seeds) else "")
        rows.append(row(f"NL net, {d['variant']}", str(d["block"]), data, d, bool(d.get("query_independent", False))))
    data = f"real photos: {n_photos}"
    rows += [row(model_name, f"layer {int(r['layer'])}, head mean", data, r) for r in layers.to_dict("records")]
    for (layer, head), label in chosen.items():
        r = heads[(heads["layer"] == layer) & (heads["head"] == head)].iloc[0]
        rows.append(row(model_name, f"layer {layer}, head {head} ({label})", data, r))
    table = pd.DataFrame(rows)
    measured = (table["att"] > 0) & np.isfinite(table["att"])  # a ratio only where att is a positive number
    table["input_over_att"] = (table["input"] / table["att"].where(measured)).where(~table["by_construction"], np.inf)
    return table


#: the numbers of a :func:`compare_table` row, in column order (``by_construction`` between the two parts).
_NUMBERS = ("att", "att_low", "att_high", "input", "input_low", "input_high", "att_entropy", "ctrl_att", "ctrl_att_low", "ctrl_att_high")


def _compare_text(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": table["model"], "where": table["where"], "data": table["data"], "att": ci_column(table, "att"),
        "att, random control": ci_column(table, "ctrl_att"), "input": ci_column(table, "input"),
        "input / att": [_ratio(r["input"], r["att"], r["by_construction"]) for _, r in table.iterrows()],
        "entropy": ci_column(table, "att_entropy"),
    })  # fmt: skip


def _counts(nl: pd.DataFrame, col: str) -> str | None:
    """The distinct whole numbers of ``nl[col]`` as text (``120``, ``100–120``), or None when absent."""
    if col not in nl or nl[col].isna().all():
        return None
    values = sorted({int(v) for v in nl[col].dropna()})
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def comparison(
    nl_table: str | os.PathLike[str] | None,
    layers: pd.DataFrame,
    per_head: pd.DataFrame,
    labels: dict[tuple[int, int], str],
    n_photos: int,
    model_name: str,
    report: Report,
    facts: dict[str, Any],
) -> list[tuple[str, Any]]:
    """The comparison section (and ``compare.csv``/``.md``) with the NL variants of ``nl_table``.

    ``facts``: ``n_layers``, ``n_heads``, ``size`` and ``provenance`` of the ViT, for the text."""
    s: list[tuple[str, Any]] = [("h2", "Compared with the trained NL variants")]
    if nl_table is None:
        s.append(("p", "No NL Table 1 was given (`nl_table`), so there is no comparison here."))
        return s
    nl = read_nl_table(nl_table)
    table = compare_table(nl, layers, per_head, labels, n_photos, model_name)
    source = Path(nl_table).as_posix()
    cap, text = _compare_caption(source), _compare_text(table)
    links = report.table("compare", table, cap, text=text, formats=("csv", "md"))
    s.append(("p", _comparison_intro(nl, source, n_photos, facts)))
    s.append(("list", _comparison_lines(table, layers, per_head)))
    s.append(("table", (text, cap, links)))
    return s


def _compare_caption(source: str) -> str:
    """The caption of ``compare.md`` and of the page's table; ``source``: the Table 1 read."""
    return ("att and input: mean cosine distance (1 − cos) over all pairs of positions, mean [95% CI]; NL rows as the Table 1 "
            f"read ({source}: each variant's last training step, intervals over seeds where it pools seeds); "
            "ViT rows over the photos. input / att: how far below the input distance the maps' distance lies (GCNet: one to two "
            "orders of magnitude). att, random control: the att of random query/key projections of the same features at "
            "matched entropy (NL: of the block's input; ViT: of the layer's input tokens, matched to the row's own map; "
            "empty where not measured). entropy: normalised, of a query's map.")  # fmt: skip


def _comparison_intro(nl: pd.DataFrame, source: str, n_photos: int, facts: dict[str, Any]) -> str:
    """What the two sides of the comparison are, and why only the kind of map and the ratio compare."""
    images, seeds = _counts(nl, "images"), _counts(nl, "seeds")
    nl_data = ", ".join(p for p in (f"{images} images per run" if images else None, f"{seeds} seeds" if seeds else None) if p)
    return ("A comparison of kind, not of numbers. The NL rows are the trained networks of the Table 1 read "
            f"({source}" + (f": {nl_data}" if nl_data else "") + "); the networks, their images and the block's "
            "grid are as the NL report that wrote it describes them. The ViT is a pretrained "
            f"{facts['n_layers']}-layer, {facts['n_heads']}-head model ({facts['provenance']}) on {n_photos} real "
            f"photos at {facts['size']} x {facts['size']}. input is measured on different features (the features "
            "entering the NL block vs the transformer's residual stream) and the numbers of positions differ, so the "
            "ratio input / att and the kind of map are what compare, not the distances themselves. A hypothesis this "
            "report does not test: a head that attends to a fixed neighbouring offset needs position information, "
            "which ViT tokens get from position embeddings and an NL block's features carry only implicitly.")  # fmt: skip


def _comparison_lines(table: pd.DataFrame, layers: pd.DataFrame, per_head: pd.DataFrame) -> list[str]:
    """The comparison in words: the ratios, the peaked NL maps beside the local heads, the random control."""
    nl_rows, vit_layers = table[table["model"].str.startswith("NL net")], table[table["where"].str.endswith("head mean")]
    learned = nl_rows[~nl_rows["by_construction"]].sort_values("input_over_att", ascending=False)
    name = {i: f"{m.removeprefix('NL net, ')} {w}" for i, m, w in zip(table.index, table["model"], table["where"])}
    lines = _ratio_lines(nl_rows, learned, vit_layers, layers, per_head, name)
    peaked = learned[(learned["att"] >= 0.9 * learned["input"]) & (learned["att_entropy"] < 0.5)]
    if len(peaked):
        lines.append(_peaked_line(peaked, per_head, name))
    controlled = table[table["ctrl_att"].notna() & table["att"].notna()]
    if len(controlled):
        lines.append(_control_line(nl_rows, vit_layers, controlled, name))
    lines.append("In the ViT, averaging a layer's heads mixes the kinds of map, so the head mean is query-dependent even in "
                 "layers where one head is nearly query-independent.")  # fmt: skip
    return lines


def _ratio_lines(nl_rows: pd.DataFrame, learned: pd.DataFrame, vit_layers: pd.DataFrame, layers: pd.DataFrame,
                 per_head: pd.DataFrame, name: dict[Any, str]) -> list[str]:  # fmt: skip
    """input / att of each learned NL map (``learned``: most query-independent first), and how many lie an
    order of magnitude below even at the intervals' conservative end (those whose ends straddle 10x named
    apart), beside the ViT's head-mean layers and its most query-independent head."""
    built = nl_rows[nl_rows["by_construction"]]
    measured = learned[learned["input_over_att"].notna()]  # att > 0 and finite (compare_table)
    nl_ends = {i: ratio_ends(r) for i, r in measured.iterrows()}
    flat = [i for i, e in nl_ends.items() if e.reaches(10)]
    open_ = [i for i, e in nl_ends.items() if e.reaches(10) is None]
    bare = [i for i, e in nl_ends.items() if not e.interval]
    vit_verdicts = [ratio_ends(r).reaches(10) for _, r in vit_layers.iterrows()]
    vit_open = f"; for {vit_verdicts.count(None)} the intervals do not decide whether it is 10x" if None in vit_verdicts else ""
    per = per_head[per_head["head"] != HEAD_MEAN]
    lo_row = per.loc[per["att"].idxmin()]
    lo = (int(lo_row["layer"]), int(lo_row["head"]))
    lo_ends = ratio_ends(lo_row, num_from=layers.set_index("layer").loc[lo[0]])
    lo_said = "" if lo_ends.reaches(10) is False else (": at least 10x" if lo_ends.reaches(10) else
                                                       ": the intervals do not decide whether it is 10x")  # fmt: skip
    lo_ratio = (f"{times(lo_ends.point)}x below ({times(lo_ends.low)}–{times(lo_ends.high)}x at the intervals' ends{lo_said})"
                if lo_ends.interval else f"{times(lo_ends.point)}x below ({NO_INTERVAL})")  # fmt: skip
    unmeasured = len(learned) - len(measured)
    return [
        "NL variants with learned maps, input / att: "
        + "; ".join(f"{name[i]} {_ratio(r.input, r.att)} (att {r.att:.3g})" for i, r in zip(learned.index, learned.itertuples()))
        + (f". {', '.join(name[i] for i in built.index)}: one map shared by all queries by construction (att = 0)." if len(built) else "."),
        f"{len(flat)} of the {len(measured)} learned NL maps with a positive att are an order of magnitude or more below their "
        "input distance even at the intervals' conservative end (input low / att high)"
        + (f" ({', '.join(name[i] for i in flat)})" if flat else "")
        + (f"; the intervals do not decide whether it is 10x for {len(open_)} ({', '.join(name[i] for i in open_)})" if open_ else "")
        + (f"; {len(bare)} without an interval counted by the point estimate ({', '.join(name[i] for i in bare)})" if bare else "")
        + (f" ({unmeasured} without a positive, finite att not counted)" if unmeasured else "")
        + f"; {'some' if True in vit_verdicts else 'none'} of the ViT's head-averaged maps (input / att "
        f"{times(vit_layers['input_over_att'].min())}x–{times(vit_layers['input_over_att'].max())}x{vit_open}), while its most "
        f"query-independent single head, {head_name(*lo)}, is {lo_ratio}.",
    ]  # fmt: skip


def _peaked_line(peaked: pd.DataFrame, per_head: pd.DataFrame, name: dict[Any, str]) -> str:
    """The peaked, query-dependent NL maps beside the ViT's local heads (and where those peak)."""
    per = per_head[per_head["head"] != HEAD_MEAN]
    local_rows = [r for _, r in per.iterrows() if is_local(r)]
    local = [head_name(int(r["layer"]), int(r["head"])) for r in local_rows]
    fixed = [r for r in local_rows if fixed_peak(r)]
    own = sum(int(r["peak_dy"]) == 0 and int(r["peak_dx"]) == 0 for r in fixed)
    return (
        f"Peaked, query-dependent NL maps (att near or above input, entropy below 0.5): {', '.join(name[i] for i in peaked.index)}. "
        f"The ViT has {len(local)} local heads" + (f" ({', '.join(local)})" if local else "")
        + f": for most queries (over half, averaged over photos) {own} peak on the query's own patch and {len(fixed) - own} "
        f"at one fixed neighbouring offset; in {len(local) - len(fixed)} no offset holds most queries. Locality is measured "
        "only for the ViT, so whether the peaked NL maps are local too is not known here; that they are the ViT's local "
        "heads' counterparts is a hypothesis, not a finding."
    )  # fmt: skip


def _control_line(nl_rows: pd.DataFrame, vit_layers: pd.DataFrame, controlled: pd.DataFrame, name: dict[Any, str]) -> str:
    """How many rows (NL, ViT layers, ViT heads drawn) have att below their random control."""
    below = controlled[controlled["att"] < controlled["ctrl_att"]]
    vit_ctrl = vit_layers[vit_layers["ctrl_att"].notna()]
    heads_ctrl = controlled[~controlled.index.isin(nl_rows.index) & ~controlled.index.isin(vit_layers.index)]
    nl_ctrl = controlled[controlled.index.isin(nl_rows.index)]
    return (
        "Against the random control at matched entropy (point estimates; see the intervals in the table), att lies "
        f"below the control in {len(below)} of the {len(controlled)} rows that have one: NL "
        f"{sum(i in nl_rows.index for i in below.index)} of {len(nl_ctrl)}"
        + (f" ({', '.join(name[i] for i in below.index if i in nl_rows.index)})" if any(i in nl_rows.index for i in below.index) else "")
        + f", ViT head-mean layers {int((vit_ctrl['att'] < vit_ctrl['ctrl_att']).sum())} of {len(vit_ctrl)}, the ViT heads "
        f"drawn {int((heads_ctrl['att'] < heads_ctrl['ctrl_att']).sum())} of {len(heads_ctrl)}. Below the control, maps vary "
        "with the query less than random maps of the same sharpness would, which is what GCNet's reading needs (a low att "
        "could otherwise just be broad maps); at or above it, the maps are at least as query-dependent as their sharpness alone would make them."
    )  # fmt: skip
