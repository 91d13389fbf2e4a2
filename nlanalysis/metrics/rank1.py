"""The top right singular vector of row-centred logits, streamed: the fit behind ``logit_rank1``.

``L`` ``[N_query, N_key]`` (per batch element) is given as chunks of query rows (a row source of
:mod:`.query_dependence`), each centred over the valid keys (:func:`centred`). :func:`top_profile`
finds ``sigma_1^2 / ||L||_F^2`` and the unit key profile ``v`` (top eigenvector of ``G = L^T L``)
by one of two methods, chosen by the number of keys ``K`` (``method="auto"``):

* ``"gram"`` (``K <=`` :data:`GRAM_MAX_KEYS`): one pass accumulates ``G = sum_chunks L_c^T L_c``
  (``[K, K]`` float64 per map, chunk by chunk: never the ``N x K`` logits at once) and ``||L||_F^2``;
  then ``torch.linalg.eigh(G)`` (on one thread, :func:`~.threads.statistics_threads`: its many small
  parallel steps each wait at a barrier, which on a busy machine took 10 s for six ``257^2`` matrices
  at two threads). Exact to float64 rounding, one pass over the maps. Cost: the pass
  forms every row once (``N K d`` for ``q.k`` logits, the heads' softmax for a head mean) and adds
  ``N K^2`` for the Gram; ``eigh`` is ``O(K^3)`` per map. Up to ``K ~ 1,000`` the Gram costs about
  what forming the rows costs (``d`` is 64-512), and ``eigh`` of a ``1,024^2`` matrix ~0.1-0.3 s;
  above, ``N K^2`` and ``K^3`` outgrow re-forming the rows a few times, and ``G`` (8 ``K^2`` bytes a
  map, 141 MB at COCO's ``K = 4,200``) is no longer small.
* ``"subspace"`` (more keys): block subspace iteration on ``G`` through the chunks with a small
  block (``p = 16`` vectors, random start, ``seed``) and Rayleigh-Ritz each pass: ``U = L V``,
  ``W = L^T U = G V`` and the projected ``H = U^T U = V^T G V`` come out of one pass; the top Ritz pair
  ``(theta, x = V y)`` of ``H`` has residual ``r = W y - theta x``, known without another pass. Stop
  when ``||r|| <= tol * theta`` in every map, or after ``max_passes``; else ``V = qr(W)``. The error
  shrinks by ``sigma_{p+1}^2 / sigma_1^2`` per pass (not ``sigma_2^2 / sigma_1^2`` as one power
  vector's): 4 passes on the R50-res4 example NL map (share 0.95, N = K = 4,200), 5 at p = 4.

Accuracy (tested against ``numpy.linalg.svd``): ``"gram"`` to rounding (~1e-12 in the share and
the profile). ``"subspace"``: at the stop, the profile's angle to the true one is at most
``tol * sigma_1^2 / (sigma_1^2 - sigma_2^2)`` and the share (a Rayleigh quotient, never above the
truth) is low by about ``tol^2 sigma_1^2 / (sigma_1^2 - sigma_2^2)`` (relative): the default ``tol = 1e-8``
gives ~1e-16 in the share and ~1e-8 in the profile (so in ``att_gain_only``, ``gain_only_tv``) unless
``sigma_2`` is within a few % of ``sigma_1``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .query_dependence import Stream, valid
from .threads import statistics_threads

__all__ = ["GRAM_MAX_KEYS", "METHODS", "GramStep", "Profile", "SubspaceStep", "centred", "complete", "profile_step", "top_profile"]

#: the most keys for which :func:`top_profile` forms the Gram matrix (``method="auto"``)
GRAM_MAX_KEYS = 1024
METHODS = ("auto", "gram", "subspace")
BLOCK = 16  # vectors of the subspace iteration (16 vs 4: 4 passes instead of 5 on the R50-res4 NL map, share 0.95)


@dataclass(frozen=True)
class Profile:
    """The top eigenpair of ``L^T L`` per map, batch flattened (``B`` maps).

    Attributes:
        share: ``[B]`` ``sigma_1^2 / ||L||_F^2``; NaN where ``L = 0`` to rounding (:func:`_share`).
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


def top_profile(stream: Callable[[], Stream], *, method: str = "auto", tol: float = 1e-8, max_passes: int = 100,
                seed: int = 0) -> Profile:  # fmt: skip
    """The share and the key profile of the best rank-1 fit of the row-centred logits (module docstring).

    Args:
        stream: a fresh :class:`~.query_dependence.Stream` over the logits per call (one pass each).
        method: ``"auto"`` (by the number of keys: :data:`GRAM_MAX_KEYS`), ``"gram"`` or ``"subspace"``.
        tol: ``"subspace"``: the relative residual at which a map has converged.
        max_passes: ``"subspace"``: the most passes.
        seed: ``"subspace"``: the random start block.
    """
    st = stream()
    step = profile_step(st, method=method, tol=tol, max_passes=max_passes, seed=seed)
    for _, x, qm in st:
        step.update(x, qm)
    return complete(step, stream)


def profile_step(st: Stream, *, method: str = "auto", tol: float = 1e-8, max_passes: int = 100, seed: int = 0) -> GramStep | SubspaceStep:
    """The accumulator of one pass of :func:`top_profile` over ``st``'s maps (arguments as there): feed it the
    chunks (``update(x, qm)`` with :meth:`~.query_dependence.Stream.view`'s), then :func:`complete` it."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "gram" or (method == "auto" and st.n_key <= GRAM_MAX_KEYS):
        return GramStep(st)
    return SubspaceStep(st, tol, max_passes, seed)


def complete(step: GramStep | SubspaceStep, stream: Callable[[], Stream]) -> Profile:
    """The :class:`Profile` of a step fed one pass, running more passes of ``stream`` while it asks for them."""
    found = step.finish()
    while found is None:
        for _, x, qm in stream():
            step.update(x, qm)
        found = step.finish()
    return found


def _unit(v: Tensor, km: Tensor) -> Tensor:
    """``v`` ``[B, K]`` zeroed on masked keys, unit norm (left as is where it is 0)."""
    v = v * km
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v / torch.where(norm > 0, norm, 1.0)


#: centred logits whose energy is at most this share of the logits' own (uncentred) energy are 0 up to the rounding of
#: the centring (each entry off by a few float64 eps of the logits): no key profile to speak of, the share NaN
ZERO_ENERGY = (64 * torch.finfo(torch.float64).eps) ** 2


def _share(top: Tensor, frob: Tensor, raw: Tensor) -> Tensor:
    """``top / frob`` where the centred energy ``frob`` is above rounding of the uncentred ``raw`` (:data:`ZERO_ENERGY`),
    else NaN (a map with one row repeated and flat, e.g. a uniform shared map: ``L = 0``, whatever the rounding left)."""
    some = frob > ZERO_ENERGY * raw
    return torch.where(some, top.clamp_min(0) / torch.where(some, frob, 1.0), math.nan)


def _energy(x: Tensor, qm: Tensor, km: Tensor) -> Tensor:
    """``[B]`` the sum of squares of the valid logits of a chunk ``x`` ``[B, n, K]`` (before centring)."""
    return valid(x, qm, km).square().sum(dim=(1, 2))


class GramStep:
    """One pass: ``G = L^T L`` ``[B, K, K]`` (and ``||L||_F^2``, its trace; the logits' own energy); then ``eigh``."""

    def __init__(self, st: Stream) -> None:
        self.km = st.key_mask
        self.gram = torch.zeros(self.km.shape[0], st.n_key, st.n_key, dtype=torch.float64, device=self.km.device)
        self.raw = torch.zeros(self.km.shape[0], dtype=torch.float64, device=self.km.device)

    def update(self, x: Tensor, qm: Tensor) -> None:
        lc = centred(x, qm, self.km)
        self.gram.baddbmm_(lc.transpose(1, 2), lc)
        self.raw += _energy(x, qm, self.km)

    def finish(self) -> Profile:
        frob = torch.diagonal(self.gram, dim1=1, dim2=2).sum(-1)
        with statistics_threads():  # LAPACK's many small parallel steps: a busy machine stalls them at every barrier
            values, vectors = torch.linalg.eigh(self.gram)
        ok = torch.ones(frob.shape[0], dtype=torch.bool, device=frob.device)
        return Profile(_share(values[:, -1], frob, self.raw), _unit(vectors[..., -1], self.km.to(torch.float64)), 1, ok, "gram")


class SubspaceStep:
    """Block subspace iteration with Rayleigh-Ritz, one pass over the maps per step (module docstring):
    :meth:`finish` gives the :class:`Profile` once converged (or after ``max_passes``), else ``None``
    and the next block, for another pass."""

    def __init__(self, st: Stream, tol: float, max_passes: int, seed: int) -> None:
        b, k, device = st.key_mask.shape[0], st.n_key, st.key_mask.device
        self.km, self.kmf, self.tol, self.max_passes, self.passes = st.key_mask, st.key_mask.to(torch.float64), tol, max_passes, 0
        p = max(1, min(BLOCK, k))
        start = torch.randn(b, k, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
        self.basis = torch.linalg.qr(start * self.kmf[..., None]).Q
        self._reset()

    def _reset(self) -> None:
        b, p = self.basis.shape[0], self.basis.shape[2]
        self.w = torch.zeros_like(self.basis)
        self.h = torch.zeros(b, p, p, dtype=torch.float64, device=self.basis.device)
        self.frob = torch.zeros(b, dtype=torch.float64, device=self.basis.device)
        self.raw = torch.zeros_like(self.frob)

    def update(self, x: Tensor, qm: Tensor) -> None:
        lc = centred(x, qm, self.km)
        u = lc @ self.basis  # [B, n, p]
        self.w.baddbmm_(lc.transpose(1, 2), u)
        self.h.baddbmm_(u.transpose(1, 2), u)
        self.frob += lc.square().sum(dim=(1, 2))
        self.raw += _energy(x, qm, self.km)

    def finish(self) -> Profile | None:
        self.passes += 1
        with statistics_threads():
            theta, y = torch.linalg.eigh(self.h)
        top, y1 = theta[:, -1].clamp_min(0), y[..., -1:]
        ritz = (self.basis @ y1)[..., 0]
        residual = torch.linalg.vector_norm((self.w @ y1)[..., 0] - top[:, None] * ritz, dim=-1)
        converged = (residual <= self.tol * top) | (self.frob <= ZERO_ENERGY * self.raw)
        if bool(converged.all()) or self.passes >= self.max_passes:
            return Profile(_share(top, self.frob, self.raw), _unit(ritz, self.kmf), self.passes, converged, "subspace")
        zero = self.w.abs().amax(dim=(1, 2), keepdim=True) == 0  # a zero map keeps its basis
        self.basis = torch.linalg.qr(self.w + zero * self.basis).Q
        self._reset()
        return None
