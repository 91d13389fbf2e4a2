"""Query maps of chosen heads on whole photos, and how local every head's maps are.

Two things the ViT report draws and states beyond the per-head statistics of
:func:`nlanalysis.analyze_vit_vit`:

* :func:`photo_maps` -- GCNet Figure 2 material (Cao et al., arXiv 1904.11492, Figure 2): for each
  photo, a few query points (fixed fractions of the photo, moved to the centre of the patch they
  fall in) and every chosen ``(layer, head)``'s map of each query over the patch grid, from
  :class:`~nlanalysis.capture.heads.ViTCapture`. :meth:`PhotoMaps.overlay` puts a map onto the
  photo as the model saw it (resized, its padding removed).
* :func:`locality` -- per image, layer and head, the share of a query's attention that lies on
  the ``(2r + 1)^2`` patches around it (``r = 1``: the query's patch and its 8 neighbours), beside
  what a uniform map would put there, and the commonest offset from a query to its map's peak,
  over image patches (padding dropped as queries and keys, rows renormalised over image patch
  keys, as the statistics do). A high ``att`` says a head's maps differ between queries; a high
  local mass says *how*: each query looks at its own neighbourhood (the peak offset: which side).
  :func:`record_locality` computes the same from one captured layer (so it can share a forward
  pass with :func:`nlanalysis.analyze_vit_vit`), plus every image's count of queries per peak
  offset, from which the report pools the share at one offset over photos.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..capture.blocks import valid_cells
from .maps import grid_overlay
from ..schema import HEAD_MEAN
from ..capture.heads import LayerRecord, ViTCapture
from ..data.vit_preprocess import IMAGENET_MEAN, IMAGENET_STD, prepare_vit_image

__all__ = ["DEFAULT_QUERIES", "PhotoMaps", "locality", "photo_maps", "record_locality"]

#: query points as ``(y, x)`` fractions of the photo (not of the padded input).
DEFAULT_QUERIES: tuple[tuple[float, float], ...] = ((0.3, 0.3), (0.5, 0.7), (0.75, 0.4))


@dataclass
class PhotoMaps:
    """One photo's query points and the maps of chosen heads.

    Attributes:
        name: the photo's name.
        image: the photo as the model saw it, ``uint8 [h, w, 3]``: the model input without its
            padding (the resized photo; with ``"crop"`` preprocessing, the crop).
        input_size: ``(H, W)`` of the model input.
        box: ``(top, left, height, width)`` of the model-input pixels that show the photo
            (:attr:`nlanalysis.data.transforms.Prepared.region`).
        grid: ``(H_g, W_g)`` patch grid.
        cells: ``[K, 2]`` patch ``(row, col)`` of each query.
        points: ``[K, 2]`` ``(y, x)`` of each query in model-input pixels (its patch's centre).
        maps: ``{(layer, head): [K, H_g, W_g]}`` each query's weights on the patch keys as the
            model computed them (mass on the class/register tokens left out, not renormalised;
            ``head == HEAD_MEAN``: the mean over heads).
    """

    name: str
    image: np.ndarray
    input_size: tuple[int, int]
    box: tuple[int, int, int, int]
    grid: tuple[int, int]
    cells: np.ndarray
    points: np.ndarray
    maps: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of :attr:`image`."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def overlay(self, layer: int, head: int, query: int) -> np.ndarray:
        """``float32 [h, w]``: the query's map of ``(layer, head)`` over :attr:`image`
        (:func:`nlanalysis.extract.maps.grid_overlay`: stretched over the input, cut to :attr:`box`)."""
        if (layer, head) not in self.maps:
            raise KeyError(f"{self.name}: no maps of layer {layer} head {head} (have {sorted(self.maps)})")
        top, left, h, w = self.box
        return grid_overlay(self.maps[layer, head][query], self.input_size, (h, w), (top, left), self.size)

    def points_on_image(self) -> np.ndarray:
        """``[K, 2]`` query points in the pixels of :attr:`image`."""
        top, left, h, w = self.box
        ph, pw = self.size
        return (self.points - np.array([top, left], dtype=np.float64)) * np.array([ph / h, pw / w])


def photo_maps(
    model: nn.Module,
    photos: Mapping[str, np.ndarray],
    heads: Sequence[tuple[int, int]],
    *,
    queries: Sequence[tuple[float, float]] = DEFAULT_QUERIES,
    size: int = 224,
    preprocessing: str = "pad",
) -> list[PhotoMaps]:
    """The maps of ``heads`` (``(layer, head)``, 0-based; ``head == HEAD_MEAN`` for the head mean) at
    ``queries`` (``(y, x)`` fractions of each photo), one forward per photo.

    Returns:
        One :class:`PhotoMaps` per photo, in order.

    Raises:
        ValueError: a layer or head the model does not have, or a query on a padded patch.
    """
    out = []
    for name, image in photos.items():
        prepared = prepare_vit_image(image, size, preprocessing)
        x, valid = prepared.tensor, prepared.valid
        y0, y1, x0, x1 = prepared.region  # the input pixels that show the photo (all of them after a crop)
        box = top, left, h, w = y0, x0, y1 - y0, x1 - x0
        points = [(top + fy * h, left + fx * w) for fy, fx in queries]
        with torch.no_grad(), ViTCapture(model, queries=points, query_space="image", stats=False) as cap:
            model(x[None])
        records = {rec.layer: rec for rec in cap.records}
        pm = None
        for layer, head in heads:
            rec = records.get(layer)
            if rec is None:
                raise ValueError(f"layer {layer}: the model has attention layers {sorted(records)} (0-based)")
            n_heads = rec.queries.maps.shape[2] - 1
            if not (head == HEAD_MEAN or 0 <= head < n_heads):
                raise ValueError(f"layer {layer} has heads 0..{n_heads - 1} (and {HEAD_MEAN} for the mean), not {head}")
            if pm is None:
                grid = tuple(int(v) for v in rec.layout.grid)
                cells = rec.queries.feature_yx.numpy()
                step = np.array([size / grid[0], size / grid[1]])
                centres = (cells + 0.5) * step
                inside = valid_cells(valid[None], grid)[0].numpy()[cells[:, 0], cells[:, 1]]
                if not inside.all():
                    raise ValueError(f"{name}: query {int(np.flatnonzero(~inside)[0])} falls on a padded patch; move it into the photo")
                seen = _input_pixels(x)[top : top + h, left : left + w]
                pm = PhotoMaps(name, seen, (size, size), box, grid, cells, centres)
            pm.maps[layer, head] = rec.queries.maps[0, :, head].numpy()
        out.append(pm)
    return out


def _input_pixels(x: Tensor) -> np.ndarray:
    """A normalised ``[3, H, W]`` model input back to ``uint8 [H, W, 3]``."""
    rgb = x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return (rgb.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def locality(
    model: nn.Module,
    images: Tensor,
    *,
    valid: Tensor | None = None,
    image_ids: Sequence[Any] | None = None,
    radius: int = 1,
) -> pd.DataFrame:
    """How local each head's maps are: the weight near the query, and where the peak sits.

    Args:
        model: a ViT.
        images: ``[B, 3, H, W]`` model input.
        valid: ``[B, H, W]`` True on photo pixels; padded patches are dropped as queries and keys
            and each row is renormalised over the photo's patch keys (as :func:`analyze_vit` does).
        image_ids: labels of the ``image`` column.
        radius: neighbourhood half-width in patches (1: a 3 x 3 neighbourhood; Chebyshev distance).

    Returns:
        One row per image x layer x head (``head == HEAD_MEAN``: the head-averaged map) with
        ``att_local`` (mean over the photo's patch queries of the weight on the neighbourhood),
        ``att_local_uniform`` (the same for a uniform map over the photo's patches), and
        ``peak_dy`` / ``peak_dx`` / ``peak_share``: the commonest offset, in patches, from a query
        to its map's largest weight, and the share of queries whose peak lies there.
    """
    n = images.shape[0]
    ids = list(image_ids) if image_ids is not None else list(range(n))
    with torch.no_grad(), ViTCapture(model, stats=False, keep_attention=True) as cap:
        model(images)
    return pd.concat([record_locality(rec, valid, ids, radius)[0] for rec in cap.records], ignore_index=True)


def record_locality(
    rec: LayerRecord, valid: Tensor | None, image_ids: Sequence[Any], radius: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`locality` of one layer, from a record of a :class:`ViTCapture` with ``keep_attention=True``
    (so it can share the forward pass of :func:`nlanalysis.analyze_vit_vit`, via ``on_record``).

    Args:
        rec: the layer's record (its ``attention`` kept).
        valid: ``[B, H, W]`` valid pixels of the batch the record is of (``None``: all valid).
        image_ids: the ``B`` images' labels.
        radius: as in :func:`locality`.

    Returns:
        ``(rows, offsets)``: ``rows`` as :func:`locality` returns them for this layer; ``offsets``
        one row per image x head x peak offset that occurs (``image``, ``layer``, ``head``,
        ``peak_dy``, ``peak_dx``, ``queries``: how many of the image's patch queries peak there,
        ``n_query``: its patch queries), so the share at any offset can be pooled over images.
    """
    att = rec.attention
    if att is None:
        raise ValueError(f"layer {rec.layer}: the record has no attention (capture with keep_attention=True)")
    n = att.query.shape[0]
    if len(image_ids) != n:
        raise ValueError(f"layer {rec.layer}: {len(image_ids)} image ids for a batch of {n}")
    rows, offsets = [], []
    gh, gw = att.layout.grid
    vc = valid_cells(valid, (gh, gw)).flatten(1).float() if valid is not None else torch.ones(n, gh * gw)
    yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    near = (((yy[:, None] - yy[None]).abs() <= radius) & ((xx[:, None] - xx[None]).abs() <= radius)).float()
    n_valid = vc.sum(1)
    uniform = ((near @ vc.T).T * vc).sum(1) / n_valid / n_valid  # [B]
    span = 2 * gw + 1
    for b in range(n):
        keep = vc[b].bool()
        n_query = int(keep.sum())
        maps = att.image(b).full()[0]  # [heads, N, N]
        maps = torch.cat([maps, maps.mean(0, keepdim=True)])[:, keep][:, :, keep]
        maps = maps / maps.sum(-1, keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)
        local = (maps * near[keep][:, keep]).sum(-1).mean(-1)  # [heads + 1]
        peak = maps.argmax(-1)  # [heads + 1, n_valid] -> offsets in patches
        dy = yy[keep][peak] - yy[keep][None]
        dx = xx[keep][peak] - xx[keep][None]
        codes = (dy + gh) * span + (dx + gw)
        heads = local.shape[0] - 1
        for h in range(heads + 1):
            head = HEAD_MEAN if h == heads else h
            counts = torch.bincount(codes[h], minlength=(2 * gh + 1) * span)
            top = int(counts.argmax())
            rows.append({
                "image": image_ids[b], "layer": rec.layer, "head": head,
                "att_local": float(local[h]), "att_local_uniform": float(uniform[b]),
                "peak_dy": top // span - gh, "peak_dx": top % span - gw,
                "peak_share": float(counts[top]) / n_query,
            })  # fmt: skip
            for code in torch.nonzero(counts).flatten().tolist():
                offsets.append({"image": image_ids[b], "layer": rec.layer, "head": head, "peak_dy": code // span - gh,
                                "peak_dx": code % span - gw, "queries": int(counts[code]), "n_query": n_query})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(offsets)
