"""Query-independence over training: each statistic against the training step, per variant.

Do the maps become query-independent as the model learns, or are they so from the start? The
trained-models job saves snapshots ``{variant}_s{seed}_step{k}.pth`` (step 0 = initialisation);
each is extracted into its own result set, and this figure puts the statistic of every snapshot
on one line per variant (per block, where a variant has several), with its confidence band
(over images, or over seeds when a variant has several; see :func:`nlanalysis.tables.summarise`),
thin per-seed lines, and the task metric (with the baseline's) in a last panel.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..tables import HEADERS, METRIC_NAMES, short_block_names, summarise
from .style import new_figure, styled

__all__ = ["LOG_STATS", "plot_over_training"]


#: statistics drawn on a symmetric-log y-axis (linear below :data:`LINTHRESH`, so an exact 0, a
#: GC block's ``att``, stays on the axis); they span decades between variants.
LOG_STATS = ("att", "att_jsd")
LINTHRESH = 1e-3


@styled
def plot_over_training(
    frame: pd.DataFrame,
    stats: Sequence[str] = ("input", "output", "att"),
    *,
    metric: bool = True,
    title: str | None = None,
    convention: str = "1-cos",
    baseline: float | None = None,
) -> Figure:
    """One panel per statistic (and one for the task metric): mean and CI band against step, and
    thin lines for each seed's mean where a variant has several seeds.

    Every (variant, block) line has its own colour (the two blocks of a two-block variant differ);
    x ticks are the snapshot steps; :data:`LOG_STATS` get a symmetric-log y-axis.

    Args:
        frame: a labelled metrics frame (:mod:`nlanalysis.tables`) with ``variant`` and ``step``
            (runs of one variant at different training steps, any number of seeds).
        stats: statistic columns, one panel each.
        metric: add a panel with the checkpoints' task metric when the frame has it.
        title: figure title.
        convention: the distance convention, for the axis label.
        baseline: the task metric of the model without a block, a horizontal line on the metric
            panel (default: the mean ``metric`` of rows of variant ``baseline``, if any).
    """
    if "step" not in frame or frame["step"].isna().all():
        raise ValueError("plot_over_training: the runs record no training step (checkpoint meta 'step'); nothing to plot")
    base_rows = frame[frame["variant"] == "baseline"]
    if baseline is None and len(base_rows) and base_rows["metric"].notna().any():
        baseline = float(base_rows.groupby("seed", dropna=False)["metric"].mean().mean())
    frame = frame[frame["variant"] != "baseline"].dropna(subset=["step"])
    stats = [s for s in stats if s in frame and frame[s].notna().any()]
    summary = summarise(frame, by=("variant", "step"), stats=stats)
    show_metric = metric and "metric" in summary and summary["metric"].notna().any()
    panels = len(stats) + int(show_metric)
    short = short_block_names(summary["block"].tolist())
    lines = list(dict.fromkeys(zip(summary["variant"], summary["block"])))
    several = {v: sum(1 for vv, _ in lines if vv == v) > 1 for v, _ in lines}
    colors = {line: matplotlib.colormaps["tab10"](i % 10) for i, line in enumerate(lines)}
    steps = sorted(frame["step"].unique())
    fig = new_figure(min(20.0, 3.0 * panels + 0.4), 3.2 + 0.22 * ((len(lines) + 2) // 3))
    axes = fig.subplots(1, panels, squeeze=False, sharex=True)[0]
    axes[0].set_xticks(steps, [f"{s:g}" for s in steps], rotation=45 if len(steps) > 5 else 0)
    undefined = False
    for ax, stat in zip(axes, stats):
        for v, b in lines:
            part = summary[(summary["variant"] == v) & (summary["block"] == b)]
            label = f"{v} · {short[b]}" if several[v] else str(v)
            undefined |= _mean_line(ax, part, stat, colors[v, b], label)
            _seed_lines(ax, frame[(frame["variant"] == v) & (frame["block"] == b)], stat, colors[v, b])
        ax.set_title(HEADERS.get(stat, stat) + (" (symlog)" if stat in LOG_STATS else ""))
        ax.set_xlabel("training step")
        if stat in LOG_STATS:
            ax.set_yscale("symlog", linthresh=LINTHRESH)
        ax.set_ylim(bottom=0)
        ax.grid(lw=0.4, color="0.88")
    axes[0].set_ylabel(f"mean pairwise cosine distance ({convention.replace('1-cos', '1 − cos')})")
    if show_metric:
        _metric_panel(axes[-1], summary, {v: colors[v, b] for v, b in reversed(lines)}, baseline)
    handles, labels = axes[0].get_legend_handles_labels()
    extra = [(Line2D([], [], color="0.3", lw=0.6, alpha=0.6), "one seed")] if frame.get("seed", pd.Series()).nunique() > 1 else []
    extra += [(Line2D([], [], ls="none", marker="x", color="0.3"), "on the axis: undefined (NaN), e.g. an all-zero output")] if undefined else []
    extra += [(Line2D([], [], ls="--", color="0.3"), f"baseline (no block): {baseline:.3f}")] if show_metric and baseline is not None else []
    handles, labels = handles + [h for h, _ in extra], labels + [t for _, t in extra]
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(title or "statistics over training (mean over images; band: 95% CI)")
    return fig


def _mean_line(ax, part: pd.DataFrame, stat: str, color, label: str) -> bool:
    """The mean and CI band of one (variant, block); ``True`` when some step is undefined (NaN)."""
    x = part["step"].to_numpy(float)
    ax.plot(x, part[stat], "-", marker="o", ms=3.5, color=color, label=label)
    missing = part.loc[part[stat].isna(), "step"]
    if len(missing):  # e.g. output of a zero-initialised block at step 0: no direction, NaN
        ax.plot(missing, np.zeros(len(missing)), "x", ms=5, color=color, clip_on=False)
    low, high = part[f"{stat}_low"].to_numpy(float), part[f"{stat}_high"].to_numpy(float)
    if np.isfinite(low).any():
        ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
    return bool(len(missing))


def _seed_lines(ax, rows: pd.DataFrame, stat: str, color) -> None:
    """A thin line per seed (its mean over images at each step), where there are several seeds."""
    if "seed" not in rows or rows["seed"].nunique() < 2:
        return
    for _, seed in rows.groupby("seed"):
        per_step = seed.groupby("step")[stat].mean()
        ax.plot(per_step.index.to_numpy(float), per_step.to_numpy(float), "-", lw=0.6, alpha=0.6, color=color, gid="seed")


def _metric_panel(ax, summary: pd.DataFrame, colors: dict, baseline: float | None) -> None:
    """The task metric against step, one line (and CI band) per variant; the baseline dashed."""
    per_step = summary.drop_duplicates(["variant", "step"])
    for v, color in colors.items():
        part = per_step[per_step["variant"] == v]
        x = part["step"].to_numpy(float)
        ax.plot(x, part["metric"], "-", marker="o", ms=3.5, color=color)
        if np.isfinite(part["metric_low"].to_numpy(float)).any():
            ax.fill_between(x, part["metric_low"], part["metric_high"], color=color, alpha=0.15, lw=0)
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="0.3", lw=1, gid="baseline")
    name = per_step["metric_name"].dropna().iloc[0]
    ax.set_title(f"task metric ({METRIC_NAMES.get(name, name)})")
    ax.set_xlabel("training step")
    ax.grid(lw=0.4, color="0.88")
