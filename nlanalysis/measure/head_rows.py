"""The map statistics of a ViT layer's heads, chunk by chunk of patch queries: the native one-pass
kernels (:mod:`nlanalysis.kernels`; :func:`_native_rows` reads any :class:`LogitSource`, an NL
block's too: :mod:`.block_rows`) and their eager PyTorch reference (any device).

Both return the same sums (``[B, heads+1, N_key]`` unit-row sums for the cosine, ``[8, B, heads+1]``
entropy, max, non-zero, zero, prefix mass and own-object sums) and the JSD pair values of the
batch's plan (:mod:`.jsd_pairs`); :func:`nlanalysis.measure.heads.measure_heads` turns them into
statistics.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import kernels as _native
from ..blocks.heads import HeadAttention
from .jsd_pairs import _Plan, _pair_jsd

if TYPE_CHECKING:
    from .heads import HeadsBatch

__all__ = ["LogitSource", "head_source", "native_chunk"]


@dataclass
class LogitSource:
    """What the native pass reads of a site's maps (:func:`_native_rows`).

    Attributes:
        batch, maps: images and maps (heads) per image.
        n_query: the queries measured (token rows ``prefix ..``); n_keys: key tokens ``N`` of a logits row.
        prefix: class/register tokens ahead of them (rows and key columns); first: first key column measured.
        scale: the softmax runs over ``scale * logits``.
        fill: ``fill(i, lo, hi, out)`` writes the logits of image ``i``'s token rows ``lo:hi`` into ``out`` ``[maps, hi - lo, N]``.
        mean: the statistics have a last map, the mean of the maps (a ViT layer's head mean).
    """

    batch: int
    maps: int
    n_query: int
    n_keys: int
    prefix: int
    first: int
    scale: float
    fill: Callable[[int, int, int, Tensor], None]
    mean: bool = True


def head_source(att: HeadAttention) -> LogitSource:
    """A ViT layer's logits ``q . k`` straight from the model's own (strided) q and k, image by image."""

    def fill(i: int, lo: int, hi: int, out: Tensor) -> None:  # bmm: matmul's out= path costs ~0.2 ms more per layer
        torch.bmm(att.query[i, :, lo:hi], att.key[i].transpose(-2, -1), out=out)

    prefix = att.layout.n_prefix
    return LogitSource(att.batch_size, att.num_heads, att.layout.n_patch, att.key.shape[2], prefix,
                       prefix if att.keys == "patch" else 0, att.scale, fill)  # fmt: skip


def native_chunk(src: LogitSource, chunk_size: int | None) -> int:
    """The queries per kernel call of :func:`_native_rows` (``chunk_size``: the caller's, ``None``: a ~16 MiB buffer of logits)."""
    if chunk_size is None:  # the kernel reads each row once, in L1: only the logits buffer is bounded
        chunk_size = max(8, (1 << 22) // (src.batch * src.maps * (src.prefix + src.n_query)))
    return min(chunk_size, src.n_query)


def _native_rows(
    src: LogitSource,
    km: Tensor | None,
    qmask: Tensor | None,
    plan: _Plan | None,
    sel: Tensor | None,
    objects: tuple[Tensor, Tensor, Tensor] | None,
    chunk_size: int | None,
    attend_to: tuple[Tensor, Tensor] | None = None,
    on_rows: Callable[[int, Tensor], None] | None = None,
    suite: _native.SuiteSums | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """Every map statistic of a site with :func:`nlanalysis.kernels.row_stats`, chunk by chunk of
    queries (one BLAS matmul per image for the logits, one kernel pass over them): the sum of unit
    rows ``[B, M, K]``, the sums ``[8, B, M]`` and, with a plan and ``sel`` (:class:`~.heads.HeadsBatch`),
    the plan's rows renormalised ``(table [S, M, K], entropy [S, M], ok [S, M])`` (a reused buffer).
    With ``attend_to = (value [B, heads, N, d_v], out [B, N, heads, d_v])``, the kernel also leaves
    each chunk's softmax in place and every token's attention output ``softmax @ value`` goes to ``out``;
    ``on_rows(start, probs)`` (with ``attend_to`` only) then reads each chunk's softmax of patch queries
    ``start:start + c`` over every token, ``[B, maps, c, N]`` (a reused buffer: read it before returning).
    ``suite``: the cheap query-dependence suite's sums, added to by the same pass (:mod:`.native_suite`)."""
    b, nq, prefix = src.batch, src.n_query, src.prefix
    kw = km if km is None or km.dim() == 2 else km.reshape(b, -1)
    rows, m_out = None, src.maps + int(src.mean)
    if plan is not None and sel is not None:  # the rows the JSD pairs need: a table row per planned (image, query)
        size = plan.query.numel()
        rows = (sel, _native.workspace("jsd_rows", (size, m_out, src.n_keys - src.first)), torch.empty(size, m_out),
                torch.zeros(size, m_out, dtype=torch.uint8))  # fmt: skip
    step = native_chunk(src, chunk_size)
    s_att, sums = None, None
    value, out = attend_to if attend_to is not None else (None, None)
    for start in range(0, nq, step):
        stop = min(start + step, nq)
        # into a reused buffer (a fresh multi-MiB tensor costs its page faults every layer); the kernel applies
        # the scale. Attending, the first chunk also holds the class/register queries' rows (token rows lo:hi).
        lo, hi = (0 if attend_to is not None and start == 0 else prefix + start), prefix + stop
        logits = _native.workspace("logits", (b, src.maps, hi - lo, src.n_keys))
        for i in range(b):
            src.fill(i, lo, hi, logits[i])
        part = None if rows is None else (rows[0][:, start:stop], *rows[1:])
        obj = None if objects is None else (objects[0][:, start:stop], objects[1], objects[2][:, start:stop])
        s_c, sums_c = _native.row_stats(
            logits, kw, qmask if qmask is None or (start, stop) == (0, nq) else qmask[:, start:stop], src.first, prefix, part, scale=src.scale,
            objects=obj, probs=logits if attend_to is not None else None, pre=prefix + start - lo, mean=src.mean,
            suite=suite, suite_start=start,
        )  # fmt: skip
        s_att, sums = (s_c, sums_c) if s_att is None else (s_att + s_c, sums + sums_c)
        if attend_to is not None:  # the kernel left the softmax in place; softmax @ value straight into out
            for i in range(b):
                torch.bmm(logits[i], value[i], out=out[i, lo:hi].transpose(0, 1))
            if on_rows is not None:
                on_rows(start, logits[:, :, prefix + start - lo :])
    return s_att, sums, None if rows is None else rows[1:]


def _native_head_rows(
    att: HeadAttention, km: Tensor | None, qmask: Tensor | None, batch: HeadsBatch, chunk_size: int | None,
    attend_to: tuple[Tensor, Tensor] | None = None, on_rows: Callable[[int, Tensor], None] | None = None,
    suite: _native.SuiteSums | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """:func:`_native_rows` of a ViT layer (``attend_to``, ``on_rows``, ``suite``: as there), and the JSD of the plan's pairs per image (count, mean,
    variance) with :func:`~nlanalysis.kernels.pair_jsd`."""
    plan = batch.plan
    if km is batch.km and qmask is batch.qmask:  # the batch's masks as the kernel takes them, converted once per forward
        km, qmask = _kernel_masks(batch)
    s_att, sums, rows = _native_rows(head_source(att), km, qmask, plan, batch.sel, batch.objects, chunk_size, attend_to, on_rows, suite)
    values = None
    if plan is not None and rows is not None:
        values = _native.pair_jsd(*rows, plan.a, plan.b, plan.pair_image, att.batch_size)  # per image
    return s_att, sums, values


def _kernel_masks(batch: HeadsBatch) -> tuple[Tensor | None, Tensor | None]:
    """The batch's key weights ``[B, K]`` float32 and valid queries ``[B, n_patch]`` uint8, as
    :func:`~nlanalysis.kernels.row_stats` takes them (no conversion per layer), from its memo."""
    got = batch.memo.get("kernel masks")
    if got is None:
        km = None if batch.km is None else batch.km.reshape(batch.size, -1).contiguous()
        got = batch.memo["kernel masks"] = (km, None if batch.qmask is None else batch.qmask.to(torch.uint8))
    return got


def _eager_rows(
    att: HeadAttention,
    km: Tensor | None,
    qmask: Tensor | None,
    plan: _Plan | None,
    chunk_size: int | None,
    objects: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """As :func:`_native_rows`, in eager PyTorch (any device): :func:`_chunk_stats` chunk by chunk."""
    b, heads, nq, prefix = att.batch_size, att.num_heads, att.layout.n_patch, att.layout.n_prefix
    dev = att.device
    if chunk_size is None:
        chunk_size = max(8, 2 ** int(math.log2(max(1, (1 << 20) // (b * heads * att.layout.n_tokens)))))
    first = prefix if att.keys == "patch" else 0
    s_att = torch.zeros(b, heads + 1, att.n_key, dtype=torch.float64, device=dev)  # sum of unit rows
    sums = torch.zeros(8, b, heads + 1, dtype=torch.float64, device=dev)  # entropy, max, non-zero, zero, prefix, own object x3
    table = table_ent = None
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        m = qmask[:, None, start:stop] if qmask is not None else None
        if att.probs is None:  # scale * q of these patch queries, and every key (contiguous copies made once per layer)
            q, probs = att.scaled_query(slice(start, stop)), None
        else:
            q, probs = None, att.probs_rows(slice(start, stop))  # the model's own softmax
        sel_b = sel_c = inside = None
        if plan is not None:  # the rows of this chunk the JSD pairs need
            inside = ((plan.query >= start) & (plan.query < stop)).nonzero()[:, 0]
            sel_b, sel_c = plan.image[inside], plan.query[inside] - start
        obj = None if objects is None else (objects[0][:, start:stop], objects[1], objects[2][:, start:stop])
        s_chunk, chunk_sums, rows, rows_ent = _chunk_stats(q, att.key, probs, km, m, sel_b, sel_c, first, prefix, obj)
        s_att += s_chunk.double()
        sums += chunk_sums.double()
        if plan is not None:
            if table is None:
                table = rows.new_zeros(plan.query.numel(), *rows.shape[1:])
                table_ent = rows_ent.new_full((plan.query.numel(), rows_ent.shape[1]), math.nan)
            table[inside], table_ent[inside] = rows, rows_ent
    values = None
    if plan is not None and table is not None:
        values = _pair_jsd(table, table_ent, plan.a, plan.b)  # in chunks of pairs
    return s_att, sums, values


def _chunk_stats(
    q: Tensor | None,
    k: Tensor,
    probs: Tensor | None,
    km: Tensor | None,
    m: Tensor | None,
    sel_b: Tensor | None,
    sel_c: Tensor | None,
    first: int,
    prefix: int,
    objects: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The statistics of a chunk of patch queries, every head and the head mean at once (eager).

    Args:
        q: ``[B, H, c, d]`` scaled queries of the chunk (None when ``probs`` is given); k: ``[B, H, N, d]``.
        probs: ``[B, H, c, N]`` softmax rows given by the caller instead of q (read only).
        km: ``[B, 1, 1, K]`` key weights (1 valid, 0 padding) or None; m: ``[B, 1, c]`` valid queries.
        sel_b, sel_c: image and chunk-row of the rows to return normalised (for the JSD), or None.
        first: first key column used (``n_prefix`` for patch keys, 0 for all); prefix: ``n_prefix``.
        objects: the chunk's query labels ``[B, c]``, key labels ``[B, K]`` and query shares ``[B, c]``
            (:class:`HeadsBatch` ``objects``), or None.

    Returns:
        ``s`` (``[B, H+1, K]``: sum of the valid non-zero rows as unit vectors), ``sums``
        (``[8, B, H+1]``: entropy of the renormalised rows in nats, largest weight, non-zero rows,
        zero rows, mass on class/register tokens, summed over valid queries; then, over non-zero
        rows of queries on an object, the share of mass on that object, the object's share of keys,
        and their count), and the selected rows
        renormalised ``[S, H+1, K]`` with their entropies ``[S, H+1]`` (NaN for zero rows).
    """
    b, heads = k.shape[0], k.shape[1]
    # as few passes over [B, H, c, N] as possible, each one a vectorised ATen kernel
    if probs is None:
        d = torch.matmul(q, k.transpose(-2, -1))  # raw logits: sum r log p = sum r l - t (max l + log Z)
        top, where = d.max(-1, keepdim=True)
        p = torch.softmax(d, -1)
        logz = (top - p.gather(-1, where).log()).squeeze(-1)  # log-sum-exp: p at the argmax is exp(max - lse)
        if km is not None:
            p[..., first:] *= km  # padded keys weigh nothing (p is ours)
    else:
        p, d, logz = probs, None, None
        if km is not None:
            p = torch.cat([p[..., :first], p[..., first:] * km], -1)  # the model's own softmax stays as it is
    # the head mean as a GEMV over heads: a strided mean over dim 1 is several times slower in eager mode
    pmean = (p.new_full((1, heads), 1.0 / heads) @ p.reshape(b, heads, -1)).reshape(b, 1, p.shape[2], -1)
    r, rm = p[..., first:], pmean[..., first:]
    t_h = r.sum(-1)
    total = torch.cat([t_h, t_h.mean(1, keepdim=True)], 1)  # the mean row's mass is the mean of the heads'
    peak = torch.cat([r.amax(-1), rm.amax(-1)], 1)
    # a row is all zero unless some weight is a normal float (as in the native kernels, which flush denormals)
    ok = peak >= torch.finfo(peak.dtype).tiny
    ok = ok if m is None else ok & m
    tt = torch.where(ok, total, 1.0)
    if d is not None:
        rlogr_h = torch.linalg.vecdot(r, d[..., first:]) - t_h * logz  # sum r log p
    else:
        rlogr_h = torch.special.xlogy(r, r).sum(-1)
    rlogr_m = torch.special.xlogy(rm, rm).sum(-1)
    ent = torch.log(tt) - torch.cat([rlogr_h, rlogr_m], 1) / tt
    # norms, scales and the sum of unit rows in float64 (as the native kernel forms them): a float32 scale or sum
    # leaves each unit row's norm 1 +- ~1e-7, a floor of ~1e-7 under att (near-identical rows have att ~1e-8);
    # float32 squares of weights below ~1e-19 would also underflow
    norm = torch.cat([torch.linalg.vector_norm(r, dim=-1, dtype=torch.float64), torch.linalg.vector_norm(rm, dim=-1, dtype=torch.float64)], 1)
    w = torch.where(ok, 1.0 / norm.clamp(min=1e-300), 0.0)  # unit rows (norm >= peak: finite); zero rows add nothing
    w_h, w_m = w[:, :heads], w[:, heads:]
    # full rows (a float64 copy of the chunk), drop the prefix columns after
    s = torch.cat([(w_h.unsqueeze(-2) @ p.double()).squeeze(-2), (w_m.unsqueeze(-2) @ pmean.double()).squeeze(-2)], 1)[..., first:]
    valid = torch.ones_like(ok) if m is None else m.expand_as(ok)
    pre = p[..., :prefix].sum(-1)  # mass on class/register tokens (0 without them)
    pre = torch.cat([pre, pre.mean(1, keepdim=True)], 1)
    sums = torch.stack([
        torch.where(ok, ent, 0.0).sum(-1), torch.where(ok, peak / tt, 0.0).sum(-1), ok.sum(-1).to(tt.dtype),
        (valid & ~ok).sum(-1).to(tt.dtype), torch.where(valid, pre, 0.0).sum(-1), *_own_sums(r, rm, tt, ok, objects),
    ])  # fmt: skip
    rows = rows_ent = None
    if sel_b is not None:
        rows = torch.cat([r[sel_b, :, sel_c], rm[sel_b, :, sel_c]], 1) / tt[sel_b, :, sel_c][..., None]
        rows_ent = torch.where(ok[sel_b, :, sel_c], ent[sel_b, :, sel_c], math.nan)
    return s, sums, rows, rows_ent


def _own_sums(r: Tensor, rm: Tensor, tt: Tensor, ok: Tensor, objects: tuple[Tensor, Tensor, Tensor] | None) -> list[Tensor]:
    """Over non-zero rows of queries on an object: the share of mass on that object, the object's
    share of keys, and their count, ``[B, H+1]`` each (zeros without ``objects``)."""
    if objects is None:
        return [torch.zeros_like(tt[..., 0])] * 3
    ql, kl, share = objects
    same = ((kl[:, None, :] == ql[:, :, None]) & (ql[:, :, None] > 0))[:, None].to(r.dtype)  # [B, 1, c, K]
    own = torch.cat([(r * same).sum(-1), (rm * same).sum(-1)], 1) / tt
    on = ok & (ql[:, None, :] > 0)
    return [torch.where(on, own, 0.0).sum(-1), torch.where(on, share[:, None, :].to(tt.dtype), 0.0).sum(-1), on.sum(-1).to(tt.dtype)]
