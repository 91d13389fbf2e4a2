"""How local a ViT head's maps are, recorded by ``extract`` beside the statistics.

Per image, layer and head (``head == HEAD_MEAN``: the head-averaged map), over the image's patch
queries and keys (padding dropped as queries and keys, rows renormalised over image patch keys,
as the statistics do):

* ``att_local`` -- the mean weight a query puts on the ``(2r + 1)^2`` patches around it
  (``r = 1``: its own patch and its 8 neighbours; Chebyshev distance), and ``att_local_uniform``,
  what a uniform map over the image's patches would put there;
* ``peak_offsets`` -- how many queries have their map's largest weight at each offset
  ``(dy, dx)`` (in patches) from the query: ``"dy,dx:count ..."`` in ``(dy, dx)`` order, so the
  share of queries at one offset can be pooled over images (:func:`parse_peak_offsets`).

A high ``att`` says a head's maps differ between queries; a high local mass says *how*: each
query looks at its own neighbourhood (the peak offsets: which side).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ..blocks.heads import HeadAttention
from ..capture.blocks import valid_cells
from ..measure.query_dep import local_mass
from ..schema import HEAD_MEAN

__all__ = ["parse_peak_offsets", "record_locality"]


def record_locality(rec: Any, valid: Tensor | None, images: Sequence[Any], radius: int = 1) -> pd.DataFrame:
    """The locality of one captured ViT layer (a record of a ``ViTCapture`` with ``keep_attention=True``).

    Args:
        rec: the layer's record (its ``attention`` kept).
        valid: ``[B, H, W]`` valid pixels of the batch (``None``: all valid).
        images: the ``B`` images' labels (the ``image`` column).
        radius: neighbourhood half-width in patches.

    Returns:
        One row per image x head (the head mean last): ``image``, ``layer``, ``head``,
        ``att_local``, ``att_local_uniform``, ``peak_offsets``.
    """
    att = rec.attention
    if att is None:
        raise ValueError(f"layer {rec.layer}: the record has no attention (capture with keep_attention=True)")
    if att.keys != "patch":  # rows renormalised over patch keys: the softmax over patch keys alone
        att = HeadAttention(att.query, att.key, att.scale, att.layout, "patch")
    n = att.query.shape[0]
    if len(images) != n:
        raise ValueError(f"layer {rec.layer}: {len(images)} image labels for a batch of {n}")
    gh, gw = att.layout.grid
    vc = valid_cells(valid.cpu(), (gh, gw)).flatten(1).float() if valid is not None else torch.ones(n, gh * gw)
    yy, xx = (v.flatten() for v in torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"))
    cells = torch.stack([yy, xx], 1).double()
    span = 2 * gw + 1
    rows = []
    for b in range(n):
        keep = vc[b].bool()
        maps = att.image(b).full()[0]  # [heads, N, N]
        maps = torch.cat([maps, maps.mean(0, keepdim=True)])[:, keep][:, :, keep]
        maps = maps / maps.sum(-1, keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)
        local = local_mass(maps, cells[keep], radius)  # [heads + 1]
        uniform = local_mass(torch.full_like(maps[:1], 1.0 / int(keep.sum())), cells[keep], radius)[0]
        peak = maps.argmax(-1)  # [heads + 1, n_valid]
        codes = (yy[keep][peak] - yy[keep][None] + gh) * span + (xx[keep][peak] - xx[keep][None] + gw)
        heads = local.shape[0] - 1
        for h in range(heads + 1):
            counts = torch.bincount(codes[h], minlength=(2 * gh + 1) * span)
            hist = " ".join(f"{c // span - gh},{c % span - gw}:{int(counts[c])}" for c in torch.nonzero(counts).flatten().tolist())
            rows.append({"image": images[b], "layer": rec.layer, "head": HEAD_MEAN if h == heads else h,
                         "att_local": float(local[h]), "att_local_uniform": float(uniform), "peak_offsets": hist})  # fmt: skip
    return pd.DataFrame(rows)


def parse_peak_offsets(rows: pd.DataFrame, keys: Sequence[str] = ("image", "layer", "head")) -> pd.DataFrame:
    """The ``peak_offsets`` of ``rows`` as a table: one row per row of ``rows`` and offset, with
    ``keys``, ``peak_dy``, ``peak_dx``, ``queries`` (how many queries peak there) and ``n_query``
    (the row's queries, all offsets together)."""
    out = []
    for row in rows[[*keys, "peak_offsets"]].itertuples(index=False):
        pairs = [(tuple(int(v) for v in where.split(",")), int(k)) for where, _, k in
                 (item.partition(":") for item in str(row[-1]).split())]  # fmt: skip
        total = sum(k for _, k in pairs)
        out += [(*row[:-1], dy, dx, k, total) for (dy, dx), k in pairs]
    return pd.DataFrame(out, columns=[*keys, "peak_dy", "peak_dx", "queries", "n_query"])
