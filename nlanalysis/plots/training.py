"""Query-independence over training: each statistic against the training step, per variant.

Do the maps become query-independent as the model learns, or are they so from the start? The
trained-models job saves snapshots ``{variant}_s{seed}_step{k}.pth`` (step 0 = initialisation);
each is extracted into its own result set, and this figure puts the statistic of every snapshot
on one line per variant (per block, where a variant has several), with its confidence band
(over images, or over seeds when a variant has several; see :func:`nlanalysis.tables.summarise`)
and the task metric in a last panel.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..tables import HEADERS, METRIC_NAMES, short_block_names, summarise
from .style import new_figure, styled

__all__ = ["plot_over_training"]


@styled
def plot_over_training(
    frame: pd.DataFrame,
    stats: Sequence[str] = ("input", "output", "att"),
    *,
    metric: bool = True,
    title: str | None = None,
    convention: str = "1-cos",
) -> Figure:
    """One panel per statistic (and one for the task metric): mean and CI band against step.

    Args:
        frame: a labelled metrics frame (:mod:`nlanalysis.tables`) with ``variant`` and ``step``
            (runs of one variant at different training steps, any number of seeds).
        stats: statistic columns, one panel each.
        metric: add a panel with the checkpoints' task metric when the frame has it.
        title: figure title.
        convention: the distance convention, for the axis label.
    """
    if "step" not in frame or frame["step"].isna().all():
        raise ValueError("plot_over_training: the runs record no training step (checkpoint meta 'step'); nothing to plot")
    stats = [s for s in stats if s in frame and frame[s].notna().any()]
    summary = summarise(frame.dropna(subset=["step"]), by=("variant", "step"), stats=stats)
    show_metric = metric and "metric" in summary and summary["metric"].notna().any()
    panels = len(stats) + int(show_metric)
    variants = list(dict.fromkeys(summary["variant"]))
    short = short_block_names(summary["block"].tolist())
    lines = list(dict.fromkeys(zip(summary["variant"], summary["block"])))
    several = {v: sum(1 for vv, _ in lines if vv == v) > 1 for v in variants}
    colors = {v: matplotlib.colormaps["tab10"](i % 10) for i, v in enumerate(variants)}
    styles = ["-", "--", ":", "-."]
    fig = new_figure(min(20.0, 3.0 * panels + 0.4), 3.2 + 0.22 * ((len(lines) + 2) // 3))
    axes = fig.subplots(1, panels, squeeze=False, sharex=True)[0]
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    undefined = False
    for ax, stat in zip(axes, stats):
        for v, b in lines:
            part = summary[(summary["variant"] == v) & (summary["block"] == b)]
            k = [bb for vv, bb in lines if vv == v].index(b)
            label = f"{v} · {short[b]}" if several[v] else str(v)
            x = part["step"].to_numpy(float)
            ax.plot(x, part[stat], styles[k % 4], marker="o", ms=3.5, color=colors[v], label=label)
            missing = part.loc[part[stat].isna(), "step"]
            if len(missing):  # e.g. output of a zero-initialised block at step 0: no direction, NaN
                ax.plot(missing, np.zeros(len(missing)), "x", ms=5, color=colors[v], clip_on=False)
                undefined = True
            low, high = part[f"{stat}_low"].to_numpy(float), part[f"{stat}_high"].to_numpy(float)
            if np.isfinite(low).any():
                ax.fill_between(x, low, high, color=colors[v], alpha=0.15, lw=0)
        ax.set_title(HEADERS.get(stat, stat))
        ax.set_xlabel("training step")
        ax.set_ylim(bottom=0)
        ax.grid(lw=0.4, color="0.88")
    axes[0].set_ylabel(f"mean pairwise cosine distance ({convention.replace('1-cos', '1 − cos')})")
    if show_metric:
        _metric_panel(axes[-1], summary, colors)
    handles, labels = axes[0].get_legend_handles_labels()
    if undefined:
        handles.append(Line2D([], [], ls="none", marker="x", color="0.3"))
        labels.append("on the axis: undefined (NaN), e.g. an all-zero output")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(title or "statistics over training (mean over images; band: 95% CI)")
    return fig


def _metric_panel(ax, summary: pd.DataFrame, colors: dict) -> None:
    """The task metric against step, one line (and CI band) per variant."""
    per_step = summary.drop_duplicates(["variant", "step"])
    for v, color in colors.items():
        part = per_step[per_step["variant"] == v]
        x = part["step"].to_numpy(float)
        ax.plot(x, part["metric"], "-", marker="o", ms=3.5, color=color)
        if np.isfinite(part["metric_low"].to_numpy(float)).any():
            ax.fill_between(x, part["metric_low"], part["metric_high"], color=color, alpha=0.15, lw=0)
    name = per_step["metric_name"].dropna().iloc[0]
    ax.set_title(f"task metric ({METRIC_NAMES.get(name, name)})")
    ax.set_xlabel("training step")
    ax.grid(lw=0.4, color="0.88")
