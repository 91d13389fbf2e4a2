"""What kind of query dependence a site's maps have: the issue-15 columns of NL blocks and ViT heads alike.

:func:`query_dependence` runs the streamed statistics of :mod:`nlanalysis.metrics.query_dependence`
and :mod:`nlanalysis.metrics.decomposition` on the maps of one site (:class:`SiteMaps`: groups of
maps, e.g. a ViT layer's heads ``[B, heads]`` and its head mean ``[B]``), in eager PyTorch from the
site's lazy rows, whatever kernel measured the other columns (so eager and native runs give the same
values). ``level`` (:data:`LEVELS`): ``"off"`` (nothing), ``"cheap"`` (:data:`CHEAP`) or ``"all"``
(also :data:`EXPENSIVE`: the rank-1 fit of ``logit_rank1`` reads the maps twice for softmax maps, the
Gram matrix then the gain-only maps; with more than :data:`~nlanalysis.metrics.rank1.GRAM_MAX_KEYS` keys,
a few passes of subspace iteration instead of the Gram matrix).

What each map gives (NaN where a statistic is not defined for it):

* ``logit_rank1``: of the logits of softmax maps (the head mean: ``log`` of the mean map); of the
  maps themselves where they are linear in a score (dot product, concatenation). A shared map
  (GC, SNL) is rank 1 trivially: every row is the same, the share is 1 up to rounding; NaN where the centred
  logits are 0 to rounding (a flat map, e.g. a uniform shared one: no key profile).
* ``att_gain_only``, ``gain_only_tv``: softmax maps only.
* ``unary_var_share``, ``att_pairwise_only``: maps with explicit ``q.k`` logits (Gaussian,
  embedded Gaussian, dot product, ViT heads); for dot product the pairwise-only map is the
  pairwise term itself (no softmax).
* ``att_abs``, ``att_norm_weighted``: signed maps (dot product) only; NaN for non-negative maps
  (where ``att_abs`` would equal ``att``).
* The cosine distances (``att_gain_only``, ``att_pairwise_only``, ``att_abs``, ``att_norm_weighted``) are in the
  run's ``convention`` and ``zero`` rule, as ``att`` (``cos`` of :func:`suite_pass`).
* ``qk_nmi``, ``att_distance_px``, ``att_local``, ``att_local_uniform``: non-negative maps, rows
  renormalised over valid (ViT: patch) keys; queries whose row is all zero there (no normal float32 weight)
  are left out, each map counting its own (ViT: a head's row can underflow where another's does not;
  :class:`~.head_suite.HeadSuite` and the native pass alike). One pass over the rows gives all four
  (:func:`~nlanalysis.metrics.query_dependence.spatial_stats`).

``cross_site_cos`` (:data:`CROSS_SITE`) compares a site with the previous one of the forward: it is
measured beside the capture (:mod:`.cross_site`), not here.

Passes over the maps (:func:`suite_pass`): one per map group feeds every per-row statistic above, the
object context's label mass (:mod:`nlanalysis.metrics.object_context`, NL blocks) and the rank-1 fit's
Gram matrix; softmax maps form their logits once for it (``rows = softmax(logits)``). ``"all"`` adds one
pass for the gain-only maps (and, beyond :data:`~nlanalysis.metrics.rank1.GRAM_MAX_KEYS` keys, the
subspace steps after the first). :func:`~.blocks.measure_block` feeds the same pass to an NL block's map
statistics where they are eager (not the native softmax kernel), so its rows are formed once in all; the
DNL split forms its pairwise-only maps from ``q`` and ``k``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..blocks.attention import LazyAttention, PairwiseAttention
from ..blocks.heads import HeadAttention
from ..metrics.decomposition import Rank1, dnl_split, gain_only, log_rows
from ..metrics.object_context import LabelMass
from ..metrics.query_dependence import DistanceSums, NMISums, SignedSums, Stream, attention_distance
from ..metrics.rank1 import complete, profile_step
from ..schema import NL, query_columns
from .stats import nans

__all__ = ["CHEAP", "COLUMNS", "CROSS_SITE", "DEFAULT_LEVEL", "EXPENSIVE", "LEVELS", "OBJECT_MASS", "MapGroup", "ObjectLabels", "SiteMaps", "block_maps", "key_cell",
           "check_level", "grid_centres", "head_maps", "local_mass", "query_dependence", "rebuild_block_attention", "suite_pass"]  # fmt: skip

LEVELS = ("off", "cheap", "all")
#: the level of the captures, ``analyze`` and ``extract`` when none is given: the cheap suite costs little beside
#: the map statistics (its per-row sums come from the native row pass, :mod:`.native_suite`)
DEFAULT_LEVEL = "cheap"
#: the suite's column that compares a site with the previous one (:mod:`.cross_site`), not measured per site here
CROSS_SITE = "cross_site_cos"
#: the query-dependence columns of one site's maps (:mod:`nlanalysis.schema`: role ``query``, and the 3x3 local mass)
COLUMNS = tuple(c for c in query_columns(NL) if c != CROSS_SITE)
EXPENSIVE = ("logit_rank1", "att_gain_only", "gain_only_tv")
CHEAP = tuple(c for c in COLUMNS if c not in EXPENSIVE)

Chunks = Callable[[], Iterator[tuple[int, Tensor]]]


def rebuild_block_attention(block: Any, x: Tensor) -> LazyAttention:
    """The lazy attention of an NL block for its kept input ``x`` ``[B, C, H, W]``, rebuilt by its adapter
    on the block's device without gradients (``block``: an :class:`~nlanalysis.adapters.BlockInfo`)."""
    param = next(block.module.parameters(), None)
    with torch.no_grad():
        return block.adapter.attention(block.module, x.to(param.device if param is not None else x.device))


def check_level(level: str) -> str:
    """``level`` if it is one of :data:`LEVELS` (ValueError otherwise)."""
    if level not in LEVELS:
        raise ValueError(f"query_dependence must be one of {LEVELS}, got {level!r}")
    return level


@dataclass
class MapGroup:
    """Maps ``[*batch, N_query, N_key]`` of one site measured together (``batch`` = ``(B,)`` or ``(B, heads)``).

    Attributes:
        rows: the maps as the site gives them (chunks of queries).
        logits: chunks of softmax logits (``None``: not a softmax map; :attr:`rows` are the score).
        signed: the maps can be negative (dot product).
        qk: ``(q [*batch, N_query, d], k [*batch, N_key, d], scale, softmax)`` of explicit ``q.k``
            logits, or ``None``; ``softmax``: the site's map is a softmax of them.
        n_query: queries of the maps.
        query_mask: ``[*batch, N_query]`` bool queries that count (valid, row not all zero), or ``None``.
        joint: one pass giving ``(start, rows, logits)`` with each chunk formed once (``None``: :attr:`rows`
            and :attr:`logits` read side by side).
    """

    rows: Chunks
    logits: Chunks | None
    signed: bool
    qk: tuple[Tensor, Tensor, float, bool] | None
    n_query: int
    query_mask: Tensor | None = None
    joint: Callable[[], Iterator[tuple[int, Tensor, Tensor | None]]] | None = None


@dataclass
class SiteMaps:
    """A site's map groups (their values are concatenated along the map axis ``M``) and its geometry.

    Attributes:
        groups: the map groups, in map order (ViT: the heads ``[B, heads]``, then the head mean ``[B]``).
        key_mask: ``[B, N_key]`` bool valid keys, or ``None``.
        query_pos, key_pos: ``[N_query, 2]`` / ``[N_key, 2]`` cell centres in input pixels ``(y, x)``,
            or ``None`` (input size unknown: ``att_distance_px`` NaN).
        key_cell: the key grid's cell size in pixels ``(h, w)``.
        spatial_keys: key columns that lie on the grid (ViT ``keys="all"``: the patch keys after the prefix).
    """

    groups: list[MapGroup]
    key_mask: Tensor | None
    query_pos: Tensor | None
    key_pos: Tensor | None
    key_cell: tuple[float, float]
    spatial_keys: slice = field(default_factory=lambda: slice(None))


def grid_centres(grid: tuple[int, int], cell: tuple[float, float]) -> Tensor:
    """``[H * W, 2]`` centres ``(y, x)`` in pixels of a row-major grid of cells of size ``cell`` (float64, CPU).

    One tensor per grid and cell, shared by every caller (every layer of every forward asks): read it, never
    write into it."""
    return _grid_centres((int(grid[0]), int(grid[1])), (float(cell[0]), float(cell[1])))


@functools.lru_cache(maxsize=64)
def _grid_centres(grid: tuple[int, int], cell: tuple[float, float]) -> Tensor:
    with torch.inference_mode(False):  # a plain tensor even when first asked inside inference mode
        yy, xx = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij")
        return torch.stack([(yy.flatten() + 0.5) * cell[0], (xx.flatten() + 0.5) * cell[1]], dim=1)


def _geometry(query_shape: tuple[int, int], key_shape: tuple[int, int],
              stride: tuple[float, float] | None) -> tuple[Tensor | None, Tensor | None, tuple[float, float]]:
    """Cell centres of the query and key grids in input pixels, and the key cell; keys on the query
    grid or a 2x2 max-pool of it (the key grid's cell then spans two query cells)."""
    if stride is None:
        return None, None, (1.0, 1.0)
    cell = key_cell(query_shape, key_shape, stride)
    return grid_centres(query_shape, stride), grid_centres(key_shape, cell), cell


def key_cell(query_shape: tuple[int, int], key_shape: tuple[int, int], stride: tuple[float, float]) -> tuple[float, float]:
    """The key grid's cell in input pixels: the query cell ``stride``, or twice it for keys on a 2x2 max-pool of the query grid."""
    factor = 1.0 if tuple(key_shape) == tuple(query_shape) else 2.0
    return stride[0] * factor, stride[1] * factor


def block_maps(att: LazyAttention, query_mask: Tensor | None, key_mask: Tensor | None, stride: tuple[float, float] | None,
               chunk_size: int = 256) -> SiteMaps:  # fmt: skip
    """The one map of an NL/GC block as :class:`SiteMaps`; ``query_mask`` ``[B, N_q]``: the queries that
    count (valid and not all zero), ``stride``: input pixels per query cell ``(y, x)`` (``None``: unknown)."""

    def rows() -> Iterator[tuple[int, Tensor]]:
        return att.chunks(chunk_size)

    logits, qk, joint = None, None, None
    if isinstance(att, PairwiseAttention):
        if att.distribution:
            logits = lambda: ((s, att.logits(s, s + chunk_size)) for s in range(0, att.n_query, chunk_size))  # noqa: E731
            joint = lambda: ((s, lg.softmax(dim=-1), lg) for s, lg in logits())  # noqa: E731  (the rows att.chunks gives)
        if att.mode != "concatenation":  # q.k logits (dot product: the map is q.k / N_k, no softmax)
            scale = att.scale if att.distribution else 1.0 / att.n_key
            qk = (att.query, att.key.transpose(1, 2), scale, att.distribution)
    elif att.distribution:  # a shared softmax map: its logits are log p up to a constant
        logits = log_rows(rows)
        joint = _with_log(rows)
    group = MapGroup(rows, logits, not att.nonnegative, qk, att.n_query, query_mask, joint)
    return SiteMaps([group], key_mask, *_geometry(att.query_shape, att.key_shape, stride))


def _with_log(rows: Chunks, floor: float = 1e-30) -> Callable[[], Iterator[tuple[int, Tensor, Tensor]]]:
    """``(start, p, log p)`` of a source of probabilities, each chunk formed once (the logits of
    :func:`~nlanalysis.metrics.decomposition.log_rows`)."""
    return lambda: ((s, r, torch.log(r.to(torch.float64).clamp_min(floor))) for s, r in rows())


def head_maps(att: HeadAttention, query_mask: Tensor | None, key_mask: Tensor | None, stride: tuple[float, float] | None,
              chunk_size: int | None = None) -> SiteMaps:  # fmt: skip
    """A ViT layer's maps as :class:`SiteMaps`: its heads ``[B, heads]`` (softmax of ``scale q.k`` over the
    keys: with ``keys="patch"`` the rows renormalised over patch keys), then the head mean (logits: ``log``
    of the mean map)."""
    b, heads, first = att.batch_size, att.num_heads, att.first_key
    step = chunk_size or max(1, 2**21 // max(1, b * heads * att.n_key))
    spans = [(s, min(s + step, att.n_query)) for s in range(0, att.n_query, step)]
    rows = lambda: ((s, att.rows(s, e)) for s, e in spans)  # noqa: E731
    logits = lambda: ((s, att.logits(slice(s, e))[..., first:]) for s, e in spans)  # noqa: E731
    mean = lambda: ((s, r.mean(dim=1)) for s, r in rows())  # noqa: E731
    qm = _expand(query_mask, (b, heads)) if query_mask is not None else None
    qk = (att.scaled_query(slice(None)), att.key[:, :, first:], 1.0, True)
    groups = [MapGroup(rows, logits, False, qk, att.n_query, qm),
              MapGroup(mean, log_rows(mean), False, None, att.n_query, query_mask, _with_log(mean))]  # fmt: skip
    spatial = slice(att.layout.n_prefix, None) if att.keys == "all" else slice(None)
    return SiteMaps(groups, key_mask, *_geometry(att.query_shape, att.query_shape, stride), spatial_keys=spatial)


def local_mass(maps: Tensor, cells: Tensor, radius: int = 1) -> Tensor:
    """``att_local``: the mean weight rows of ``maps`` ``[*batch, N, N]`` put on the keys within ``radius``
    cells of their query along both axes (the ``(2 radius + 1)^2`` neighbourhood), queries and keys at
    integer ``cells`` ``[N, 2]``; float64 ``[*batch]``. The suite's 3x3 local mass, one definition
    (:func:`~nlanalysis.metrics.query_dependence.attention_distance`: reach 1.5 key cells)."""
    return attention_distance(maps, cells, cells, (2 * radius + 1) / 3)[1]


def query_dependence(site: SiteMaps, level: str, cos: dict | None = None) -> dict[str, Tensor]:
    """The query-dependence columns ``{name: [B, M]}`` float64 (CPU) of a site's maps; ``{}`` when ``level == "off"``
    (``cos``: as :func:`suite_pass`)."""
    return suite_pass(site, level, cos=cos)[0]


#: the attribute of an NL block's :class:`~.stats.SiteStats` holding the object context's label mass from the
#: suite's pass (``(R, n, area)``, ``None`` for signed maps; absent: not measured), for :mod:`nlanalysis.extract.object_sites`
OBJECT_MASS = "object_mass"


@dataclass
class ObjectLabels:
    """An NL site's cell labels for the object context (:class:`~nlanalysis.metrics.object_context.LabelMass`).

    Attributes:
        queries: ``[B, N_query]`` long labels ``0..L-1`` (-1: not counted); keys: ``[B, N_key]`` (-1: left out).
        n_labels: ``L``.
    """

    queries: Tensor
    keys: Tensor
    n_labels: int


def suite_pass(site: SiteMaps, level: str, labels: ObjectLabels | None = None,
               headline: Callable[[int, Tensor], None] | None = None, cos: dict | None = None) -> tuple[dict[str, Tensor], list[Any]]:  # fmt: skip
    """:func:`query_dependence`'s columns and, with ``labels``, each map group's label mass (``(R, n, area)``
    of :func:`~nlanalysis.metrics.object_context.label_mass`; ``None`` for signed maps) from the same pass
    over the rows: one pass over each group's maps feeds the per-row statistics, the object context and the
    first pass of the rank-1 fit (softmax maps: logits and rows formed once, ``rows = softmax(logits)``).
    The rank-1 fit then reads the maps again only for the gain-only maps (and subspace steps: more than
    :data:`~nlanalysis.metrics.rank1.GRAM_MAX_KEYS` keys). ``headline(start, rows)``, if given, is fed each
    chunk of the first group's rows first (an NL block's map statistics, :func:`~.blocks.measure_block`): it
    may fill that group's ``query_mask`` for the chunk's queries, which the suite then reads. ``cos``: the run's
    ``convention`` and ``zero`` (:func:`~nlanalysis.metrics.cosine.distance_from_sum`; default ``"1-cos"``,
    ``"exclude"``), which the suite's cosine distances (``att_gain_only``, ``att_pairwise_only``, ``att_abs``,
    ``att_norm_weighted``) follow as ``att`` does. ``({}, [])`` when ``level == "off"``."""
    if check_level(level) == "off":
        return {}, []
    cos = dict(cos or {})
    parts = [_group(g, site, level, labels, headline if i == 0 else None, cos) for i, g in enumerate(site.groups)]
    return {name: torch.cat([p[0][name] for p in parts], dim=1) for name in COLUMNS}, [p[1] for p in parts]


def _expand(mask: Tensor | None, batch: tuple[int, ...]) -> Tensor | None:
    """A ``[B, K]`` mask as ``[*batch, K]``."""
    if mask is None:
        return None
    return mask.reshape(mask.shape[0], *([1] * (len(batch) - 1)), mask.shape[-1]).expand(*batch, mask.shape[-1])


def _joint(g: MapGroup, logits: bool) -> Callable[[], Iterator[tuple[int, Tensor, Tensor | None]]]:
    """One pass giving ``(start, rows, logits)`` (logits ``None`` where the group has none or they are not
    needed: ``logits`` False)."""
    if not logits:
        return lambda: ((s, r, None) for s, r in g.rows())
    if g.joint is not None:
        return g.joint
    if g.logits is None:
        return lambda: ((s, r, None) for s, r in g.rows())
    return lambda: ((s, r, lg) for (s, r), (_, lg) in zip(g.rows(), g.logits(), strict=True))


class _GroupPass:
    """The accumulators of one map group's pass, made from its first chunk (device, batch shape, keys)."""

    def __init__(self, g: MapGroup, site: SiteMaps, level: str, labels: ObjectLabels | None, rows: Tensor) -> None:
        self.g, self.keys = g, site.spatial_keys
        self.batch, self.n_key = tuple(rows.shape[:-2]), rows.shape[-1]
        device, n_query = rows.device, g.n_query
        self.km, qm = _expand(site.key_mask, self.batch), g.query_mask
        self.st = Stream.shaped(self.batch, n_query, self.n_key, device, self.km, qm)
        self.signed = SignedSums(self.st) if g.signed else None
        self.nmi = self.dist = self.kmb = self.mass = self.step = None
        if not g.signed:
            km = site.key_mask[:, self.keys] if site.key_mask is not None else None
            self.kmb = _expand(km, self.batch)
            self.sst = Stream.shaped(self.batch, n_query, len(range(self.n_key)[self.keys]), device, self.kmb, qm)
            self.nmi = NMISums(self.sst)
            if site.query_pos is not None:
                self.dist = DistanceSums(self.sst, site.query_pos, site.key_pos, site.key_cell)
            if labels is not None:
                self.mass = LabelMass(labels.queries, labels.keys, labels.n_labels)
        if level == "all":
            self.step = profile_step(self.st)

    def update(self, start: int, rows: Tensor, logits: Tensor | None) -> None:
        if self.signed is not None:
            self.signed.update(*self.st.view(start, rows))
        else:
            x, qm = self.sst.view(start, _normalise(rows, self.keys, self.kmb))
            qm = qm & (x.amax(dim=-1) > 0)  # a row all zero on the spatial keys is not counted (ViT: its mass underflowed)
            self.nmi.update(x, qm)
            if self.dist is not None:
                self.dist.update(start, x, qm)
            if self.mass is not None:
                self.mass.update(start, rows[..., self.keys])
        if self.step is not None:
            self.step.update(*self.st.view(start, logits if self.g.logits is not None else rows))


def _group(g: MapGroup, site: SiteMaps, level: str, labels: ObjectLabels | None,
           headline: Callable[[int, Tensor], None] | None = None, cos: dict | None = None) -> tuple[dict[str, Tensor], Any]:  # fmt: skip
    """The columns of one map group, each ``[B, m]``, and its label mass (``None`` without labels or for signed maps);
    ``cos``: the cosine distances' ``convention`` and ``zero``."""
    cos = cos or {}
    acc = None
    for start, rows, logits in _joint(g, level == "all")():
        if headline is not None:
            headline(start, rows)
        acc = acc or _GroupPass(g, site, level, labels, rows)
        acc.update(start, rows, logits)
    if acc is None:
        raise ValueError("the row source yielded no chunk")
    batch, n_key, n_query, st = acc.batch, acc.n_key, g.n_query, acc.st
    masks = dict(key_mask=acc.km, query_mask=g.query_mask)
    out = {name: nans(*batch) for name in COLUMNS}
    if acc.step is not None:
        score = g.logits if g.logits is not None else g.rows
        found = complete(acc.step, lambda: Stream(score, n_query, n_key, **masks))
        out["logit_rank1"] = st.out(found.share)
        if g.logits is not None:  # gain_only forms the gains g_i = L_i . v in its pass
            fit = Rank1(st.out(found.share), st.out(found.profile), None, found.passes, st.out(found.converged))
            out["att_gain_only"], out["gain_only_tv"] = gain_only(g.logits, fit, n_query=n_query, **masks, **cos)
    if g.qk is not None:
        q, k, scale, softmax = g.qk
        split = dnl_split(q, k, scale, softmax=softmax, **masks, **cos)
        out["unary_var_share"], out["att_pairwise_only"] = split.unary_var_share, split.att_pairwise_only
    if acc.signed is not None:
        out["att_abs"], out["att_norm_weighted"] = acc.signed.result(**cos)
    else:
        out["qk_nmi"] = acc.sst.out(acc.nmi.result())
        if acc.dist is not None:
            out["att_distance_px"], out["att_local"], out["att_local_uniform"] = acc.dist.result()
    mass = acc.mass.result() if acc.mass is not None else None
    return {name: v.reshape(batch[0], -1).cpu() for name, v in out.items()}, mass


def _normalise(r: Tensor, keys: slice, key_mask: Tensor | None) -> Tensor:
    """A chunk's rows over the spatial keys, 0 on masked keys (``key_mask`` ``[*batch, K]``), renormalised to
    sum 1, float64; rows with no normal float32 weight there (0 to the native kernels, which flush the rest) are 0."""
    r = r[..., keys].to(torch.float64)
    if key_mask is not None:
        r = r * key_mask[..., None, :]
    total = r.sum(dim=-1, keepdim=True)
    live = r.amax(dim=-1, keepdim=True) >= torch.finfo(torch.float32).tiny
    return torch.where(live, r / torch.where(live, total, 1.0), 0.0)


def _normalised(rows: Chunks, keys: slice, key_mask: Tensor | None) -> Chunks:
    """Rows over the spatial keys, 0 on masked keys (``key_mask`` ``[*batch, K]``), renormalised to sum 1
    (all-zero rows stay 0): :func:`_normalise` of each chunk."""
    return lambda: ((start, _normalise(r, keys, key_mask)) for start, r in rows())
