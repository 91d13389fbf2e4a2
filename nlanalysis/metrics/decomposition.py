"""Is it one map? The shared-map decomposition of attention logits and the DNL split, streamed.

* :func:`logit_rank1`: how much of the row-centred logits ``L`` (each query's logits minus their
  mean over valid keys) one shared key profile ``v`` with a per-query gain ``g_i`` explains,
  ``sigma_1^2 / ||L||_F^2``, from the top eigenvector of ``L^T L`` (:mod:`.rank1`: the Gram matrix in
  one pass, or block subspace iteration through chunked products where there are many keys).
* :func:`gain_only`: the att of the maps rebuilt as ``softmax_k(g_i v_k)`` ("one map, a
  temperature per query") and their mean total-variation distance to the real maps.
* :func:`dnl_split`: the split of ``q_i.k_j`` of Yin et al. 2020 (Disentangled Non-Local Neural
  Networks, arXiv 2006.06668, Sec. 3; mmsegmentation ``dnl_head.py``) into a whitened pairwise
  term and a unary term of the keys, with the variance share of the unary one.

Inputs are row sources as in :mod:`.query_dependence` (chunks of queries; never ``N x N`` at once).
Softmax maps have logits ``log p`` up to a per-row constant, which the centring removes:
:func:`log_rows` turns a source of probabilities into one of logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .cosine import Convention, CosineAccumulator, ZeroRule
from .query_dependence import RowSource, Stream, as_mask, reopen, valid
from .rank1 import centred, top_profile

__all__ = ["DNLSplit", "Rank1", "dnl_split", "gain_only", "log_rows", "logit_rank1"]


@dataclass(frozen=True)
class Rank1:
    """The best rank-1 fit ``L_ik ~ g_i v_k`` of the row-centred logits of one site.

    Attributes:
        share: ``[*batch]`` ``sigma_1^2 / ||L||_F^2`` (``logit_rank1``); NaN if ``L = 0`` to rounding (its energy at
            most :data:`~.rank1.ZERO_ENERGY` of the uncentred logits', e.g. a uniform map).
        profile: ``[*batch, N_key]`` the shared key profile ``v`` (unit norm, 0 on masked keys),
            signed so that the gains sum to >= 0.
        gains: ``[*batch, N_query]`` ``g_i = L_i . v`` (0 on masked queries), or ``None`` (not formed).
        iterations: passes over the maps run.
        converged: ``[*batch]`` bool, whether the stopping rule was met before ``max_iter``.
    """

    share: Tensor
    profile: Tensor
    gains: Tensor | None
    iterations: int
    converged: Tensor


def log_rows(source: RowSource, floor: float = 1e-30) -> Callable[[], Iterator[tuple[int, Tensor]]]:
    """Logits of softmax maps: ``log(max(p, floor))`` of each chunk of ``source`` (probabilities).

    The floor only matters where a probability underflowed to 0 (its true logit is lower still).
    """
    again = reopen(source)
    return lambda: ((start, torch.log(rows.to(torch.float64).clamp_min(floor))) for start, rows in again())


def _softmax(x: Tensor, km: Tensor) -> Tensor:
    """Softmax over valid keys of ``x`` ``[B, n, K]`` (0 on masked keys)."""
    return torch.softmax(x if bool(km.all()) else x.masked_fill(~km[:, None, :], -math.inf), dim=-1)


def logit_rank1(logits: RowSource, n_query: int, n_key: int, *, key_mask: Tensor | None = None,
                query_mask: Tensor | None = None, tol: float = 1e-8, max_iter: int = 100, seed: int = 0,
                method: str = "auto", gains: bool = True) -> Rank1:  # fmt: skip
    """The share of the row-centred logits' energy in their best rank-1 approximation (``logit_rank1``).

    The key profile is the top eigenvector of ``L^T L`` (:func:`~.rank1.top_profile`): from the Gram
    matrix formed in one pass over the maps when there are at most :data:`~.rank1.GRAM_MAX_KEYS` keys
    (exact to rounding), else by block subspace iteration with Rayleigh-Ritz, one pass per step, until
    the relative residual is ``<= tol`` (at most ``max_iter`` passes, start block from ``seed``). Its
    accuracy: the profile's angle to the truth ``<= tol sigma_1^2 / (sigma_1^2 - sigma_2^2)``, the share
    (a Rayleigh quotient, never above the truth) low by about the square of that. ``method``:
    ``"auto"``, ``"gram"`` or ``"subspace"``. With ``gains`` one more pass gives ``g_i = L_i . v``
    (``gains=False``: ``Rank1.gains`` is ``None``; :func:`gain_only` then forms them in its own pass).
    Tested against ``numpy.linalg.svd``.

    Args:
        logits: Row source of logits ``[*batch, n, N_key]`` (any per-row constant is removed).

    Returns:
        :class:`Rank1`.
    """
    passes = reopen(logits)
    found = top_profile(lambda: Stream(passes, n_query, n_key, key_mask, query_mask), method=method, tol=tol,
                        max_passes=max_iter, seed=seed)  # fmt: skip
    st = Stream(passes, n_query, n_key, key_mask, query_mask)
    v, g = found.profile, None
    if gains:
        g = torch.zeros(v.shape[0], n_query, dtype=torch.float64, device=v.device)
        for start, x, qm in st:
            g[:, start : start + x.shape[1]] = torch.einsum("bnk,bk->bn", centred(x, qm, st.key_mask), v)
        sign = torch.where(g.sum(dim=-1, keepdim=True) < 0, -1.0, 1.0)
        v, g = v * sign, st.out(g * sign)
    passes_run = found.passes + int(gains)
    return Rank1(st.out(found.share), st.out(v), g, passes_run, st.out(found.converged))


def gain_only(logits: RowSource, fit: Rank1, *, key_mask: Tensor | None = None, query_mask: Tensor | None = None,
              include_self: bool = True, n_query: int | None = None, convention: Convention = "1-cos",
              zero: ZeroRule = "exclude") -> tuple[Tensor, Tensor]:  # fmt: skip
    """``att_gain_only`` and ``gain_only_tv``: the maps "one shared key profile, a gain per query".

    The rebuilt map of query ``i`` is ``p_hat_i = softmax_k(g_i v_k)`` over valid keys, with ``v`` and
    ``g`` of ``fit`` (:func:`logit_rank1` of the same logits; a fit without gains gets them in this pass,
    ``g_i = L_i . v``, and needs ``n_query``); the real map is ``p_i = softmax_k(logits_i)``.
    ``att_gain_only`` is the mean pairwise cosine distance of the ``p_hat_i`` (``convention``, ``zero``: as
    :meth:`~.cosine.CosineAccumulator.result`, the run's ``att``'s);
    ``gain_only_tv`` the mean over valid queries of ``0.5 * sum_k |p_ik - p_hat_ik|`` (in [0, 1]).
    Big att with small ``gain_only_tv``: one map at different sharpness, not query-specific context.

    Returns:
        ``(att_gain_only, gain_only_tv)``, each float64 ``[*batch]``. One pass over the maps.
    """
    if fit.gains is None and n_query is None:
        raise ValueError("a rank-1 fit without gains needs n_query")
    n_query, n_key = fit.gains.shape[-1] if fit.gains is not None else n_query, fit.profile.shape[-1]
    st = Stream(logits, n_query, n_key, key_mask, query_mask)
    km = st.key_mask
    v = fit.profile.reshape(-1, n_key).to(km.device)
    gains = fit.gains.reshape(-1, n_query).to(km.device) if fit.gains is not None else None
    acc = st.cosine()
    tv = torch.zeros(km.shape[0], dtype=torch.float64, device=km.device)
    for start, x, qm in st:
        p = _softmax(x, km)
        g = gains[:, start : start + x.shape[1]] if gains is not None else torch.einsum("bnk,bk->bn", centred(x, qm, km), v)
        p_hat = _softmax(g[..., None] * v[:, None, :], km)
        acc.update(p_hat, qm)
        tv += torch.where(qm, 0.5 * (p - p_hat).abs().sum(dim=-1), 0.0).sum(dim=1)
    cos = acc.result(include_self=include_self, convention=convention, zero=zero)
    return st.out(cos), st.out(tv / st.query_mask.sum(dim=-1))


@dataclass(frozen=True)
class DNLSplit:
    """The DNL split of one site's logits ``scale * q_i . k_j``; each field float64 ``[*batch]``.

    Attributes:
        unary_var: ``var_k(scale * mu_q . k_j)``, the variance across keys of the unary term.
        pairwise_var: ``mean_i var_k(scale * (q_i - mu_q) . (k_j - mu_k))``.
        unary_var_share: ``unary_var / (unary_var + pairwise_var)``.
        att_pairwise_only: att (in the ``convention`` asked for) of ``softmax_k`` of the pairwise term alone.
    """

    unary_var: Tensor
    pairwise_var: Tensor
    unary_var_share: Tensor
    att_pairwise_only: Tensor


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of the rows of ``x`` ``[B, N, d]`` where ``mask`` ``[B, N]``; ``[B, d]``."""
    return torch.where(mask[..., None], x, 0.0).sum(dim=1) / mask.sum(dim=1, keepdim=True)


def dnl_split(q: Tensor, k: Tensor, scale: float = 1.0, *, key_mask: Tensor | None = None,
              query_mask: Tensor | None = None, include_self: bool = True, chunk_size: int = 256,
              softmax: bool = True, convention: Convention = "1-cos", zero: ZeroRule = "exclude") -> DNLSplit:  # fmt: skip
    """Split the logits ``scale * q_i . k_j`` into the DNL whitened pairwise and unary terms.

    With ``mu_q``, ``mu_k`` the means over valid positions (as ``dnl_head.py``, which subtracts
    the means of theta and phi over positions), ``q_i.k_j = (q_i - mu_q).(k_j - mu_k)`` [pairwise]
    ``+ mu_q.k_j`` [unary: the key only] ``+ (q_i - mu_q).mu_k`` [the query only: cancels in a
    softmax over keys]. Variances are population variances over valid keys. The pairwise term
    has mean 0 over keys, so ``mean_i var_k`` of it is ``scale^2 tr(C_q C_k)`` (covariances of q and
    k), exact in O(N d^2); only ``att_pairwise_only`` needs the maps, chunk by chunk.

    Args:
        q: ``[*batch, N_query, d]`` queries (theta); k: ``[*batch, N_key, d]`` keys (phi).
        scale: The logit scale (``1/sqrt(d)`` for scaled dot product, 1 for plain).
        softmax: the maps are ``softmax_k`` of the logits (``att_pairwise_only`` of ``softmax_k`` of the
            pairwise term); ``False``: the maps are the logits themselves (dot-product NL blocks), and
            so is the pairwise-only map.

    Returns:
        :class:`DNLSplit`.
    """
    *batch, n_query, dim = q.shape
    n_key = k.shape[-2]
    qf, kf = q.detach().to(torch.float64).reshape(-1, n_query, dim), k.detach().to(torch.float64).reshape(-1, n_key, dim)
    km = as_mask(key_mask, (*batch, n_key), "key_mask", q.device).reshape(-1, n_key)
    qm = as_mask(query_mask, (*batch, n_query), "query_mask", q.device).reshape(-1, n_query)
    mu_q, mu_k = _masked_mean(qf, qm), _masked_mean(kf, km)
    qc = torch.where(qm[..., None], qf - mu_q[:, None], 0.0)
    kc = torch.where(km[..., None], kf - mu_k[:, None], 0.0)
    unary = torch.einsum("bkd,bd->bk", kc, mu_q) * scale  # the unary term minus its mean over keys
    unary_var = (unary * unary).sum(dim=-1) / km.sum(dim=-1)
    cov_q = qc.transpose(1, 2) @ qc / qm.sum(dim=-1)[:, None, None]
    cov_k = kc.transpose(1, 2) @ kc / km.sum(dim=-1)[:, None, None]
    pairwise_var = scale * scale * (cov_q * cov_k).sum(dim=(1, 2))
    acc = CosineAccumulator(n_key, (km.shape[0],), device=q.device)
    for start in range(0, n_query, chunk_size):
        pair = torch.einsum("bnd,bkd->bnk", qc[:, start : start + chunk_size], kc) * scale
        acc.update(_softmax(pair, km) if softmax else valid(pair, qm[:, start : start + chunk_size], km),
                   qm[:, start : start + chunk_size])
    share = unary_var / (unary_var + pairwise_var)
    att = acc.result(include_self=include_self, convention=convention, zero=zero)
    return DNLSplit(*(t.reshape(batch) for t in (unary_var, pairwise_var, share, att)))
