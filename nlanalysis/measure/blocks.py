"""The statistics (:class:`~nlanalysis.measure.stats.SiteStats`) of one NL/GC block on a batch.

Memory: the attention maps are never held whole; rows are computed a chunk of queries at a time
(eager: ``chunk_size``; softmax maps through the native kernel: :mod:`.block_rows`), so peak extra
memory is ``O(B * chunk * N_key)``. A block measured in its own attention pass
(:mod:`.inpass_blocks`) gives its map statistics as :class:`BlockMaps`; :func:`measure_block` adds the rest.

Rules, stated once (the ViT heads follow them too):

* ``valid`` marks the positions that are image (not padding); invalid positions are dropped as
  queries and as keys (their weights are zeroed, so distances and entropies see valid keys only).
* Zero vectors (e.g. all-zero rows of a concatenation block after its ReLU) follow the metric's
  ``zero`` rule (default: excluded); their count is reported (``*_zero`` fields) with the number.
* Entropy, max weight and JSD are computed on row-normalised maps, over non-zero rows; for signed
  maps (dot-product blocks) they are undefined and reported as NaN.
* For blocks whose one map serves every query (GC, SNL) ``att`` and ``att_jsd`` are 0 by
  construction and reported as exactly 0.
* Object-aware locality (needs ``objects``, an instance label per position): ``att_own_object``
  is the mean share of its (non-negative) attention that a query on an object puts on keys of
  that same object; ``own_object_share`` is the mean share of valid keys that object covers,
  which is what uniform attention would give. Queries on background are not counted. A key
  sub-sampled from positions of different labels belongs to no object.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..blocks.attention import LazyAttention
from ..metrics import CosineAccumulator, distance_from_sum, mean_pairwise_cosine_distance, row_entropy, zero_rows
from ..metrics.object_context import compact_object_labels
from .jsd_pairs import _jsd_plan, _table_jsd
from .query_dep import OBJECT_MASS, ObjectLabels, block_maps, check_level, suite_pass
from .stats import CONTROLS, SiteStats, nans

__all__ = ["BlockMaps", "BlockMasks", "BlockStats", "block_masks", "key_labels", "key_mask", "map_stats", "measure_block",
           "object_labels"]  # fmt: skip


#: the statistics of an NL/GC block: :class:`~nlanalysis.measure.stats.SiteStats` with ``[B, 1]``
#: per-map fields (one map), ``query_independent`` and the ``ctrl_*`` fields (NaN unless measured).
BlockStats = SiteStats


def _pooled(t: Tensor, key_shape: tuple[int, int], what: str) -> Tensor | None:
    """``t`` ``[B, H, W]`` as ``[B, H_k, 2, W_k, 2]`` 2x2 blocks when the keys are a 2x2 max-pool of the
    query grid, ``None`` when they are the query grid itself (ValueError otherwise; ``what`` names ``t``)."""
    b, h, w = t.shape
    hk, wk = key_shape
    if (hk, wk) == (h, w):
        return None
    if (hk, wk) == (h // 2, w // 2):
        return t[:, : 2 * hk, : 2 * wk].reshape(b, hk, 2, wk, 2)
    raise ValueError(f"cannot map {what} of shape {(h, w)} onto a key grid of shape {key_shape}")


def key_mask(valid: Tensor, key_shape: tuple[int, int]) -> Tensor:
    """Map a ``[B, H, W]`` bool mask of valid query positions onto the key grid.

    Keys on the query grid share the mask; keys sub-sampled by a 2x2 max-pool are valid only
    when all four positions they pool are valid (a pooled key that saw padding is dropped).
    """
    blocks = _pooled(valid, key_shape, "a valid-position mask")
    return valid if blocks is None else blocks.all(dim=4).all(dim=2)


def key_labels(labels: Tensor, key_shape: tuple[int, int]) -> Tensor:
    """Map ``[B, H, W]`` integer labels onto the key grid (-1 where a pooled key mixes labels)."""
    blocks = _pooled(labels, key_shape, "labels")
    if blocks is None:
        return labels
    first = blocks[:, :, 0, :, 0]
    same = (blocks == first[:, :, None, :, None]).all(dim=4).all(dim=2)
    return torch.where(same, first, torch.full_like(first, -1))


@dataclass
class BlockMasks:
    """Which queries and keys of a block count on a batch (:func:`block_masks`).

    Attributes:
        qmask, kmask: ``[B, N_q]`` / ``[B, N_k]`` bool, valid queries / keys (``None``: all).
        own: the own-object accumulator (``None`` without object labels).
        n_query, n_key: ``[B]`` valid query and key positions (CPU).
    """

    qmask: Tensor | None
    kmask: Tensor | None
    own: _OwnObject | None
    n_query: Tensor
    n_key: Tensor


def block_masks(valid: Tensor | None, objects: Tensor | None, batch: int, query_shape: tuple[int, int],
                key_shape: tuple[int, int], device: torch.device) -> BlockMasks:  # fmt: skip
    """The masks of a block's ``[B, H, W]`` query grid and its key grid from ``valid`` (bool, True on
    image positions) and ``objects`` (instance labels), either ``None``; ValueError on a wrong shape."""
    b, (h, w) = batch, query_shape
    qmask = kmask = None
    if valid is not None:
        if valid.shape != (b, h, w):
            raise ValueError(f"valid mask must be [B, H, W] = {(b, h, w)}, got {tuple(valid.shape)}")
        valid = valid.to(device=device, dtype=torch.bool)
        qmask, kmask = valid.flatten(1), key_mask(valid, key_shape).flatten(1)
    own = _OwnObject(objects, qmask, kmask, key_shape, device) if objects is not None else None
    n_query = (qmask.sum(1) if qmask is not None else torch.full((b,), h * w)).cpu()
    n_key = (kmask.sum(1) if kmask is not None else torch.full((b,), key_shape[0] * key_shape[1])).cpu()
    return BlockMasks(qmask, kmask, own, n_query, n_key)


@dataclass
class BlockMaps:
    """The map statistics of a block on a batch (:func:`map_stats`), measured before (or while) the
    block's output exists: :func:`measure_block` adds the feature statistics.

    Attributes:
        query_shape, key_shape: the grids of the maps measured.
        stats: ``att``, ``att_jsd``, ``att_jsd_stderr``, ``att_entropy``, ``att_max``, ``att_zero_rows``,
            ``att_own_object``, ``own_object_share``, ``[B]`` float64 each.
        row_ok: ``[B, N_q]`` the rows that count (valid, not all zero); ``None`` for a shared map.
        query_independent: one map serves every query.
        softmax: per-query softmax maps (the native kernels measured them; the features follow).
        suite: the cheap query-dependence columns ``{name: [B, 1]}`` from the same native pass
            (:mod:`.native_suite`), or ``None`` (not asked for, or a valid row was all zero: the eager suite).
    """

    query_shape: tuple[int, int]
    key_shape: tuple[int, int]
    stats: dict[str, Tensor]
    row_ok: Tensor | None
    query_independent: bool = False
    softmax: bool = False
    suite: dict[str, Tensor] | None = None


def map_stats(att: LazyAttention, masks: BlockMasks, *, chunk_size: int = 256, jsd_pairs: int = 512,
              generator: torch.Generator | None = None, convention: str = "1-cos", zero: str = "exclude",
              kernels: str = "auto", suite: bool = False, stride: tuple[float, float] | None = None) -> BlockMaps:  # fmt: skip
    """The map statistics of ``att`` (arguments as :func:`measure_block`): shared, native or eager rows; with
    ``suite``, native rows also give the cheap query-dependence columns (``BlockMaps.suite``, ``stride`` as there)."""
    m, cos = masks, dict(convention=convention, zero=zero)
    columns = None
    if att.query_independent:
        stats, row_ok = _shared_map_stats(att, m.kmask, m.n_key, m.own, chunk_size), None
    else:
        rows, sums = _eager_map_stats, None
        if kernels != "eager":  # the kernels load only when asked for
            from .block_rows import native_map_stats, native_softmax

            if native_softmax(att, kernels):
                rows = native_map_stats
                if suite:
                    from .native_suite import block_suite

                    sums = block_suite(att, m.qmask, att.query_shape, att.key_shape, stride)
        extra = {} if sums is None else {"suite": sums}
        stats, row_ok = rows(att, m.qmask, m.kmask, m.n_query, m.n_key, m.own, chunk_size, jsd_pairs, generator, cos, **extra)
        if sums is not None:
            from .native_suite import native_columns

            columns = native_columns(sums, stats, m.kmask, att.scale, cos)
    return BlockMaps(att.query_shape, att.key_shape, stats, row_ok, att.query_independent,
                     att.distribution and not att.query_independent, columns)  # fmt: skip


def measure_block(
    att: LazyAttention | BlockMaps,
    x: Tensor,
    context: Tensor | None,
    *,
    output: Tensor | None = None,
    valid: Tensor | None = None,
    objects: Tensor | None = None,
    chunk_size: int = 256,
    jsd_pairs: int = 512,
    generator: torch.Generator | None = None,
    convention: str = "1-cos",
    zero: str = "exclude",
    controls: bool = False,
    kernels: str = "auto",
    query_dependence: str = "off",
    stride: tuple[float, float] | None = None,
) -> SiteStats:
    """Compute the :class:`~nlanalysis.measure.stats.SiteStats` (``[B, 1]`` fields) of one block on a batch.

    Args:
        att: the block's lazy attention for input ``x``, or its maps already measured (:class:`BlockMaps`,
            e.g. in the block's own pass: :mod:`nlanalysis.capture.inpass_blocks`; then without
            ``controls`` and ``query_dependence``, which read the maps again).
        x, context: block input and what the block adds before fusion (``z - x``), ``[B, C, H, W]`` each.
        output: the block's output ``z`` ``[B, C, H, W]`` when ``context`` is ``None`` (a residual block: the
            context is ``output - x``, which the native feature pass reads without forming it).
        valid, objects: optional ``[B, H, W]``: bool, True on image positions (False on padding); int
            instance labels on the query grid (0 = no object).
        chunk_size: queries per chunk of attention rows (eager).
        jsd_pairs, generator: query pairs sampled per image for the JSD (0 disables it: NaN), and their RNG.
        convention, zero: of :func:`nlanalysis.metrics.mean_pairwise_cosine_distance` (``"1-cos"``: as scipy).
        controls: also compute the random-projection control at matched sharpness (``ctrl_*``).
        kernels: as :func:`~nlanalysis.measure.heads.measure_heads`'s: softmax maps over float32 CPU logits
            (``gaussian``, ``embedded_gaussian``) through the one-pass native kernel, other maps eager.
        query_dependence: ``"off"`` (default), ``"cheap"`` or ``"all"``: the query-dependence suite
            (:mod:`.query_dep`) in the fields of those names. ``"cheap"`` on maps the native kernel measures
            (softmax maps, no ``objects``) comes from the kernel's own pass (:mod:`.native_suite`; the same
            values to float32 rounding); otherwise eager.
        stride: input pixels per query cell ``(y, x)``, for ``att_distance_px`` (``None``: NaN).
    """
    b, _, h, w = x.shape
    if (context is None) == (output is None):
        raise ValueError("pass the block's context, or its output z (context z - x) with context=None, not both or neither")
    second = context if context is not None else output
    if (h, w) != att.query_shape or second.shape != x.shape:
        what = "context" if context is not None else "output"
        raise ValueError(f"shapes disagree: x {tuple(x.shape)}, {what} {tuple(second.shape)}, attention query grid {att.query_shape}")
    check_level(query_dependence)
    given = att if isinstance(att, BlockMaps) else None
    # the cheap suite from the native pass (no object context: its label mass is the eager pass's)
    native_suite = query_dependence == "cheap" and objects is None
    if given is not None and (controls or (query_dependence != "off" and not (native_suite and given.suite is not None))):
        raise ValueError("controls and the query-dependence suite read the maps again: pass the LazyAttention, not BlockMaps "
                         "(maps measured with their cheap suite serve query_dependence='cheap' without object labels)")  # fmt: skip
    masks = block_masks(valid, objects, b, att.query_shape, att.key_shape, x.device)
    cos = dict(convention=convention, zero=zero)
    suite, labels, mass = {}, None, [None]
    if query_dependence != "off":
        labels = object_labels(objects, masks, att.key_shape) if objects is not None else None
    if given is None and query_dependence != "off" and _eager_rows(att, kernels):
        given, suite, mass = _suite_and_maps(att, masks, labels, query_dependence, chunk_size, jsd_pairs, generator, cos, stride)
    elif given is None:
        given = map_stats(att, masks, chunk_size=chunk_size, jsd_pairs=jsd_pairs, generator=generator, kernels=kernels,
                          suite=native_suite, stride=stride, **cos)  # fmt: skip
    maps, row_ok = given.stats, given.row_ok
    ctrl = {name: nans(b) for name in CONTROLS}
    if controls and not att.query_independent:
        from .block_controls import block_controls

        context = context if context is not None else output - x
        ctrl = block_controls(att, x, context, valid, objects, maps["att_entropy"], row_ok, jsd_pairs, generator, cos, kernels)
    if native_suite and not suite and given.suite is not None:  # from the native pass that measured the maps
        suite = given.suite
    if query_dependence != "off" and not suite:  # the maps' statistics came from their own pass (native, shared map)
        counted = row_ok.to(x.device) if row_ok is not None else masks.qmask
        suite, mass = suite_pass(block_maps(att, counted, masks.kmask, stride, chunk_size), query_dependence, labels, cos=cos)
    stats = SiteStats(
        **_feature_stats(x, context, masks.qmask, cos, kernels if given.softmax else "eager", output),
        **{k: v[:, None] for k, v in maps.items()},
        n_query=masks.n_query, n_key=masks.n_key, convention=convention, zero_rule=zero,
        **{k: v[:, None] if isinstance(v, Tensor) else v for k, v in ctrl.items()},
        query_independent=given.query_independent, **suite,
    )  # fmt: skip
    if labels is not None:  # the object context's label mass, from the suite's pass (read by extract.object_sites)
        setattr(stats, OBJECT_MASS, mass[0])
    return stats


def _suite_and_maps(att: LazyAttention, masks: BlockMasks, labels: ObjectLabels | None, level: str, chunk_size: int,
                    jsd_pairs: int, generator: torch.Generator | None, cos: dict,
                    stride: tuple[float, float] | None) -> tuple[BlockMaps, dict, list]:  # fmt: skip
    """Eager per-query maps: one pass over the rows feeds the map statistics, the suite (at ``level``) and the
    object context; the maps' :class:`BlockMaps`, the suite's columns and the label mass."""
    passed = _RowSums(att, masks.qmask, masks.kmask, masks.n_key, masks.own, att.device)
    site = block_maps(att, passed.row_ok, masks.kmask, stride, chunk_size)  # row_ok: filled chunk by chunk in the pass
    suite, mass = suite_pass(site, level, labels, headline=passed.update, cos=cos)
    stats, row_ok = _eager_map_stats(att, masks.qmask, masks.kmask, masks.n_query, masks.n_key, masks.own, chunk_size, jsd_pairs,
                                     generator, cos, passed)  # fmt: skip
    return BlockMaps(att.query_shape, att.key_shape, stats, row_ok), suite, mass


def object_labels(objects: Tensor, masks: BlockMasks, key_shape: tuple[int, int]) -> ObjectLabels:
    """The object context's labels of a block's queries and keys (:class:`~.query_dep.ObjectLabels`) from
    instance labels ``[B, H, W]``: compact labels shared by the batch, -1 on padding and on pooled keys
    that mix labels."""
    compact, n_labels = compact_object_labels(objects.to(torch.int64))
    queries, keys = compact.flatten(1), key_labels(compact, key_shape).flatten(1)
    if masks.qmask is not None:
        queries = torch.where(masks.qmask.to(queries.device), queries, -1)
    if masks.kmask is not None:
        keys = torch.where(masks.kmask.to(keys.device), keys, -1)
    return ObjectLabels(queries, keys, n_labels)


def _eager_rows(att: LazyAttention, kernels: str) -> bool:
    """Whether :func:`map_stats` measures ``att``'s maps by the eager row pass (per-query maps, not native)."""
    if att.query_independent:
        return False
    if kernels == "eager":
        return True
    from .block_rows import native_softmax

    return not native_softmax(att, kernels)


def _feature_stats(x: Tensor, context: Tensor | None, qmask: Tensor | None, cos: dict, kernels: str = "auto",
                   output: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
    """``input``, ``output`` (mean pairwise cosine distances) and their zero-vector counts, ``[B, 1]`` each:
    one native pass over both in their ``[B, C, H, W]`` layout (:func:`nlanalysis.kernels.feature_stats`, float32
    CPU, finite), else eager (``measure_block`` asks for the native pass with softmax maps; other maps keep the
    eager numbers exactly). ``context`` ``None``: the block's ``output - x``, which the native pass reads without
    forming it."""
    second = context if context is not None else output
    if kernels != "eager" and x.dtype == second.dtype == torch.float32:
        from .. import kernels as _native  # loads only when asked for

        # None where a value is NaN or inf: then eager, which refuses NaN (padding aside)
        found = _native.feature_stats(x.detach(), second.detach(), qmask, residual=context is None) \
            if _native.uses_native(kernels, x.device) else None  # fmt: skip
        if found is not None:
            s2, zeros = found
            n = (qmask.sum(1) if qmask is not None else torch.full((x.shape[0],), x.shape[2] * x.shape[3])).cpu()
            dist = distance_from_sum(s2.clamp(min=0), n[:, None].expand(-1, 2).long(), zeros, **cos)
            return dict(input=dist[:, :1], output=dist[:, 1:], input_zero=zeros[:, :1], output_zero=zeros[:, 1:])
    if context is None:
        context = output - x
    vx, vc = (t.detach().flatten(2).transpose(1, 2) for t in (x, context))
    return dict(
        input=mean_pairwise_cosine_distance(vx, mask=qmask, **cos)[:, None].cpu(),
        output=mean_pairwise_cosine_distance(vc, mask=qmask, **cos)[:, None].cpu(),
        input_zero=_zero_vectors(vx, qmask)[:, None], output_zero=_zero_vectors(vc, qmask)[:, None],
    )  # fmt: skip


def _shared_map_stats(att, kmask, n_key, own, chunk_size) -> dict[str, Tensor]:
    """The map statistics of a block whose one map serves every query (GC, SNL): ``att`` and JSD are 0."""
    b = n_key.shape[0]
    shared = att.rows(0, 1)  # [B, 1, N_k]: the one map
    if kmask is not None:
        shared = shared * kmask[:, None, :]
    one = shared[:, 0].double()  # normalised entropy (by log of the valid key count), max weight: NaN on zero maps
    entropy = (row_entropy(one, normalized=False) / torch.log(n_key.double().clamp(min=2)).to(one.device)).cpu()
    maxw = (one.amax(-1) / one.sum(-1)).cpu()
    zeros = torch.zeros(b, dtype=torch.float64)
    own_mass, own_share = nans(b), nans(b)
    if own is not None and att.nonnegative:
        for start, rows in att.chunks(chunk_size):  # the same map for every query: cheap rows
            own.update(start, rows * kmask[:, None, :] if kmask is not None else rows, None)
        own_mass, own_share = own.result()
    return dict(att=zeros, att_jsd=zeros.clone(), att_jsd_stderr=zeros.clone(), att_entropy=entropy, att_max=maxw,
                att_zero_rows=zero_rows(shared)[:, 0].double().cpu(), att_own_object=own_mass, own_object_share=own_share)  # fmt: skip


def _eager_map_stats(att, qmask, kmask, n_query, n_key, own, chunk_size, jsd_pairs, generator, cos,
                     passed: _RowSums | None = None) -> tuple[dict[str, Tensor], Tensor]:  # fmt: skip
    """The map statistics of a block's per-query maps in eager PyTorch (any map, any device), and which
    rows count ``[B, N_q]`` (valid and not all zero); ``passed``: the row pass already fed (by the suite's pass)."""
    b = n_key.shape[0]
    if passed is None:
        passed = _RowSums(att, qmask, kmask, n_key, own, att.device)
        for start, rows in att.chunks(chunk_size):
            passed.update(start, rows)
    att_dist, sums, row_ok = passed.result(cos)
    own_mass, own_share = own.result() if own is not None and att.nonnegative else (nans(b), nans(b))
    nonzero_rows = sums[2]
    if att.nonnegative:
        att_entropy, att_max = sums[0] / nonzero_rows, sums[1] / nonzero_rows
    else:
        att_entropy, att_max = nans(b), nans(b)
    jsd, jsd_err = _sampled_jsd(att, row_ok, kmask, jsd_pairs, generator, att.device)
    return dict(att=att_dist.cpu(), att_jsd=jsd, att_jsd_stderr=jsd_err, att_entropy=att_entropy, att_max=att_max,
                att_zero_rows=1.0 - nonzero_rows / n_query.double(), att_own_object=own_mass, own_object_share=own_share), row_ok  # fmt: skip


class _RowSums:
    """The eager pass over every query row, fed a chunk at a time (``update(start, rows)``): the mean
    pairwise cosine distance of the rows, the sums ``[3, B]`` (normalised entropy, max weight, non-zero
    rows) and which rows count (:attr:`row_ok` ``[B, N_q]``: valid and not all zero, filled as the chunks
    come); own-object mass goes to ``own``."""

    def __init__(self, att: LazyAttention, qmask: Tensor | None, kmask: Tensor | None, n_key: Tensor, own: _OwnObject | None,
                 device: torch.device) -> None:  # fmt: skip
        b = n_key.shape[0]
        self.nonnegative, self.qmask, self.kmask, self.own = att.nonnegative, qmask, kmask, own
        self.acc = CosineAccumulator(att.n_key, (b,), device=device)
        self.sums = torch.zeros(3, b, dtype=torch.float64, device=device)
        self.row_ok = torch.zeros(b, att.n_query, dtype=torch.bool, device=device)
        self.log_k = torch.log(n_key.double().clamp(min=2)).to(device)

    def update(self, start: int, rows: Tensor) -> None:
        stop = start + rows.shape[1]
        if self.kmask is not None:
            rows = rows * self.kmask[:, None, :]
        rows, peak = _flushed(rows)
        m = self.qmask[:, start:stop] if self.qmask is not None else None
        self.acc.update(rows, m)
        ok = peak > 0 if m is None else (peak > 0) & m  # as _counted, from the peaks just taken
        self.row_ok[:, start:stop] = ok
        self.sums[2] += ok.sum(1)
        if self.nonnegative:
            total = torch.where(ok, rows.sum(-1), 1.0)
            # H(p) of p = r / t: log t - sum(r log r) / t, one pass over the rows
            entropy = torch.log(total) - torch.xlogy(rows, rows).sum(-1) / total
            self.sums[0] += torch.where(ok, entropy, 0.0).sum(1, dtype=torch.float64) / self.log_k
            self.sums[1] += torch.where(ok, rows.amax(-1) / total, 0.0).sum(1, dtype=torch.float64)
            if self.own is not None:
                self.own.update(start, rows, ok)

    def result(self, cos: dict) -> tuple[Tensor, Tensor, Tensor]:
        """``(att, sums [3, B], row_ok [B, N_q])``, the last two on the CPU."""
        return self.acc.result(**cos), self.sums.cpu(), self.row_ok.cpu()


def _sampled_jsd(att, row_ok, kmask, jsd_pairs, generator, device) -> tuple[Tensor, Tensor]:
    """Per image, the mean JSD (bits) of ``jsd_pairs`` sampled pairs of counted rows and its standard
    error (:func:`~.jsd_pairs._jsd_plan`, drawn image by image as the native path draws them); NaN for
    signed maps or 0 pairs."""
    b = row_ok.shape[0]
    jsd, jsd_err = nans(b), nans(b)
    for i in range(b if att.nonnegative else 0):  # one image's rows at a time: peak memory O(pairs * N_k)
        plan = _jsd_plan(row_ok[i : i + 1], att.n_query, 1, jsd_pairs, generator, torch.device(device))
        if plan is not None:
            rows = att.image(i).take(plan.query)[0].detach()
            jsd[i : i + 1], jsd_err[i : i + 1] = _table_jsd(plan, rows * kmask[i] if kmask is not None else rows, 1)
    return jsd, jsd_err


class _OwnObject:
    """Streams the attention mass each object query puts on its own object."""

    def __init__(self, objects: Tensor, qmask: Tensor | None, kmask: Tensor | None, key_shape: tuple[int, int], device: torch.device) -> None:
        objects = objects.to(device=device, dtype=torch.int64)
        ids = torch.unique(objects[objects > 0])  # compact labels 1..L-1, 0 = no object
        compact = torch.where(objects > 0, torch.searchsorted(ids, objects) + 1, torch.where(objects < 0, -1, 0))  # -1: crowd
        self.q = compact.clamp(min=0).flatten(1)  # [B, N]: the query's object (> 0) or none (0; a crowd region's too)
        if qmask is not None:
            self.q = torch.where(qmask, self.q, 0)
        k = key_labels(compact, key_shape).flatten(1)  # [B, N_k], -1 for mixed pooled keys
        if kmask is not None:
            k = torch.where(kmask, k, -1)
        self.k = k
        self.n_labels = max(int(compact.max()), 0) + 1
        self.onehot = torch.nn.functional.one_hot(k.clamp(min=0), self.n_labels).float() * (k >= 0)[..., None].float()
        n_valid_keys = (kmask.sum(1) if kmask is not None else torch.full((k.shape[0],), k.shape[1], device=device)).double()
        self.share = self.onehot.sum(1).double() / n_valid_keys[:, None]  # [B, L]: each label's share of keys
        self.mass = torch.zeros(k.shape[0], dtype=torch.float64, device=device)
        self.base = torch.zeros_like(self.mass)
        self.count = torch.zeros_like(self.mass)

    def update(self, start: int, rows: Tensor, ok: Tensor | None) -> None:
        lab = self.q[:, start : start + rows.shape[1]]  # [B, c]
        use = lab > 0
        if ok is not None:
            use &= ok
        per_label = torch.bmm(rows.float(), self.onehot)  # [B, c, L]: mass on each label's keys
        total = rows.sum(-1).clamp(min=torch.finfo(rows.dtype).tiny)
        own = per_label.gather(2, lab[..., None])[..., 0] / total
        self.mass += torch.where(use, own, 0.0).sum(1, dtype=torch.float64)
        self.base += torch.where(use, self.share.gather(1, lab), 0.0).sum(1)
        self.count += use.sum(1)

    def labels(self) -> tuple[Tensor, Tensor, Tensor]:
        """For the native kernel (CPU): query labels ``[B, N_q]`` (0: none or invalid), key labels
        ``[B, N_k]`` (``<= 0``: none) and the share of valid keys on each query's object ``[B, N_q]``."""
        share = torch.where(self.q > 0, self.share.gather(1, self.q), 0.0)
        return self.q.cpu(), self.k.cpu(), share.cpu()

    def result(self) -> tuple[Tensor, Tensor]:
        return (self.mass / self.count).cpu(), (self.base / self.count).cpu()


def _counted(rows: Tensor, mask: Tensor | None) -> Tensor:
    """Which rows of a chunk ``[B, c, N_k]`` count ``[B, c]``: valid (``mask``) and not all zero, where weights below
    float32's smallest normal number count as zero (:func:`_flushed`, as the native kernels read them)."""
    ok = rows.abs().amax(-1) >= _tiny(rows)
    return ok & mask if mask is not None else ok


def _tiny(rows: Tensor) -> float:
    return torch.finfo(torch.float32).tiny if rows.is_floating_point() else 1


def _flushed(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``rows`` with each row whose every weight is below float32's smallest normal number (1.2e-38) set to 0, and each
    row's largest absolute weight: the native kernels flush such weights, so a query whose softmax puts all its mass on
    padding keeps nothing on the image, and eager and native both count it as an all-zero row (it was kept by one and
    dropped by the other). Rows with a normal weight are left as they are (their subnormal weights move no statistic
    above float32 rounding); one pass for the peaks, a copy only where such a row exists."""
    peak = rows.abs().amax(-1)
    low = (peak > 0) & (peak < _tiny(rows))
    return (rows * ~low[..., None] if bool(low.any()) else rows), torch.where(low, 0, peak)


def _zero_vectors(v: Tensor, mask: Tensor | None) -> Tensor:
    is_zero = (v == 0).all(dim=-1)
    if mask is not None:
        is_zero &= mask
    return is_zero.sum(dim=-1).cpu()
