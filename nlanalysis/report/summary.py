"""The NL report's text: a Table 1 summary's numbers in words, block by block (:func:`summary_text`)."""
from __future__ import annotations

import math

import pandas as pd

from ..tables import CONVENTION_TEXT, METRIC_NAMES, ci_text, format_ci, short_block_names

__all__ = ["summary_text"]


_NOT_GCNET = "**not** the one to two orders of magnitude below it that GCNet reports"


def _verdict(input_: float, value: float, what: str) -> tuple[bool, str]:
    """Whether ``value`` (output or att) lies at least 10x below ``input_`` (GCNet's finding), in words."""
    if not (math.isfinite(input_) and math.isfinite(value)):
        return False, f"`{what}` cannot be compared with `input` (not available)"
    if value <= 0:
        return True, f"`{what}` is 0"
    ratio = input_ / value
    if ratio >= 1000:
        return True, f"`{what}` is more than 1000× below `input` (practically 0)"
    if ratio >= 100:
        return True, f"`{what}` is {ratio:.0f}× below `input`: more than two orders of magnitude"
    if ratio >= 10:
        return True, f"`{what}` is {ratio:.0f}× below `input`: one to two orders of magnitude, as GCNet found"
    if ratio >= 1.5:
        return False, f"`{what}` is only {ratio:.1f}× below `input`: {_NOT_GCNET}"
    if ratio > 1 / 1.5:
        return False, f"`{what}` is about as large as `input` ({1 / ratio:.2f}×): {_NOT_GCNET}"
    return False, f"`{what}` is {1 / ratio:.1f}× **larger** than `input`: {_NOT_GCNET}"


def _row_text(r: pd.Series, block: str) -> tuple[bool | None, str]:
    """One Table 1 row in words, and whether its ``att`` is 10x below ``input`` (None: by construction)."""
    step = f" (step {int(r['step'])})" if pd.notna(r.get("step", math.nan)) else ""
    seeds = int(r["seeds"]) if pd.notna(r.get("seeds", math.nan)) else 1
    count = f"{int(r['images'])} images" + (f", {seeds} seeds" if seeds > 1 else "")
    head = f"`{r['variant']}`{step}, block `{block}` ({r.get('mode') or 'unknown mode'}, {count})"
    nums = ", ".join(f"`{s}` {ci_text(r, s)}" for s in ("input", "output", "att") if pd.notna(r.get(s, math.nan)))
    if pd.notna(r.get("metric", math.nan)):
        nums += f"; {METRIC_NAMES.get(r['metric_name'], r['metric_name'])} {ci_text(r, 'metric')}"
    if r.get("query_independent"):
        return None, (f"{head}: {nums}. One map serves every query by construction, so `att` = 0, and the block adds the "
                      "same context at every position (`output` = 0 up to float rounding).")  # fmt: skip
    below, on_att = _verdict(r["input"], r.get("att", math.nan), "att")
    on_output = _verdict(r["input"], r.get("output", math.nan), "output")[1]
    text = f"{head}: {nums}. Here {on_att}; {on_output}."
    uniform = below and r.get("att_entropy", 0) >= 0.99
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


def summary_text(summary: pd.DataFrame, convention: str = "1-cos") -> list[str]:
    """Sentences stating the numbers of a Table 1 summary as measured, block by block.

    The first says how many blocks (that could) show GCNet's finding, `att` at least ten times
    below `input`, and how many do not; then one per row, with the ratio in words, and a warning
    where a small `att` only reflects nearly uniform maps.
    """
    short = short_block_names(summary["block"].tolist())
    verdicts, out = [], []
    for _, r in summary.iterrows():
        below, text = _row_text(r, short[r["block"]])
        out.append(text)
        if below is not None:
            verdicts.append(below)
    if verdicts:
        far, near = sum(verdicts), len(verdicts) - sum(verdicts)
        out.insert(0, f"Of {len(verdicts)} block(s) whose maps can depend on the query, {far} {'has' if far == 1 else 'have'} "
                      "`att` at least ten times below `input` (GCNet's qualitative finding on trained COCO models); "
                      f"{near} {'does' if near == 1 else 'do'} not. Distances: cosine distance "
                      f"{CONVENTION_TEXT.get(convention, convention)}, averaged over all ordered pairs of positions "
                      "(i = j included), then over images; brackets are 95% confidence intervals.")  # fmt: skip
    return out
