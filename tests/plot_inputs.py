"""Small made-up inputs for the figures and tables, with answers known by construction.

Used by the figure and table tests:

* :func:`hot_key_maps` writes a maps file (the format of ``extract --save-maps``) whose every
  query puts all its weight on one chosen key, so where that key lands on the image is known;
  any image size, padding, key sub-sampling and dtype.
* :func:`labelled_frame` makes a labelled metrics frame (:mod:`nlanalysis.tables`) of several
  variants, seeds and training steps with seeded random statistics.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nlanalysis.extract.maps import ImageMaps, save_image_maps

__all__ = ["hot_key_maps", "key_region", "labelled_frame"]


def hot_key_maps(
    path: str | os.PathLike[str],
    *,
    original_size: tuple[int, int] = (60, 100),
    scale: float = 1.0,
    pad_divisor: int = 32,
    stride: int = 8,
    sub_sample: bool = False,
    hot: Sequence[tuple[int, int]] = ((1, 2),),
    query_yx: Sequence[tuple[float, float]] | None = None,
    query_label: Sequence[int] | None = None,
    block: str = "block",
    signed: bool = False,
    image_id: str | int = "synthetic",
) -> ImageMaps:
    """Write a one-block maps file whose query ``k`` puts weight 1 on key ``hot[k]``.

    The image of ``original_size`` is resized by ``scale``, padded at the bottom/right to a
    multiple of ``pad_divisor``; the block's query grid has ``stride`` input pixels per cell and
    its keys are at half that resolution when ``sub_sample``. Maps are stored as float16, as
    ``extract`` stores them. ``signed`` gives the other keys small negative weights (as
    dot-product blocks have). Query points default to the image centre.
    """
    h0, w0 = original_size
    h, w = round(h0 * scale), round(w0 * scale)
    big_h, big_w = (-(-h // pad_divisor) * pad_divisor, -(-w // pad_divisor) * pad_divisor) if pad_divisor else (h, w)
    qh, qw = big_h // stride, big_w // stride
    kh, kw = (qh // 2, qw // 2) if sub_sample else (qh, qw)
    k = len(hot)
    maps = np.full((k, kh, kw), -0.01 if signed else 0.0, dtype=np.float32)
    for i, (r, c) in enumerate(hot):
        if not (0 <= r < kh and 0 <= c < kw):
            raise ValueError(f"hot key {(r, c)} is outside the {kh} x {kw} key grid")
        maps[i, r, c] = 1.0
    yx = np.array(query_yx if query_yx is not None else [(h / 2, w / 2)] * k, dtype=np.float64).reshape(k, 2)
    cells = np.floor(yx / stride).astype(np.int64)
    labels = np.array(query_label if query_label is not None else [-1] * k, dtype=np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        save_image_maps(f, image_id=image_id, blocks=[block], maps=[maps], cells=[cells], query_shapes=[(qh, qw)],
                        key_shapes=[(kh, kw)], query_yx=yx, query_label=labels, scale=(h / h0, w / w0), size=(h, w),
                        original_size=(h0, w0), input_size=(big_h, big_w))  # fmt: skip
    return ImageMaps(path)


def key_region(maps: ImageMaps, block: str | int, key: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(y0, y1, x0, x1)``: the original-image pixels covered by ``key`` of ``block``."""
    i = maps.blocks.index(block) if isinstance(block, str) else block
    big_h, big_w = (int(v) for v in maps["input_size"])
    kh, kw = (int(v) for v in maps[f"key_shape_{i}"])
    sy, sx = (float(v) for v in maps["scale"])
    (top, left), (r, c) = maps.offset, key
    y0, y1 = (r * big_h / kh - top) / sy, ((r + 1) * big_h / kh - top) / sy
    x0, x1 = (c * big_w / kw - left) / sx, ((c + 1) * big_w / kw - left) / sx
    return y0, y1, x0, x1


def labelled_frame(
    variants: Sequence[str] = ("embedded_gaussian", "gc"),
    seeds: Sequence[int] = (0, 1),
    steps: Sequence[int] = (0, 50, 100),
    images: int = 5,
    blocks: Sequence[str] = ("layer1.1",),
    seed: int = 0,
) -> pd.DataFrame:
    """A labelled metrics frame: every (variant, seed, step) is one run of ``images`` images.

    ``gc`` (and any variant starting with ``gc`` or ``snl``) is query-independent (``att`` = 0);
    the others have ``att`` falling with the step. The task metric ``miou`` rises with the step.
    """
    rng = np.random.default_rng(seed)
    rows = []
    last = max(steps)
    for v in variants:
        shared = v.startswith(("gc", "snl"))
        for s in seeds:
            for step in steps:
                frac = step / last if last else 1.0
                miou = 0.2 + 0.5 * frac + 0.01 * s
                for i in range(images):
                    for b in blocks:
                        att = 0.0 if shared else max(0.0, 0.3 * (1 - 0.9 * frac) + rng.normal(0, 0.02))
                        entropy = 1.0 if shared else 0.9 + rng.normal(0, 0.01)
                        rows.append({
                            "label": f"{v}_s{s}_step{step}", "variant": v, "seed": float(s), "step": float(step),
                            "metric_name": "miou", "metric": miou, "image_id": i + 1, "file_name": f"{i + 1:06d}.png",
                            "block": b, "family": "nlanalysis", "mode": "gc" if shared else v, "height": 14, "width": 14,
                            "n_query": 196, "n_key": 196, "input": 0.4 + rng.normal(0, 0.03),
                            "output": 0.0 if shared else att / 3, "att": att, "att_jsd": 0.0 if shared else att / 4,
                            "att_jsd_stderr": 0.0, "att_entropy": entropy, "att_max": 0.02, "att_zero_rows": 0.0,
                            "att_own_object": 0.3, "own_object_share": 0.2, "ctrl_att": math.nan, "ctrl_att_jsd": math.nan,
                            "ctrl_att_own_object": math.nan, "ctrl_temperature": math.nan, "query_independent": shared,
                            "convention": "1-cos",
                        })  # fmt: skip
    return pd.DataFrame(rows)
