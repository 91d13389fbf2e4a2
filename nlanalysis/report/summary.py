"""The NL report's text: a Table 1 summary's numbers in words, block by block (:func:`summary_text`)."""
from __future__ import annotations

import math

import pandas as pd

from ..tables import CONVENTION_TEXT, METRIC_NAMES, ci_text, format_ci, short_block_names
from .ratio_ends import NO_INTERVAL, ends_text, ratio_ends, times

__all__ = ["summary_text"]


_NOT_GCNET = "**not** the one to two orders of magnitude below it that GCNet reports"


def _x(ratio: float) -> str:
    """A ratio's number as the NL report writes it: whole numbers from 10 on, one decimal below."""
    return times(ratio, 0 if ratio >= 10 else 1)


def _verdict(r: pd.Series, what: str) -> tuple[bool | None, str]:
    """Whether ``r[what]`` (output or att) lies at least 10x below ``r['input']`` (GCNet's finding), in words:
    True where even the intervals' conservative end (``input_low / what_high``) reaches 10x, False where
    even their liberal end (``input_high / what_low``) stays below, None where they straddle 10x (the
    point estimate alone where the row has no interval; the words say so)."""
    input_, value = float(r["input"]), float(r.get(what, math.nan))
    if not (math.isfinite(input_) and math.isfinite(value)):
        return UNMEASURED, f"`{what}` cannot be compared with `input` (not available)"
    if value <= 0:
        return True, f"`{what}` is 0"
    ends = ratio_ends(r, "input", what)
    said = f"`{what}` is {_x(ends.point)}× below `input` ({ends_text(ends, _x, '×')})"
    if ends.reaches(1000):
        return True, f"`{what}` is more than 1000× below `input` (practically 0; " + (
            "at the intervals' ends too)" if ends.interval else f"{NO_INTERVAL})")
    if ends.reaches(100):
        undecided = "; the intervals do not decide whether it is 1000×" if ends.reaches(1000) is None else ""
        return True, f"{said}: more than two orders of magnitude{undecided}"
    if ends.reaches(10):
        if ends.reaches(100) is None:
            return True, f"{said}: at least one order of magnitude, as GCNet found; the intervals do not decide whether it is 100×"
        return True, f"{said}: one to two orders of magnitude, as GCNet found"
    if ends.reaches(10) is None:
        return None, f"{said}: the intervals do not decide whether it is 10× (GCNet's one to two orders of magnitude)"
    inverse = ends.inverse()  # what / input, for maps about as far apart as the input or farther
    if ends.point >= 1.5:
        return False, f"`{what}` is only {times(ends.point)}× below `input` ({ends_text(ends, _x, '×')}): {_NOT_GCNET}"
    if ends.point > 1 / 1.5:
        return False, (f"`{what}` is about as large as `input` ({inverse.point:.2f}×; "
                       f"{ends_text(inverse, lambda v: times(v, 2), '×')}): {_NOT_GCNET}")  # fmt: skip
    return False, f"`{what}` is {inverse.point:.1f}× **larger** than `input` ({ends_text(inverse, _x, '×')}): {_NOT_GCNET}"


#: a row whose maps are query-independent by construction (no verdict to count).
BY_CONSTRUCTION = "by construction"
#: a row without a finite ``input`` or statistic (no verdict to count; named apart).
UNMEASURED = "not measured"


def _row_text(r: pd.Series, block: str) -> tuple[bool | None | str, str]:
    """One Table 1 row in words, and whether its ``att`` is 10x below ``input`` (:func:`_verdict`: True,
    False, None where the intervals do not decide; :data:`BY_CONSTRUCTION` for one map by construction,
    :data:`UNMEASURED` without a finite ``input`` and ``att``)."""
    step = f" (step {int(r['step'])})" if pd.notna(r.get("step", math.nan)) else ""
    seeds = int(r["seeds"]) if pd.notna(r.get("seeds", math.nan)) else 1
    count = f"{int(r['images'])} images" + (f", {seeds} seeds" if seeds > 1 else "")
    head = f"`{r['variant']}`{step}, block `{block}` ({r.get('mode') or 'unknown mode'}, {count})"
    nums = ", ".join(f"`{s}` {ci_text(r, s)}" for s in ("input", "output", "att") if pd.notna(r.get(s, math.nan)))
    if pd.notna(r.get("metric", math.nan)):
        nums += f"; {METRIC_NAMES.get(r['metric_name'], r['metric_name'])} {ci_text(r, 'metric')}"
    if r.get("query_independent"):
        return BY_CONSTRUCTION, (f"{head}: {nums}. One map serves every query by construction, so `att` = 0, and the block adds the "
                      "same context at every position (`output` = 0 up to float rounding).")  # fmt: skip
    below, on_att = _verdict(r, "att")
    on_output = _verdict(r, "output")[1]
    text = f"{head}: {nums}. Here {on_att}; {on_output}."
    uniform = (below is True or below is None) and r.get("att_entropy", 0) >= 0.99
    if uniform:
        text += (f" But the maps are nearly uniform (normalised entropy {format_ci(r['att_entropy'])}; uniform attention gives "
                 "`att` = 0 with nothing learned), so a small `att` here says little about learned query-independence.")  # fmt: skip
    if pd.notna(r.get("ctrl_att", math.nan)) and r["ctrl_att"] > 0:
        ratio = r["att"] / r["ctrl_att"]
        rel = "about as much as" if abs(ratio - 1) < 0.1 else f"{ratio:.2g}× as much as"
        text += (f" Random query/key projections of the same features at the same sharpness give `att` {ci_text(r, 'ctrl_att')}: "
                 f"the trained maps differ between queries {rel} those.")  # fmt: skip
    if pd.notna(r.get("att_jsd", math.nan)):
        entropy = r.get("att_entropy", math.nan)
        text += f" Jensen–Shannon divergence between query maps {ci_text(r, 'att_jsd')} bits"
        text += f", normalised entropy {format_ci(entropy)}." if pd.notna(entropy) and not uniform else "."
    elif pd.isna(r.get("att_entropy", math.nan)):
        text += " The maps are signed (not distributions), so JSD and entropy are undefined."
    return below, text


def _blocks(n: int) -> str:
    return f"{n} block" + ("" if n == 1 else "s")


def summary_text(summary: pd.DataFrame, convention: str = "1-cos") -> list[str]:
    """Sentences stating the numbers of a Table 1 summary as measured, block by block.

    The first says how many blocks (that could) show GCNet's finding, `att` at least ten times
    below `input` even at the intervals' conservative end (``input_low / att_high``), how many do
    not even at their liberal end (``input_high / att_low``), and names those whose intervals
    straddle 10x; then one per row, with the ratio and its ends in words, and a warning where a
    small `att` only reflects nearly uniform maps. Rows without an interval (one image or seed) are
    counted by their point estimate, and both sentences say so.
    """
    short = short_block_names(summary["block"].tolist())
    verdicts, undecided, bare, unmeasured, out = [], [], [], [], []
    for _, r in summary.iterrows():
        below, text = _row_text(r, short[r["block"]])
        out.append(text)
        if below is BY_CONSTRUCTION:
            continue
        if below is UNMEASURED:
            unmeasured.append(f"`{r['variant']}` `{short[r['block']]}`")
            continue
        verdicts.append(below)
        name = f"`{r['variant']}` `{short[r['block']]}`"
        if below is None:
            undecided.append(name)
        if not ratio_ends(r, "input", "att").interval:
            bare.append(name)
    if verdicts or unmeasured:
        far, near = verdicts.count(True), verdicts.count(False)
        line = (f"Of {len(verdicts)} block(s) whose maps can depend on the query, {far} {'has' if far == 1 else 'have'} "
                "`att` at least ten times below `input` (GCNet's qualitative finding on trained COCO models) even at the "
                f"intervals' conservative end (input low / att high); {near} {'does' if near == 1 else 'do'} not, even at "
                "their liberal end (input high / att low)")  # fmt: skip
        if undecided:
            line += f"; for {_blocks(len(undecided))} ({', '.join(undecided)}) the intervals do not decide whether it is 10×"
        if bare:
            line += f"; {_blocks(len(bare))} without an interval (one image or seed: {', '.join(bare)}) counted by the point estimate"
        if unmeasured:
            line += f"; {_blocks(len(unmeasured))} without a finite `input` and `att` ({', '.join(unmeasured)}) not counted"
        out.insert(0, line + f". Distances: cosine distance {CONVENTION_TEXT.get(convention, convention)}, averaged over all "
                      "ordered pairs of positions (i = j included), then over images; brackets are 95% confidence intervals.")  # fmt: skip
    return out
