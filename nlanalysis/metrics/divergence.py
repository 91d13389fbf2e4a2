"""Attention rows as distributions: Jensen-Shannon divergence, entropy, peakiness.

The extended GCNet analysis (Cao et al., arXiv 1904.11492 Sec. 3; TPAMI version
arXiv 2012.13375) compares the attention maps of different query positions,
each a distribution over key positions, with the Jensen-Shannon divergence
(Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf.
Theory 37(1), 1991):

    JSD(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M),   M = (P + Q) / 2,

in bits by default (``base=2``), so 0 <= JSD <= 1. Conventions here:

* Each row is normalised to sum 1 before use (``p / p.sum(-1)``); a row that
  sums to 0 (e.g. an all-zero ReLU row of a concatenation block) gives NaN.
  Use :func:`zero_rows` to find and drop such rows first.
* 0 * log 0 = 0.
* These statistics need non-negative maps. Maps of the dot-product NL mode are
  signed (theta^T phi / N_k, no softmax), so they are not distributions and
  the functions raise ``ValueError`` on negative entries. Check with
  :func:`is_distribution_like`; use the cosine distance for such maps.
* All computation is in float64. The JSD uses
  ``log(P / M) = log1p((P - Q) / (P + Q))`` where P and Q are close, so nearly
  identical rows keep full relative precision.

:func:`mean_pairwise_jsd_exact` costs O(N^2 K) time (meant for small N);
:func:`mean_pairwise_jsd_sampled` estimates the same mean from random pairs
without forming the N x N set of pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .threads import statistics_threads

__all__ = [
    "SampledMean",
    "is_distribution_like",
    "jensen_shannon",
    "mean_pairwise_jsd_exact",
    "mean_pairwise_jsd_sampled",
    "row_entropy",
    "row_max_weight",
    "zero_rows",
]

_Z95 = 1.959963984540054  # Phi^{-1}(0.975)
_BLOCK_ELEMENTS = 1 << 20  # elements per [*b, bi, bj, K] temporary in the exact mean


def _check_base(base: float) -> float:
    base = float(base)
    if not base > 0 or base == 1.0 or not math.isfinite(base):
        raise ValueError(f"log base must be positive, finite and != 1, got {base}")
    return base


def _normalized_rows(p: Tensor, what: str = "p") -> Tensor:
    """Validate a non-negative map and normalise its rows to sum 1.

    Args:
        p: ``[..., K]`` non-negative.
        what: Name used in error messages.

    Returns:
        ``[..., K]`` float64; rows summing to 0 become NaN.
    """
    if p.ndim < 1:
        raise ValueError(f"{what} must have shape [..., K], got a scalar")
    if p.is_complex():
        raise TypeError(f"{what} must be real")
    p = p.detach().to(torch.float64)
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{what} contains NaN/inf")
    if bool((p < 0).any()):
        raise ValueError(
            f"{what} has negative entries: the map is signed (e.g. a dot-product NL block, "
            "whose weights are theta^T phi / N_k without softmax), so it is not a distribution "
            "and JSD/entropy statistics are undefined for it; use the cosine distance instead"
        )
    total = p.sum(dim=-1, keepdim=True)
    return p / total  # 0/0 -> NaN for all-zero rows, as documented


def _jsd_normalized(pn: Tensor, qn: Tensor, base: float) -> Tensor:
    """JSD of already-normalised rows (broadcasting), in units of ``log(base)``."""
    m = (pn + qn) / 2
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    rel = (pn - qn) / (2 * safe_m)  # in [-1, 1]; log(p/m) = log1p(rel), log(q/m) = log1p(-rel)
    near = rel.abs() <= 0.5  # log1p is exact near 0; far from 0 use logs directly (rel may round to -1)
    one = torch.ones((), dtype=pn.dtype, device=pn.device)
    zero = torch.zeros((), dtype=pn.dtype, device=pn.device)
    log_pm = torch.where(near, torch.log1p(rel), torch.log(torch.where(pn > 0, pn, one)) - torch.log(safe_m))
    log_qm = torch.where(near, torch.log1p(-rel), torch.log(torch.where(qn > 0, qn, one)) - torch.log(safe_m))
    kl_p = torch.where(pn > 0, pn * log_pm, zero).sum(dim=-1)
    kl_q = torch.where(qn > 0, qn * log_qm, zero).sum(dim=-1)
    jsd = (0.5 * (kl_p + kl_q) / math.log(base)).clamp(0.0, math.log(2.0) / math.log(base))
    undefined = torch.isnan(pn).any(dim=-1) | torch.isnan(qn).any(dim=-1)  # rows that summed to 0
    return torch.where(undefined, torch.full_like(jsd, math.nan), jsd)


def jensen_shannon(p: Tensor, q: Tensor, *, base: float = 2.0) -> Tensor:
    """Jensen-Shannon divergence between rows of ``p`` and ``q``.

    Args:
        p: ``[..., K]`` non-negative (rows are normalised here).
        q: ``[..., K]`` non-negative, broadcastable against ``p``.
        base: Logarithm base; 2 gives bits and a range of [0, 1].

    Returns:
        ``[...]`` float64 (the broadcast batch shape). NaN where a row sums to 0.

    Raises:
        ValueError: On negative entries (signed maps), NaN/inf, or a bad base.
    """
    base = _check_base(base)
    if p.shape[-1:] != q.shape[-1:]:
        raise ValueError(f"p and q must have the same number of keys K, got {tuple(p.shape)} and {tuple(q.shape)}")
    return _jsd_normalized(_normalized_rows(p, "p"), _normalized_rows(q, "q").to(p.device), base)


def mean_pairwise_jsd_exact(
    p: Tensor,
    *,
    include_self: bool = True,
    chunk_size: int = 64,
    base: float = 2.0,
) -> Tensor:
    """Exact mean JSD over ordered pairs of rows, by blocks.

    Costs O(N^2 K) time: use it for small N (a few thousand query positions at
    most); for large maps use :func:`mean_pairwise_jsd_sampled`. Peak extra
    memory is O(N K) for the normalised rows plus O(min(chunk_size^2 K, 2^20))
    elements per temporary: blocks of ``chunk_size`` queries i are compared
    with blocks of queries j (j >= i only, by symmetry; the j-blocks shrink
    when K is large).

    Args:
        p: ``[*batch, N, K]`` non-negative attention rows.
        include_self: Average over all N^2 ordered pairs (i = j pairs add 0)
            rather than the N (N - 1) pairs with i != j.
        chunk_size: Block size along N.
        base: Logarithm base (2: bits).

    Returns:
        ``[*batch]`` float64. NaN if any row sums to 0, if N == 0, or if
        N < 2 with ``include_self=False``.
    """
    base = _check_base(base)
    if p.ndim < 2:
        raise ValueError(f"expected rows of shape [*batch, N, K], got {tuple(p.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with statistics_threads():  # many block ops: one thread (nlanalysis.metrics.threads)
        total, n = _exact_total(_normalized_rows(p), chunk_size, base)
    pairs = n * n if include_self else n * (n - 1)
    if pairs == 0:
        return torch.full_like(total, math.nan)
    return total / pairs


def _exact_total(pn: Tensor, chunk_size: int, base: float) -> tuple[Tensor, int]:
    """Sum of the JSD over all ordered pairs of the normalised rows ``pn`` ``[*batch, N, K]``, and ``N``."""
    *batch, n, k = pn.shape
    total = torch.zeros(batch, dtype=torch.float64, device=pn.device)
    for i0 in range(0, n, chunk_size):
        i1 = min(n, i0 + chunk_size)
        a = pn[..., i0:i1, :].unsqueeze(-2)  # [*b, bi, 1, K]
        # j-blocks shrink when K is large, so each temporary stays near 8 MiB.
        step = max(1, min(chunk_size, _BLOCK_ELEMENTS // max(1, (i1 - i0) * k * math.prod(batch))))
        # Pairs inside the diagonal square count once each; pairs with j beyond it
        # stand for both (i, j) and (j, i).
        for lo, hi, factor in ((i0, i1, 1.0), (i1, n, 2.0)):
            for j0 in range(lo, hi, step):
                b = pn[..., j0 : min(hi, j0 + step), :].unsqueeze(-3)  # [*b, 1, bj, K]
                total += factor * _jsd_normalized(a, b, base).sum(dim=(-2, -1))
    return total, n


@dataclass(frozen=True)
class SampledMean:
    """A Monte-Carlo estimate of a mean over pairs.

    Attributes:
        mean: The estimate.
        stderr: Sample standard deviation / sqrt(n_pairs); 0 when computed exactly.
        n_pairs: Pairs averaged (all possible pairs when computed exactly).
        ci95: Normal-approximation 95% interval ``mean -/+ 1.96 * stderr``.
    """

    mean: float
    stderr: float
    n_pairs: int
    ci95: tuple[float, float]


def _sample_pairs(n: int, k: int, include_self: bool, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw ``k`` ordered pairs (i, j) uniformly; i != j unless ``include_self``.

    Returns:
        Two int64 tensors of shape ``[k]``.
    """
    i = torch.randint(n, (k,), generator=generator)
    if include_self:
        j = torch.randint(n, (k,), generator=generator)
    else:
        j = torch.randint(n - 1, (k,), generator=generator)
        j = j + (j >= i).to(j.dtype)  # uniform over the n - 1 indices != i
    return i, j


def _fetch_rows(rows: Callable[[Tensor], Tensor], idx: Tensor, chunk: int) -> Tensor:
    """Call ``rows`` on chunks of ``idx`` and check the shapes."""
    out = []
    for start in range(0, idx.numel(), chunk):
        part = idx[start : start + chunk]
        r = rows(part)
        if r.ndim != 2 or r.shape[0] != part.numel():
            raise ValueError(f"rows(idx) must return [len(idx), K] = [{part.numel()}, K], got {tuple(r.shape)}")
        out.append(r.detach())
    return torch.cat(out, dim=0)


def mean_pairwise_jsd_sampled(
    rows: Callable[[Tensor], Tensor],
    n: int,
    *,
    num_pairs: int = 2048,
    include_self: bool = True,
    generator: torch.Generator | None = None,
    base: float = 2.0,
) -> SampledMean:
    """Estimate the mean pairwise JSD from uniformly sampled ordered pairs.

    The caller supplies ``rows``, which returns the attention rows of given
    query indices, so the N x K map (let alone N x N pairs) never has to be
    held at once. Pairs (i, j) are drawn uniformly with replacement, with
    i == j allowed iff ``include_self``. If ``num_pairs`` is at least the number
    of possible ordered pairs, the mean is computed exactly instead (stderr 0).

    Args:
        rows: ``rows(idx: LongTensor[k]) -> Tensor[k, K]``, non-negative.
        n: Number of query positions N.
        num_pairs: Pairs to sample.
        include_self: Whether i == j pairs belong to the population.
        generator: Torch RNG for reproducibility (``None``: the global RNG).
        base: Logarithm base (2: bits).

    Returns:
        :class:`SampledMean`. NaN mean (and ``n_pairs == 0``) when no pair
        exists (n == 0, or n == 1 without self pairs).
    """
    base = _check_base(base)
    if n < 0 or num_pairs < 2:
        raise ValueError(f"need n >= 0 and num_pairs >= 2, got n={n}, num_pairs={num_pairs}")
    possible = n * n if include_self else n * (n - 1)
    if possible == 0:
        return SampledMean(math.nan, math.nan, 0, (math.nan, math.nan))
    if num_pairs >= possible:
        all_rows = _fetch_rows(rows, torch.arange(n), 256)
        exact = float(mean_pairwise_jsd_exact(all_rows, include_self=include_self, base=base))
        return SampledMean(exact, 0.0, possible, (exact, exact))
    i, j = _sample_pairs(n, num_pairs, include_self, generator)
    uniq, inverse = torch.unique(torch.cat([i, j]), return_inverse=True)
    table = _normalized_rows(_fetch_rows(rows, uniq, 1024), "rows(idx)")
    with statistics_threads():
        vals = _jsd_normalized(table[inverse[:num_pairs]], table[inverse[num_pairs:]], base)
    mean = float(vals.mean())
    stderr = float(vals.std(correction=1)) / math.sqrt(num_pairs)
    return SampledMean(mean, stderr, num_pairs, (mean - _Z95 * stderr, mean + _Z95 * stderr))


def row_entropy(p: Tensor, *, normalized: bool = True) -> Tensor:
    """Shannon entropy of each row of ``p / p.sum(-1)``.

    Args:
        p: ``[..., K]`` non-negative.
        normalized: Divide by log(K), so a uniform row gives 1 and a one-hot
            row 0. Otherwise the entropy is in nats.

    Returns:
        ``[...]`` float64; NaN for all-zero rows (and, if normalized, for K == 1,
        where the ratio 0/0 is undefined).

    Raises:
        ValueError: On negative entries (signed maps) or NaN/inf.
    """
    pn = _normalized_rows(p)
    ent = -torch.where(pn > 0, pn * torch.log(pn), torch.zeros((), dtype=pn.dtype, device=pn.device)).sum(dim=-1)
    ent = torch.where(torch.isnan(pn).any(dim=-1), torch.full_like(ent, math.nan), ent.clamp_min(0.0))
    if normalized:
        k = pn.shape[-1]
        ent = ent / math.log(k) if k > 1 else torch.full_like(ent, math.nan)
    return ent


def row_max_weight(p: Tensor) -> Tensor:
    """Largest weight of each normalised row (1 = all attention on one key).

    Args:
        p: ``[..., K]`` non-negative.

    Returns:
        ``[...]`` float64 in [1/K, 1]; NaN for all-zero rows.
    """
    return _normalized_rows(p).amax(dim=-1)


def zero_rows(p: Tensor, atol: float = 0.0) -> Tensor:
    """Rows whose every entry is zero (``|x| <= atol``).

    Args:
        p: ``[..., K]``.
        atol: Absolute tolerance.

    Returns:
        bool ``[...]``.
    """
    return (p.detach().abs() <= atol).all(dim=-1)


def is_distribution_like(p: Tensor) -> bool:
    """Whether all entries are >= 0 (JSD and entropy are defined only then).

    Args:
        p: Any shape.

    Returns:
        ``True`` iff no entry is negative or NaN.
    """
    return bool((p.detach() >= 0).all())
