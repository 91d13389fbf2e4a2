"""Figures of a ViT's heads: a layers x heads map of a statistic, and Figure 2 grids of chosen heads.

* :func:`plot_layer_heads` -- one cell per layer and head (plus the head-averaged map in a last
  column) holding the mean over images of a statistic of :func:`nlanalysis.analyze_vit`
  (``att``, ``att_entropy``, ...), the value written in the cell. :func:`head_matrix` is the
  table drawn.
* :func:`plot_head_maps` -- GCNet's Figure 2 (Cao et al., arXiv 1904.11492) for several
  ``(layer, head)`` s side by side: rows are photos, columns the photo with its query points then
  each query's map, one colour scale per photo and head (a diffuse head's weights are tens of
  times smaller than a local head's: one shared scale would hide one of them).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..schema import HEAD_MEAN
from .map_grid import MapRow, draw_map_rows, map_grid_heights
from .style import new_figure, styled

if TYPE_CHECKING:
    from ..extract.maps import PhotoMaps

__all__ = ["STAT_LABELS", "below_control", "head_matrix", "head_name", "plot_head_maps", "plot_layer_heads"]

#: what each statistic is, for titles and colour bars.
STAT_LABELS = {
    "att": "att: mean cosine distance between query maps",
    "att_entropy": "normalised entropy of a query's map (1 = uniform)",
    "att_jsd": "mean JSD between query maps (bits)",
    "att_max": "largest weight of a query's map",
    "att_local": "weight on the 3x3 patches around the query",
    "att_prefix_mass": "weight on the class token",
    "input": "input: mean cosine distance between tokens",
    "output": "output: mean cosine distance between branch outputs",
}

#: outline colours of highlighted cells (visible on viridis and on the cell text).
_HIGHLIGHT = ("#ff3df5", "#ff7f0e", "#00e5ff", "#d62728")

#: statistics bounded by [0, 1] (drawn on a fixed 0..1 colour scale, so figures compare).
_UNIT = {"att", "att_entropy", "att_jsd", "att_max", "att_local", "att_prefix_mass"}


def head_name(layer: int, head: int) -> str:
    """``L2·h1`` or ``L2·mean`` (0-based)."""
    return f"L{layer}·{'mean' if head == HEAD_MEAN else f'h{head}'}"


def head_matrix(frame: pd.DataFrame, stat: str = "att") -> pd.DataFrame:
    """Layers x heads: the mean over images of ``stat``; heads ``0..H-1`` then ``HEAD_MEAN`` (if present)."""
    if stat not in frame:
        raise ValueError(f"no column {stat!r} in the frame; it has {sorted(frame.columns)}")
    table = frame.groupby(["layer", "head"])[stat].mean().unstack("head")
    heads = sorted(h for h in table.columns if h != HEAD_MEAN)
    return table[heads + ([HEAD_MEAN] if HEAD_MEAN in table.columns else [])]


@styled
def plot_layer_heads(
    frame: pd.DataFrame,
    stat: str = "att",
    *,
    title: str | None = None,
    highlight: Mapping[tuple[int, int], str] | None = None,
    cmap: str = "viridis",
    digits: int = 2,
) -> Figure:
    """Heat map of ``stat`` per layer (rows) and head (columns), the head mean last.

    Args:
        frame: from :func:`nlanalysis.analyze_vit` (any frame with ``layer``, ``head``, ``image``
            and ``stat`` columns).
        stat: the column to draw; bounded statistics use a fixed 0..1 colour scale.
        title: first line of the title (e.g. the model).
        highlight: ``{(layer, head): label}`` cells to outline and name.
            Cells whose ``stat`` is below its control (``ctrl_{stat}``, where the frame has it)
            get a dot (:func:`below_control`).
        cmap: colour map.
        digits: decimals written in each cell.

    Returns:
        The figure; its image's array is :func:`head_matrix` (layers top to bottom).
    """
    table = head_matrix(frame, stat)
    values = table.to_numpy(dtype=np.float64)
    n_layers, n_cols = values.shape
    heads = list(table.columns)
    fig = new_figure(max(5.2, 0.55 * n_cols + 2.1), 0.3 * n_layers + 1.6 + 0.2 * len(highlight or {}))
    ax = fig.add_subplot()
    lo, hi = (0.0, 1.0) if stat in _UNIT else (float(np.nanmin(values)), float(np.nanmax(values)))
    shown = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
    colors = shown.cmap
    for (r, c), v in np.ndenumerate(values):
        if np.isnan(v):
            ax.text(c, r, "–", ha="center", va="center", fontsize=7, color="0.4")
            continue
        red, green, blue, _ = colors(shown.norm(v))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        ax.text(c, r, f"{v:.{digits}f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    if HEAD_MEAN in heads:
        ax.axvline(n_cols - 1.5, color="white", lw=3)
    handles = _mark_below_control(ax, frame, stat, table)
    for i, ((layer, head), label) in enumerate((highlight or {}).items()):
        if layer not in table.index or head not in heads:
            raise ValueError(f"highlight: no cell for layer {layer} head {head}")
        r, c = list(table.index).index(layer), heads.index(head)
        color = _HIGHLIGHT[i % len(_HIGHLIGHT)]
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec=color, lw=2.4, zorder=4))
        handles.append(Rectangle((0, 0), 1, 1, fill=False, ec=color, lw=2.0, label=f"{head_name(layer, head)}: {label}"))
    ax.set_xticks(range(n_cols), ["mean" if h == HEAD_MEAN else str(h) for h in heads])
    ax.set_yticks(range(n_layers), [str(v) for v in table.index])
    ax.set_xlabel(f"head (mean: the {stat} of the head-averaged map, not the mean of the cells)")
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    bar = fig.colorbar(shown, ax=ax, fraction=0.05, pad=0.03)
    bar.ax.tick_params(labelsize=7)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(2, len(handles)), frameon=False, fontsize=7)
    n_images = frame["image"].nunique() if "image" in frame else None
    over = f", mean over {n_images} images" if n_images else ""
    head = f"{title}\n" if title else ""
    fig.suptitle(f"{head}{STAT_LABELS.get(stat, stat)}{over}")
    return fig


def below_control(frame: pd.DataFrame, stat: str, table: pd.DataFrame) -> pd.DataFrame | None:
    """``bool`` layers x heads like ``table``: the cells whose mean ``stat`` is below the mean of
    its control ``ctrl_{stat}`` (the run's shuffled-key control); ``None`` without controls."""
    ctrl = f"ctrl_{stat}"
    if ctrl not in frame or frame[ctrl].isna().all():
        return None
    return table < head_matrix(frame, ctrl).reindex(index=table.index, columns=table.columns)


def _mark_below_control(ax, frame: pd.DataFrame, stat: str, table: pd.DataFrame) -> list:
    """A dot in the top-right corner of each cell :func:`below_control`; its legend handle."""
    below = below_control(frame, stat, table)
    if below is None or not below.to_numpy().any():
        return []
    rows, cols = np.nonzero(below.to_numpy())
    ax.scatter(cols + 0.32, rows - 0.27, s=16, c="white", edgecolors="black", linewidths=0.8, zorder=5, gid="below_control")
    return [Line2D([], [], ls="none", marker="o", ms=4, color="white", mec="black", label=f"{stat} below its control (ctrl_{stat})")]


@styled
def plot_head_maps(
    photos: Sequence[PhotoMaps],
    heads: Sequence[tuple[int, int]],
    *,
    head_titles: Sequence[str] | None = None,
    title: str | None = None,
    alpha: float = 0.7,
    panel: float = 1.45,
) -> Figure:
    """Figure 2 grids of ``heads`` side by side (one sub-figure per head).

    Args:
        photos: from :func:`nlanalysis.extract.maps.photo_maps` (each holding the maps of ``heads``).
        heads: ``(layer, head)`` s to draw, left to right.
        head_titles: a title per head (default ``layer L · head H``).
        title: the figure's title.
        alpha: opacity of the maps over the grey-scale photo.
        panel: inches per panel side.

    Returns:
        The figure. Each map is the query's weights on the photo's patches, stretched over the
        model input and cut to the photo (padding removed), over the photo as the model saw it.
    """
    if not photos or not heads:
        raise ValueError("plot_head_maps: give at least one photo and one head")
    k = max(len(p.points) for p in photos)
    names = list(head_titles) if head_titles is not None else [
        f"layer {layer} · {'head mean' if head == HEAD_MEAN else f'head {head}'}" for layer, head in heads]  # fmt: skip
    grids = [[MapRow(image=p.image, size=p.size, points=p.points_on_image(), label=p.name,
                     overlays=[p.overlay(layer, head, q) for q in range(len(p.points))],
                     titles=[f"q{q + 1}" for q in range(len(p.points))]) for p in photos]
             for layer, head in heads]  # fmt: skip
    fig = new_figure((panel * (1 + k) + 0.7) * len(heads), panel * sum(map_grid_heights(grids[0])) + 0.95)
    subs = np.atleast_1d(fig.subfigures(1, len(heads), wspace=0.02))
    for sub, rows, name in zip(subs, grids, names):
        draw_map_rows(sub, rows, alpha=alpha)
        sub.suptitle(name, fontsize=9)
    fig.suptitle(title or "Attention map of each query (one colour scale per photo and head)")
    return fig
