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
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from ..extract.maps import ImageMaps
from .map_grid import QUERY_COLORS, MapRow, draw_map_rows, map_grid_heights
from .style import new_figure, styled

__all__ = ["MAX_DRAWN_QUERIES", "QUERY_COLORS", "QueryChoice", "plot_query_maps", "query_title"]

_PANEL = 1.9  # inches per panel side
#: with more saved queries than this (``--save-maps all``), the queries to draw must be chosen
MAX_DRAWN_QUERIES = 12


@dataclass(frozen=True)
class QueryChoice:
    """The queries of one image to draw, picked among its saved ones (e.g. among every query of an
    ``--save-maps all`` run); drawn numbered 1, 2, ... in this order.

    Attributes:
        indices: indices into the image's ``query_yx``.
        labels: the COCO annotation id each lies on (0: background, -1: not known), for the titles.
    """

    indices: tuple[int, ...]
    labels: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.labels):
            raise ValueError(f"QueryChoice: {len(self.indices)} indices but {len(self.labels)} labels")

    def titles(self) -> list[str]:
        """``q1 · object 101``, ``q2 · background``, ... in drawing order."""
        return [_title(n + 1, label) for n, label in enumerate(self.labels)]


def _title(number: int, label: int) -> str:
    what = f" · object {label}" if label > 0 else " · background" if label == 0 else ""
    return f"q{number}{what}"


def query_title(maps: ImageMaps, q: int) -> str:
    """``q1 · object 101``, ``q3 · background`` or ``q2`` (grid/random points)."""
    return _title(q + 1, int(maps.query_label[q]) if q < len(maps.query_label) else -1)


def _picked(maps: Sequence[ImageMaps], queries: Sequence[int] | None, chosen: Sequence[QueryChoice] | None) -> list[QueryChoice]:
    """Each image's queries as a :class:`QueryChoice` (numbered by their saved index unless ``chosen``)."""
    if chosen is not None:
        if queries is not None or len(chosen) != len(maps):
            raise ValueError(f"plot_query_maps: give queries or one QueryChoice per image ({len(maps)}), not {len(chosen)}")
        return list(chosen)
    if queries is None:
        many = [m for m in maps if len(m.query_yx) > MAX_DRAWN_QUERIES]
        if many:
            raise ValueError(f"{many[0].path}: {len(many[0].query_yx)} saved queries (--save-maps all?): too many to draw; "
                             f"choose at most {MAX_DRAWN_QUERIES} (queries= or chosen=)")  # fmt: skip
    picks = []
    for m in maps:
        qs = list(queries) if queries is not None else list(range(len(m.query_yx)))
        picks.append(QueryChoice(tuple(qs), tuple(int(m.query_label[q]) if 0 <= q < len(m.query_label) else -1 for q in qs)))
    return picks


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
    chosen: Sequence[QueryChoice] | None = None,
) -> Figure:
    """GCNet's Figure 2 for ``block``: one row per image, one column per query.

    Args:
        maps: the saved maps of each image (``load_run(RUN_DIR).maps[image_id]``).
        block: the block whose maps are drawn (a name in ``maps[i].blocks``).
        images: each image's pixels, ``uint8 [h, w, 3]`` or ``[h, w]`` at its original size
            (``ImageMaps['original_size']``); ``None`` (or a ``None`` entry) draws the maps on grey.
        names: row labels (default: ``image <id>``).
        queries: which queries to draw (indices, numbered by them; default all, refused above
            :data:`MAX_DRAWN_QUERIES`).
        title: first line of the figure title (e.g. the checkpoint); the block is named below it.
        alpha: opacity of the maps over the (grey-scale) image.
        head: for a ViT layer, the head to draw (default: the head mean); NL/GC blocks have none.
        chosen: instead of ``queries``, each image's own queries (one :class:`QueryChoice` per
            image, e.g. a few among every saved query of an ``--save-maps all`` run), numbered 1, 2, ...

    Returns:
        The figure; its size grows with the number of queries and the images' aspect ratios.
    """
    if not maps:
        raise ValueError("plot_query_maps: no images given")
    images = list(images) if images is not None else [None] * len(maps)
    if len(images) != len(maps):
        raise ValueError(f"plot_query_maps: {len(maps)} maps but {len(images)} images")
    picks = _picked(maps, queries, chosen)
    for m, pick in zip(maps, picks):
        bad = [q for q in pick.indices if not 0 <= q < len(m.query_yx)]
        if bad:
            raise ValueError(f"{m.path}: no queries {bad} (it has {len(m.query_yx)})")
    rows = []
    for i, (m, pick, image) in enumerate(zip(maps, picks, images)):
        qs = list(pick.indices)
        numbers = list(range(len(qs))) if chosen is not None else qs
        rows.append(MapRow(
            image=image, size=tuple(int(v) for v in m["original_size"]), points=m.query_yx_original[qs],
            overlays=[m.overlay(block, q, head) for q in qs], titles=[_title(n + 1, l) for n, l in zip(numbers, pick.labels)],
            label=names[i] if names is not None else f"image {m['image_id']}", markers=numbers,
            image_note="image file not found" if image is None else None, image_title=None if qs else "no query points saved",
        ))  # fmt: skip
    cols = 1 + max(1, max(len(p.indices) for p in picks))
    fig = new_figure(_PANEL * cols + 0.9, _PANEL * sum(map_grid_heights(rows)) + 0.75)
    draw_map_rows(fig, rows, alpha=alpha)
    first = f"{title}\n" if title else ""
    which = "" if not maps[0].num_heads(block) else " (head mean)" if head in (None, -1) else f" head {head}"
    fig.suptitle(f"{first}block {block}{which}: attention map of each query (one colour scale per image)")
    return fig
