"""Annotated objects as a label map in model-input pixels.

Each non-crowd COCO annotation becomes one object ``k = 1, 2, ...`` (in annotation order), drawn
from its mask (polygons or RLE, decoded with ``pycocotools.mask``) or, without a mask, its box.
Where objects overlap the smaller one is drawn on top, so a small object inside a large one stays
visible. Crowd regions (``iscrowd = 1``: many instances under one mask) are neither an object nor
background: label -1 where no object is drawn over them, which the object statistics leave out (as
keys and as queries), as they leave out NL keys pooled over several labels.

The map is made at the original image size, then resampled with nearest neighbour to the
resized size exactly as pixels are sampled by the resize (resized pixel ``r`` takes original pixel
``floor((r + 0.5) * h / h_resized)``), then placed where the image lies in the input (its
``offset``: at the top left for mmdetection-style padding, centred for the ViT pad-to-square, cut
for a centre crop) and zero-padded like the image.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.transforms import image_region

__all__ = ["ObjectMap", "check_rle", "object_map", "rle_counts"]


@dataclass
class ObjectMap:
    """Objects of one image.

    Attributes:
        labels: ``int64 [H_pad, W_pad]``, 0 = no object, ``k`` = object ``k``, -1 = a crowd region (neither).
        ann_ids: ``ann_ids[k - 1]`` is the COCO annotation id of object ``k``.
        category_ids: likewise, the category.
        has_mask: likewise, whether the object came from a mask (``False``: from its box).
        boxes: ``float64 [n, 4]`` boxes ``(x, y, w, h)`` in original-image pixels.
    """

    labels: np.ndarray
    ann_ids: list[int]
    category_ids: list[int]
    has_mask: list[bool]
    boxes: np.ndarray


def rle_counts(counts: Any) -> list[int]:
    """The run lengths of a COCO RLE ``counts``: a list of ints, or the compressed string of
    pycocotools (``rleFrString``: 6-bit groups from ``'0'``, runs after the second stored as
    differences). Raises ``ValueError`` on anything else, or on a negative run."""
    if isinstance(counts, list):
        runs = counts
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in runs):
            raise ValueError("RLE counts are not all integers")
    elif isinstance(counts, (str, bytes)):
        text = counts.decode("latin-1") if isinstance(counts, bytes) else counts
        codes = [ord(ch) - 48 for ch in text]
        if any(not 0 <= c < 64 for c in codes):
            raise ValueError("compressed RLE counts hold characters outside '0'..'o'")
        runs, x, k = [], 0, 0
        for c in codes:
            x |= (c & 0x1F) << (5 * k)
            k += 1
            if c & 0x20:  # more groups follow
                continue
            if c & 0x10:  # sign bit of the last group
                x |= -1 << (5 * k)
            runs.append(x + (runs[-2] if len(runs) > 2 else 0))
            x, k = 0, 0
        if k:
            raise ValueError("compressed RLE counts end inside a number")
    else:
        raise ValueError(f"RLE counts are a {type(counts).__name__}, not a list or a string")
    if any(v < 0 for v in runs):
        raise ValueError("RLE counts hold a negative run")
    return runs


def check_rle(seg: dict[str, Any], h: int, w: int) -> None:
    """Raise ``ValueError`` unless ``seg`` is an RLE of an ``h x w`` mask whose runs cover it exactly
    (pycocotools decodes others into uninitialised or overrun memory)."""
    if list(seg.get("size", ())) != [h, w]:
        raise ValueError(f"RLE size {seg.get('size')!r} on an image of size {[h, w]}")
    total = sum(rle_counts(seg.get("counts")))
    if total != h * w:
        raise ValueError(f"RLE runs cover {total} pixels of a {h} x {w} mask ({h * w})")


def _check_polygons(polys: list[list[float]], h: int, w: int) -> None:
    """Vertices farther than the image's size from it are refused: pycocotools rasterises a polygon at 5x
    its extent in C and crashes on huge coordinates."""
    for p in polys:
        xs, ys = np.asarray(p[0::2], dtype=np.float64), np.asarray(p[1::2], dtype=np.float64)
        if not (np.isfinite(p).all() and (np.abs(xs - w / 2) <= 1.5 * w).all() and (np.abs(ys - h / 2) <= 1.5 * h).all()):
            raise ValueError(f"polygon vertices lie far outside the {h} x {w} image (or are not finite)")


def _mask(ann: dict[str, Any], h: int, w: int) -> np.ndarray | None:
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if not seg:
        return None
    if isinstance(seg, list):  # polygons
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return None
        _check_polygons(polys, h, w)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg.get("counts"), list):  # uncompressed RLE
        check_rle(seg, h, w)
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        check_rle(seg, h, w)
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
    with warnings.catch_warnings():  # pycocotools' decoder warns under numpy 2 (its __array__ lacks copy=)
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _box(ann: dict[str, Any], h: int, w: int) -> np.ndarray:
    x, y, bw, bh = (float(v) for v in ann["bbox"])
    m = np.zeros((h, w), dtype=bool)
    # pixels whose centre lies in the box
    r0, r1 = int(np.ceil(y - 0.5)), int(np.ceil(y + bh - 0.5))
    c0, c1 = int(np.ceil(x - 0.5)), int(np.ceil(x + bw - 0.5))
    m[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return m


def _cropped(mask: np.ndarray) -> tuple[int, int, np.ndarray]:
    """``(top, left, mask[box])``: a mask cut to the box of its pixels (an empty one to ``0 x 0``)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return 0, 0, mask[:0, :0]
    return int(rows[0]), int(cols[0]), mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()


def object_map(
    annotations: list[dict[str, Any]],
    original_size: tuple[int, int],
    size: tuple[int, int],
    padded_size: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
) -> ObjectMap:
    """Draw ``annotations`` into a label map of the model input.

    Args:
        annotations: COCO annotations of the image.
        original_size: ``(h, w)`` of the image file.
        size: ``(h, w)`` after the resize (before padding).
        padded_size: ``(H, W)`` of the model input.
        offset: ``(top, left)`` input pixel of the resized image's corner (negative: cropped).
    """
    h, w = original_size
    objects = [a for a in annotations if not a.get("iscrowd") and ("bbox" in a or a.get("segmentation"))]
    drawn = []
    for a in objects:
        try:
            m = _mask(a, h, w)
        except ValueError as err:
            raise ValueError(f"annotation {a.get('id')}: {err}") from err
        has_mask = m is not None
        if m is None:
            m = _box(a, h, w) if "bbox" in a else np.zeros((h, w), dtype=bool)
        if m.shape != (h, w):
            raise ValueError(f"annotation {a.get('id')}: mask of shape {m.shape} on an image of shape {(h, w)}")
        drawn.append((_cropped(m), has_mask))  # kept as its box: a full-image mask each took 1 MB of a 1000 x 1000 image
    full = np.zeros((h, w), dtype=np.int64)
    for a in annotations:  # crowd regions under the objects: neither an object nor background
        if a.get("iscrowd") and a.get("segmentation"):
            try:
                crowd = _mask(a, h, w)
            except ValueError as err:
                raise ValueError(f"annotation {a.get('id')}: {err}") from err
            if crowd is not None:
                full[crowd] = -1
    order = sorted(range(len(drawn)), key=lambda i: -int(drawn[i][0][2].sum()))  # large first, small on top
    for i in order:
        r0, c0, part = drawn[i][0]
        full[r0 : r0 + part.shape[0], c0 : c0 + part.shape[1]][part] = i + 1
    nh, nw = size
    rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
    labels = np.zeros(padded_size, dtype=np.int64)
    top, left = offset
    y0, y1, x0, x1 = image_region(size, offset, padded_size)
    labels[y0:y1, x0:x1] = full[rows[y0 - top : y1 - top]][:, cols[x0 - left : x1 - left]]
    boxes = np.array([a.get("bbox", [np.nan] * 4) for a in objects], dtype=np.float64).reshape(-1, 4)
    return ObjectMap(
        labels,
        [int(a.get("id", -1)) for a in objects],
        [int(a.get("category_id", -1)) for a in objects],
        [hm for _, hm in drawn],
        boxes,
    )
