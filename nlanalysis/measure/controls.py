"""Controls that make raw attention distances interpretable.

A mean pairwise distance between attention maps means little alone: it depends on how sharp the
maps are and on how varied the features are. Beside each trained map (an NL block's, a ViT head's)
the analysis therefore reports the same statistics for

* **random projections at matched sharpness**: the site's own input features with random
  query/key projections in place of the trained ones (:func:`draw_projections`: Gaussian
  ``N(0, 1/C)``, seeded), ``softmax(tau * q_i . k_j)`` with the temperature ``tau`` chosen by
  :func:`match_temperature` so that the mean normalised entropy of the maps equals the trained
  map's. What distance would maps of the same sharpness have if training had learned nothing
  about *which* keys matter? NL blocks: :func:`nlanalysis.measure.blocks.measure_block`
  (``controls=True``); ViT heads: :mod:`nlanalysis.measure.head_controls`. Both use the matcher
  and the draw below, so their ``ctrl_*`` columns are computed the same way.
* **uniform attention**: analytic, no computation: ``att = 0``, ``att_jsd = 0``, normalised
  entropy 1, and ``att_own_object = own_object_share``.

The random control needs a defined entropy, i.e. non-negative maps; for signed (dot-product) maps
it is not computed. Its form is always ``softmax-mean-entropy``; the control in the form of each
block (per-query softmax, ReLU concatenation, signed dot product: the ``ctrl_form*`` columns) is
:mod:`nlanalysis.measure.control_forms`, built on :func:`solve_log_temperature` below.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..blocks.attention import PairwiseAttention

__all__ = [
    "CONVERGED",
    "MATCH_ROWS",
    "MATCH_TOLERANCE",
    "Match",
    "draw_projections",
    "logit_entropy",
    "match_temperature",
    "random_projection_attention",
    "solve_log_temperature",
]

#: query rows (a random sample of the valid ones) the temperature is matched on, per image.
MATCH_ROWS = 256
#: a match is accepted when the mean normalised entropy is within this of the target (else NaN).
MATCH_TOLERANCE = 1e-3
#: the Newton iteration stops when the entropy is within this of the target.
CONVERGED = 1e-7
_LOG_TAU_BRACKET = 12.0  # tau in [e^-12, e^12]


class Match(NamedTuple):
    """Result of :func:`match_temperature` for ``M`` maps.

    Attributes:
        tau: ``[M]`` float64 temperature (NaN where not matched).
        ok: ``[M]`` bool: the target was defined and reached within :data:`MATCH_TOLERANCE`.
    """

    tau: Tensor
    ok: Tensor


def draw_projections(maps: int, channels: int, in_channels: int, generator: torch.Generator) -> Tensor:
    """Random query/key projections ``[maps, 2, channels, in_channels]`` (``[:, 0]`` = ``W_q``,
    ``[:, 1]`` = ``W_k``), entries ``N(0, 1/in_channels)``, drawn on the CPU from ``generator``."""
    return torch.randn(maps, 2, channels, in_channels, generator=generator) / math.sqrt(in_channels)


def random_projection_attention(
    x: Tensor, key_shape: tuple[int, int], channels: int, generator: torch.Generator, scale: float = 1.0
) -> PairwiseAttention:
    """Softmax attention from random projections of ``x`` ``[B, C, H, W]`` (one draw for the batch).

    Queries ``W_q x_i``, keys ``W_k x_j`` (:func:`draw_projections`, ``channels`` outputs); keys are
    2x2 max-pooled when ``key_shape`` is half the query grid (as sub-sampled NL blocks do).
    """
    b, c, h, w = x.shape
    wq, wk = draw_projections(1, channels, c, generator)[0].to(x)
    keys = x
    if tuple(key_shape) != (h, w):
        if tuple(key_shape) != (h // 2, w // 2):
            raise ValueError(f"random control: cannot build keys of shape {key_shape} from a {h}x{w} grid")
        keys = F.max_pool2d(x, 2)
    query = torch.einsum("dc,bcn->bnd", wq, x.flatten(2))
    key = torch.einsum("dc,bcn->bdn", wk, keys.flatten(2))
    return PairwiseAttention("embedded_gaussian", query, key, (h, w), tuple(key_shape), scale=scale)


def logit_entropy(logits: Tensor, masked: Tensor, log_tau: Tensor, log_n: Tensor | float) -> tuple[Tensor, Tensor]:
    """Mean normalised entropy of ``softmax(tau * logits)`` and its derivative in ``log tau``.

    Args:
        logits: ``[M, S, N_k]`` (S rows of each of M maps).
        masked: bool, broadcastable to ``logits`` (e.g. ``[N_k]`` or ``[M, 1, N_k]``): keys left out.
        log_tau: ``[M]`` float64.
        log_n: ``log`` of the number of keys, scalar or ``[M]`` (normalises the entropy to ``[0, 1]``).

    Returns:
        ``(entropy, slope)``, ``[M]`` float64 each: the entropy averaged over the S rows and
        ``d entropy / d log tau = -tau^2 Var_p[logit]`` averaged alike.
    """
    values = logits.masked_fill(masked, 0.0)
    tau = log_tau.exp().to(logits.dtype)[:, None, None]
    logp = torch.log_softmax((logits * tau).masked_fill(masked, -math.inf), -1)
    p = logp.exp()
    h = -(p * logp.masked_fill(masked, 0.0)).sum(-1)  # [M, S]
    mean = (p * values).sum(-1)
    var = ((p * values * values).sum(-1) - mean * mean).clamp(min=0)
    return h.double().mean(-1) / log_n, -(log_tau.exp() ** 2) * var.double().mean(-1) / log_n


def match_temperature(
    logits: Tensor, target: Tensor, key_mask: Tensor | None = None, *, iterations: int = 30
) -> Match:
    """The temperature ``tau`` per map such that the mean normalised entropy of ``softmax(tau * logits)``
    over the valid keys equals ``target`` (:func:`solve_log_temperature`); accepted when within
    :data:`MATCH_TOLERANCE` (NaN otherwise: a NaN target, or one no ``tau`` reaches: above 1, or below
    what the sharpest maps give when rows have ties).

    Args:
        logits: ``[M, S, N_k]`` raw logits of ``S`` rows of each of ``M`` maps.
        target: ``[M]`` mean normalised entropies (normalised by ``log`` of the valid keys, at least 2).
        key_mask: optional bool ``[N_k]`` (shared) or ``[M, N_k]``: True on valid keys.
        iterations: most Newton/bisection steps.

    Returns:
        :class:`Match` (on ``logits``' device).
    """
    log_tau, h = solve_log_temperature(logits, target, key_mask, iterations=iterations)
    ok = (h - target.to(h)).abs() <= MATCH_TOLERANCE
    return Match(torch.where(ok, log_tau.exp(), math.nan), ok)


def solve_log_temperature(
    logits: Tensor, target: Tensor, key_mask: Tensor | None = None, *, iterations: int = 30
) -> tuple[Tensor, Tensor]:
    """``log tau`` per map bringing the mean normalised entropy of ``softmax(tau * logits)`` over the
    valid keys to ``target``: all maps at once, Newton steps on ``log tau`` safeguarded by a bisection
    bracket ``log tau in [-12, 12]`` (the entropy falls as ``tau`` grows), until within :data:`CONVERGED`.

    Args: as :func:`match_temperature`.

    Returns:
        ``(log_tau, entropy)``, ``[M]`` float64 each: where the target is reached, its ``log tau``; where
        none reaches it, the nearest end of the bracket; 0 for a NaN target. ``entropy``: the mean
        normalised entropy at ``log_tau``.
    """
    m, _, n = logits.shape
    dev = logits.device
    if target.shape != (m,):
        raise ValueError(f"target must be [M] = [{m}] (one entropy per map), got {tuple(target.shape)}")
    if key_mask is None:
        key_mask = torch.ones(n, dtype=torch.bool, device=dev)
    if key_mask.shape not in ((n,), (m, n)):
        raise ValueError(f"key_mask must be [N_k] or [M, N_k] = [{m}, {n}], got {tuple(key_mask.shape)}")
    key_mask = key_mask.to(dev)
    masked = ~key_mask if key_mask.dim() == 1 else ~key_mask[:, None, :]
    n_valid = key_mask.sum(-1).clamp(min=2).double()
    log_n = math.log(float(n_valid)) if key_mask.dim() == 1 else torch.log(n_valid)
    target = target.to(device=dev, dtype=torch.float64)
    lo = torch.full((m,), -_LOG_TAU_BRACKET, dtype=torch.float64, device=dev)
    hi = torch.full((m,), _LOG_TAU_BRACKET, dtype=torch.float64, device=dev)
    x = torch.zeros(m, dtype=torch.float64, device=dev)
    undefined = target.isnan()
    for _ in range(iterations):
        h, slope = logit_entropy(logits, masked, x, log_n)
        gap = h - target
        done = undefined | (gap.abs() <= CONVERGED)
        if bool(done.all()):
            break
        lo, hi = torch.where(gap > 0, x, lo), torch.where(gap > 0, hi, x)
        step = x - gap / slope
        bisect = ~step.isfinite() | (step <= lo) | (step >= hi)
        x = torch.where(done, x, torch.where(bisect, (lo + hi) / 2, step))
    return x, logit_entropy(logits, masked, x, log_n)[0]
