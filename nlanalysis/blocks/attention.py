"""Attention maps as lazy row sources, so no caller ever has to hold an N x N map.

A non-local block (Wang et al., "Non-local Neural Networks", arXiv 1711.07971) attends from
every query position i to every key position j with a pairwise weight f(x_i, x_j). The GCNet
analysis (Cao et al., arXiv 1904.11492, Sec. 3) compares the rows of that map across queries.
At COCO scale a map has N ~ 4,200 queries, so the objects here compute rows on demand, in
chunks, from the block's own query/key projections:

* :class:`PairwiseAttention` -- the four pairwise functions of the NL paper, as mmcv implements
  them (``mmcv/cnn/bricks/non_local.py``):

  ===================== =========================================== ==============
  mode                  row i over keys j                           distribution?
  ===================== =========================================== ==============
  ``gaussian``          softmax_j(x_i . x_j)                        yes
  ``embedded_gaussian`` softmax_j(theta_i . phi_j * scale)          yes
  ``dot_product``       theta_i . phi_j / N_k                       no (signed)
  ``concatenation``     ReLU(w_q . theta_i + w_k . phi_j) / N_k     non-negative
  ===================== =========================================== ==============

* :class:`SharedAttention` -- one map shared by every query (GC block, simplified NL block),
  query-independent by construction.
* :class:`DenseAttention` -- maps a block has already formed whole (its own ``[B, N, N_k]`` tensor),
  read in place: what a capture measures while the block attends (:mod:`nlanalysis.capture.inpass_blocks`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["PAIRWISE_MODES", "DenseAttention", "LazyAttention", "PairwiseAttention", "SharedAttention"]

PAIRWISE_MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


class LazyAttention(ABC):
    """Per-query attention maps ``[B, N_query, N_key]`` computed on demand.

    Attributes:
        query_shape: ``(H, W)`` of the query grid (``N_query = H * W``, row-major).
        key_shape: ``(H_k, W_k)`` of the key grid (smaller than ``query_shape`` when keys are
            sub-sampled).
        query_independent: True when every query has the same map by construction.
        distribution: True when rows are probability distributions (softmax).
        nonnegative: True when no weight can be negative (entropy and Jensen-Shannon divergence
            of the row-normalised maps are defined); False for signed maps (dot product).
    """

    query_shape: tuple[int, int]
    key_shape: tuple[int, int]
    query_independent: bool
    distribution: bool
    nonnegative: bool

    @property
    def batch_size(self) -> int:
        return self._batch_size()

    @property
    def n_query(self) -> int:
        return self.query_shape[0] * self.query_shape[1]

    @property
    def n_key(self) -> int:
        return self.key_shape[0] * self.key_shape[1]

    @abstractmethod
    def _batch_size(self) -> int: ...

    @abstractmethod
    def image(self, b: int) -> LazyAttention:
        """The maps of batch item ``b`` alone (a batch of one; no copy)."""

    @abstractmethod
    def take(self, index: Tensor) -> Tensor:
        """Rows of the given query indices: ``index`` ``[k]`` (long) -> ``[B, k, N_key]``."""

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows of queries ``start:stop`` -> ``[B, stop - start, N_key]``."""
        return self.take(torch.arange(start, stop, device=self.device))

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(start, rows[B, <=chunk_size, N_key])`` over all queries."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, self.n_query, chunk_size):
            yield start, self.rows(start, min(start + chunk_size, self.n_query))

    def full(self) -> Tensor:
        """All maps ``[B, N_query, N_key]`` (N x N memory: for small maps and tests)."""
        return self.rows(0, self.n_query)

    @property
    @abstractmethod
    def device(self) -> torch.device: ...


def pairwise_row_kind(mode: str) -> tuple[bool, bool]:
    """``(distribution, nonnegative)`` of the rows of a pairwise ``mode``'s maps: softmax rows are
    distributions; dot-product rows are signed."""
    return mode in ("gaussian", "embedded_gaussian"), mode != "dot_product"


class PairwiseAttention(LazyAttention):
    """Rows of a pairwise NL map from query/key projections.

    Args:
        mode: one of :data:`PAIRWISE_MODES`.
        query: ``[B, N, C]`` query embeddings (``x`` for gaussian, ``theta(x)`` otherwise;
            for concatenation the projected query term ``w_q . theta_i`` as ``[B, N, 1]``).
        key: ``[B, C, N_k]`` key embeddings (for concatenation ``[B, 1, N_k]``).
        query_shape: ``(H, W)`` with ``H * W == N``.
        key_shape: ``(H_k, W_k)`` with ``H_k * W_k == N_k``.
        scale: multiplies the logits before the softmax (embedded Gaussian ``1/sqrt(C)``).
    """

    def __init__(
        self,
        mode: str,
        query: Tensor,
        key: Tensor,
        query_shape: tuple[int, int],
        key_shape: tuple[int, int],
        scale: float = 1.0,
    ) -> None:
        if mode not in PAIRWISE_MODES:
            raise ValueError(f"unknown pairwise mode {mode!r}; expected one of {PAIRWISE_MODES}")
        if query.dim() != 3 or key.dim() != 3:
            raise ValueError(f"query must be [B, N, C] and key [B, C, N_k], got {tuple(query.shape)} and {tuple(key.shape)}")
        if query.shape[1] != query_shape[0] * query_shape[1] or key.shape[2] != key_shape[0] * key_shape[1]:
            raise ValueError(
                f"query {tuple(query.shape)} / key {tuple(key.shape)} do not match grids {query_shape} / {key_shape}"
            )
        if mode != "concatenation" and query.shape[2] != key.shape[1]:
            raise ValueError(f"query channels {query.shape[2]} != key channels {key.shape[1]}")
        self.mode = mode
        self.query = query
        self.key = key
        self.query_shape = tuple(query_shape)
        self.key_shape = tuple(key_shape)
        self.scale = scale
        self.query_independent = False
        self.distribution, self.nonnegative = pairwise_row_kind(mode)

    def _batch_size(self) -> int:
        return self.query.shape[0]

    @property
    def device(self) -> torch.device:
        return self.query.device

    def image(self, b: int) -> PairwiseAttention:
        return PairwiseAttention(
            self.mode, self.query[b : b + 1], self.key[b : b + 1], self.query_shape, self.key_shape, self.scale
        )

    def take(self, index: Tensor) -> Tensor:
        return self._rows(index)

    def rows(self, start: int, stop: int) -> Tensor:
        return self._rows(slice(start, stop))  # basic slicing: no gather copy

    def logits(self, start: int, stop: int) -> Tensor:
        """Logits ``scale * q_i . k_j`` of queries ``start:stop`` -> ``[B, stop - start, N_key]`` (the
        rows are their softmax; ``gaussian`` and ``embedded_gaussian`` only)."""
        if not self.distribution:
            raise ValueError(f"{self.mode} maps are not a softmax of logits")
        return self._logits(slice(start, stop))

    def _logits(self, index: Tensor | slice) -> Tensor:
        logits = torch.matmul(self.query[:, index], self.key)
        return logits * self.scale if self.scale != 1.0 else logits

    def _rows(self, index: Tensor | slice) -> Tensor:
        if self.mode == "concatenation":
            return torch.relu(self.query[:, index] + self.key) / self.n_key
        if self.mode == "dot_product":
            return torch.matmul(self.query[:, index], self.key) / self.n_key
        return self._logits(index).softmax(dim=-1)


class SharedAttention(LazyAttention):
    """One map per image, shared by every query (GC block, simplified NL block).

    Args:
        weights: ``[B, N_k]`` attention over key positions (e.g. ``softmax(conv_mask(x))``).
        query_shape: ``(H, W)`` of the query grid.
        key_shape: ``(H_k, W_k)`` of the key grid (the same grid for GC blocks).
    """

    def __init__(self, weights: Tensor, query_shape: tuple[int, int], key_shape: tuple[int, int] | None = None) -> None:
        key_shape = tuple(key_shape or query_shape)
        if weights.dim() != 2 or weights.shape[1] != key_shape[0] * key_shape[1]:
            raise ValueError(f"weights must be [B, {key_shape[0] * key_shape[1]}], got {tuple(weights.shape)}")
        self.weights = weights
        self.query_shape = tuple(query_shape)
        self.key_shape = key_shape
        self.query_independent = True
        if weights.is_meta:  # shapes only (extract's query-grid probe): no values to look at
            self.nonnegative = self.distribution = True
        else:
            self.nonnegative = bool((weights >= 0).all())
            self.distribution = self.nonnegative and bool(torch.allclose(weights.sum(-1), weights.new_ones(())))

    def _batch_size(self) -> int:
        return self.weights.shape[0]

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def image(self, b: int) -> SharedAttention:
        return SharedAttention(self.weights[b : b + 1], self.query_shape, self.key_shape)

    def take(self, index: Tensor) -> Tensor:
        return self.weights[:, None, :].expand(-1, index.numel(), -1)

    def rows(self, start: int, stop: int) -> Tensor:
        return self.weights[:, None, :].expand(-1, max(0, min(stop, self.n_query) - start), -1)  # as slicing: cut at N


class DenseAttention(LazyAttention):
    """Maps already formed whole by a block: rows are views of its ``[B, N, N_k]`` tensor (no copy, no recompute).

    Args:
        maps: ``[B, N, N_k]`` the block's own attention maps.
        query_shape: ``(H, W)`` with ``H * W == N``; key_shape: ``(H_k, W_k)`` with ``H_k * W_k == N_k``.
        mode: the block's pairwise function (:data:`PAIRWISE_MODES`): says whether rows are
            distributions (softmax) and non-negative.
    """

    def __init__(self, maps: Tensor, query_shape: tuple[int, int], key_shape: tuple[int, int], mode: str) -> None:
        if mode not in PAIRWISE_MODES:
            raise ValueError(f"unknown pairwise mode {mode!r}; expected one of {PAIRWISE_MODES}")
        n, n_k = query_shape[0] * query_shape[1], key_shape[0] * key_shape[1]
        if maps.dim() != 3 or tuple(maps.shape[1:]) != (n, n_k):
            raise ValueError(f"maps must be [B, {n}, {n_k}] for grids {query_shape} / {key_shape}, got {tuple(maps.shape)}")
        self.maps = maps
        self.mode = mode
        self.query_shape = tuple(query_shape)
        self.key_shape = tuple(key_shape)
        self.query_independent = False
        self.distribution, self.nonnegative = pairwise_row_kind(mode)

    def _batch_size(self) -> int:
        return self.maps.shape[0]

    @property
    def device(self) -> torch.device:
        return self.maps.device

    def image(self, b: int) -> DenseAttention:
        return DenseAttention(self.maps[b : b + 1], self.query_shape, self.key_shape, self.mode)

    def take(self, index: Tensor) -> Tensor:
        return self.maps[:, index]

    def rows(self, start: int, stop: int) -> Tensor:
        return self.maps[:, start:stop]
