"""The top right singular vector of row-centred logits, streamed: the fit behind ``logit_rank1``.

``L`` ``[N_query, N_key]`` (per batch element) is given as chunks of query rows (a row source of
:mod:`.query_dependence`), each centred over the valid keys (:func:`centred`). :func:`top_profile`
finds ``sigma_1^2 / ||L||_F^2`` and the unit key profile ``v`` (top eigenvector of ``G = L^T L``)
by one of two methods, chosen by the number of keys ``K`` (``method="auto"``):

* ``"gram"`` (``K <=`` :data:`GRAM_MAX_KEYS`): one pass accumulates ``G = sum_chunks L_c^T L_c``
  (``[K, K]`` float64 per map, chunk by chunk: never the ``N x K`` logits at once) and ``||L||_F^2``;
  then ``torch.linalg.eigh(G)``. Exact to float64 rounding, one pass over the maps. Cost: the pass
  forms every row once (``N K d`` for ``q.k`` logits, the heads' softmax for a head mean) and adds
  ``N K^2`` for the Gram; ``eigh`` is ``O(K^3)`` per map. Up to ``K ~ 1,000`` the Gram costs about
  what forming the rows costs (``d`` is 64-512), and ``eigh`` of a ``1,024^2`` matrix ~0.1-0.3 s;
  above, ``N K^2`` and ``K^3`` outgrow re-forming the rows a few times, and ``G`` (8 ``K^2`` bytes a
  map, 141 MB at COCO's ``K = 4,200``) is no longer small.
* ``"subspace"`` (more keys): block subspace iteration on ``G`` through the chunks with a small
  block (``p = 4`` vectors, random start, ``seed``) and Rayleigh-Ritz each pass: ``U = L V``,
  ``W = L^T U = G V`` and the projected ``H = U^T U = V^T G V`` come out of one pass; the top Ritz pair
  ``(theta, x = V y)`` of ``H`` has residual ``r = W y - theta x``, known without another pass. Stop
  when ``||r|| <= tol * theta`` in every map, or after ``max_passes``; else ``V = qr(W)``. The error
  shrinks by ``sigma_{p+1}^2 / sigma_1^2`` per pass (not ``sigma_2^2 / sigma_1^2`` as one power
  vector's), so a near-rank-1 map (the NL blocks: shares ~0.99) stops after 2-4 passes.

Accuracy (tested against ``numpy.linalg.svd``): ``"gram"`` to rounding (~1e-12 in the share and
the profile). ``"subspace"``: at the stop, the profile's angle to the true one is at most
``tol * sigma_1^2 / (sigma_1^2 - sigma_2^2)`` and the share (a Rayleigh quotient, never above the
truth) is low by at most about the square of the residual: ``tol = 1e-10`` gives ~1e-20 in the share
and ~1e-10 in the profile unless ``sigma_2`` is within 1% of ``sigma_1``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .query_dependence import Stream, valid

__all__ = ["GRAM_MAX_KEYS", "METHODS", "Profile", "centred", "top_profile"]

#: the most keys for which :func:`top_profile` forms the Gram matrix (``method="auto"``)
GRAM_MAX_KEYS = 1024
METHODS = ("auto", "gram", "subspace")
BLOCK = 4  # vectors of the subspace iteration


@dataclass(frozen=True)
class Profile:
    """The top eigenpair of ``L^T L`` per map, batch flattened (``B`` maps).

    Attributes:
        share: ``[B]`` ``sigma_1^2 / ||L||_F^2``; NaN where ``L = 0``.
        profile: ``[B, K]`` unit key profile (0 on masked keys; sign arbitrary).
        passes: passes over the maps run.
        converged: ``[B]`` bool (always True for ``"gram"``).
        method: ``"gram"`` or ``"subspace"``.
    """

    share: Tensor
    profile: Tensor
    passes: int
    converged: Tensor
    method: str


def centred(x: Tensor, qm: Tensor, km: Tensor) -> Tensor:
    """Row-centred logits ``[B, n, K]`` over valid keys, 0 on masked entries; raises on NaN/inf."""
    x = valid(x, qm, km)
    mean = x.sum(dim=-1, keepdim=True) / km.sum(dim=-1).clamp_min(1)[:, None, None]
    if not bool(torch.isfinite(mean).all()):  # a NaN/inf logit makes its row's sum NaN/inf
        raise ValueError("logits hold NaN/inf on valid entries (log of a zero probability? use log_rows)")
    return valid(x - mean, qm, km)


def top_profile(stream: Callable[[], Stream], *, method: str = "auto", tol: float = 1e-10, max_passes: int = 100,
                seed: int = 0) -> Profile:  # fmt: skip
    """The share and the key profile of the best rank-1 fit of the row-centred logits (module docstring).

    Args:
        stream: a fresh :class:`~.query_dependence.Stream` over the logits per call (one pass each).
        method: ``"auto"`` (by the number of keys: :data:`GRAM_MAX_KEYS`), ``"gram"`` or ``"subspace"``.
        tol: ``"subspace"``: the relative residual at which a map has converged.
        max_passes: ``"subspace"``: the most passes.
        seed: ``"subspace"``: the random start block.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    st = stream()
    if method == "gram" or (method == "auto" and st.n_key <= GRAM_MAX_KEYS):
        return _gram(st)
    return _subspace(stream, st, tol, max_passes, seed)


def _unit(v: Tensor, km: Tensor) -> Tensor:
    """``v`` ``[B, K]`` zeroed on masked keys, unit norm (left as is where it is 0)."""
    v = v * km
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v / torch.where(norm > 0, norm, 1.0)


def _gram(st: Stream) -> Profile:
    """One pass: ``G = L^T L`` ``[B, K, K]`` and ``||L||_F^2``; then ``eigh``."""
    b, device = st.key_mask.shape[0], st.key_mask.device
    gram = torch.zeros(b, st.n_key, st.n_key, dtype=torch.float64, device=device)
    for _, x, qm in st:
        lc = centred(x, qm, st.key_mask)
        gram.baddbmm_(lc.transpose(1, 2), lc)
    frob = torch.diagonal(gram, dim1=1, dim2=2).sum(-1)
    values, vectors = torch.linalg.eigh(gram)
    share = torch.where(frob > 0, values[:, -1].clamp_min(0) / torch.where(frob > 0, frob, 1.0), math.nan)
    ok = torch.ones(b, dtype=torch.bool, device=device)
    return Profile(share, _unit(vectors[..., -1], st.key_mask.to(torch.float64)), 1, ok, "gram")


def _subspace(stream: Callable[[], Stream], st: Stream, tol: float, max_passes: int, seed: int) -> Profile:
    """Block subspace iteration with Rayleigh-Ritz, one pass over the maps per step (module docstring)."""
    b, k, device = st.key_mask.shape[0], st.n_key, st.key_mask.device
    km = st.key_mask.to(torch.float64)
    p = max(1, min(BLOCK, k))
    start = torch.randn(b, k, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    basis = torch.linalg.qr(start * km[..., None]).Q
    for passes in range(1, max_passes + 1):
        w = torch.zeros_like(basis)
        h = torch.zeros(b, p, p, dtype=torch.float64, device=device)
        frob = torch.zeros(b, dtype=torch.float64, device=device)
        for _, x, qm in st:
            lc = centred(x, qm, st.key_mask)
            u = lc @ basis  # [B, n, p]
            w.baddbmm_(lc.transpose(1, 2), u)
            h.baddbmm_(u.transpose(1, 2), u)
            frob += lc.square().sum(dim=(1, 2))
        theta, y = torch.linalg.eigh(h)
        top, y1 = theta[:, -1].clamp_min(0), y[..., -1:]
        ritz = (basis @ y1)[..., 0]
        residual = torch.linalg.vector_norm((w @ y1)[..., 0] - top[:, None] * ritz, dim=-1)
        converged = (residual <= tol * top) | (frob == 0)
        if bool(converged.all()) or passes == max_passes:
            break
        basis = torch.linalg.qr(w + (w.abs().amax(dim=(1, 2), keepdim=True) == 0) * basis).Q  # a zero map keeps its basis
        st = stream()
    share = torch.where(frob > 0, top / torch.where(frob > 0, frob, 1.0), math.nan)
    return Profile(share, _unit(ritz, km), passes, converged, "subspace")
