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
signed maps (dot product) get NaN. With ``locality=True`` each map also gets its locality control
(:mod:`nlanalysis.metrics.locality_control`: maps by distance alone at the map's own ``att_distance_px``, the
same lifts on them; the ``ctrl_local_*`` columns), NaN where the suite measured no distance or the valid cells
are not a rectangle. An NL block measured with the query-dependence suite needs no maps:
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
from ..measure.query_dep import OBJECT_MASS, SiteMaps, block_maps, head_maps, key_cell, rebuild_block_attention
from ..metrics.locality_control import LOCALITY_COLUMNS, LocalityGrid, locality_controls
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
        locality: add each map's locality control (:data:`~nlanalysis.metrics.locality_control.LOCALITY_COLUMNS`;
            needs the suite's ``att_distance_px`` on the records).
    """

    def __init__(self, model: nn.Module, chunk_size: int | None = None, *, drop: bool = True, locality: bool = False) -> None:
        self.blocks = {b.name: b for b in list_blocks(model)}
        self.chunk_size = chunk_size or 256
        self.drop = drop
        self.locality = locality
        self._grids: dict[tuple, LocalityGrid | None] = {}  # per geometry and valid region (their distance tables)
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
        n_images, n_maps = found[OBJECT_CONTEXT[0]].shape
        control = self._locality(rec, n_images, n_maps) if self.locality else None
        for b in range(n_images):
            for m in range(n_maps):
                key = {"image": b, "block": rec.name}
                if rec.site != NL:
                    key["head"] = HEAD_MEAN if m == n_maps - 1 else m
                extra = control[b][m] if control is not None else {}
                self.rows.append({**key, **{n: float(v[b, m]) for n, v in found.items()}, **extra})

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

    def _labels(self, rec: SiteRecord, b: int) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor, Tensor | None, int] | None:
        """The forward's valid queries and keys ``[B, H, W]`` (``None``: all valid), query and key labels ``[B, N]``
        (-1: left out), categories and ``L``; ``None`` without object labels."""
        valid, objects = self.cap.cell_masks(rec.query_shape, b, "site input")
        if objects is None:
            return None
        compact, cats, n_labels = compact_labels(objects, getattr(self.cap, "object_categories", None))
        kvalid = key_mask(valid, rec.key_shape) if valid is not None else None
        keys = key_labels(compact, rec.key_shape).flatten(1) if rec.site == NL else compact.flatten(1)
        queries = compact.flatten(1)
        if valid is not None:
            queries, keys = torch.where(valid.flatten(1), queries, -1), torch.where(kvalid.flatten(1), keys, -1)
        return valid, kvalid, queries, keys, cats, n_labels

    def _locality(self, rec: SiteRecord, n_images: int, n_maps: int) -> list[list[dict[str, float]]]:
        """Per image and map the locality control's columns (NaN where it cannot be read)."""
        nan = dict.fromkeys(LOCALITY_COLUMNS, float("nan"))
        distance = getattr(rec.stats, "att_distance_px", None)
        labels = self._labels(rec, n_images) if self.cap is not None else None
        layout = getattr(rec, "layout", None)
        stride = (layout.patch_size if layout is not None and layout.patch_size else None) or (
            self.cap.stride(rec.query_shape) if self.cap is not None else None)  # fmt: skip
        if distance is None or labels is None or stride is None:
            return [[nan] * n_maps for _ in range(n_images)]
        valid, kvalid, queries, keys, cats, n_labels = labels
        distance = torch.as_tensor(distance).reshape(n_images, n_maps)
        out = []
        for b in range(n_images):  # an image's maps share its grid and labels: one batched control
            grid = self._grid(rec, stride, None if valid is None else valid[b], None if kvalid is None else kvalid[b])
            out.append([nan] * n_maps if grid is None else locality_controls(
                distance[b].tolist(), grid, queries[b].cpu(), keys[b].cpu(), None if cats is None else cats[b].cpu(), n_labels))
        return out

    def _grid(self, rec: SiteRecord, stride: tuple[float, float], valid: Tensor | None, kvalid: Tensor | None) -> LocalityGrid | None:
        """The site's :class:`LocalityGrid` for one image's valid cells (kept per geometry and region); ``None`` where the
        valid cells are not a rectangle."""
        qv = None if valid is None else valid.cpu()
        kv = None if kvalid is None else kvalid.cpu()
        key = (tuple(rec.query_shape), tuple(rec.key_shape), tuple(stride), None if qv is None else qv.numpy().tobytes(),
               None if kv is None else kv.numpy().tobytes())  # fmt: skip
        if key not in self._grids:
            try:
                self._grids[key] = LocalityGrid.of(rec.query_shape, stride, rec.key_shape, key_cell(rec.query_shape, rec.key_shape, stride), qv, kv)
            except ValueError:  # not a rectangle: the control's maps would not be separable
                self._grids[key] = None
        return self._grids[key]

    def _site(self, rec: SiteRecord) -> tuple[SiteMaps, Tensor, Tensor, Tensor | None, int] | None:
        """The record's maps, query and key labels ``[B, N]`` (-1: left out), categories and ``L``; ``None``
        without object labels."""
        source = rec.x if rec.site == NL else rec.attention
        if self.cap is None or source is None:
            return None
        labels = self._labels(rec, source.shape[0] if rec.site == NL else source.batch_size)
        if labels is None:
            return None
        if rec.site == NL:
            site = block_maps(rebuild_block_attention(self.blocks[rec.name], rec.x), None, None, None, self.chunk_size)
        else:
            site = head_maps(rec.attention, None, None, None)
        return site, *labels[2:]

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
    """``frame`` (rows of one forward) with the statistics ``context`` measured (and its locality control's, where on),
    NaN where it measured none."""
    names = [*OBJECT_CONTEXT, *(LOCALITY_COLUMNS if context is not None and context.locality else ())]
    found = context.frame() if context is not None else pd.DataFrame()
    if found.empty:
        return frame.assign(**{n: float("nan") for n in names})
    keys = [k for k in ("image", "block", "head") if k in found]
    return frame.drop(columns=[n for n in names if n in frame]).merge(found, on=keys, how="left")
