"""The cheap query-dependence suite from the native row pass: NL blocks' softmax maps and ViT heads.

The kernel (:mod:`nlanalysis.kernels`, ``suite.c``) adds each row's share of the suite's sums while it forms
the row for the map statistics (:class:`~nlanalysis.kernels.SuiteSums`); here are the sums' inputs (the DNL
unary term, the cell centres) and the columns they give, with the definitions of the eager reference
(:func:`~nlanalysis.measure.query_dep.suite_pass` for NL blocks, :class:`~.head_suite.HeadSuite` for ViT heads):

* ``qk_nmi``: ``I / sqrt(log(n_q) H(k))``, rows renormalised over the valid spatial keys, ``1e-8`` added to
  every valid key, ``p(k)`` their mean over the queries counted;
* ``att_distance_px``, ``att_local``, ``att_local_uniform``: mean over the queries counted of
  ``sum_k a_k dist``, ``sum_k a_k near`` and the valid keys near the query over all valid keys;
* ``unary_var_share``, ``att_pairwise_only`` (heads only; the head mean NaN): the unary term
  ``u_j = mu_q . k_j`` (``mu_q``: the mean query over the queries counted) and, from each logits row, the
  pairwise-only row ``softmax_j(scale (l_j - u_j))`` and its variance across keys.

The queries counted, per map, are the valid ones whose row has some weight on the valid spatial keys (a normal
float32: the kernel flushes the rest): a row all zero there (a ViT head whose patch-key mass underflowed, or that
put it all on the class token) is left out of that map's spatial columns, as in :class:`~.head_suite.HeadSuite`
and the NL blocks' eager suite; the DNL split of ViT heads counts every valid query (its pairwise-only rows are
formed from the logits). An NL block whose pass finds such a row leaves the suite to the eager pass, which leaves
the row out of the DNL split too (:func:`native_columns`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..blocks.attention import PairwiseAttention
from ..blocks.heads import HeadAttention
from ..kernels import SuiteSums
from ..metrics.cosine import distance_from_sum, in_convention
from .query_dep import COLUMNS, CROSS_SITE, grid_centres, key_cell

__all__ = ["block_suite", "head_suite_sums", "native_columns", "suite_columns"]

#: the columns the native pass gives (the rest of :data:`~.query_dep.CHEAP` is NaN for softmax maps)
NATIVE = ("qk_nmi", "att_distance_px", "att_local", "att_local_uniform", "unary_var_share", "att_pairwise_only")


def _mean_query(q: Tensor, qmask: Tensor | None) -> Tensor:
    """``[B, ..., d]`` float64 mean of ``q`` ``[B, ..., n, d]`` over the valid queries (``qmask`` ``[B, n]``)."""
    q = q.detach()
    if qmask is None:
        return q.sum(-2, dtype=torch.float64) / q.shape[-2]
    m = qmask.to(q.device, q.dtype).reshape(qmask.shape[0], *([1] * (q.dim() - 3)), -1, 1)
    return (q * m).sum(-2, dtype=torch.float64) / m.sum(-2, dtype=torch.float64)  # float64 sums of exact float32 products


def block_suite(att: PairwiseAttention | None, qmask: Tensor | None, query_shape: tuple[int, int], key_shape: tuple[int, int],
                stride: tuple[float, float] | None, logits: Tensor | None = None) -> SuiteSums:  # fmt: skip
    """The :class:`~nlanalysis.kernels.SuiteSums` of an NL block's softmax maps (one map per image).

    Args:
        att: the maps' ``q`` and ``k`` (the unary term ``mu_q . k_j``), or ``None`` with ``logits``.
        qmask: ``[B, N]`` the valid queries, or ``None``.
        stride: input pixels per query cell ``(y, x)``, or ``None`` (no distances).
        logits: ``[B, N, N_k]`` the block's logits as the kernel reads them (``att`` ``None``): the unary term
            is their mean over the valid queries (``mu_q . k_j``, as ``q_i . k_j`` is linear in ``q_i``), formed by
            the kernel in its one call over every query (``SuiteSums(unary="logits")``).
    """
    if att is not None:
        mu = _mean_query(att.query, qmask)  # [B, d]
        unary = torch.einsum("bd,bdk->bk", mu, att.key.detach().to(torch.float64))[:, None]
    elif logits is not None:  # the kernel's one call over every query forms it (no float64 copy of the logits here)
        unary = "logits"
    else:
        raise ValueError("block_suite needs the attention's q and k or the logits")
    b, n_key = (logits.shape[0], logits.shape[-1]) if isinstance(unary, str) else (unary.shape[0], unary.shape[-1])
    where = _block_geometry(query_shape, key_shape, stride)
    return SuiteSums(b, 1, 1, n_key, unary=unary if isinstance(unary, str) else unary.cpu(), **where)


def _block_geometry(query_shape: tuple[int, int], key_shape: tuple[int, int], stride: tuple[float, float] | None) -> dict:
    """Cell centres and reach of an NL block's grids (keys on the query grid or its 2x2 max-pool)."""
    if stride is None:
        return {}
    cell = key_cell(query_shape, key_shape, stride)
    return dict(query_pos=grid_centres(query_shape, stride), key_pos=grid_centres(key_shape, cell), reach=(1.5 * cell[0], 1.5 * cell[1]))


def head_suite_sums(att: HeadAttention, qmask: Tensor | None, stride: tuple[float, float] | None, one_call: bool = False,
                    **rows: Tensor | None) -> SuiteSums:  # fmt: skip
    """The :class:`~nlanalysis.kernels.SuiteSums` of a ViT layer (every head, then the head mean) for the
    kernel's pass over its logits ``q . k`` (:func:`~.head_rows.head_source`): spatial keys after the prefix
    with ``keys="all"``. ``one_call``: the pass reads every query in one kernel call, which then forms the
    unary term from the logits (no torch op here: on a busy machine each costs its threads' barrier)."""
    first, prefix = att.first_key, att.layout.n_prefix
    if one_call:
        unary = "logits"
    else:
        mu = _mean_query(att.query[:, :, prefix:], qmask)  # [B, H, d]: the patch queries' mean
        # float32 products over d (as the eager suite's pairwise logits): a float64 copy of every key costs more than the pass
        unary = torch.matmul(att.key[:, :, first:].detach(), mu.to(att.key.dtype)[..., None])[..., 0].double()
    b, heads, n_key = att.batch_size, att.num_heads, att.key.shape[2] - first
    where = {}
    if stride is not None:
        pos = grid_centres(att.layout.grid, stride)
        where = dict(query_pos=pos, key_pos=pos, reach=(1.5 * stride[0], 1.5 * stride[1]))
    unary = unary.cpu() if isinstance(unary, Tensor) else unary
    return SuiteSums(b, heads, heads + 1, n_key, spatial_from=prefix if att.keys == "all" else 0, unary=unary, **where, **rows)


def native_columns(sums: SuiteSums, stats: dict[str, Tensor], kmask: Tensor | None, scale: float,
                   cos: dict | None = None) -> dict[str, Tensor] | None:  # fmt: skip
    """An NL block's cheap-suite columns ``{name: [B, 1]}`` from its native pass's sums, or ``None`` where the map
    statistics ``stats`` count a valid all-zero row (the eager suite leaves it out of the DNL split's means too; the
    kernel forms every valid query's pairwise-only row). ``cos``: as :func:`suite_columns`."""
    if bool((stats["att_zero_rows"] > 0).any()):
        return None
    return suite_columns(sums, kmask, scale, cos=cos)


def suite_columns(s: SuiteSums, key_mask: Tensor | None, scale: float, cross: bool = False,
                  cos: dict | None = None) -> dict[str, Tensor]:  # fmt: skip
    """``{column: [B, M]}`` float64 (CPU) of :data:`~.query_dep.COLUMNS` from the sums of every query's rows
    (``key_mask`` ``[B, K]`` the valid keys, or ``None``; ``scale``: the logits' softmax scale); the columns the
    native pass does not give are NaN. ``cross``: ``cross_site_cos`` too, from the cosines the pass summed against
    the previous site's kept rows (NaN without them). ``cos``: the run's ``convention`` (and ``zero``) of the cosine
    distances (:func:`~.query_dep.suite_pass`): the kernel forms ``att_pairwise_only`` as ``1-cos``, halved here for
    ``"(1-cos)/2"``; its rows are softmax rows, never zero, so no zero rule changes it.

    One native call (:meth:`~nlanalysis.kernels.SuiteSums.columns`): in NumPy (:func:`_numpy_columns`, the reference)
    a ViT layer asks ~40 calls, 0.2-0.45 ms per layer on 1 thread."""
    names, at = _ROWS[cross]
    out = dict(zip(names, s.columns(key_mask, scale, len(names), at).unbind(0)))
    convention = (cos or {}).get("convention", "1-cos")
    if convention != "1-cos":
        out["att_pairwise_only"] = in_convention(out["att_pairwise_only"], convention)
    return out


# the output's rows, and the rows of the native columns (then of cross_site_cos, -1: none), without and with it
_ROWS = {cross: (names, [names.index(name) for name in NATIVE] + [names.index(CROSS_SITE) if cross else -1])
         for cross, names in ((False, COLUMNS), (True, (*COLUMNS, CROSS_SITE)))}  # fmt: skip


def _numpy_columns(s: SuiteSums, key_mask: Tensor | None, scale: float, cos: dict | None = None) -> dict[str, Tensor]:
    """:func:`suite_columns` in NumPy on the sums' float64 arrays (views, no copy), without ``cross_site_cos``: the
    reference of its native call (tests compare the two)."""
    b, m, heads = s.batch, s.maps, s.heads
    block = np.full((len(COLUMNS), b, m), np.nan)  # every column, written in place
    out = dict(zip(COLUMNS, block))
    km = key_mask.to("cpu", torch.float64).reshape(b, s.n_key).numpy() if key_mask is not None else np.ones((b, s.n_key))
    with np.errstate(divide="ignore", invalid="ignore"):  # no query or key counted: NaN, as in torch
        if s.sums is not None:
            sums = s.sums.numpy()
            n_q = sums[4]
            p_k = s.p_k.numpy() / n_q[..., None]
            h_k = -np.where(p_k == 0, 0.0, p_k * np.log(p_k)).sum(-1)  # xlogy(p, p)
            mutual = np.maximum(h_k - sums[0] / n_q, 0.0)  # I >= 0 exactly; the clamp removes round-off
            defined = (n_q >= 2) & (h_k > 0)  # one query (log n_q = 0) or one key: NaN, not +-inf
            out["qk_nmi"][...] = np.where(defined, mutual / np.sqrt(np.maximum(np.log(n_q) * h_k, 1e-300)), np.nan)
            if s.query_pos is not None:
                n_k = km[:, s.spatial_from :].sum(-1, keepdims=True)
                out["att_distance_px"][...], out["att_local"][...] = sums[1] / n_q, sums[2] / n_q
                out["att_local_uniform"][...] = sums[3] / n_k / n_q
        if s.unary is not None:
            n_k = km.sum(-1, keepdims=True)  # [B, 1]
            unary = s.unary.numpy()
            u_mean = (unary * km[:, None]).sum(-1, keepdims=True) / n_k[..., None]
            unary_var = scale * scale * np.square((unary - u_mean) * km[:, None]).sum(-1) / n_k  # [B, H]
            pair_sums = s.pair_sums.numpy()
            n_rows = pair_sums[1]
            out["unary_var_share"][:, :heads] = unary_var / (unary_var + pair_sums[0] / (n_rows * n_k))
            n_long = torch.from_numpy(np.round(n_rows)).long()
            s2 = torch.from_numpy(np.square(s.pair_s.numpy()).sum(-1))
            out["att_pairwise_only"][:, :heads] = distance_from_sum(s2, n_long, torch.zeros_like(n_long), **(cos or {})).numpy()
    return dict(zip(COLUMNS, torch.from_numpy(block).unbind(0)))
