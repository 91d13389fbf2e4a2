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

__all__ = ["LayerLocality", "layer_locality", "parse_peak_offsets", "record_locality"]


def record_locality(rec: Any, valid: Tensor | None, images: Sequence[Any], radius: int = 1) -> pd.DataFrame:
    """The locality of one captured ViT layer (a record of a ``ViTCapture`` with ``keep_attention``).

    Args:
        rec: the layer's record (its ``attention`` kept, on any device: the maps are formed and
            reduced there, one image at a time; only per-head numbers and counts come back).
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
    cells = valid_cells(valid.to(att.device), att.layout.grid) if valid is not None else None
    return layer_locality(att, cells, rec.layer, images, radius)


def layer_locality(att: HeadAttention, cells: Tensor | None, layer: Any, images: Sequence[Any], radius: int = 1) -> pd.DataFrame:
    """:func:`record_locality` of a layer's attention ``att``, ``cells`` ``[B, H_g, W_g]`` its valid patches
    (``None``: all), computed on the device of ``att``."""
    if att.keys != "patch":  # rows renormalised over patch keys: the softmax over patch keys alone
        att = HeadAttention(att.query, att.key, att.scale, att.layout, "patch")
    n, device = att.query.shape[0], att.device
    if len(images) != n:
        raise ValueError(f"layer {layer}: {len(images)} image labels for a batch of {n}")
    gh, gw = att.layout.grid
    vc = cells.to(device).flatten(1).bool() if cells is not None else torch.ones(n, gh * gw, dtype=torch.bool, device=device)
    yy, xx = (v.flatten() for v in torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij"))
    grid = torch.stack([yy, xx], 1).double()
    span, heads = 2 * gw + 1, att.num_heads
    bins = (2 * gh + 1) * span
    local = torch.zeros(n, heads + 1, dtype=torch.float64, device=device)
    uniform = torch.zeros(n, dtype=torch.float64, device=device)
    counts = torch.zeros(n, heads + 1, bins, dtype=torch.long, device=device)
    for b in range(n):
        keep = vc[b]
        maps = att.image(b).full()[0]  # [heads, N, N]
        maps = torch.cat([maps, maps.mean(0, keepdim=True)])[:, keep][:, :, keep]
        maps = maps / maps.sum(-1, keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)
        local[b] = local_mass(maps, grid[keep], radius)  # [heads + 1]
        uniform[b] = local_mass(torch.full_like(maps[:1], 1.0 / maps.shape[-1]), grid[keep], radius)[0]
        peak = maps.argmax(-1)  # [heads + 1, n_valid]
        codes = (yy[keep][peak] - yy[keep][None] + gh) * span + (xx[keep][peak] - xx[keep][None] + gw)
        codes += torch.arange(heads + 1, device=device)[:, None] * bins  # one histogram per map
        counts[b] = torch.bincount(codes.flatten(), minlength=(heads + 1) * bins).view(heads + 1, bins)
    flat = counts.flatten()
    where = torch.nonzero(flat).flatten()
    found = torch.stack([where, flat[where]]).cpu().tolist()  # the offsets seen and their counts: (B * (heads + 1)) * N at most
    hists: list[list[str]] = [[] for _ in range(n * (heads + 1))]
    for i, k in zip(*found):
        c = i % bins
        hists[i // bins].append(f"{c // span - gh},{c % span - gw}:{k}")
    local, uniform = local.cpu(), uniform.cpu()
    return pd.DataFrame([{"image": images[b], "layer": layer, "head": HEAD_MEAN if h == heads else h,
                          "att_local": float(local[b, h]), "att_local_uniform": float(uniform[b]), "peak_offsets": " ".join(hists[b * (heads + 1) + h])}
                         for b in range(n) for h in range(heads + 1)])  # fmt: skip


class LayerLocality:
    """:func:`record_locality` of every layer as the capture makes its record (the capture's ``on_record``,
    after any callback set before it), on the device of the maps; then lets go of the record's attention.
    The capture keeps each layer's attention (``keep_attention="device"``: no copy to the host).

    Attributes:
        frames: one frame per record, as :func:`record_locality` gives it (the ``image`` column ``0..B-1``).
    """

    def __init__(self, cap: Any, radius: int = 1) -> None:
        self.cap, self.radius = cap, radius
        self.frames: list[pd.DataFrame] = []
        self._chained = cap.on_record
        cap.on_record = self

    def __call__(self, rec: Any) -> None:
        if self._chained is not None:
            self._chained(rec)
        att = rec.attention
        if att is None:
            raise ValueError(f"layer {rec.layer}: the record has no attention (capture with keep_attention)")
        valid, _ = self.cap.cell_masks(att.layout.grid, att.batch_size, "attention layer")
        with torch.no_grad():
            self.frames.append(layer_locality(att, valid, rec.layer, range(att.batch_size), self.radius))
        rec.attention = None

    def frame(self) -> pd.DataFrame:
        """The rows of every record so far."""
        return pd.concat(self.frames, ignore_index=True)


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
