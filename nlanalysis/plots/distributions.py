"""Distribution of one statistic (``input``, ``output`` or ``att``) across images, per variant and block.

GCNet (arXiv 1904.11492, Table 1) reports one mean per statistic; this figure shows what the
mean summarises: one dot per image (a box over them) for every block of every variant (the runs
of a variant, e.g. its seeds, pooled), so a reader sees the spread and whether ``att`` is far
below ``input`` in every image or only on average. One figure per statistic, so that many
variants stay readable at page width. Beside each box, in grey, the random-projection control
of the same statistic (``ctrl_att``: random query/key projections at the trained maps' entropy)
where the runs have it. Signed maps (dot-product blocks: not distributions, their ``att`` reaches
2) are drawn in a panel of their own.
"""
from __future__ import annotations

import textwrap

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..tables import HEADERS, short_block_names
from .style import new_figure, styled

__all__ = ["control_columns", "plot_distributions", "signed_groups"]

#: the colour of the control boxes
CONTROL_COLOR = (0.55, 0.55, 0.55)


#: the controls of a statistic, as drawn: the softmax control at the mean entropy, then the control in the
#: maps' own form (``ctrl_form``: per-query softmax, ReLU for concatenation, signed for dot product)
CONTROL_HATCHES = {"ctrl_": "////", "ctrl_form_": "...."}


def control_columns(frame: pd.DataFrame, stat: str) -> list[str]:
    """The control columns of ``stat`` with values in ``frame``, in :data:`CONTROL_HATCHES` order
    (``att``: ``ctrl_att``, ``ctrl_form_att``)."""
    return [f"{p}{stat}" for p in CONTROL_HATCHES if f"{p}{stat}" in frame and frame[f"{p}{stat}"].notna().any()]


def signed_groups(frame: pd.DataFrame, key: pd.Series) -> set[object]:
    """The groups (values of ``key``) whose maps are signed: dot-product blocks (``mode``), or,
    without a ``mode`` column, rows with ``att`` but no entropy (undefined for signed maps)."""
    if "mode" in frame:
        rows = frame["mode"].astype(str).eq("dot_product")
    elif "att_entropy" in frame and "att" in frame and frame["att_entropy"].notna().any():
        rows = frame["att_entropy"].isna() & frame["att"].notna()
    else:
        return set()
    return set(key[rows])


def _shared(frame: pd.DataFrame, key: pd.Series) -> set[tuple[object, str]]:
    """``(group, block)`` pairs whose one map serves every query by construction (GC, simplified NL)."""
    if "query_independent" not in frame:
        return set()
    rows = frame["query_independent"].astype(bool)
    return set(zip(key[rows], frame.loc[rows, "block"]))


def _box(ax, values: np.ndarray, x: float, width: float, color, rng: np.random.Generator, hatch: str | None = None) -> None:
    """A box over ``values`` at ``x`` with its dots (fixed jitter)."""
    box = ax.boxplot([values], positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False,
                     medianprops={"color": "black", "lw": 1.2}, whiskerprops={"lw": 0.8}, capprops={"lw": 0.8})  # fmt: skip
    box["boxes"][0].set(facecolor=(*color[:3], 0.3), edgecolor=color, lw=0.9, hatch=hatch)
    jitter = (rng.random(len(values)) - 0.5) * width * 0.5
    ax.plot(x + jitter, values, "o", ms=2.0, color=color, alpha=0.6, mec="none")


def _draw_panel(ax, frame: pd.DataFrame, key: pd.Series, groups: list, stat: str, colors: dict, controls: list[str],
                shared: set) -> None:  # fmt: skip
    """``groups`` along x; per group a box per block, and its control boxes beside it."""
    rng = np.random.default_rng(0)  # fixed jitter: the same figure every time
    blocks = list(colors)
    per_group = {g: [b for b in blocks if ((key == g) & (frame["block"] == b)).any()] for g in groups}
    per_block = 1 + len(controls)
    slots = max(len(v) for v in per_group.values()) * per_block
    width = 0.8 / slots
    for gi, g in enumerate(groups):
        for bi, b in enumerate(per_group[g]):
            rows = frame[(key == g) & (frame["block"] == b)]
            x = gi + (bi * per_block - (len(per_group[g]) * per_block - 1) / 2) * width
            values = rows[stat].dropna().to_numpy(float)
            if len(values):
                _box(ax, values, x, width, colors[b], rng)
            if stat in ("output", "att") and (g, b) in shared:
                ax.annotate("0 †", (x, 0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=7,
                            color=colors[b])  # fmt: skip
            drawn = 0
            for k, name in enumerate(controls, start=1):
                ctrl = rows[name].dropna().to_numpy(float)
                if len(ctrl):
                    _box(ax, ctrl, x + k * width, width, CONTROL_COLOR, rng, hatch=_hatch(name))
                    drawn += 1
            if controls and not drawn and len(values) and (g, b) not in shared:  # one shared map: nothing to control
                ax.annotate("no\ncontrol", (x + width, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7, color="0.45")  # fmt: skip
    rotate = len(groups) > 3 or max(len(str(g)) for g in groups) > 12
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", lw=0.4, color="0.85")
    ax.set_axisbelow(True)


@styled
def plot_distributions(
    frame: pd.DataFrame,
    stat: str = "att",
    *,
    by: str = "variant",
    title: str | None = None,
    convention: str = "1-cos",
) -> Figure:
    """The distribution of ``stat`` across images: along x the groups (``by``), a box per block.

    Args:
        frame: a labelled metrics frame (:mod:`nlanalysis.tables`; runs of one ``by`` value are
            pooled) or one run's ``metrics`` (then ``by`` may be any column, or absent: one group).
        stat: the statistic column (``input``, ``output``, ``att``, ...).
        by: the column whose values are placed side by side (default variants; ``label``: each run).
        title: figure title (default names the statistic and the distance).
        convention: the distance convention, for the axis label.

    The controls ``ctrl_<stat>`` and ``ctrl_form_<stat>`` (:func:`control_columns`) are drawn
    beside each box where the frame has them (hatched ``////`` and ``....``); for map statistics (``att...``), groups with signed maps (:func:`signed_groups`)
    get a panel of their own, on its own scale.
    """
    if stat not in frame or frame.empty or frame[stat].isna().all():
        raise ValueError(f"plot_distributions: no values of {stat!r} in the frame")
    key = frame[by] if by in frame else pd.Series("all", index=frame.index)
    groups = [g for g in dict.fromkeys(key) if frame.loc[key == g, stat].notna().any()]
    blocks = list(dict.fromkeys(frame["block"]))
    colors = {b: matplotlib.colormaps["tab10"](i % 10) for i, b in enumerate(blocks)}
    signed = signed_groups(frame, key) if stat.startswith("att") else set()
    panels = [p for p in ([g for g in groups if g not in signed], [g for g in groups if g in signed]) if p]
    controls, shared = control_columns(frame, stat), _shared(frame, key)
    boxes = max(frame.loc[key == g, "block"].nunique() for g in groups)
    per_group = max(0.6, 0.3 * boxes * (1 + len(controls)))
    width = min(11.0, max(6.0, 1.2 + per_group * len(groups) + 0.8 * (len(panels) - 1)))
    fig = new_figure(width, 3.6 + (0.25 * ((len(blocks) + 2) // 3) if len(blocks) > 1 else 0))
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=[len(p) + 0.6 for p in panels])[0]
    unit = f"mean pairwise cosine distance ({convention.replace('1-cos', '1 − cos')})"
    for ax, part in zip(axes, panels):
        _draw_panel(ax, frame, key, part, stat, colors, controls, shared)
        ax.set_title("signed maps\n(dot product)" if part[0] in signed else "maps ≥ 0\n(distributions over keys)"
                     if len(panels) > 1 else "", fontsize=9)  # fmt: skip
    axes[0].set_ylabel(unit)
    _legend(fig, colors, controls, bool(shared) and stat in ("output", "att"))
    runs = f" ({frame['label'].nunique()} runs pooled by {by})" if "label" in frame and frame["label"].nunique() > len(groups) else ""
    text = title or (f"{HEADERS.get(stat, stat)}: one dot per image{runs}\n"
                     "mean over all ordered pairs of positions, i = j included")  # fmt: skip
    fig.suptitle("\n".join(textwrap.fill(line, width=int(width * 11)) for line in text.split("\n")))
    return fig


def _hatch(control: str) -> str:
    return CONTROL_HATCHES["ctrl_form_" if control.startswith("ctrl_form_") else "ctrl_"]


_CONTROL_LABELS = {"ctrl_": "random query/key projections at the trained maps' entropy",
                   "ctrl_form_": "random projections in the block's own form (per-query entropy / ReLU / signed)"}


def _legend(fig: Figure, colors: dict[str, tuple], controls: list[str], shared: bool) -> None:
    blocks = list(colors)
    names = short_block_names(blocks)
    handles = [Patch(facecolor=(*colors[b][:3], 0.3), edgecolor=colors[b], label=names[b]) for b in blocks] if len(blocks) > 1 else []
    for control in controls:
        kind = "ctrl_form_" if control.startswith("ctrl_form_") else "ctrl_"
        handles.append(Patch(facecolor=(*CONTROL_COLOR, 0.3), edgecolor=CONTROL_COLOR, hatch=_hatch(control),
                             label=f"control ({control}): {_CONTROL_LABELS[kind]}"))  # fmt: skip
    if shared:
        handles.append(Patch(color="none", label="0 †: one map for all queries (GC / simplified NL): 0 by construction"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), frameon=False)
