"""How alike are the query maps of one image? Their pairwise cosine distances as a heat map.

The distance is GCNet's (arXiv 1904.11492, Sec. 3): the cosine distance between two queries'
attention maps, each a vector over the block's keys. Keys that are only padding are left out,
as in every statistic of the result set (a query-grid cell counts as image when its centre
pixel is on the image; a key pooled from 2 x 2 cells when all four are), so for the chosen
queries the mean of this matrix (all ordered pairs, the zero diagonal included, as GCNet's formula)
is the ``att`` statistic restricted to them. The figures print the mean over pairs ``i != j``
instead: ``N / (N - 1)`` times that.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..capture.blocks import valid_cells
from ..extract.maps import ImageMaps
from ..measure.blocks import key_mask
from .query_maps import query_title
from ..tables import short_block_names
from .style import new_figure, styled

__all__ = ["CONVENTIONS", "all_pair_distances", "off_diagonal", "plot_query_distances", "query_distance_matrix", "valid_keys"]

#: cosine-distance conventions (as ``nlanalysis.metrics``), and their largest value for
#: non-negative vectors.
CONVENTIONS = {"1-cos": 1.0, "(1-cos)/2": 0.5}


def valid_keys(maps: ImageMaps, block: str | int) -> np.ndarray:
    """``bool [Hk, Wk]``: the keys of ``block`` that are image, not padding."""
    i = maps._index(block)  # KeyError naming the file and its blocks
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


def off_diagonal(mat: np.ndarray) -> np.ndarray:
    """The entries ``i != j`` of a square matrix, NaNs (queries with no direction) dropped."""
    vals = mat[~np.eye(len(mat), dtype=bool)]
    return vals[~np.isnan(vals)]


def _mean(vals: np.ndarray) -> float:
    return float(vals.mean()) if vals.size else float("nan")


#: at most this many queries enter the all-pairs histogram (evenly strided above it).
MAX_PAIR_QUERIES = 1500


def all_pair_distances(maps: ImageMaps, block: str, *, convention: str = "1-cos") -> tuple[np.ndarray, int]:
    """The distances of every pair ``i < j`` of the saved queries of ``block`` (stored 8-bit: the
    kept rows; at most :data:`MAX_PAIR_QUERIES`, evenly strided), and how many queries that is."""
    kept = maps.kept_queries(block) if maps.quantised(block) else np.arange(len(maps.query_yx))
    kept = kept[:: -(-len(kept) // MAX_PAIR_QUERIES)] if len(kept) > MAX_PAIR_QUERIES else kept
    mat = query_distance_matrix(maps, block, kept.tolist(), convention=convention)
    vals = mat[np.triu_indices(len(kept), k=1)]
    return vals[~np.isnan(vals)], len(kept)


def _heat_map(ax, mat: np.ndarray, labels: list[str], vmax: float):
    k = len(mat)
    image = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
    for i in range(k):
        for j in range(k):
            v = mat[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=7 if k <= 6 else 5,
                    color="black" if (not np.isnan(v) and v > 0.6 * vmax) else "white")  # fmt: skip
    ax.set_xticks(range(k), labels, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center")
    ax.set_yticks(range(k), labels)
    ax.spines[:].set_visible(False)
    return image


@styled
def plot_query_distances(
    maps: ImageMaps,
    blocks: Sequence[str] | None = None,
    *,
    queries: Sequence[int] | None = None,
    convention: str = "1-cos",
    title: str | None = None,
    names: Sequence[str] | None = None,
) -> Figure:
    """Per block (one row each): the heat map of :func:`query_distance_matrix` for ``queries``
    (default: the saved query points, at most 8) with values written in, and beside it the
    histogram of the distance over all pairs of saved queries (:func:`all_pair_distances`).

    Both titles print the mean over pairs ``i != j`` (the zero diagonal left out). The colour
    scale and the histogram range are the full range of the distance for non-negative maps (0 to
    1 for ``1 - cos``; 0 to 2 for signed maps), the same in every panel. ``names``: the queries'
    labels (default :func:`~nlanalysis.plots.query_maps.query_title`).
    """
    blocks = list(blocks) if blocks is not None else maps.blocks
    if not blocks:
        raise ValueError(f"{maps.path}: no blocks to draw")
    qs = list(range(min(8, len(maps.query_yx)))) if queries is None else list(queries)
    if not qs:
        raise ValueError(f"{maps.path}: no query points saved (extract --save-maps --queries ...)")
    signed = any(float(np.nanmin(maps.maps(b))) < 0 for b in blocks)
    vmax = CONVENTIONS[convention] * (2.0 if signed else 1.0)
    short = short_block_names(blocks)
    side = max(2.2, 0.45 * len(qs) + 1.2)
    fig = new_figure(2 * side + 1.6, (side + 0.5) * len(blocks) + 0.8)
    titles = [query_title(maps, q) for q in qs] if names is None else list(names)
    labels = [t.replace(" · object ", " obj ").replace(" · background", " bg") for t in titles]
    for (ax, hist), b in zip(fig.subplots(len(blocks), 2, squeeze=False), blocks):
        mat = query_distance_matrix(maps, b, qs, convention=convention)
        image = _heat_map(ax, mat, labels, vmax)
        ax.set_title(f"{short[b]}: {len(qs)} queries\nmean over query pairs i ≠ j: {_mean(off_diagonal(mat)):.3f}", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
        vals, n = all_pair_distances(maps, b, convention=convention)
        hist.hist(vals, bins=20, range=(0.0, vmax), color="tab:blue")
        hist.set_xlim(0.0, vmax)
        hist.set_xlabel(f"cosine distance ({convention.replace('1-cos', '1 − cos')})")
        hist.set_ylabel("query pairs")
        hist.yaxis.set_major_locator(MaxNLocator(integer=True))
        hist.set_title(f"all {len(vals)} pairs of {n} saved queries\nmean over i ≠ j: {_mean(vals):.3f}", fontsize=8)
    head = f"{title}\n" if title else ""
    lines = f"{head}image {maps['image_id']}: distance between query maps (padding keys excluded)".split("\n")
    fig.suptitle("\n".join(textwrap.fill(line, width=int(fig.get_figwidth() * 11)) for line in lines))
    return fig
