"""Mean pairwise cosine distance in O(N*D) time and O(D) memory.

This is the statistic of GCNet (Cao et al., "GCNet: Non-local Networks Meet
Squeeze-Excitation Networks and Beyond", arXiv 1904.11492, Sec. 3, Table 1):
the average distance between the vectors of all pairs of positions,

    avg_dist = 1/N^2 * sum_i sum_j dist(v_i, v_j),

applied to a non-local block's input features, its output (context term) and
its attention maps. ``dist`` is the cosine distance.

Algebra. With unit vectors u_i = v_i / ||v_i|| and s = sum_i u_i,

    sum_{i,j} cos(v_i, v_j) = ||s||^2,

so the mean over all ordered pairs (i = j included) is ``||s||^2 / N^2`` and
the mean over pairs with i != j is ``(||s||^2 - N) / (N (N - 1))``. Only ``s``
(D numbers) and two counts have to be kept, so vectors can be streamed in
chunks and nothing of size N x N is ever formed.

Rules (all computation in float64):

* **Distance convention** (``convention``): ``"1-cos"`` (default, as
  ``scipy.spatial.distance.cosine``; range [0, 2]) or ``"(1-cos)/2"`` (half of
  it; range [0, 1]). Tables must say which one they use.
* **Self pairs** (``include_self``): ``True`` (default) averages over all N^2
  ordered pairs, i = j included, as the paper's formula; ``False`` averages
  over the N (N - 1) ordered pairs with i != j (equal to the mean of
  ``scipy.spatial.distance.pdist(v, "cosine")``).
* **Normalisation** (float64): a vector whose float64 norm is finite and at
  least 2**-450 is divided by its norm directly (this covers every non-zero
  float32/float16/bfloat16 vector, e.g. magnitudes 1e-30 or 1e30 in float32);
  any other vector (possible only for float64 input, e.g. 1e200 or 1e-200)
  is first divided by its largest absolute component and only then by its
  norm, so nothing overflows or underflows.
* **Zero vectors**: a vector is "zero" iff all its components are exactly 0.
  Its cosine with anything is undefined, so ``zero`` picks a rule:

  - ``"exclude"`` (default): zero vectors are dropped; the mean runs over
    pairs of non-zero vectors and N is the number of non-zero vectors.
  - ``"orthogonal"``: a zero vector has cosine 0 (distance 1) with every
    vector, itself included; it adds nothing to ``s`` but counts in N (so
    without self pairs the mean cosine is ``(||s||^2 - N_nonzero) / (N (N - 1))``).
  - ``"raise"``: ``ValueError`` naming how many zero vectors were seen.

* **Too few vectors**: if fewer than 1 (``include_self=True``) or 2
  (``include_self=False``) vectors count, the result is NaN, not an error.
* **Round-off**: the result is clamped to [0, 2] (or [0, 1]); the exact value
  always lies in that range, so the clamp only removes float round-off
  (of order 1e-15).
* **Invalid input**: NaN or inf in a used vector raises ``ValueError``.
* **Threads**: each chunk is a handful of large float64 ops, run on one intra-op thread
  (:mod:`nlanalysis.metrics.threads`: memory-bound passes, as fast on one thread, and no barrier
  waits beside a busy neighbour). ``nlanalysis.kernels.unit_sum`` is the one-pass native equivalent
  for float32 CPU features (``nlanalysis.measure.stats.cosine_distance`` picks it).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .threads import statistics_threads

__all__ = [
    "Convention",
    "CosineAccumulator",
    "ZeroRule",
    "distance_from_sum",
    "in_convention",
    "mean_pairwise_cosine_distance",
]

ZeroRule = Literal["exclude", "orthogonal", "raise"]
Convention = Literal["1-cos", "(1-cos)/2"]

_ZERO_RULES: tuple[str, ...] = ("exclude", "orthogonal", "raise")
_CONVENTIONS: tuple[str, ...] = ("1-cos", "(1-cos)/2")

# Temporary float64 working set per chunk when ``chunk_size`` is None: few, large ops (a chunk of a
# 4,200 x 4,200 map is ~125 rows on the CPU), a few MiB of memory; on a GPU the whole [N, D] at once
# up to 64 MiB (each chunk costs one host sync).
_AUTO_CHUNK_ELEMENTS = 1 << 19  # 512 Ki float64 values = 4 MiB
_AUTO_CHUNK_ELEMENTS_GPU = 1 << 23  # 64 MiB
# Rows with a float64 norm in [2**-450, inf) are normalised directly: their squared
# components cannot overflow, and any that underflow are negligible against the norm.
_MIN_FAST_NORM = 2.0**-450


def _unit_rows(v: Tensor) -> tuple[Tensor, Tensor]:
    """Scale-robust unit vectors of the rows of ``v``.

    Args:
        v: ``[..., n, D]`` float64, finite.

    Returns:
        ``(u, is_zero)``: ``u`` is ``[..., n, D]`` float64 with unit rows (all-zero
        rows stay zero) and ``is_zero`` is bool ``[..., n]``.
    """
    peak = v.abs().amax(dim=-1, keepdim=True)  # [..., n, 1]
    is_zero = peak == 0
    u = v / torch.where(is_zero, torch.ones_like(peak), peak)  # max |component| = 1
    norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)  # in [1, sqrt(D)]
    u = u / torch.where(is_zero, torch.ones_like(norm), norm)
    return u, is_zero.squeeze(-1)


def _unit_sum(v: Tensor, used: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``sum_i v_i / ||v_i||`` ``[b, D]`` float64 over the used non-zero rows of ``v`` ``[b, n, D]``, and the
    all-zero used rows per item ``[b]`` int64 (None when there are none: nothing to add).

    A handful of large ops per call. Fast path: rows whose float64 norm neither overflowed nor came
    near underflow are normalised by a weight ``1/||v_i||`` folded into one matrix-vector product
    (every non-zero finite float32/16 row qualifies); the rest (zero, NaN/inf, huge or tiny rows)
    are checked and scaled by their largest component first (:func:`_unit_rows`).
    """
    x = v.to(torch.float64)
    if used is not None:  # masked-out rows may hold anything, even NaN: they become zero rows, not counted
        x = torch.where(used.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    norms = torch.linalg.vector_norm(x, dim=-1)  # [b, n]
    slow = (norms < _MIN_FAST_NORM) | ~(norms < math.inf)  # NaN compares False: slow too
    weights = torch.where(slow, torch.zeros((), dtype=norms.dtype, device=norms.device), norms.reciprocal())
    part = torch.bmm(weights.unsqueeze(1), x).squeeze(1)  # [b, D]
    if used is not None:
        slow &= used
    if not bool(slow.any()):  # one host sync per call (the common case ends here)
        return part, None
    bi, ri = slow.nonzero(as_tuple=True)
    rows = x[bi, ri]  # [k, D]
    if not bool(torch.isfinite(rows).all()):
        raise ValueError("features contain NaN/inf; check the model's inputs and dtype (fp16 overflow?)")
    u, is_zero = _unit_rows(rows)
    part.index_add_(0, bi, u)
    return part, torch.zeros(v.shape[0], dtype=torch.int64, device=v.device).index_add_(0, bi, is_zero.to(torch.int64))


class CosineAccumulator:
    """Streaming mean pairwise cosine distance.

    Vectors arrive in chunks through :meth:`update`; the accumulator keeps only
    the sum of unit vectors ``s`` (shape ``[*batch_shape, D]``, float64) and two
    counts, so memory is O(D) per batch element however many vectors are seen.
    See the module docstring for the rules on zero vectors and conventions.

    Args:
        dim: Vector length D.
        batch_shape: Leading batch dimensions, each with its own statistic
            (e.g. ``(B,)`` for one value per image).
        device: Where ``s`` and the counts live (default: CPU). Chunks on other
            devices are reduced where they are and only the ``[*batch, D]``
            partial sum is moved.

    Attributes:
        s: ``[*batch_shape, D]`` float64 sum of unit vectors.
        n_total: ``[*batch_shape]`` int64, vectors seen (masked-in, zero ones
            included).
        n_zero: ``[*batch_shape]`` int64, all-zero vectors seen (masked-in).
    """

    def __init__(
        self,
        dim: int,
        batch_shape: tuple[int, ...] = (),
        device: torch.device | str | None = None,
    ) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.batch_shape = tuple(int(b) for b in batch_shape)
        self.s = torch.zeros(*self.batch_shape, self.dim, dtype=torch.float64, device=device)
        self.n_total = torch.zeros(self.batch_shape, dtype=torch.int64, device=device)
        self.n_zero = torch.zeros(self.batch_shape, dtype=torch.int64, device=device)

    def __repr__(self) -> str:
        return (
            f"CosineAccumulator(dim={self.dim}, batch_shape={self.batch_shape}, "
            f"vectors={int(self.n_total.sum())}, zero={int(self.n_zero.sum())})"
        )

    def update(self, v: Tensor, mask: Tensor | None = None) -> None:
        """Add a chunk of vectors.

        Args:
            v: ``[*batch_shape, n, D]`` tensor of any real dtype (converted to
                float64 here).
            mask: Optional bool ``[*batch_shape, n]``; ``True`` marks vectors to
                use. Masked-out vectors are ignored entirely (they may hold
                anything, even NaN).

        Raises:
            ValueError: On a shape mismatch, or if a used vector holds NaN/inf.
            TypeError: On complex input.
        """
        expected = (*self.batch_shape, "n", self.dim)
        if v.ndim != len(self.batch_shape) + 2 or tuple(v.shape[:-2]) != self.batch_shape or v.shape[-1] != self.dim:
            raise ValueError(f"expected features of shape {expected}, got {tuple(v.shape)}")
        if v.is_complex():
            raise TypeError("complex features are not supported; pass real tensors")
        n = v.shape[-2]
        b = math.prod(self.batch_shape)
        used = None
        if mask is not None:
            if tuple(mask.shape) != tuple(v.shape[:-1]):
                raise ValueError(f"mask must have shape {tuple(v.shape[:-1])} (features without D), got {tuple(mask.shape)}")
            used = mask.to(device=v.device, dtype=torch.bool).reshape(b, n)
        with statistics_threads():
            part, n_zero = _unit_sum(v.detach().reshape(b, n, self.dim), used)
            self.s += part.reshape(self.s.shape).to(self.s.device)
            self.n_total += n if used is None else used.sum(-1).reshape(self.batch_shape).to(self.n_total.device)
            if n_zero is not None:
                self.n_zero += n_zero.reshape(self.batch_shape).to(self.n_zero.device)

    def merge(self, other: CosineAccumulator) -> CosineAccumulator:
        """Add another accumulator's state to this one (e.g. from another shard).

        Args:
            other: An accumulator with the same ``dim`` and ``batch_shape``.

        Returns:
            ``self``, for chaining.
        """
        if other.dim != self.dim or other.batch_shape != self.batch_shape:
            raise ValueError(
                f"cannot merge accumulators of dim/batch_shape {other.dim}/{other.batch_shape} "
                f"into {self.dim}/{self.batch_shape}"
            )
        self.s += other.s.to(self.s.device)
        self.n_total += other.n_total.to(self.n_total.device)
        self.n_zero += other.n_zero.to(self.n_zero.device)
        return self

    def result(
        self,
        *,
        include_self: bool = True,
        convention: Convention = "1-cos",
        zero: ZeroRule = "exclude",
    ) -> Tensor:
        """Mean pairwise cosine distance of everything seen so far.

        Args:
            include_self: Average over all ordered pairs, i = j included
                (GCNet's 1/N^2 sum_i sum_j); else over pairs with i != j.
            convention: ``"1-cos"`` or ``"(1-cos)/2"``.
            zero: ``"exclude"``, ``"orthogonal"`` or ``"raise"`` (module docstring).

        Returns:
            ``[*batch_shape]`` float64 (0-d when ``batch_shape == ()``); NaN where
            too few vectors count.

        Raises:
            ValueError: On an unknown rule, or ``zero="raise"`` with zero vectors.
        """
        return distance_from_sum((self.s * self.s).sum(dim=-1), self.n_total, self.n_zero,
                                 include_self=include_self, convention=convention, zero=zero)  # fmt: skip


def in_convention(dist: Tensor, convention: Convention = "1-cos") -> Tensor:
    """A cosine distance ``dist`` formed as ``"1-cos"`` (range [0, 2]) in ``convention``: itself, or halved for
    ``"(1-cos)/2"`` (ValueError for an unknown convention)."""
    if convention not in _CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; use one of {_CONVENTIONS}")
    return dist / 2 if convention == "(1-cos)/2" else dist


def distance_from_sum(
    s2: Tensor,
    n_total: Tensor,
    n_zero: Tensor,
    *,
    include_self: bool = True,
    convention: Convention = "1-cos",
    zero: ZeroRule = "exclude",
) -> Tensor:
    """The mean pairwise cosine distance from ``||sum_i v_i / ||v_i|| ||^2`` and the counts.

    What :meth:`CosineAccumulator.result` returns, for callers that form the sum of unit vectors
    themselves (e.g. per head with Gram matrices): ``s2`` ``[*batch]`` squared norm of the sum of
    the non-zero vectors as unit vectors, ``n_total`` vectors counted (zero ones included),
    ``n_zero`` all-zero vectors among them. Same rules and arguments as ``result``.
    """
    if convention not in _CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; use one of {_CONVENTIONS}")
    if zero not in _ZERO_RULES:
        raise ValueError(f"unknown zero rule {zero!r}; use one of {_ZERO_RULES}")
    n_nonzero = n_total - n_zero
    if zero == "raise":
        n_bad = int(n_zero.sum())
        if n_bad:
            raise ValueError(
                f"{n_bad} all-zero vector(s) among {int(n_total.sum())}; their cosine is undefined. "
                "Pass zero='exclude' to drop them or zero='orthogonal' to count them as distance 1."
            )
    # n: vectors that count; n_unit: vectors whose self-cosine is 1.
    n = (n_nonzero if zero == "exclude" else n_total).to(torch.float64)
    n_unit = n_nonzero.to(torch.float64)
    s2 = s2.to(torch.float64)
    if include_self:
        mean_cos = s2 / (n * n)
        valid = n >= 1
    else:
        mean_cos = (s2 - n_unit) / (n * (n - 1))
        valid = n >= 2
    dist = in_convention((1.0 - mean_cos).clamp(0.0, 2.0), convention)
    return torch.where(valid, dist, torch.full_like(dist, math.nan))


def mean_pairwise_cosine_distance(
    v: Tensor,
    *,
    include_self: bool = True,
    convention: Convention = "1-cos",
    zero: ZeroRule = "exclude",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Mean cosine distance over pairs of rows of ``v``, exactly, in O(N*D).

    Args:
        v: ``[N, D]`` or ``[*batch, N, D]``, any real dtype.
        include_self: Include the i = j pairs (GCNet's 1/N^2 sum_i sum_j).
        convention: ``"1-cos"`` (default) or ``"(1-cos)/2"``.
        zero: Zero-vector rule: ``"exclude"``, ``"orthogonal"`` or ``"raise"``.
        mask: Optional bool ``[*batch, N]``; ``True`` marks rows to use.
        chunk_size: Rows per chunk along N. ``None`` picks a size that keeps
            the float64 working copy near 4 MiB (on a GPU: 64 MiB).

    Returns:
        float64 tensor of shape ``[*batch]`` (0-d for ``[N, D]`` input).

    Raises:
        ValueError: On NaN/inf, bad shapes or rules, or ``zero="raise"`` with
            zero vectors present.
    """
    if v.ndim < 2:
        raise ValueError(f"expected features of shape [*batch, N, D], got {tuple(v.shape)}")
    *batch, n, dim = v.shape
    acc = CosineAccumulator(dim, tuple(batch), device=v.device)
    if chunk_size is None:
        per_row = max(1, dim * math.prod(batch))
        budget = _AUTO_CHUNK_ELEMENTS if v.device.type == "cpu" else _AUTO_CHUNK_ELEMENTS_GPU
        chunk_size = max(1, budget // per_row)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if mask is not None and tuple(mask.shape) != tuple(v.shape[:-1]):
        raise ValueError(f"mask must have shape {tuple(v.shape[:-1])}, got {tuple(mask.shape)}")
    with statistics_threads():
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            acc.update(v[..., start:stop, :], None if mask is None else mask[..., start:stop])
    return acc.result(include_self=include_self, convention=convention, zero=zero)
