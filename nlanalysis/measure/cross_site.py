"""Cross-site similarity: how alike a query's maps are at two consecutive attention sites of one forward.

DeepViT (Zhou et al. 2021, arXiv 2103.11886, Sec. 3) measures "attention collapse" by the cosine
similarity of the attention maps of the same head in two layers. The column ``cross_site_cos`` of a
site (role ``query`` of :mod:`nlanalysis.schema`, measured with ``query_dependence="cheap"`` or
``"all"``) is the mean over queries of the cosine similarity of query ``i``'s map at this site and at
the previous site of the same forward (:func:`~nlanalysis.metrics.query_dependence.cross_site_similarity`):

* rows, as the issue defines it ("each query's maps"); DeepViT's Eq. 2 compares columns (key
  token ``t``'s weight in every query's map) instead;
* ViT layers, per head: head ``h`` of layer ``l`` against head ``h`` of layer ``l - 1``, as DeepViT (head
  indices are only a convention across layers: the per-head value says whether head ``h`` kept its
  map, not whether the layer did); the head mean against the previous head mean. Layers with
  different head counts compare their head means only;
* NL/GC blocks: the block's map against the previous block's;
* NaN at the first site of a forward and where the two sites' query or key grids differ (NL blocks in
  different ResNet stages, e.g. ``embedded_gaussian_x2``'s ``layer1.1`` and ``layer2.1``);
* queries: the valid ones (padding dropped) whose rows are not all zero at either site; keys: the
  valid keys of the capture's key set (ViT ``keys="all"``: class/register keys too).

Streaming: :class:`CrossSite` is fed each record as the capture makes it (``Capture.on_record``,
during the forward). It keeps the previous site's *lazy* attention of the current batch (its
queries and keys: ``O(N d)``, never a map) and computes both sites' rows a chunk of queries at a time.
A ViT capture that measures the suite (:class:`~nlanalysis.capture.heads.HeadSite`) has already compared
each layer with the one before, from the rows both formed anyway
(:class:`~nlanalysis.measure.head_suite.HeadSuite`): :class:`CrossSite` takes those values.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..metrics.query_dependence import cross_site_similarity
from ..schema import VIT
from .blocks import key_mask
from .query_dep import CROSS_SITE, DEFAULT_LEVEL, rebuild_block_attention
from .stats import nans

__all__ = ["CROSS_SITE", "CrossSite", "keep_options", "site_similarity"]

#: floats of one chunk of a site's rows ``[B, M, n, N_key]`` (32 MiB in float64, with its twin of the other site)
CHUNK_FLOATS = 2**22


@dataclass
class SiteRows:
    """One site's maps as the comparison reads them.

    Attributes:
        call: the model forward of the record (:attr:`~nlanalysis.capture.records.SiteRecord.call`).
        grids: ``(query_shape, key_shape, n_prefix)``: two sites are compared only when these agree.
        maps: ``M``, the maps per image (ViT: heads + 1; NL: 1).
        rows: ``rows(start, stop)`` -> ``[B, M, stop - start, N_key]`` (ViT: every head, then the head mean).
        query_mask: ``[B, N_query]`` bool valid queries; key_mask: ``[B, N_key]`` bool valid keys.
    """

    call: int
    grids: tuple[Any, ...]
    maps: int
    rows: Callable[[int, int], Tensor]
    query_mask: Tensor
    key_mask: Tensor


def site_similarity(prev: SiteRows | None, cur: SiteRows) -> Tensor:
    """``cross_site_cos`` ``[B, M]`` float64 (CPU) of ``cur`` against ``prev`` (the maps of ``cur``, in order).

    NaN everywhere without ``prev`` or when the grids or the batch differ; with different map counts
    (ViT layers with different head counts) only the last maps (the head means) are compared.
    """
    (b, n_query), n_key = cur.query_mask.shape, cur.key_mask.shape[1]
    out = nans(b, cur.maps)
    if prev is None or prev.grids != cur.grids or prev.query_mask.shape[0] != b:
        return out
    pick = slice(None) if prev.maps == cur.maps else slice(-1, None)
    m = len(range(cur.maps)[pick])
    step = max(1, CHUNK_FLOATS // (b * m * n_key))
    device = cur.query_mask.device

    def chunks(site: SiteRows) -> Callable[[], Iterator[tuple[int, Tensor]]]:
        return lambda: ((s, site.rows(s, min(s + step, n_query))[:, pick].to(device)) for s in range(0, n_query, step))

    qm = cur.query_mask & prev.query_mask.to(device)
    km = cur.key_mask & prev.key_mask.to(device)
    out[:, pick] = cross_site_similarity(chunks(prev), chunks(cur), n_query, n_key, key_mask=km[:, None].expand(b, m, n_key),
                                         query_mask=qm[:, None].expand(b, m, n_query)).cpu()  # fmt: skip
    return out


def keep_options(site: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The capture options :class:`CrossSite` needs and ``options`` (a capture's keyword arguments) lack,
    each kept on the device (no copy to the host): an NL record's block input (``keep_input``; none where
    ``keep_tensors`` keeps it), a ViT record's lazy attention (``keep_attention="device"``) where the capture
    does not measure the comparison itself (``stats=False``); ``{}`` when the query-dependence suite is off."""
    if options.get("query_dependence", DEFAULT_LEVEL) == "off":
        return {}
    if site == VIT:  # with the statistics, the suite compares each layer with the previous (HeadSite.cross_site)
        return {} if options.get("keep_attention") or options.get("stats", True) else {"keep_attention": "device"}
    return {} if options.get("keep_tensors") or options.get("keep_input") else {"keep_input": True}


class CrossSite:
    """``cross_site_cos`` of every site of a capture, computed as the capture makes each record.

    Installs itself as the capture's ``on_record`` (calling any callback set before it first). The
    capture must keep each record's input (NL: ``keep_input`` or ``keep_tensors``) or, where it does not
    measure the comparison itself, attention (ViT: ``keep_attention``); :func:`keep_options` says which.

    Args:
        cap: the :class:`~nlanalysis.capture.Capture` (not yet entered, or entered: either works).
        drop: let go of what the records kept for this (``rec.attention``; ``rec.x``, ``z``, ``context``)
            once read: for captures that kept it only for the comparison.

    Attributes:
        values: ``{(call, site name, use): [B, M]}`` float64 of the latest forward.
    """

    def __init__(self, cap: Any, *, drop: bool = False) -> None:
        self.cap, self.drop = cap, drop
        self.values: dict[tuple[int, str, int], Tensor] = {}
        self._blocks = {b.name: b for b in cap.blocks}
        self._prev: SiteRows | None = None
        self._call: int | None = None  # the forward of the latest record
        self._chained = cap.on_record
        cap.on_record = self

    def __call__(self, rec: Any) -> None:
        if self._chained is not None:
            self._chained(rec)
        measured = getattr(getattr(self.cap, "site", None), "cross_site", {}).pop(_key(rec), None)
        if self._call != rec.call:  # a new forward: its first site
            self._prev = None
            self.values.clear()
        self._call = rec.call
        if measured is not None:  # the capture compared the rows itself: no maps read here
            if self.drop:
                rec.attention = None
            self._prev = None
            self.values[_key(rec)] = measured
            return
        with torch.no_grad():
            cur = self._vit_rows(rec) if rec.site == VIT else self._block_rows(rec)
            self.values[_key(rec)] = site_similarity(self._prev, cur)
        self._prev = cur

    def column(self, rec: Any) -> Tensor | None:
        """``cross_site_cos`` ``[B, M]`` of record ``rec`` (``None``: not measured in the latest forward)."""
        return self.values.get(_key(rec))

    def _masks(self, grid: tuple[int, int], batch: int, device: torch.device) -> Tensor:
        """``[B, H, W]`` bool valid cells of ``grid`` in this forward (all True without a valid mask)."""
        valid, _ = self.cap.cell_masks(grid, batch, "attention site")
        return valid.to(device) if valid is not None else torch.ones(batch, *grid, dtype=torch.bool, device=device)

    def _vit_rows(self, rec: Any) -> SiteRows:
        att = rec.attention
        if att is None:
            raise ValueError(f"layer {rec.layer}: cross_site_cos needs the record's attention (capture with keep_attention=True)")
        if self.drop:
            rec.attention = None
        qm = self._masks(att.layout.grid, att.batch_size, att.device).flatten(1)
        km = qm if att.keys == "patch" else torch.cat([qm.new_ones(qm.shape[0], att.layout.n_prefix), qm], dim=1)

        def rows(start: int, stop: int) -> Tensor:
            r = att.rows(start, stop)
            return torch.cat([r, r.mean(dim=1, keepdim=True)], dim=1)

        return SiteRows(rec.call, (att.query_shape, att.key_shape, att.layout.n_prefix), att.num_heads + 1, rows, qm, km)

    def _block_rows(self, rec: Any) -> SiteRows:
        if rec.x is None:
            raise ValueError(f"block {rec.name}: cross_site_cos needs the record's input (capture with keep_input=True)")
        att = rebuild_block_attention(self._blocks[rec.name], rec.x)
        if self.drop:
            rec.x = rec.z = rec.context = None
        valid = self._masks(att.query_shape, att.batch_size, att.device)
        qm, km = valid.flatten(1), key_mask(valid, att.key_shape).flatten(1)
        return SiteRows(rec.call, (att.query_shape, att.key_shape, 0), 1, lambda s, e: att.rows(s, e)[:, None], qm, km)


def _key(rec: Any) -> tuple[int, str, int]:
    """A record's place: its forward, its site and its run there (a module called twice in one forward has two)."""
    return rec.call, rec.name, getattr(rec, "use", 0)
