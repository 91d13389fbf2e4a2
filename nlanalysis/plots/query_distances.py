"""How alike are the query maps of one image? Their pairwise cosine distances as a heat map.

The distance is GCNet's (arXiv 1904.11492, Sec. 3): the cosine distance between two queries'
attention maps, each a vector over the block's keys. Keys that are only padding are left out,
as in every statistic of the result set (a query-grid cell counts as image when its centre
pixel is on the image; a key pooled from 2 x 2 cells when all four are), so for the chosen
queries the mean of this matrix is the ``att`` statistic restricted to them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..capture.blocks import valid_cells
from ..extract.maps import ImageMaps
from ..measure.blocks import key_mask
from .query_maps import query_title
from ..tables import short_block_names
from .style import new_figure, styled

__all__ = ["CONVENTIONS", "plot_query_distances", "query_distance_matrix", "valid_keys"]

#: cosine-distance conventions (as ``nlanalysis.metrics``), and their largest value for
#: non-negative vectors.
CONVENTIONS = {"1-cos": 1.0, "(1-cos)/2": 0.5}


def valid_keys(maps: ImageMaps, block: str | int) -> np.ndarray:
    """``bool [Hk, Wk]``: the keys of ``block`` that are image, not padding."""
    i = maps.blocks.index(block) if isinstance(block, str) else block
    if isinstance(block, str) and block not in maps.blocks:
        raise KeyError(f"{maps.path}: no maps of block {block!r}; blocks: {maps.blocks}")
    big_h, big_w = (int(v) for v in maps["input_size"])
    y0, y1, x0, x1 = maps.region
    pixels = torch.zeros(1, big_h, big_w, dtype=torch.bool)
    pixels[:, y0:y1, x0:x1] = True
    query_grid = tuple(int(v) for v in maps[f"query_shape_{i}"])
    key_grid = tuple(int(v) for v in maps[f"key_shape_{i}"])
    return key_mask(valid_cells(pixels, query_grid), key_grid)[0].numpy()


def query_distance_matrix(
    maps: ImageMaps, block: str, queries: Sequence[int] | None = None, *, convention: str = "1-cos"
) -> np.ndarray:
    """``float64 [K, K]``: cosine distance between the maps of each pair of ``queries``.

    Padding keys are excluded. A query whose map is all zero on the image has no direction: its
    row and column are NaN. ``convention`` is ``"1-cos"`` (default) or ``"(1-cos)/2"``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r}: use one of {list(CONVENTIONS)}")
    qs = list(range(len(maps.query_yx))) if queries is None else list(queries)
    rows = maps.maps(block).astype(np.float64)[qs][:, valid_keys(maps, block)]
    norms = np.linalg.norm(rows, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = rows / norms[:, None]
    unit[norms == 0] = np.nan
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    return dist / 2 if convention == "(1-cos)/2" else dist


@styled
def plot_query_distances(
    maps: ImageMaps,
    blocks: Sequence[str] | None = None,
    *,
    queries: Sequence[int] | None = None,
    convention: str = "1-cos",
    title: str | None = None,
) -> Figure:
    """Heat maps of :func:`query_distance_matrix`, one panel per block, values written in.

    The colour scale is the full range of the distance for non-negative maps (0 to 1 for
    ``1 - cos``; 0 to 2 for signed maps), the same in every panel, so small distances look
    small rather than being stretched to fill the scale.
    """
    blocks = list(blocks) if blocks is not None else maps.blocks
    if not blocks:
        raise ValueError(f"{maps.path}: no blocks to draw")
    qs = list(range(len(maps.query_yx))) if queries is None else list(queries)
    if not qs:
        raise ValueError(f"{maps.path}: no query points saved (extract --save-maps --queries ...)")
    mats = [query_distance_matrix(maps, b, qs, convention=convention) for b in blocks]
    signed = any(float(maps.maps(b).min()) < 0 for b in blocks)
    vmax = CONVENTIONS[convention] * (2.0 if signed else 1.0)
    short = short_block_names(blocks)
    k = len(qs)
    side = max(1.9, 0.45 * k + 1.0)
    fig = new_figure(max(4.2, side * len(blocks) + 1.0), side + 1.1)
    axes = fig.subplots(1, len(blocks), squeeze=False)[0]
    labels = [query_title(maps, q).replace(" · object ", " obj ").replace(" · background", " bg") for q in qs]
    image = None
    for ax, b, mat in zip(axes, blocks, mats):
        image = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        for i in range(k):
            for j in range(k):
                v = mat[i, j]
                text = "n/a" if np.isnan(v) else f"{v:.3f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if k <= 6 else 5,
                        color="black" if (not np.isnan(v) and v > 0.6 * vmax) else "white")  # fmt: skip
        ax.set_xticks(range(k), labels, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center")
        ax.set_yticks(range(k), labels)
        ax.spines[:].set_visible(False)
        mean = np.nanmean(mat) if not np.isnan(mat).all() else float("nan")
        ax.set_title(f"{short[b]}\nmean over all ordered pairs: {mean:.3f}", fontsize=8)
    bar = fig.colorbar(image, ax=list(axes), fraction=0.05, pad=0.03)
    bar.set_label(f"cosine distance ({convention.replace('1-cos', '1 − cos')})")
    head = f"{title}\n" if title else ""
    fig.suptitle(f"{head}image {maps['image_id']}: distance between query maps\n(i = j included; padding keys excluded)")
    return fig
