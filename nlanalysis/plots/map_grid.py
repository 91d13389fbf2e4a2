"""GCNet's Figure 2 grid from plain arrays: the image with its query points, then each query's map.

The drawing rules of :mod:`nlanalysis.plots.query_maps` (one row per image, **one colour scale
per row**, sequential colours from 0 for non-negative maps and diverging ones for signed maps, the
maps over the grey-scale image, numbered query markers), for maps that are not in a result set:
each :class:`MapRow` carries the image, the points and the overlays already at the image's size.
:func:`draw_map_rows` draws rows into a figure or a sub-figure, so several grids (e.g. two ViT
heads) can stand side by side, each with its own colour bars.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure, SubFigure

from .query_maps import _marker, _norm, _show_image

__all__ = ["MapRow", "draw_map_rows"]


@dataclass
class MapRow:
    """One row of a Figure 2 grid.

    Attributes:
        image: ``uint8 [h, w, 3]`` (or ``[h, w]``) pixels, or ``None`` to draw the maps on grey.
        size: ``(h, w)``, the size of the image and of every overlay.
        points: ``[K, 2]`` ``(y, x)`` of the queries in the image's pixels.
        overlays: ``K`` maps ``[h, w]``, one per query.
        titles: ``K`` column titles.
        label: the row's label (left of the image).
        markers: query numbers (colours and labels) of the points; default ``0..K-1``.
    """

    image: np.ndarray | None
    size: tuple[int, int]
    points: np.ndarray
    overlays: Sequence[np.ndarray]
    titles: Sequence[str]
    label: str
    markers: Sequence[int] | None = None


def draw_map_rows(
    fig: Figure | SubFigure,
    rows: Sequence[MapRow],
    *,
    alpha: float = 0.7,
    colorbar_label: str = "attention weight",
) -> None:
    """Draw ``rows`` into ``fig``: column 0 the image with every query point, then one column per
    query (its map over the grey-scale image, its point marked), and each row's colour bar.

    Row heights follow the images' aspect ratios; every overlay must have the image's size.
    """
    if not rows:
        raise ValueError("draw_map_rows: no rows given")
    for r in rows:
        if len(r.overlays) != len(r.points) or len(r.titles) != len(r.points):
            raise ValueError(f"row {r.label!r}: {len(r.points)} points, {len(r.overlays)} overlays, {len(r.titles)} titles")
        bad = [o.shape for o in r.overlays if tuple(o.shape) != tuple(r.size)]
        if bad:
            raise ValueError(f"row {r.label!r}: overlays of shape {bad[0]} do not match the image size {tuple(r.size)}")
    cols = 1 + max(1, max(len(r.points) for r in rows))
    heights = [max(0.35, min(2.5, r.size[0] / r.size[1])) for r in rows]
    grid = fig.add_gridspec(len(rows), cols + 1, height_ratios=heights, width_ratios=[1.0] * cols + [0.06])
    for i, r in enumerate(rows):
        numbers = list(r.markers) if r.markers is not None else list(range(len(r.points)))
        norm, cmap = _norm(list(r.overlays))
        ax0 = fig.add_subplot(grid[i, 0])
        _show_image(ax0, r.image, r.size, gray=False)
        for q, yx in zip(numbers, r.points):
            _marker(ax0, yx, q, number=True)
        ax0.set_ylabel(r.label, fontsize=8)
        shown = None
        for col, (q, yx, overlay, text) in enumerate(zip(numbers, r.points, r.overlays, r.titles), start=1):
            ax = fig.add_subplot(grid[i, col])
            _show_image(ax, r.image, r.size, gray=True)
            h, w = r.size
            shown = ax.imshow(overlay, cmap=cmap, norm=norm, alpha=alpha if r.image is not None else 1.0, extent=(0, w, h, 0))
            _marker(ax, yx, q, size=6)
            ax.set_title(text, fontsize=8)
        if shown is not None:
            bar = fig.colorbar(shown, cax=fig.add_subplot(grid[i, cols]))
            bar.ax.tick_params(labelsize=7)
            bar.set_label(colorbar_label, fontsize=7)
