"""Object-specific context: does a query on an object attend *its* object more than every query does?

OCNet (Yuan et al., arXiv 1809.00916) and DANet (Fu et al., arXiv 1809.02983) read a query's map as
its *object context*. If that is what the maps hold, a query on object ``o`` puts more weight per
unit area on ``o`` than the image's other queries do. The null here is the image's **mean map**:
every query gets ``mbar = mean_i p_i`` (its rows averaged over the counted queries), which keeps the
image's salience map and removes all query dependence.

Definitions, per image (and map), over *clean* keys (valid, with a label >= 0: background 0 or an
object ``1..L-1``; NL keys pooled over several labels are left out) with rows renormalised over
them, and over counted object queries ``i`` (valid, on an object, a row with mass on clean keys):

* the *density* of a row on a key set ``S``: ``p_i(S) / (|S| / K)``, the mass per unit area with
  area as the share of the ``K`` clean keys (1 = uniform attention);
* ``own_object_density``: mean over object queries of the density of their row on their own object;
  ``own_object_null``: the same with every row replaced by ``mbar``;
  ``own_object_lift = own_object_density / own_object_null`` (1 = no object-specific context; a
  query-independent map gives exactly 1);
* ``own_object_lift_objects``: the same against the mean map of the *object* queries only. Where
  object queries attend one salience map more sharply than background queries (a per-query
  temperature, not object-specific context), ``own_object_lift`` exceeds 1 and this one does not:
  the demo's embedded Gaussian gives 1.43 and 1.01;
* ``other_object_density`` / ``other_object_null``: on the image's other objects (all of them
  together), over queries of images with another object;
* ``background_density`` / ``background_null``: on the background (label 0);
* ``same_category_density`` / ``other_category_density``: on other objects of the query's category
  / of other categories (COCO; NaN without categories or without such objects);
  ``same_category_null`` the former with the mean map, ``same_category_lift`` their ratio (on the
  ``query-specific`` scenes a group is one category: the own-group lift of ``reports/controls``);
  where maps are local, the lift reads below 1 without any preference for the category: a local row
  spends its mass on its own object and the cells around it, so its density on the other objects, which
  lie farther off, falls below that of the (near-uniform) mean map (a map by spatial distance alone gave
  0.85 on the ``query-specific`` scenes, ``reports/controls/PLAN.md``, session 15), while
  ``same_category_density / other_category_density``, each query's own row on the two kinds of other
  objects with no null, stays near 1 there (0.99). For the same reason a local map reads an own-object
  lift above 1 (2.3 there): neither lift tells object-specific context from locality.

Each mean is over the queries for which its key set is not empty (NaN if there are none). All of it
follows from one pass: the label-to-label mass ``R[a, b] = sum_{i on a} p_i(keys on b)`` and the
query counts per label (:func:`label_mass`); a query's density is constant within its label, so the
means over queries are sums over labels (:func:`context_from_mass`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["OBJECT_CONTEXT", "LabelMass", "compact_object_labels", "context_from_mass", "label_mass", "object_context"]

#: the statistics, as the ``metrics.csv`` columns name them (:mod:`nlanalysis.schema`).
OBJECT_CONTEXT = (
    "own_object_density", "own_object_null", "own_object_lift", "own_object_lift_objects", "other_object_density", "other_object_null",
    "background_density", "background_null", "same_category_density", "other_category_density", "same_category_null",
    "same_category_lift",
)  # fmt: skip

Chunks = Callable[[], Iterable[tuple[int, Tensor]]]


def _check_labels(query_labels: Tensor, key_labels: Tensor, batch: tuple[int, ...], n_key: int) -> None:
    b = batch[0]
    if query_labels.dim() != 2 or query_labels.shape[0] != b:
        raise ValueError(f"query_labels must be [B, N_query] with B = {b}, got {tuple(query_labels.shape)}")
    if tuple(key_labels.shape) != (b, n_key):
        raise ValueError(f"key_labels must be [B, N_key] = {(b, n_key)}, got {tuple(key_labels.shape)}")


def compact_object_labels(objects: Tensor) -> tuple[Tensor, int]:
    """Object labels ``[B, H, W]`` (``k`` = object ``k``, 0 none, -1 a crowd region) as labels ``0..L-1`` shared by
    the batch (object ids in increasing order; -1 kept: left out) and ``L``."""
    ids = torch.unique(objects[objects > 0])
    left_out = torch.where(objects < 0, -1, 0)  # a crowd region: no label (left out as keys and queries)
    return torch.where(objects > 0, torch.searchsorted(ids, objects) + 1, left_out), len(ids) + 1


class LabelMass:
    """The sums of :func:`label_mass`, fed one chunk of rows at a time (``update(start, r)``), or each row's mass per
    label directly (:meth:`prepare`, then :meth:`add`: maps whose label masses are cheaper than their rows).

    Args: as :func:`label_mass`'s, without the rows.
    """

    def __init__(self, query_labels: Tensor, key_labels: Tensor, n_labels: int) -> None:
        self.query_labels, self.key_labels, self.n_labels = query_labels, key_labels, n_labels
        self.mass = self.count = self.onehot_k = None

    def prepare(self, batch: tuple[int, ...], n_key: int, device: torch.device) -> Tensor:
        """Check the labels against maps ``[*batch, N_query, n_key]`` and set up the sums on ``device``; returns the
        keys' labels one-hot ``[B, N_key, L]`` (float64; 0 for keys that are not clean)."""
        if self.mass is None:
            _check_labels(self.query_labels, self.key_labels, batch, n_key)
            self.query_labels, self.key_labels = self.query_labels.to(device), self.key_labels.to(device)
            kl = self.key_labels
            self.onehot_k = torch.nn.functional.one_hot(kl.clamp(min=0), self.n_labels).double() * (kl >= 0)[..., None]
            self.mass = torch.zeros(*batch, self.n_labels, self.n_labels, dtype=torch.float64, device=device)
            self.count = torch.zeros(*batch, self.n_labels, dtype=torch.float64, device=device)
        return self.onehot_k

    def update(self, start: int, r: Tensor) -> None:
        """Add the rows ``r`` ``[*batch, c, N_key]`` (non-negative) of queries ``start:start + c``."""
        batch = tuple(r.shape[:-2])
        onehot_k = self.prepare(batch, r.shape[-1], r.device)  # on the maps' device
        extra = (1,) * (len(batch) - 1)
        self.add(start, r.to(torch.float64) @ onehot_k.reshape(batch[0], *extra, *onehot_k.shape[1:]))

    def add(self, start: int, per_label: Tensor) -> None:
        """Add queries ``start:start + c`` by their rows' mass on each label's clean keys, ``[*batch, c, L]`` float64
        (after :meth:`prepare`)."""
        batch, c, n_labels = tuple(per_label.shape[:-2]), per_label.shape[-2], self.n_labels
        extra = (1,) * (len(batch) - 1)
        total = per_label.sum(-1, keepdim=True)  # [*batch, c, 1]: mass on clean keys
        ql = self.query_labels[:, start : start + c].reshape(batch[0], *extra, c)
        use = (ql >= 0) & (total[..., 0] > 0)
        onehot_q = torch.nn.functional.one_hot(ql.clamp(min=0), n_labels).double() * use[..., None]
        self.mass += onehot_q.transpose(-1, -2) @ (per_label / torch.where(total > 0, total, 1.0))
        self.count += onehot_q.sum(-2)

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(R, n, area)`` as :func:`label_mass` returns them."""
        if self.mass is None:
            raise ValueError("the maps have no query rows")
        return self.mass, self.count, self.onehot_k.sum(1)


def label_mass(rows: Chunks, query_labels: Tensor, key_labels: Tensor, n_labels: int) -> tuple[Tensor, Tensor, Tensor]:
    """One pass over the rows: the mass between labels, the counted queries and the clean keys per label.

    Args:
        rows: chunks ``(start, r)`` of the maps, ``r`` ``[*batch, c, N_key]`` non-negative
            (``batch = (B,)`` or ``(B, heads)``).
        query_labels: ``[B, N_query]`` long, each query's label (``0``: background, ``-1``: not counted).
        key_labels: ``[B, N_key]`` long, each key's label (``-1``: not a clean key).
        n_labels: ``L``, labels ``0..L-1``.

    Returns:
        ``R`` ``[*batch, L, L]`` float64 (row ``a``: the summed renormalised rows of the queries on
        ``a``, column ``b``: their mass on the keys of ``b``), ``n`` ``[*batch, L]`` counted queries
        per label and ``area`` ``[B, L]`` clean keys per label.
    """
    acc = LabelMass(query_labels, key_labels, n_labels)
    for start, r in rows():
        acc.update(start, r)
    return acc.result()


def _mean(num: Tensor, weight: Tensor, ok: Tensor) -> Tensor:
    """``sum num / sum weight`` over the labels where ``ok`` (NaN where no weight)."""
    den = torch.where(ok, weight, 0.0).sum(-1)
    return torch.where(den > 0, torch.where(ok, num, 0.0).sum(-1) / torch.where(den > 0, den, 1.0), torch.nan)


def _density(mass: Tensor, count: Tensor, share: Tensor, sets: Tensor, first: int = 0) -> tuple[Tensor, Tensor]:
    """Mean density over object queries on key sets ``sets`` ``[B, L, L]`` (row ``a``: the keys of a
    query on ``a``), of the real rows (``mass``) and of the mean map of the queries on labels ``first..``
    (0: every query; 1: object queries only); ``share`` ``[*batch, L]``."""
    extra = (1,) * (mass.dim() - 3)
    sets = sets.reshape(sets.shape[0], *extra, *sets.shape[1:]).to(torch.float64)
    area = (sets * share[..., None, :]).sum(-1)  # [*batch, L]: each label's set, as a share of clean keys
    real = (mass * sets).sum(-1)  # summed over the label's queries
    mean_map = mass[..., first:, :].sum(-2) / count[..., first:].sum(-1, keepdim=True).clamp(min=1)  # [*batch, L]
    null = count * (sets * mean_map[..., None, :]).sum(-1)
    ok = (area > 0) & (count > 0)
    ok[..., 0] = False  # background queries are not object queries
    safe = torch.where(ok, area, 1.0)
    return _mean(real / safe, count, ok), _mean(null / safe, count, ok)


def context_from_mass(mass: Tensor, count: Tensor, area: Tensor, categories: Tensor | None = None) -> dict[str, Tensor]:
    """The statistics of :data:`OBJECT_CONTEXT`, ``{name: [*batch]}`` float64, from :func:`label_mass`'s
    results; ``categories`` ``[B, L]`` long: each label's category (label 0 and unknown: ``-1``) or ``None``."""
    b, n_labels = area.shape
    share = area / area.sum(-1, keepdim=True).clamp(min=1)
    share = share.reshape(b, *(1,) * (mass.dim() - 3), n_labels)
    eye = torch.eye(n_labels, dtype=torch.bool, device=area.device).expand(b, -1, -1)
    objects = torch.arange(n_labels, device=area.device) > 0
    other = ~eye & objects[None, None, :]
    background = (~objects)[None, None, :].expand(b, n_labels, -1)
    out: dict[str, Tensor] = {}
    out["own_object_density"], out["own_object_null"] = _density(mass, count, share, eye)
    out["own_object_lift"] = out["own_object_density"] / out["own_object_null"]
    out["own_object_lift_objects"] = out["own_object_density"] / _density(mass, count, share, eye, first=1)[1]
    out["other_object_density"], out["other_object_null"] = _density(mass, count, share, other)
    out["background_density"], out["background_null"] = _density(mass, count, share, background)
    nan = torch.full_like(out["own_object_density"], torch.nan)
    out["same_category_density"], out["other_category_density"] = nan, nan.clone()
    out["same_category_null"], out["same_category_lift"] = nan.clone(), nan.clone()
    if categories is not None:
        if tuple(categories.shape) != (b, n_labels):
            raise ValueError(f"categories must be [B, L] = {(b, n_labels)}, got {tuple(categories.shape)}")
        categories = categories.to(area.device)
        same = categories[:, :, None] == categories[:, None, :]
        known = (categories >= 0)[:, :, None] & (categories >= 0)[:, None, :]
        out["same_category_density"], out["same_category_null"] = _density(mass, count, share, other & same & known)
        out["same_category_lift"] = out["same_category_density"] / out["same_category_null"]
        out["other_category_density"] = _density(mass, count, share, other & ~same & known)[0]
    return out


def object_context(
    rows: Chunks, query_labels: Tensor, key_labels: Tensor, categories: Tensor | None = None, n_labels: int | None = None
) -> dict[str, Tensor]:
    """The object-context statistics (:data:`OBJECT_CONTEXT`) of non-negative maps, ``{name: [*batch]}`` float64.

    Args:
        rows: chunks ``(start, r)`` of the maps ``[*batch, c, N_key]`` (a callable giving one pass).
        query_labels: ``[B, N_query]`` long labels ``0..L-1`` of the queries (0: background, -1: not counted).
        key_labels: ``[B, N_key]`` long labels of the keys (-1: left out).
        categories: ``[B, L]`` long category of each label (-1: none), or ``None`` (no category columns).
        n_labels: ``L`` (default: one more than the largest label).
    """
    if n_labels is None:
        n_labels = int(max(int(query_labels.max()), int(key_labels.max()), 0)) + 1
    mass, count, area = label_mass(rows, query_labels, key_labels, n_labels)
    return context_from_mass(mass, count, area, categories)
