"""Query points whose attention maps are saved (``--save-maps``) and drawn in the figures.

They are only for looking at maps: every statistic uses all (valid) positions. Points are in
model-input pixels ``(y, x)`` (pixel ``i`` spans ``[i, i + 1)``, so ``i + 0.5`` is its centre) and
always lie on the part of the image the model sees, never on padding (nor, after a centre crop,
outside the crop). Given the query grids of the analysed blocks (``grids``: NL feature maps, ViT
patch grids), they also lie only in cells that every statistic keeps: a cell whose centre falls on
padding is excluded (:func:`nlanalysis.capture.valid_cells`), so the image pixels it covers (the
edge of the image next to the padding) are left out too (:func:`query_region`).

* ``grid:K``    -- a ``K x K`` grid: the centres of ``K x K`` equal tiles of the (seen) image.
* ``random:K``  -- ``K`` pixel centres drawn uniformly (seeded per image).
* ``points:Y,X;Y,X;...`` -- fixed fractions of the seen image (``0.5,0.5``: its centre), each
  moved to the centre of its cell on the finest query grid (the points the ViT report draws);
  a point in a cell the statistics drop is an error that says so.

Given ``grids``, ``K`` is capped at the finest grid (rows and columns for ``grid:K``, cells for
``random:K``), with a warning: more points would only repeat the maps of cells.
* ``objects:K`` -- one point on each of ``K`` different annotated objects (the ``K`` largest
  visible ones), plus one on the background, as in GCNet's Figure 2. The point on a mask is the
  object pixel farthest from the object's border (so it is well inside it); for an object with
  a box only, the box centre; the background point is the background pixel farthest from every
  object and from the image border. Images with fewer objects get fewer points.
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.transforms import image_region
from .objects import ObjectMap

__all__ = ["EVERY_QUERY", "QUERY_KINDS", "QueryPoints", "QuerySpec", "parse_queries", "query_region", "select_queries"]

QUERY_KINDS = ("grid", "random", "objects", "points")


@dataclass(frozen=True)
class QuerySpec:
    """A parsed ``--queries`` value (``kind:K``, or ``points:`` with its ``(y, x)`` fractions)."""

    kind: str
    k: int
    points: tuple[tuple[float, float], ...] = ()

    def __str__(self) -> str:
        if self.kind == "points":
            return "points:" + ";".join(f"{y:g},{x:g}" for y, x in self.points)
        return f"{self.kind}:{self.k}"


#: ``--save-maps all`` asks for a ``grid:EVERY_QUERY``, which the query grids cap at one point per cell (silently: that
#: cap is what was asked for)
EVERY_QUERY = 1 << 16


@dataclass
class QueryPoints:
    """The query points of one image.

    Attributes:
        yx: ``float64 [K, 2]`` in model-input pixels.
        label: ``int64 [K]``: the COCO annotation id of the object a point lies on, 0 for the
            background point of ``objects:K``, -1 for ``grid``/``random`` points.
    """

    yx: np.ndarray
    label: np.ndarray


def parse_queries(text: str) -> QuerySpec:
    """Parse ``grid:K``, ``random:K`` or ``objects:K`` (K >= 1), or ``points:Y,X;Y,X;...`` (fractions in [0, 1))."""
    head, _, rest = (text or "").partition(":")
    if head.strip() == "points":
        try:
            points = tuple((float(y), float(x)) for y, x in (p.split(",") for p in rest.split(";")))
        except ValueError:
            points = ()
        if not points or not all(0 <= v < 1 for p in points for v in p):
            raise ValueError(f"--queries {text!r}: expected points:Y,X;Y,X;... with fractions of the image in [0, 1)")
        return QuerySpec("points", len(points), points)
    m = re.fullmatch(r"\s*(\w+)\s*:\s*(\d+)\s*", text or "")
    if not m or m.group(1) not in QUERY_KINDS or int(m.group(2)) < 1:
        raise ValueError(f"--queries {text!r}: expected grid:K, random:K or objects:K with K >= 1, or points:Y,X;...")
    return QuerySpec(m.group(1), int(m.group(2)))


def _valid_span(lo: int, hi: int, n: int, cells: int) -> tuple[float, float] | None:
    """``[a, b)``: the input pixels ``[0, n)`` covered by the cells (of ``cells`` along the axis)
    whose centre pixel lies in ``[lo, hi)`` -- sampled as :func:`nlanalysis.capture.cell_centres`."""
    centres = np.minimum(((np.arange(cells) + 0.5) * n / cells).astype(np.int64), n - 1)
    kept = np.flatnonzero((centres >= lo) & (centres < hi))
    return (kept[0] * n / cells, (kept[-1] + 1) * n / cells) if len(kept) else None


def query_region(
    size: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
    input_size: tuple[int, int] | None = None,
    grids: Sequence[tuple[int, int]] = (),
) -> tuple[float, float, float, float]:
    """``(y0, y1, x0, x1)``: the model-input region ``[y0, y1) x [x0, x1)`` where query points may lie.

    It is the image (:func:`nlanalysis.data.transforms.image_region`) less its pixels that fall in
    a cell excluded from the statistics on any of ``grids`` (a cell is kept when the pixel at its
    centre is image, :func:`nlanalysis.capture.valid_cells`; a point at ``y`` falls in cell
    ``floor(y * H_g / H)``). Bounds are integers without ``grids``; with them they may fall inside
    a pixel (a cell edge). Where no cell of some grid is kept (an image thinner than half a cell),
    that grid is ignored: no point could avoid it.

    Args:
        size, offset, input_size: as :func:`select_queries`.
        grids: ``(H_g, W_g)`` query grids over the ``input_size`` input; needs ``input_size``.
    """
    y0, y1, x0, x1 = image_region(size, offset, input_size)
    box = [float(y0), float(y1), float(x0), float(x1)]
    if grids and input_size is None:
        raise ValueError("query_region: grids need the model input size (input_size)")
    for gh, gw in grids:
        rows = _valid_span(y0, y1, input_size[0], gh)
        cols = _valid_span(x0, x1, input_size[1], gw)
        if rows is None or cols is None:
            continue
        cut = [max(box[0], rows[0]), min(box[1], rows[1]), max(box[2], cols[0]), min(box[3], cols[1])]
        if cut[0] < cut[1] and cut[2] < cut[3]:
            box = cut
    return tuple(box)


def _pixel_region(region: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The pixels whose centres lie in a ``(y0, y1, x0, x1)`` region (never empty for a non-empty one)."""
    y0, y1, x0, x1 = region
    r0, c0 = math.ceil(y0 - 0.5), math.ceil(x0 - 0.5)
    return r0, max(math.ceil(y1 - 0.5), r0 + 1), c0, max(math.ceil(x1 - 0.5), c0 + 1)


def select_queries(
    spec: QuerySpec,
    size: tuple[int, int],
    rng: np.random.Generator,
    objects: ObjectMap | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    offset: tuple[int, int] = (0, 0),
    input_size: tuple[int, int] | None = None,
    grids: Sequence[tuple[int, int]] = (),
) -> QueryPoints:
    """Query points for one image.

    Args:
        spec: what to choose.
        size: ``(h, w)`` of the resized image.
        rng: the image's generator (``random``).
        objects: the image's objects (``objects``); ``None`` means the source has no annotations.
        scale: ``(sy, sx)`` resized / original, to place box centres.
        offset: ``(top, left)`` input pixel of the resized image's corner (``Prepared.offset``).
        input_size: ``(H, W)`` of the model input, where a crop cuts the image (``None``: it
            lies inside). With ``offset`` and ``size`` this gives the region points lie in
            (:func:`nlanalysis.data.transforms.image_region`).
        grids: the query grids of the analysed blocks (:meth:`Analysis.query_grids
            <nlanalysis.extract.analyses.Analysis.query_grids>`): points then lie only in cells
            the statistics keep (:func:`query_region`). Empty: anywhere on the seen image.
    """
    region = query_region(size, offset, input_size, grids)
    y0, y1, x0, x1 = region
    if spec.kind == "points":
        return _fixed_points(spec, image_region(size, offset, input_size), region, input_size, grids)
    if spec.kind == "grid":
        ky, kx = _capped(spec, grids)
        ys = y0 + (np.arange(ky) + 0.5) * (y1 - y0) / ky
        xs = x0 + (np.arange(kx) + 0.5) * (x1 - x0) / kx
        yx = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
        return QueryPoints(yx, np.full(len(yx), -1, dtype=np.int64))
    r0, r1, c0, c1 = pixels = _pixel_region(region)
    if spec.kind == "random":
        k = _capped(spec, grids)[0]
        yx = np.stack([rng.integers(0, r1 - r0, k) + r0, rng.integers(0, c1 - c0, k) + c0], 1) + 0.5
        return QueryPoints(yx.astype(np.float64), np.full(k, -1, dtype=np.int64))
    if objects is None:
        raise ValueError("--queries objects:K needs annotated images: use --coco-ann/--coco-images, or grid:K / random:K")
    return _object_points(spec.k, objects, pixels, scale, offset)


def _fixed_points(
    spec: QuerySpec,
    seen: tuple[int, int, int, int],
    region: tuple[float, float, float, float],
    input_size: tuple[int, int] | None,
    grids: Sequence[tuple[int, int]],
) -> QueryPoints:
    """``points:``: fractions of the seen image, each moved to the centre of its cell on the finest grid."""
    y0, y1, x0, x1 = seen
    yx = np.array([(y0 + fy * (y1 - y0), x0 + fx * (x1 - x0)) for fy, fx in spec.points], dtype=np.float64)
    if grids and input_size is not None:
        step = np.array(input_size, dtype=np.float64) / np.array(max(grids, key=lambda g: g[0] * g[1]), dtype=np.float64)
        yx = (np.floor(yx / step) + 0.5) * step
    r0, r1, c0, c1 = region
    outside = ~((yx[:, 0] >= r0) & (yx[:, 0] < r1) & (yx[:, 1] >= c0) & (yx[:, 1] < c1))
    if outside.any():
        raise ValueError(f"--queries {spec}: point {int(np.flatnonzero(outside)[0])} falls on a patch the statistics drop "
                         "(padding, or cut off); move it into the image")  # fmt: skip
    return QueryPoints(yx, np.full(len(yx), -1, dtype=np.int64))


def _capped(spec: QuerySpec, grids: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """``grid:K``: ``(rows, cols)`` of points; ``random:K``: ``(points, 0)``. At most one point per cell
    of the finest of ``grids``: more would only repeat maps (``grid:1000`` on a 14 x 14 grid made
    a million points); a warning says so (its text is the same for every image: shown once)."""
    wanted = (spec.k, spec.k) if spec.kind == "grid" else (spec.k, 0)
    if not grids:
        return wanted
    rows, cols = max(g[0] for g in grids), max(g[1] for g in grids)
    capped = (min(spec.k, rows), min(spec.k, cols)) if spec.kind == "grid" else (min(spec.k, rows * cols), 0)
    if capped != wanted and spec.k != EVERY_QUERY:
        warnings.warn(
            f"--queries {spec} asks for more points than the query grids of the analysed blocks have cells: "
            "each image gets at most one point per cell of its finest grid (more would repeat maps)",
            stacklevel=3,
        )
    return capped


def _object_points(
    k: int, objects: ObjectMap, region: tuple[int, int, int, int], scale: tuple[float, float], offset: tuple[int, int]
) -> QueryPoints:
    from scipy.ndimage import distance_transform_edt

    y0, y1, x0, x1 = region
    labels = objects.labels[y0:y1, x0:x1]
    counts = np.bincount(labels[labels > 0], minlength=len(objects.ann_ids) + 1)  # not crowd regions (-1)
    visible = [i for i in range(1, len(counts)) if counts[i] > 0]
    chosen = sorted(visible, key=lambda i: (-counts[i], objects.ann_ids[i - 1]))[:k]
    points, ids = [], []
    for i in chosen:
        point = _deepest(labels == i, distance_transform_edt)
        if not objects.has_mask[i - 1]:  # the box centre, in region coordinates, kept inside the region, where it shows
            x, y, bw, bh = objects.boxes[i - 1]  # the object (a smaller one drawn on top of it there: its deepest pixel)
            cy = min(max((y + bh / 2) * scale[0] + offset[0] - y0, 0.5), y1 - y0 - 0.5)
            cx = min(max((x + bw / 2) * scale[1] + offset[1] - x0, 0.5), x1 - x0 - 0.5)
            if labels[int(cy), int(cx)] == i:
                point = (cy, cx)
        points.append(point)
        ids.append(objects.ann_ids[i - 1])
    background = labels == 0
    if background.any():
        points.append(_deepest(background, distance_transform_edt))
        ids.append(0)
    yx = np.array(points, dtype=np.float64).reshape(-1, 2) + np.array([y0, x0], dtype=np.float64)
    return QueryPoints(yx, np.array(ids, dtype=np.int64))


def _deepest(region: np.ndarray, edt) -> tuple[float, float]:
    """Centre of the pixel of ``region`` farthest from its border (the image edge counts as border)."""
    depth = edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (r + 0.5, c + 0.5)
