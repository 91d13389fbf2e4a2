"""GCNet's Figure 2 grid from plain arrays: the image with its query points, then each query's map.

The drawing rules (one row per image, **one colour scale per row**, sequential colours from 0 for
non-negative maps and diverging ones for signed maps, the maps over the grey-scale image,
numbered query markers) live here once: each :class:`MapRow` carries the image, the points and
the overlays already at the image's size, and :func:`draw_map_rows` draws rows into a figure or a
sub-figure, so several grids (e.g. two ViT heads) can stand side by side, each with its own
colour bars. :func:`nlanalysis.plots.plot_query_maps` (saved maps of a run) and
:func:`nlanalysis.plots.plot_head_maps` (ViT heads) both build rows and call it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure

__all__ = ["QUERY_COLORS", "MapRow", "draw_map_rows", "map_grid_heights", "map_norm", "mark_query", "show_image"]

#: marker colours of queries 1, 2, ... (cycled); chosen to stand out on photos and heat maps.
QUERY_COLORS = ("#00e5ff", "#ff3df5", "#7cff3d", "#ffffff", "#ffb000", "#3d8bff")


def mark_query(ax, yx: np.ndarray, q: int, size: float = 7.0, number: bool = False) -> None:
    """Mark query ``q`` (0-based; colour ``QUERY_COLORS[q]``, label ``q + 1``) at ``yx = (y, x)``."""
    y, x = float(yx[0]), float(yx[1])
    color = QUERY_COLORS[q % len(QUERY_COLORS)]
    ax.plot([x], [y], marker="o", ms=size, mfc=color, mec="black", mew=1.0, ls="none", zorder=5)
    if number:
        ax.annotate(str(q + 1), (x, y), xytext=(5, 4), textcoords="offset points", color=color, fontsize=8,
                    fontweight="bold", zorder=6, path_effects=_outline())  # fmt: skip


def _outline() -> list:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2, foreground="black")]


def show_image(ax, image: np.ndarray | None, hw: tuple[int, int], gray: bool) -> None:
    """Set ``ax`` to the ``hw = (h, w)`` pixel frame (pixel ``i`` spans ``[i, i + 1)``) and draw
    ``image`` there (grey scale when ``gray``); ``None`` leaves a light grey panel."""
    h, w = hw
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.set_facecolor("0.85")
        return
    if image.shape[:2] != (h, w):
        raise ValueError(f"image of shape {image.shape[:2]} does not match the maps' original size {(h, w)}")
    pixels = np.asarray(image, dtype=np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)  # -> [0, 1]
    if pixels.ndim == 3 and (gray or pixels.shape[-1] == 1):
        pixels = pixels[..., :3].mean(-1)
    if pixels.ndim == 2:
        ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, extent=(0, w, h, 0))
    else:
        ax.imshow(np.clip(pixels, 0.0, 1.0), extent=(0, w, h, 0))


def map_norm(overlays: Sequence[np.ndarray]) -> tuple[Normalize, str]:
    """One colour scale for ``overlays``: ``(0 .. max, "inferno")``, or ``(-m .. m, "RdBu_r")``
    when any value is negative (signed maps, centred on 0). NaN (pixels never seen, a map that is NaN throughout) is
    ignored: every finite value counts, whichever overlay comes first."""
    finite = [v for o in overlays if (v := np.asarray(o, dtype=np.float64)[np.isfinite(o)]).size]
    lo = min((float(v.min()) for v in finite), default=0.0)
    hi = max((float(v.max()) for v in finite), default=0.0)
    if lo < 0:  # signed maps: diverging, centred on 0
        m = max(-lo, hi) or 1e-12
        return Normalize(-m, m), "RdBu_r"
    return Normalize(0.0, hi if hi > 0 else 1e-12), "inferno"


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
        image_note: small grey text at the foot of the image panel (e.g. "image file not found").
        image_title: title of the image panel (e.g. "no query points saved").
    """

    image: np.ndarray | None
    size: tuple[int, int]
    points: np.ndarray
    overlays: Sequence[np.ndarray]
    titles: Sequence[str]
    label: str
    markers: Sequence[int] | None = None
    image_note: str | None = None
    image_title: str | None = None


def map_grid_heights(rows: Sequence[MapRow]) -> list[float]:
    """Relative row heights: each image's aspect ratio ``h / w``, kept within ``[0.35, 2.5]``."""
    return [max(0.35, min(2.5, r.size[0] / r.size[1])) for r in rows]


def draw_map_rows(
    fig: Figure | SubFigure,
    rows: Sequence[MapRow],
    *,
    alpha: float = 0.7,
    colorbar_label: str = "attention weight",
) -> None:
    """Draw ``rows`` into ``fig``: column 0 the image with every query point, then one column per
    query (its map over the grey-scale image, its point marked), and each row's colour bar in a
    last, narrow column (outside the panels, so the gaps stay equal).

    Row heights follow the images' aspect ratios (:func:`map_grid_heights`); every overlay must
    have the image's size.
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
    grid = fig.add_gridspec(len(rows), cols + 1, height_ratios=map_grid_heights(rows), width_ratios=[1.0] * cols + [0.06])
    for i, r in enumerate(rows):
        numbers = list(r.markers) if r.markers is not None else list(range(len(r.points)))
        norm, cmap = map_norm(list(r.overlays))
        ax0 = fig.add_subplot(grid[i, 0])
        show_image(ax0, r.image, r.size, gray=False)
        for q, yx in zip(numbers, r.points):
            mark_query(ax0, yx, q, number=True)
        ax0.set_ylabel(r.label, fontsize=8)
        if r.image_note:
            ax0.text(0.5, 0.04, r.image_note, transform=ax0.transAxes, ha="center", va="bottom", color="0.3", fontsize=7)
        if r.image_title:
            ax0.set_title(r.image_title, fontsize=8)
        shown = None
        for col, (q, yx, overlay, text) in enumerate(zip(numbers, r.points, r.overlays, r.titles), start=1):
            ax = fig.add_subplot(grid[i, col])
            show_image(ax, r.image, r.size, gray=True)
            h, w = r.size
            shown = ax.imshow(overlay, cmap=cmap, norm=norm, alpha=alpha if r.image is not None else 1.0, extent=(0, w, h, 0))
            mark_query(ax, yx, q, size=6)
            ax.set_title(text, fontsize=8)
        if shown is not None:
            bar = fig.colorbar(shown, cax=fig.add_subplot(grid[i, cols]))
            bar.ax.tick_params(labelsize=7)
            bar.set_label(colorbar_label, fontsize=7)
