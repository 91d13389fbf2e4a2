"""GCNet's Figure 2: the attention maps of different query points of one image, side by side.

Cao et al., "GCNet", arXiv 1904.11492, Figure 2: for each of several images, the image with its
query points marked, then each query's attention map over the image. If the block's maps do not
depend on the query, every map in a row looks the same.

Drawing rules (so that a reader compares like with like):

* one row per image, one column per query (plus the image itself in the first column);
* each map is upsampled to the image file's size with the padding removed
  (:meth:`nlanalysis.extract.ImageMaps.overlay`, which knows where the preprocessing put the
  image: at the top left, centred, or centre-cropped), so it lies exactly over the image; parts of
  the image a centre crop cut off are left uncoloured;
* **one colour scale per image** (per row): identical maps are drawn identically, and a row's
  colour bar gives the attention weight per key (maps sum to 1 over the keys, so the weights of
  a block with ``N_k`` keys are around ``1 / N_k``);
* non-negative maps use a sequential colour map from 0; signed maps (dot-product blocks) a
  diverging one centred on 0;
* pixel ``i`` spans ``[i, i + 1)``, as query points are stored, so a point marks the pixel it
  was chosen on.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..extract.maps import ImageMaps
from .style import new_figure, styled

__all__ = ["QUERY_COLORS", "plot_query_maps", "query_title"]

#: marker colours of queries 1, 2, ... (cycled); chosen to stand out on photos and heat maps.
QUERY_COLORS = ("#00e5ff", "#ff3df5", "#7cff3d", "#ffffff", "#ffb000", "#3d8bff")

_PANEL = 1.9  # inches per panel side


def query_title(maps: ImageMaps, q: int) -> str:
    """``q1 · object 101``, ``q3 · background`` or ``q2`` (grid/random points)."""
    label = int(maps.query_label[q]) if q < len(maps.query_label) else -1
    what = f" · object {label}" if label > 0 else " · background" if label == 0 else ""
    return f"q{q + 1}{what}"


def _marker(ax, yx: np.ndarray, q: int, size: float = 7.0, number: bool = False) -> None:
    y, x = float(yx[0]), float(yx[1])
    color = QUERY_COLORS[q % len(QUERY_COLORS)]
    ax.plot([x], [y], marker="o", ms=size, mfc=color, mec="black", mew=1.0, ls="none", zorder=5)
    if number:
        ax.annotate(str(q + 1), (x, y), xytext=(5, 4), textcoords="offset points", color=color, fontsize=8,
                    fontweight="bold", zorder=6, path_effects=_outline())  # fmt: skip


def _outline() -> list:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2, foreground="black")]


def _show_image(ax, image: np.ndarray | None, hw: tuple[int, int], gray: bool) -> None:
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


def _norm(overlays: list[np.ndarray]) -> tuple[Normalize, str]:
    lo = min((float(np.nanmin(o)) for o in overlays), default=0.0)
    hi = max((float(np.nanmax(o)) for o in overlays), default=0.0)
    if lo < 0:  # signed maps: diverging, centred on 0
        m = max(-lo, hi) or 1e-12
        return Normalize(-m, m), "RdBu_r"
    return Normalize(0.0, hi if hi > 0 else 1e-12), "inferno"


@styled
def plot_query_maps(
    maps: Sequence[ImageMaps],
    block: str,
    *,
    images: Sequence[np.ndarray | None] | None = None,
    names: Sequence[str] | None = None,
    queries: Sequence[int] | None = None,
    title: str | None = None,
    alpha: float = 0.7,
    head: int | None = None,
) -> Figure:
    """GCNet's Figure 2 for ``block``: one row per image, one column per query.

    Args:
        maps: the saved maps of each image (``load_run(RUN_DIR).maps[image_id]``).
        block: the block whose maps are drawn (a name in ``maps[i].blocks``).
        images: each image's pixels, ``uint8 [h, w, 3]`` or ``[h, w]`` at its original size
            (``ImageMaps['original_size']``); ``None`` (or a ``None`` entry) draws the maps on grey.
        names: row labels (default: ``image <id>``).
        queries: which queries to draw (indices; default all).
        title: first line of the figure title (e.g. the checkpoint); the block is named below it.
        alpha: opacity of the maps over the (grey-scale) image.
        head: for a ViT layer, the head to draw (default: the head mean); NL/GC blocks have none.

    Returns:
        The figure; its size grows with the number of queries and the images' aspect ratios.
    """
    if not maps:
        raise ValueError("plot_query_maps: no images given")
    images = list(images) if images is not None else [None] * len(maps)
    if len(images) != len(maps):
        raise ValueError(f"plot_query_maps: {len(maps)} maps but {len(images)} images")
    chosen = [list(queries) if queries is not None else list(range(len(m.query_yx))) for m in maps]
    for m, qs in zip(maps, chosen):
        bad = [q for q in qs if not 0 <= q < len(m.query_yx)]
        if bad:
            raise ValueError(f"{m.path}: no queries {bad} (it has {len(m.query_yx)})")
    cols = 1 + max(1, max(len(qs) for qs in chosen))
    sizes = [tuple(int(v) for v in m["original_size"]) for m in maps]
    heights = [max(0.35, min(2.5, h / w)) for h, w in sizes]
    fig = new_figure(_PANEL * cols + 0.9, _PANEL * sum(heights) + 0.75)
    # the last, narrow column holds each row's colour bar (outside the panels: equal gaps)
    grid = fig.add_gridspec(len(maps), cols + 1, height_ratios=heights, width_ratios=[1.0] * cols + [0.06])
    for row, (m, qs, image, hw) in enumerate(zip(maps, chosen, images, sizes)):
        overlays = [m.overlay(block, q, head) for q in qs]
        norm, cmap = _norm(overlays)
        ax0 = fig.add_subplot(grid[row, 0])
        _show_image(ax0, image, hw, gray=False)
        for q in qs:
            _marker(ax0, m.query_yx_original[q], q, number=True)
        ax0.set_ylabel(names[row] if names is not None else f"image {m['image_id']}", fontsize=8)
        if image is None:
            ax0.text(0.5, 0.04, "image file not found", transform=ax0.transAxes, ha="center", va="bottom", color="0.3", fontsize=7)
        if not qs:
            ax0.set_title("no query points saved", fontsize=8)
        shown = None
        for col, (q, overlay) in enumerate(zip(qs, overlays), start=1):
            ax = fig.add_subplot(grid[row, col])
            _show_image(ax, image, hw, gray=True)
            shown = ax.imshow(overlay, cmap=cmap, norm=norm, alpha=alpha if image is not None else 1.0, extent=(0, hw[1], hw[0], 0))
            _marker(ax, m.query_yx_original[q], q, size=6)
            ax.set_title(query_title(m, q), fontsize=8)
        if shown is not None:
            bar = fig.colorbar(shown, cax=fig.add_subplot(grid[row, cols]))
            bar.ax.tick_params(labelsize=7)
            bar.set_label("attention weight", fontsize=7)
    first = f"{title}\n" if title else ""
    which = "" if not maps[0].num_heads(block) else " (head mean)" if head in (None, -1) else f" head {head}"
    fig.suptitle(f"{first}block {block}{which}: attention map of each query (one colour scale per image)")
    return fig
