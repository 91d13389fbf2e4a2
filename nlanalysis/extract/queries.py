"""Query points whose attention maps are saved (``--save-maps``) and drawn in the figures.

They are only for looking at maps: every statistic uses all (valid) positions. Points are in
model-input pixels ``(y, x)`` (pixel ``i`` spans ``[i, i + 1)``, so ``i + 0.5`` is its centre) and
always lie on the part of the image the model sees, never on padding (nor, after a centre crop,
outside the crop).

* ``grid:K``    -- a ``K x K`` grid: the centres of ``K x K`` equal tiles of the (seen) image.
* ``random:K``  -- ``K`` pixel centres drawn uniformly (seeded per image).
* ``objects:K`` -- one point on each of ``K`` different annotated objects (the ``K`` largest
  visible ones), plus one on the background, as in GCNet's Figure 2. The point on a mask is the
  object pixel farthest from the object's border (so it is well inside it); for an object with
  a box only, the box centre; the background point is the background pixel farthest from every
  object and from the image border. Images with fewer objects get fewer points.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..data.transforms import image_region
from .objects import ObjectMap

__all__ = ["QUERY_KINDS", "QueryPoints", "QuerySpec", "parse_queries", "select_queries"]

QUERY_KINDS = ("grid", "random", "objects")


@dataclass(frozen=True)
class QuerySpec:
    """A parsed ``--queries`` value (``kind:K``)."""

    kind: str
    k: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.k}"


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
    """Parse ``grid:K``, ``random:K`` or ``objects:K`` (K >= 1)."""
    m = re.fullmatch(r"\s*(\w+)\s*:\s*(\d+)\s*", text or "")
    if not m or m.group(1) not in QUERY_KINDS or int(m.group(2)) < 1:
        raise ValueError(f"--queries {text!r}: expected grid:K, random:K or objects:K with K >= 1")
    return QuerySpec(m.group(1), int(m.group(2)))


def select_queries(
    spec: QuerySpec,
    size: tuple[int, int],
    rng: np.random.Generator,
    objects: ObjectMap | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    offset: tuple[int, int] = (0, 0),
    input_size: tuple[int, int] | None = None,
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
    """
    y0, y1, x0, x1 = region = image_region(size, offset, input_size)
    h, w = y1 - y0, x1 - x0
    if spec.kind == "grid":
        ys = y0 + (np.arange(spec.k) + 0.5) * h / spec.k
        xs = x0 + (np.arange(spec.k) + 0.5) * w / spec.k
        yx = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
        return QueryPoints(yx, np.full(len(yx), -1, dtype=np.int64))
    if spec.kind == "random":
        yx = np.stack([rng.integers(0, h, spec.k) + y0, rng.integers(0, w, spec.k) + x0], 1) + 0.5
        return QueryPoints(yx.astype(np.float64), np.full(spec.k, -1, dtype=np.int64))
    if objects is None:
        raise ValueError("--queries objects:K needs annotated images: use --coco-ann/--coco-images, or grid:K / random:K")
    return _object_points(spec.k, objects, region, scale, offset)


def _object_points(
    k: int, objects: ObjectMap, region: tuple[int, int, int, int], scale: tuple[float, float], offset: tuple[int, int]
) -> QueryPoints:
    from scipy.ndimage import distance_transform_edt

    y0, y1, x0, x1 = region
    labels = objects.labels[y0:y1, x0:x1]
    counts = np.bincount(labels.ravel(), minlength=len(objects.ann_ids) + 1)
    visible = [i for i in range(1, len(counts)) if counts[i] > 0]
    chosen = sorted(visible, key=lambda i: (-counts[i], objects.ann_ids[i - 1]))[:k]
    points, ids = [], []
    for i in chosen:
        if objects.has_mask[i - 1]:
            points.append(_deepest(labels == i, distance_transform_edt))
        else:  # the box centre, in region coordinates, kept inside the region
            x, y, bw, bh = objects.boxes[i - 1]
            cy = min(max((y + bh / 2) * scale[0] + offset[0] - y0, 0.5), y1 - y0 - 0.5)
            cx = min(max((x + bw / 2) * scale[1] + offset[1] - x0, 0.5), x1 - x0 - 0.5)
            points.append((cy, cx))
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
