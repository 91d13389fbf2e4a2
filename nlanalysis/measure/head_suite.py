"""The cheap query-dependence suite of a ViT layer from one pass over its rows: heads, head mean and cross-site.

:func:`nlanalysis.measure.query_dep.query_dependence` reads a layer's maps group by group, each group
forming its rows again (the heads', then the head mean's from the heads' once more), the DNL split
forms the pairwise maps with a matmul and softmax of its own, and the cross-site comparison
(:mod:`.cross_site`) forms this layer's rows and the previous layer's a third and fourth time.
:class:`HeadSuite` takes each chunk of the layer's softmax once (:meth:`HeadSuite.update`: from the
pass that answers the model's attention call, :func:`nlanalysis.measure.heads.attend`, or from the
lazy maps, :meth:`HeadSuite.run`) and gives the same columns, with the same definitions:

* ``qk_nmi``, ``att_distance_px``, ``att_local``, ``att_local_uniform`` of every head and the head
  mean (:func:`~nlanalysis.metrics.query_dependence.spatial_stats`: rows over the valid spatial keys
  renormalised; the NMI adds ``1e-8`` to every valid key first), in float64 from the float32 rows; a row with
  no weight on the valid spatial keys (none a normal float32: its mass underflowed, or all on the class token)
  is left out of that map's means, each map counting its own queries (as ``att_entropy`` and the NL blocks);
* ``unary_var_share`` and ``att_pairwise_only`` of every head (:func:`~nlanalysis.metrics.decomposition.dnl_split`):
  the variances from the covariances of q and k (``O(N d^2)``); the pairwise-only map
  ``softmax_k((q_i - mu_q).(k_k - mu_k))`` as ``softmax_k((q_i - mu_q) . k_k)`` (the query's own term
  cancels in a softmax over keys), one float32 matmul and softmax per chunk. (It equals the row the
  layer formed times ``exp(-mu_q . k_k)``, renormalised, but that product loses the keys where the
  layer's float32 softmax underflowed, which the pairwise map can weigh: 0.1 off on a trained ViT-S/14.)
* ``cross_site_cos`` (:mod:`.cross_site`: query ``i``'s map here against the previous layer's, per head
  and for the head mean) from the rows and row norms the previous layer left (:class:`SuiteRows`), which
  this layer's pass replaces with its own.

The rows of the pass are the ones the statistics of :mod:`.heads` read (the native kernel's softmax,
or ``softmax(scale q.k)`` in float32): equal to what the general suite reads to float32 rounding,
so the columns agree with it to ~1e-7 (tests compare them). Sums run in float64, as there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..blocks.heads import HeadAttention
from ..kernels import SuiteSums, workspace
from ..metrics.cosine import distance_from_sum
from ..metrics.query_dependence import normalised_mi
from ..metrics.threads import statistics_threads
from .head_rows import head_source, native_chunk
from .native_suite import head_suite_sums, suite_columns
from .query_dep import COLUMNS, CROSS_SITE, grid_centres
from .stats import nans

__all__ = ["NMI_EPS", "ROWS_BYTES", "HeadSuite", "SuiteRows"]

#: what the NMI adds to every valid key before renormalising (:func:`~nlanalysis.metrics.query_dependence.query_key_nmi`'s default)
NMI_EPS = 1e-8
#: the most bytes of rows a layer keeps for the next one's ``cross_site_cos`` (above: the next layer recomputes them)
ROWS_BYTES = 1 << 26
#: floats of one chunk of a layer's rows ``[B, heads, n, N]`` in :meth:`HeadSuite.run`
CHUNK_FLOATS = 1 << 22

_SPATIAL = ("qk_nmi", "att_distance_px", "att_local", "att_local_uniform")
_TINY = torch.finfo(torch.float32).tiny  # weights below it are 0 to the kernels (flushed)


@dataclass
class SuiteRows:
    """What a layer leaves the next one for ``cross_site_cos``.

    Attributes:
        grids: ``(query_shape, key_shape, n_prefix, batch)``: two layers are compared only when these agree.
        name: the reused buffer that holds ``rows`` (valid until the layer after next overwrites it).
        maps: ``M`` = heads + 1 (the last: the head mean).
        rows: ``[B, M, n_query, N_key]`` float64 rows (0 on masked keys), or ``None`` (over
            :data:`ROWS_BYTES`): then recomputed from ``att`` chunk by chunk.
        inv: ``[B, M, n_query]`` float64 their inverse norms (0 on masked queries and zero rows).
        att: the layer's lazy maps (for the recomputation); key_mask: ``[B, 1, 1, N_key]`` float64 (or None: all).
        query_mask: ``[B, 1, n_query]`` float64 (or None: all).
        rows32: ``[B, M, n_query, N_key]`` float32 the rows the native pass kept (valid queries; masked keys 0),
            or ``None``; with them ``rows``, ``inv`` and ``ok`` are not formed (``inv``/``ok`` then ``None``).
        rows32_norms: ``[B, M, n_query]`` float64 with ``rows32``: their squared norms (the next layer's pass reads
            them instead of forming them again), or ``None``.
    """

    grids: tuple
    name: str
    maps: int
    rows: Tensor | None
    inv: Tensor | None
    ok: Tensor | None
    att: HeadAttention
    key_mask: Tensor | None
    query_mask: Tensor | None
    rows32: Tensor | None = None
    rows32_norms: Tensor | None = None


class HeadSuite:
    """The cheap suite of one ViT layer (every head, then the head mean), fed the layer's softmax chunk by chunk.

    Args:
        att: the layer's maps (queries, keys, layout, key set).
        query_mask: ``[B, n_patch]`` bool valid patch queries, or None (all).
        key_mask: ``[B, N_key]`` bool valid keys of the key set, or None (all).
        stride: input pixels per patch ``(y, x)`` (``None``: the distances and local masses are NaN).
        previous: the previous layer's :class:`SuiteRows` in this forward (``None``: ``cross_site_cos`` NaN).

    Attributes:
        rows: this layer's :class:`SuiteRows`, and values: the columns, after :meth:`result`.
    """

    def __init__(self, att: HeadAttention, query_mask: Tensor | None, key_mask: Tensor | None,
                 stride: tuple[float, float] | None, previous: SuiteRows | None = None, memo: dict | None = None) -> None:  # fmt: skip
        self.att, self.fed = att, 0
        b, heads, n, k = att.batch_size, att.num_heads, att.n_query, att.n_key
        self.maps = heads + 1
        self.sp = slice(att.layout.n_prefix, None) if att.keys == "all" else slice(None)  # the keys on the grid
        self.n_sp = len(range(k)[self.sp])
        key = ("suite masks", att.keys, att.n_query, att.n_key, str(att.device), att.query.dtype)
        masks = memo.get(key) if memo is not None else None
        if masks is None:  # memo: the same masks for every layer of a forward (:attr:`~.heads.HeadsBatch.memo`)
            masks = _masks(att, query_mask, key_mask, self.sp, self.n_sp)
            if memo is not None:
                memo[key] = masks
        self.qm, self.km, self.km32, self.n_q, self.km_sp, self.n_k_sp = masks
        self.grids = (att.query_shape, att.key_shape, att.layout.n_prefix, b)
        self.previous = previous if previous is not None and previous.grids == self.grids else None
        self.keep = b * self.maps * n * k * 8 <= ROWS_BYTES
        # two reused buffers, taken in turn: this layer's rows and the previous layer's
        self.name = "suite_rows_b" if previous is not None and previous.name == "suite_rows_a" else "suite_rows_a"
        self.query_mask, self.stride = query_mask, stride
        self.native: SuiteSums | None = None  # the kernel's sums (:meth:`native_sums`), which then give all but cross_site_cos
        self.kernel_rows = False  # the kernel keeps the rows and compares them with the previous layer's too
        self.where = self.fill = self.kept = None  # the eager sums' operands (:meth:`_eager_setup`, on the first eager update)
        self._ready = False

    def _eager_setup(self) -> None:
        """The eager sums' operands: geometry, the NMI's fill, the DNL split's terms (not needed with :attr:`native`)."""
        att, dev, f64 = self.att, self.att.device, torch.float64
        b, n, k = att.batch_size, att.n_query, att.n_key
        self._ready = True
        self.kept = _scratch(self.name, (b, self.maps, n, k), dev) if self.keep else None
        self.ok = torch.zeros(b, self.maps, n, dtype=torch.bool, device=dev)
        self.inv = torch.zeros(b, self.maps, n, dtype=f64, device=dev)
        zeros = lambda *shape: torch.zeros(*shape, dtype=f64, device=dev)  # noqa: E731
        self.cross, self.cross_n = zeros(b, self.maps), zeros(b, self.maps)
        if self.native is not None:
            return
        self.p_k, self.entropy, self.dist = zeros(b, self.maps, 1, self.n_sp), zeros(b, self.maps), zeros(b, self.maps, 2)
        self.counted, self.near = zeros(b, self.maps), zeros(b, self.maps)  # per map: queries counted, their valid near keys
        self.where = _geometry(att.layout.grid, self.stride, self.km_sp, dev) if self.stride is not None else None
        # added to the renormalised rows: the NMI's eps on valid keys, 1 on masked ones (y log y = 0 there)
        self.fill = torch.full((1, 1, 1, self.n_sp), NMI_EPS, dtype=f64, device=dev) if self.km_sp is None else \
            NMI_EPS * self.km_sp + (1.0 - self.km_sp)
        self._dnl_setup(att)

    def native_sums(self, chunk_size: int | None = None) -> SuiteSums:
        """The :class:`~nlanalysis.kernels.SuiteSums` the native row pass of this layer adds to (made on the first
        call, before any rows are fed; ``chunk_size``: the pass's): then :meth:`update` keeps only the rows for
        ``cross_site_cos``."""
        if self.native is None:
            if self.fed:
                raise RuntimeError("the suite was fed rows before the native pass was asked for")
            att, prev = self.att, self.previous
            one_call = native_chunk(head_source(att), chunk_size) >= att.n_query
            # the kernel keeps this layer's rows and compares them where the previous layer's were kept by it too
            self.kernel_rows = att.device.type == "cpu" and self.keep and (prev is None or prev.rows32 is not None)
            rows = {}
            if self.kernel_rows:
                shape = (att.batch_size, self.maps, att.n_query)
                keep = _scratch(self.name + "32", (*shape, att.n_key), att.device, torch.float32)
                rows = dict(keep=keep, keep_norms=_scratch(self.name + "32_norms", shape, att.device),
                            previous=prev.rows32 if prev is not None else None,
                            previous_norms=prev.rows32_norms if prev is not None else None)  # fmt: skip
            self.native = head_suite_sums(att, self.query_mask, self.stride, one_call, **rows)
        return self.native

    def _dnl_setup(self, att: HeadAttention) -> None:
        """The unary variance of every head (float64 sums) and the operands of the pairwise-only logits."""
        first, dev = att.first_key, att.device
        q, k = att.scaled_query(slice(None)), att.key[:, :, first:]  # [B, H, n, d] (the scale folded in), [B, H, K, d]
        qm = self.qm[..., None].to(q.dtype) if self.qm is not None else None  # [B, 1, n, 1]
        km = self.km[..., 0, :, None].to(q.dtype) if self.km is not None else None  # [B, 1, K, 1]
        n_k = km.sum(2, dtype=torch.float64) if km is not None else k.shape[2]  # [B, 1, 1] or int
        mu_q = (q * qm if qm is not None else q).sum(2, dtype=torch.float64) / self.n_q[:, None, None]  # [B, H, d]
        mu_k = (k * km if km is not None else k).sum(2, dtype=torch.float64) / n_k
        unary = (k.to(torch.float64) @ mu_q[..., None])[..., 0] - (mu_k * mu_q).sum(-1, keepdim=True)  # [B, H, K]
        if km is not None:  # the unary term less its mean over valid keys, 0 on masked keys
            unary = unary * km[..., 0]
        n_k = n_k[..., 0] if km is not None else n_k
        self.unary_var = unary.square().sum(-1) / n_k
        # the pairwise logits (q_i - mu_q) . (k_k - mu_k), 0 on masked queries and keys: float32 as the maps. Their
        # squares sum to n_q n_k tr(C_q C_k), the pairwise variance (accumulated chunk by chunk); in a softmax
        # over keys they equal (q_i - mu_q) . k_k (the query's own term cancels)
        qc, kc = q - mu_q[:, :, None].to(q.dtype), k - mu_k[:, :, None].to(q.dtype)
        self.pair_q = qc * qm if qm is not None else qc
        self.pair_k = (kc * km if km is not None else kc).transpose(-1, -2).contiguous()
        self.pair_norm = (self.n_q[:, None] * n_k).to(torch.float64)  # [B, 1] or [B]
        self.pair_mask = None if km is None else torch.where(km[..., 0] > 0, 0.0, -math.inf).to(att.query.dtype)[:, :, None, :]
        bh = (att.batch_size, att.num_heads)
        self.pair_var = torch.zeros(bh, dtype=torch.float64, device=dev)
        self.pair_sum = torch.zeros(*bh, att.n_key, dtype=torch.float64, device=dev)  # sum of unit pairwise rows
        self.pair_n = torch.zeros(bh, dtype=torch.int64, device=dev)
        self._qm_heads = None
        if self.qm is not None:
            self._qm_heads = self.qm.bool().expand(-1, att.num_heads, -1)

    def run(self) -> HeadSuite:
        """Feed the layer's rows from its lazy maps (``softmax(scale q.k)``), chunk by chunk."""
        att = self.att
        if self.kernel_rows:  # the native pass measured and kept every row
            self.fed = att.n_query
            return self
        step = max(1, CHUNK_FLOATS // max(1, att.batch_size * att.num_heads * att.layout.n_tokens))
        for start in range(0, att.n_query, step):
            self.update(start, att.probs_rows(slice(start, min(start + step, att.n_query))))
        return self

    def update(self, start: int, probs: Tensor) -> None:
        """Add patch queries ``start:start + c``: ``probs`` ``[B, heads, c, N]`` their softmax over every token (read only)."""
        if self.kernel_rows:  # the kernel's pass over these rows gave every column: nothing to set up per call
            self.fed += probs.shape[2]
            return
        with torch.no_grad(), statistics_threads():
            self._update(start, probs)

    def _update(self, start: int, probs: Tensor) -> None:
        if not self._ready:
            self._eager_setup()
        att, b, heads, m = self.att, self.att.batch_size, self.att.num_heads, self.maps
        c, k = probs.shape[2], self.att.n_key
        stop = start + c
        rows = probs[..., att.first_key :]  # [B, H, c, K] float32: the maps as the statistics read them
        # float64, 0 on masked keys; the last map: the head mean (kept for the next layer where they fit)
        r = self.kept[:, :, start:stop] if self.kept is not None else _scratch("suite_rows", (b, m, c, k), rows.device)
        if self.km is not None:  # masked in float32 first: a cast of strided rows is several times slower than a copy
            rows = torch.mul(rows, self.km32, out=_scratch("suite_rows32", (b, heads, c, k), rows.device, rows.dtype))
        r[:, :heads].copy_(rows)
        r[:, heads] = (r.new_full((1, heads), 1.0 / heads) @ r[:, :heads].reshape(b, heads, -1)).reshape(b, c, k)
        qm = self.qm[..., start:stop] if self.qm is not None else None  # [B, 1, c]
        if self.native is None:  # else the kernel's pass added these rows' sums
            self._spatial(start, stop, r[..., self.sp], qm)
            self._pairwise(start, stop, self._qm_heads[..., start:stop] if self._qm_heads is not None else None)
        inv, ok = _inverse_norms(r, qm)
        self._compare(start, stop, r, inv, ok)
        self.inv[:, :, start:stop], self.ok[:, :, start:stop] = inv, ok
        self.fed += c

    def _spatial(self, start: int, stop: int, r: Tensor, qm: Tensor | None) -> None:
        """NMI sums, distance and local mass of rows ``r`` ``[B, M, c, K_sp]`` (float64, masked keys 0).

        With ``a`` the rows renormalised (0 on masked queries) and ``y = a + eps`` on the valid keys (1 on
        masked ones: ``y log y = 0`` there), the NMI's row entropy is ``log t - (y . log y) / t``
        (``t = sum y`` over valid keys); ``p_k`` and the distance sums read ``y`` and take out what the
        fill added. A row with no normal float32 weight (the kernels flush the rest) is not counted: weight 0."""
        b, m, c, k = r.shape
        total = r.sum(-1)
        live = r.amax(-1) >= _TINY
        wl = live.to(r.dtype) if qm is None else live * qm  # [B, M, c] the rows counted
        w = torch.where(live, total, 1.0).reciprocal() * wl
        y = _scratch("suite_y", (b, m, c, k), r.device)
        torch.addcmul(self.fill, r, w[..., None], out=y) if r.is_contiguous() else y.copy_(torch.addcmul(self.fill, r, w[..., None]))
        t = live.to(r.dtype) + NMI_EPS * self.n_k_sp[:, None, None]  # [B, M, c]: sum of y over the valid keys
        h = t.log() - _dot(y, torch.log(y, out=_scratch("suite_log", y.shape, y.device))) / t  # entropy of y / t
        wq = wl / t
        self.entropy += (h * wl).sum(-1)
        self.counted += wl.sum(-1)
        self.p_k += wq[:, :, None, :] @ y  # masked keys: zeroed in result()
        if self.where is not None:
            pairs = self.where[0][start:stop]  # [c, K, 2]
            fill = self.fill.reshape(-1, k) @ pairs.sum(0)  # [B or 1, 2]: what the fill adds per query row
            self.dist += (y.reshape(b * m, c * k) @ pairs.reshape(c * k, 2)).reshape(b, m, 2) - fill[:, None, :]
            self.near += (wl * self.where[1][:, None, start:stop]).sum(-1)  # uncounted rows: y = fill, nothing left

    def _pairwise(self, start: int, stop: int, qm: Tensor | None) -> None:
        """The pairwise-only maps ``softmax_k((q_i - mu_q) . (k_k - mu_k))`` of the heads' queries ``start:stop``:
        their squared logits (the pairwise variance) and the sum of their unit rows (their cosine distance)."""
        logits = torch.matmul(self.pair_q[:, :, start:stop], self.pair_k)  # [B, H, c, K]
        self.pair_var += torch.linalg.vector_norm(logits, dim=-1).square().sum(-1, dtype=torch.float64)  # no float64 copy
        if self.pair_mask is not None:
            logits += self.pair_mask
        pair = torch.softmax(logits, -1)  # rows of a softmax: norms in [1 / sqrt(K), 1]
        w = torch.linalg.vector_norm(pair, dim=-1).reciprocal()
        if qm is not None:
            w = w * qm
        self.pair_sum += (w[..., None, :] @ pair)[..., 0, :]
        self.pair_n += pair.shape[2] if qm is None else qm.sum(-1)

    def _compare(self, start: int, stop: int, r: Tensor, inv: Tensor, ok: Tensor) -> None:
        """Add this chunk's cosines (rows ``r``, inverse norms ``inv``) against the previous layer's rows of the
        same queries (the two layers of one forward share their masks)."""
        prev = self.previous
        if prev is None:
            return
        if prev.rows32 is not None:  # kept by the native pass: their norms formed here
            before = prev.rows32[:, :, start:stop].to(torch.float64)
            prev_inv, prev_ok = _inverse_norms(before, self.qm[..., start:stop] if self.qm is not None else None)
        else:
            prev_inv, prev_ok = prev.inv[:, :, start:stop], prev.ok[:, :, start:stop]
            if prev.rows is not None:
                before = prev.rows[:, :, start:stop]
            else:  # recomputed from the previous layer's lazy maps
                before = prev.att.probs_rows(slice(start, stop))[..., prev.att.first_key :]
                before = torch.cat([before, before.mean(1, keepdim=True)], 1).to(torch.float64)
                before = before * prev.key_mask if prev.key_mask is not None else before
        pick = slice(None) if prev.maps == self.maps else slice(-1, None)
        dots = _dot(r[:, pick], before[:, pick]) * inv[:, pick] * prev_inv[:, pick]
        self.cross[:, pick] += dots.sum(-1)
        self.cross_n[:, pick] += (ok[:, pick] & prev_ok[:, pick]).sum(-1)

    def result(self, cos: dict | None = None) -> dict[str, Tensor]:
        """``{column: [B, heads + 1]}`` float64 (CPU): :data:`~nlanalysis.measure.query_dep.COLUMNS` (those
        the cheap suite leaves out NaN) and ``cross_site_cos``; sets :attr:`rows`. ``cos``: the run's ``convention``
        and ``zero`` (default ``"1-cos"``, ``"exclude"``), which ``att_pairwise_only`` follows as ``att`` does."""
        att = self.att
        if self.fed != att.n_query:
            raise RuntimeError(f"the suite was fed {self.fed} of {att.n_query} patch queries")
        b, m = att.batch_size, self.maps
        if self.native is not None:  # cross_site_cos too where the kernel compared the rows
            out = suite_columns(self.native, self.km[:, 0, 0] if self.km is not None else None, att.scale, cross=self.kernel_rows,
                                cos=cos)  # fmt: skip
        else:
            out = self._columns(cos or {})
        if CROSS_SITE not in out:
            cross = nans(b, m)
            if self.previous is not None:
                pick = slice(None) if self.previous.maps == m else slice(-1, None)
                cross[:, pick] = (self.cross[:, pick] / self.cross_n[:, pick]).cpu()
            out[CROSS_SITE] = cross
        self.values = out
        if self.kernel_rows:
            self.rows = SuiteRows(self.grids, self.name, m, None, None, None, att, self.km, self.qm, self.native.keep, self.native.keep_norms)
        else:
            self.rows = SuiteRows(self.grids, self.name, m, self.kept, self.inv, self.ok, att, self.km, self.qm)
        return out

    def _columns(self, cos: dict) -> dict[str, Tensor]:
        """:data:`~nlanalysis.measure.query_dep.COLUMNS` from the eager sums (:meth:`_spatial`, :meth:`_pairwise`)."""
        att = self.att
        b, m = att.batch_size, self.maps
        out = {name: nans(b, m) for name in COLUMNS}
        n_q = self.counted  # [B, M]: the queries each map counts (valid, a row on the spatial keys)
        p_k = self.p_k[:, :, 0] / n_q[..., None]
        if self.km_sp is not None:
            p_k = p_k * self.km_sp[:, 0]
        h_k = -torch.special.xlogy(p_k, p_k).sum(-1)
        out["qk_nmi"] = normalised_mi(h_k, self.entropy / n_q, n_q).cpu()
        if self.where is not None:
            out["att_distance_px"], out["att_local"] = (self.dist[..., 0] / n_q).cpu(), (self.dist[..., 1] / n_q).cpu()
            out["att_local_uniform"] = (self.near / self.n_k_sp[:, None] / n_q).cpu()
        heads = att.num_heads
        out["unary_var_share"][:, :heads] = (self.unary_var / (self.unary_var + self.pair_var / self.pair_norm)).cpu()
        sq = self.pair_sum.square().sum(-1)
        out["att_pairwise_only"][:, :heads] = distance_from_sum(sq, self.pair_n, torch.zeros_like(self.pair_n), **cos).cpu()
        return out


def _masks(att: HeadAttention, query_mask: Tensor | None, key_mask: Tensor | None, sp: slice, n_sp: int) -> tuple:
    """``(qm [B, 1, n], km [B, 1, 1, K] float64, km32 (the maps' dtype), n_q [B], km_sp, n_k_sp [B])`` of a layer's
    masks (``None`` for a mask that is all valid; ``sp`` the keys on the grid, ``n_sp`` of them)."""
    b, n, dev, f64 = att.batch_size, att.n_query, att.device, torch.float64
    qm = None if query_mask is None or bool(query_mask.all()) else query_mask.to(dev, f64)[:, None, :]
    km = None if key_mask is None or bool(key_mask.all()) else key_mask.to(dev, f64)[:, None, None, :]
    km32 = None if km is None else km.to(att.query.dtype)
    n_q = query_mask.sum(-1).to(dev, f64) if query_mask is not None else torch.full((b,), float(n), dtype=f64, device=dev)
    km_sp = None if km is None else km[..., sp]
    n_k_sp = km_sp.sum((1, 2, 3)) if km_sp is not None else torch.full((b,), float(n_sp), dtype=f64, device=dev)
    return qm, km, km32, n_q, km_sp, n_k_sp


def _dot(x: Tensor, y: Tensor) -> Tensor:
    """Row dot products ``[..., c]`` of ``x`` and ``y`` ``[..., c, K]`` (float64), through a reused buffer."""
    return torch.mul(x, y, out=_scratch("suite_dot", x.shape, x.device)).sum(-1)


def _scratch(name: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float64) -> Tensor:
    """A reused buffer on the CPU (:func:`nlanalysis.kernels.workspace`: no page faults per layer), a new one elsewhere."""
    if device.type == "cpu":
        return workspace(name, shape, dtype)
    return torch.empty(shape, dtype=dtype, device=device)


def _inverse_norms(r: Tensor, qm: Tensor | None) -> tuple[Tensor, Tensor]:
    """Inverse norms ``[B, M, c]`` of the rows of ``r`` ``[B, M, c, K]`` (float64, masked keys 0), 0 for zero rows
    and masked queries (``qm`` ``[B, 1, c]``), and which rows count (bool)."""
    norm = torch.linalg.vector_norm(r, dim=-1)
    ok = norm > 0
    w = torch.where(ok, norm, 1.0).reciprocal()
    if qm is not None:
        w, ok = w * qm, ok & (qm > 0)
    return torch.where(ok, w, 0.0), ok


def _geometry(grid: tuple[int, int], stride: tuple[float, float], km: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """The distance in pixels and the 3x3-neighbourhood flag of each query-key pair ``[n, K, 2]`` (float64), and
    the valid keys near each query ``[B, n]`` (``[1, n]`` without ``km``), as
    :func:`~nlanalysis.metrics.query_dependence.attention_distance` defines them."""
    pos = grid_centres(grid, stride).to(device)
    d = pos[:, None, :] - pos[None, :, :]  # [n, K, 2]
    reach = (1.5 * stride[0], 1.5 * stride[1])
    near = ((d[..., 0].abs() <= reach[0]) & (d[..., 1].abs() <= reach[1])).to(torch.float64)
    pairs = torch.stack([torch.hypot(d[..., 0], d[..., 1]), near], -1).contiguous()
    per_query = near @ km[:, 0, 0].transpose(0, 1) if km is not None else near.sum(-1, keepdim=True)  # [n, B or 1]
    return pairs, per_query.transpose(0, 1)
