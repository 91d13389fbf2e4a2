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
from matplotlib.figure import Figure

from ..extract.maps import ImageMaps
from .map_grid import QUERY_COLORS, MapRow, draw_map_rows, map_grid_heights
from .style import new_figure, styled

__all__ = ["QUERY_COLORS", "plot_query_maps", "query_title"]

_PANEL = 1.9  # inches per panel side


def query_title(maps: ImageMaps, q: int) -> str:
    """``q1 · object 101``, ``q3 · background`` or ``q2`` (grid/random points)."""
    label = int(maps.query_label[q]) if q < len(maps.query_label) else -1
    what = f" · object {label}" if label > 0 else " · background" if label == 0 else ""
    return f"q{q + 1}{what}"


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
    rows = []
    for i, (m, qs, image) in enumerate(zip(maps, chosen, images)):
        rows.append(MapRow(
            image=image, size=tuple(int(v) for v in m["original_size"]), points=m.query_yx_original[qs],
            overlays=[m.overlay(block, q, head) for q in qs], titles=[query_title(m, q) for q in qs],
            label=names[i] if names is not None else f"image {m['image_id']}", markers=qs,
            image_note="image file not found" if image is None else None, image_title=None if qs else "no query points saved",
        ))  # fmt: skip
    cols = 1 + max(1, max(len(qs) for qs in chosen))
    fig = new_figure(_PANEL * cols + 0.9, _PANEL * sum(map_grid_heights(rows)) + 0.75)
    draw_map_rows(fig, rows, alpha=alpha)
    first = f"{title}\n" if title else ""
    which = "" if not maps[0].num_heads(block) else " (head mean)" if head in (None, -1) else f" head {head}"
    fig.suptitle(f"{first}block {block}{which}: attention map of each query (one colour scale per image)")
    return fig
