"""Distributions of ``input``, ``output`` and ``att`` across images, per block, runs side by side.

GCNet (arXiv 1904.11492, Table 1) reports one mean per statistic; this figure shows what the
mean summarises: one point per image (a box over them), for every block of every run, so a
reader sees the spread and whether ``att`` is far below ``input`` in every image or only on
average.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..tables import HEADERS, short_block_names
from .style import new_figure, styled

__all__ = ["plot_distributions"]


def _shared(frame: pd.DataFrame, key: pd.Series) -> set[tuple[object, str]]:
    """``(group, block)`` pairs whose one map serves every query by construction (GC, simplified
    NL). Per group: a block name (e.g. ``layer1.1``) can be a GC block in one variant and an NL
    block in another."""
    if "query_independent" not in frame:
        return set()
    rows = frame["query_independent"].astype(bool)
    return set(zip(key[rows], frame.loc[rows, "block"]))


@styled
def plot_distributions(
    frame: pd.DataFrame,
    stats: Sequence[str] = ("input", "output", "att"),
    *,
    by: str = "label",
    title: str | None = None,
    convention: str = "1-cos",
) -> Figure:
    """One panel per statistic; along x the runs (``by``), within each run a box per block.

    Args:
        frame: a labelled metrics frame (:mod:`nlanalysis.tables`) or one run's ``metrics``
            (then ``by`` may be any column, e.g. ``"block"``, or absent: one group).
        stats: statistic columns, one panel each.
        by: the column whose values are placed side by side (runs or variants).
        title: figure title (default names the distance).
        convention: the distance convention, for the axis label.
    """
    stats = [s for s in stats if s in frame]
    if not stats or frame.empty:
        raise ValueError(f"plot_distributions: none of the statistics {list(stats)} in the frame, or no rows")
    groups = list(dict.fromkeys(frame[by])) if by in frame else ["all"]
    key = frame[by] if by in frame else pd.Series("all", index=frame.index)
    blocks = list(dict.fromkeys(frame["block"]))
    names = short_block_names(blocks)
    shared = _shared(frame, key)
    colors = {b: matplotlib.colormaps["tab10"](i % 10) for i, b in enumerate(blocks)}
    per_group = {g: [b for b in blocks if ((key == g) & (frame["block"] == b)).any()] for g in groups}
    slots = max(len(v) for v in per_group.values())
    width = 0.8 / slots
    panel_w = 1.2 + len(groups) * max(0.55, 0.32 * slots)
    fig = new_figure(min(24.0, max(6.5, panel_w * len(stats))), 3.5 + (0.25 * ((len(blocks) + 2) // 3) if len(blocks) > 1 else 0))
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    rng = np.random.default_rng(0)  # fixed jitter: the same figure every time
    for ax, stat in zip(axes, stats):
        for gi, g in enumerate(groups):
            here = per_group[g]
            for bi, b in enumerate(here):
                values = frame.loc[(key == g) & (frame["block"] == b), stat].dropna().to_numpy(float)
                if not len(values):
                    continue
                x = gi + (bi - (len(here) - 1) / 2) * width
                box = ax.boxplot([values], positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False,
                                 medianprops={"color": "black", "lw": 1.2}, whiskerprops={"lw": 0.8}, capprops={"lw": 0.8})  # fmt: skip
                box["boxes"][0].set(facecolor=(*colors[b][:3], 0.35), edgecolor=colors[b], lw=0.9)
                jitter = (rng.random(len(values)) - 0.5) * width * 0.5
                ax.plot(x + jitter, values, "o", ms=2.5, color=colors[b], alpha=0.8, mec="none")
                if stat in ("output", "att") and (g, b) in shared:
                    ax.annotate("0 †", (x, 0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                                fontsize=7, color=colors[b])  # fmt: skip
        ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=30 if len(groups) > 2 else 0,
                      ha="right" if len(groups) > 2 else "center")  # fmt: skip
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylim(bottom=0)
        ax.set_title(HEADERS.get(stat, stat))
        ax.grid(axis="y", lw=0.4, color="0.85")
        ax.set_axisbelow(True)
    axes[0].set_ylabel(f"mean pairwise cosine distance ({convention.replace('1-cos', '1 − cos')})")
    handles = [Patch(facecolor=(*colors[b][:3], 0.35), edgecolor=colors[b], label=names[b]) for b in blocks] if len(blocks) > 1 else []
    if shared:
        handles.append(Patch(color="none", label="0 †: one map for all queries (GC / simplified NL): 0 by construction"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), frameon=False)
    fig.suptitle(title or "distance between positions, one dot per image\n(mean over all ordered pairs of positions, i = j included)")
    return fig
