"""The object-context statistics of every captured site, NL block and ViT layer alike.

:func:`nlanalysis.metrics.object_context.object_context` measures how much more weight per unit
area a query puts on its own object than the image's mean map does (``own_object_lift``, and the
densities on other objects, background and same/other-category objects). :class:`ObjectContext`
runs it as each record of a capture is made (the capture's ``on_record``), on the site's maps as
:mod:`nlanalysis.measure.query_dep` streams them (:func:`~nlanalysis.measure.query_dep.block_maps`,
:func:`~nlanalysis.measure.query_dep.head_maps`: an NL block's one map, a ViT layer's heads and head
mean), with the object labels of the forward (:meth:`nlanalysis.capture.Capture.set_objects`; each
cell takes the label at its centre, as for ``att_own_object``) and, where set, the category of each
object (``capture.object_categories``: per image, ``category_ids[k - 1]`` of object ``k``).

Queries and keys on padding are left out; NL keys pooled over several labels belong to no key set;
signed maps (dot product) get NaN. An NL block measured with the query-dependence suite needs no maps:
the suite's one row pass left the label mass on its stats (:data:`~nlanalysis.measure.query_dep.OBJECT_MASS`),
and only the object categories are applied here. Otherwise (a capture without statistics) an NL block's
maps are rebuilt from its input (the record's ``x``, kept for this and then let go of); a ViT layer's
come from the record's kept attention.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..adapters import list_blocks
from ..capture.core import Capture
from ..capture.records import SiteRecord
from ..measure.blocks import key_labels, key_mask
from ..measure.query_dep import OBJECT_MASS, SiteMaps, block_maps, head_maps, rebuild_block_attention
from ..metrics.object_context import OBJECT_CONTEXT, compact_object_labels, context_from_mass, object_context
from ..schema import HEAD_MEAN, NL

__all__ = ["OBJECT_CONTEXT", "ObjectContext", "compact_labels", "with_object_context"]


def compact_labels(objects: Tensor, categories: Sequence[Sequence[int]] | None) -> tuple[Tensor, Tensor | None, int]:
    """Object labels ``[B, H, W]`` (``k`` = object ``k``, 0 none) as labels ``0..L-1`` shared by the batch,
    each label's category ``[B, L]`` (-1: label 0, or an object without one) or ``None``, and ``L``."""
    compact, n_labels = compact_object_labels(objects)
    ids = torch.unique(objects[objects > 0])
    if categories is None:
        return compact, None, n_labels
    if len(categories) != objects.shape[0]:
        raise ValueError(f"object categories for {len(categories)} images, object labels for {objects.shape[0]}")
    cats = torch.full((objects.shape[0], n_labels), -1, dtype=torch.int64)
    for b, per_image in enumerate(categories):
        for c, k in enumerate(ids.tolist(), start=1):
            if 0 < k <= len(per_image):
                cats[b, c] = int(per_image[k - 1])
    return compact, cats.to(objects.device), n_labels


class ObjectContext:
    """Measures each record of a capture as it is made; :meth:`frame` gives the rows to merge.

    Args:
        model: the analysed model (NL blocks: their maps are rebuilt by their adapters).
        chunk_size: queries per chunk of the NL maps (``None``: 256).
        drop: let go of an NL record's kept input once measured (``False`` where a later callback,
            e.g. :class:`~nlanalysis.measure.cross_site.CrossSite`, still reads it and lets go of it).
    """

    def __init__(self, model: nn.Module, chunk_size: int | None = None, *, drop: bool = True) -> None:
        self.blocks = {b.name: b for b in list_blocks(model)}
        self.chunk_size = chunk_size or 256
        self.drop = drop
        self.cap: Capture | None = None
        self.rows: list[dict[str, Any]] = []

    def attach(self, cap: Capture) -> Capture:
        """Measure the records of ``cap`` (its ``on_record``); returns ``cap``."""
        self.cap, self.rows = cap, []
        cap.on_record = self.on_record
        return cap

    def on_record(self, rec: SiteRecord) -> None:
        try:
            found = self._from_stats(rec)  # an NL block measured with the suite: its pass gave the label mass
            site = self._site(rec) if found is None else None
        finally:
            if self.drop:
                rec.x = rec.z = rec.context = None  # kept only to rebuild the maps here
        if found is None and site is None:
            return
        found = found if found is not None else self._measure(*site)
        for b in range(found[OBJECT_CONTEXT[0]].shape[0]):
            for m in range(found[OBJECT_CONTEXT[0]].shape[1]):
                key = {"image": b, "block": rec.name}
                if rec.site != NL:
                    key["head"] = HEAD_MEAN if m == found[OBJECT_CONTEXT[0]].shape[1] - 1 else m
                self.rows.append({**key, **{n: float(v[b, m]) for n, v in found.items()}})

    def frame(self) -> pd.DataFrame:
        """One row per (image, block[, head]) measured: ``image``, ``block`` (ViT: ``head``) and the statistics."""
        return pd.DataFrame(self.rows)

    def _from_stats(self, rec: SiteRecord) -> dict[str, Tensor] | None:
        """``{statistic: [B, 1]}`` from the label mass :func:`~nlanalysis.measure.blocks.measure_block` left on an
        NL record's stats (the suite's row pass: no maps rebuilt); ``None`` where it left none."""
        mass = getattr(rec.stats, OBJECT_MASS, False) if rec.site == NL and self.cap is not None else False
        if mass is False:
            return None
        b = rec.stats.att.shape[0]
        if mass is None:  # signed maps: mass and density need non-negative weights
            return {n: torch.full((b, 1), torch.nan, dtype=torch.float64) for n in OBJECT_CONTEXT}
        _, objects = self.cap.cell_masks(rec.query_shape, b, "site input")
        _, cats, n_labels = compact_labels(objects, getattr(self.cap, "object_categories", None))
        if mass[0].shape[-1] != n_labels:
            raise ValueError(f"block {rec.name}: the suite's label mass has {mass[0].shape[-1]} labels, the objects {n_labels}")
        found = context_from_mass(*mass, cats)
        return {n: v.reshape(b, -1).cpu() for n, v in found.items()}

    def _site(self, rec: SiteRecord) -> tuple[SiteMaps, Tensor, Tensor, Tensor | None, int] | None:
        """The record's maps, query and key labels ``[B, N]`` (-1: left out), categories and ``L``; ``None``
        without object labels."""
        cap = self.cap
        source = rec.x if rec.site == NL else rec.attention
        if cap is None or source is None:
            return None
        b = source.shape[0] if rec.site == NL else source.batch_size
        valid, objects = cap.cell_masks(rec.query_shape, b, "site input")
        if objects is None:
            return None
        compact, cats, n_labels = compact_labels(objects, getattr(cap, "object_categories", None))
        if rec.site == NL:
            att = rebuild_block_attention(self.blocks[rec.name], rec.x)
            kmask = key_mask(valid, att.key_shape).flatten(1) if valid is not None else None
            keys = key_labels(compact, att.key_shape).flatten(1)
            site = block_maps(att, None, None, None, self.chunk_size)
        else:
            kmask, keys = (valid.flatten(1) if valid is not None else None), compact.flatten(1)
            site = head_maps(rec.attention, None, None, None)
        queries = compact.flatten(1)
        if valid is not None:
            queries, keys = torch.where(valid.flatten(1), queries, -1), torch.where(kmask, keys, -1)
        return site, queries, keys, cats, n_labels

    def _measure(self, site: SiteMaps, queries: Tensor, keys: Tensor, cats: Tensor | None, n_labels: int) -> dict[str, Tensor]:
        """``{statistic: [B, M]}`` float64 over the site's map groups (NaN for signed maps: an NL block's one map)."""
        parts = []
        for g in site.groups:
            if g.signed:  # mass and density need non-negative weights
                parts.append({n: torch.full((queries.shape[0], 1), torch.nan, dtype=torch.float64) for n in OBJECT_CONTEXT})
                continue
            rows = lambda g=g: ((s, r[..., site.spatial_keys]) for s, r in g.rows())  # noqa: E731
            found = object_context(rows, queries, keys, cats, n_labels)
            parts.append({n: v.reshape(queries.shape[0], -1).cpu() for n, v in found.items()})
        return {n: torch.cat([p[n] for p in parts], dim=1) for n in OBJECT_CONTEXT}


def with_object_context(frame: pd.DataFrame, context: ObjectContext | None) -> pd.DataFrame:
    """``frame`` (rows of one forward) with the statistics ``context`` measured, NaN where it measured none."""
    found = context.frame() if context is not None else pd.DataFrame()
    if found.empty:
        return frame.assign(**{n: float("nan") for n in OBJECT_CONTEXT})
    keys = [k for k in ("image", "block", "head") if k in found]
    return frame.drop(columns=[n for n in OBJECT_CONTEXT if n in frame]).merge(found, on=keys, how="left")
