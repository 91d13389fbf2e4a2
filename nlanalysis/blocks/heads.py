"""Per-head self-attention maps of a ViT layer, computed on demand from its queries and keys.

Multi-head self-attention (Vaswani et al., arXiv 1706.03762; in ViTs, Dosovitskiy et al., arXiv
2010.11929) gives every head ``h`` its own map ``A_h = softmax(scale * q_h k_h^T)`` over all
tokens. Fused kernels (``F.scaled_dot_product_attention``) never materialise it, so the adapters
recompute it from the module's own projections (after its q/k norms). This module holds the
queries and keys and hands out rows:

* :class:`HeadAttention` -- maps ``[B, heads, N_query, N_key]`` over **patch queries**; keys are
  the patch tokens (``keys="patch"``, default) or every token (``keys="all"``: class and
  register tokens first, then the patches). The softmax always runs over every token, as in the
  model, so with ``keys="patch"`` a row sums to ``1 - (mass on class/register tokens)``; the
  statistics normalise rows themselves.
* :class:`TokenAttention` -- one head, or the mean over heads, as a
  :class:`~nlanalysis.blocks.attention.LazyAttention` ``[B, N_query, N_key]``, so everything
  written for NL blocks (:func:`nlanalysis.measure.measure_block`) applies to it unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .attention import LazyAttention
from .tokens import KEY_SETS, TokenLayout

__all__ = ["HeadAttention", "TokenAttention"]


class HeadAttention:
    """Per-head attention maps of one layer, rows computed on demand.

    Args:
        query: ``[B, heads, N, d]`` queries (after any q-norm), all ``N`` tokens.
        key: ``[B, heads, N, d]`` keys (after any k-norm).
        scale: logit scale (``d ** -0.5`` in every supported family).
        layout: token layout; ``N`` must equal ``layout.n_tokens``.
        keys: ``"patch"`` (patch keys only) or ``"all"`` (every token).
        probs: optional ``[B, heads, N, N]`` softmax the model itself computed in this forward
            (timm's non-fused path hands it out); rows are then read from it instead of recomputed.
            Never modified.

    Attributes:
        query_shape: ``(H_g, W_g)``: queries are the patch tokens.
        key_shape: ``(H_g, W_g)`` for patch keys; ``(1, N)`` with ``keys="all"``.
    """

    def __init__(
        self, query: Tensor, key: Tensor, scale: float, layout: TokenLayout, keys: str = "patch", probs: Tensor | None = None
    ) -> None:
        if query.dim() != 4 or query.shape != key.shape:
            raise ValueError(f"query and key must both be [B, heads, N, d], got {tuple(query.shape)} and {tuple(key.shape)}")
        n = query.shape[2]
        if probs is not None and tuple(probs.shape) != (*query.shape[:2], n, n):
            raise ValueError(f"probs must be [B, heads, N, N] = {(*query.shape[:2], n, n)}, got {tuple(probs.shape)}")
        self.probs = probs
        if keys not in KEY_SETS:
            raise ValueError(f"keys must be one of {KEY_SETS}, got {keys!r}")
        layout.check(query.shape[2])
        self.query = query
        self.key = key
        self.scale = float(scale)
        self._scaled_query: Tensor | None = None
        self.layout = layout
        self.keys = keys
        self.query_shape = tuple(layout.grid)
        self.key_shape = tuple(layout.grid) if keys == "patch" else (1, layout.n_tokens)
        self._first_key = layout.n_prefix if keys == "patch" else 0

    @property
    def batch_size(self) -> int:
        return self.query.shape[0]

    @property
    def num_heads(self) -> int:
        return self.query.shape[1]

    @property
    def n_query(self) -> int:
        return self.layout.n_patch

    @property
    def n_key(self) -> int:
        return self.key_shape[0] * self.key_shape[1]

    @property
    def device(self) -> torch.device:
        return self.query.device

    @property
    def first_key(self) -> int:
        """The token of the first key column (``n_prefix`` with ``keys="patch"``, 0 with ``"all"``)."""
        return self._first_key

    def image(self, b: int) -> HeadAttention:
        """The maps of batch item ``b`` alone (no copy)."""
        probs = self.probs[b : b + 1] if self.probs is not None else None
        return HeadAttention(self.query[b : b + 1], self.key[b : b + 1], self.scale, self.layout, self.keys, probs)

    def probs_rows(self, index: Tensor | slice) -> Tensor:
        """Softmax over **all** tokens for patch queries ``index`` -> ``[B, heads, k, N]`` (do not modify:
        it may be a view of the model's own attention)."""
        if self.probs is None:
            return self.logits(index).softmax(dim=-1)
        return self.probs[:, :, self._tokens(index)]

    def _tokens(self, index: Tensor | slice) -> Tensor | slice:
        """Patch-query indices -> token indices (a slice stays a slice: no gather copy)."""
        if isinstance(index, slice):
            start = self.layout.n_prefix + (index.start or 0)
            stop = self.layout.n_prefix + (self.n_query if index.stop is None else index.stop)
            return slice(start, stop)
        return index.to(self.device) + self.layout.n_prefix

    def scaled_query(self, index: Tensor | slice) -> Tensor:
        """``scale * q`` of patch queries ``index`` -> ``[B, heads, k, d]``."""
        if self._scaled_query is None:  # contiguous copies once: batched matmuls on strided views copy every call
            self._scaled_query = (self.query * self.scale).contiguous()
            self.key = self.key.contiguous()
        return self._scaled_query[:, :, self._tokens(index)]

    def logits(self, index: Tensor | slice) -> Tensor:
        """Scaled logits ``scale * q_i . k_j`` over **all** tokens for patch queries ``index`` -> ``[B, heads, k, N]``."""
        q = self.scaled_query(index)
        return torch.matmul(q, self.key.transpose(-2, -1))

    def token_rows(self, tokens: Tensor | Sequence[int]) -> Tensor:
        """Rows of any tokens (e.g. the class token, ``0``) over **all** tokens -> ``[B, heads, k, N]``."""
        index = torch.as_tensor(tokens, dtype=torch.long, device=self.device).reshape(-1)
        if self.probs is not None:
            return self.probs[:, :, index]
        logits = torch.matmul(self.query[:, :, index] * self.scale, self.key.transpose(-2, -1))
        return logits.softmax(dim=-1)

    def take(self, index: Tensor) -> Tensor:
        """Rows of patch queries ``index`` ``[k]`` -> ``[B, heads, k, N_key]``."""
        return self.probs_rows(index)[..., self._first_key :]

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows of patch queries ``start:stop`` -> ``[B, heads, stop - start, N_key]``."""
        return self.probs_rows(slice(start, stop))[..., self._first_key :]

    def full(self) -> Tensor:
        """All maps ``[B, heads, N_query, N_key]``."""
        return self.rows(0, self.n_query)

    def head(self, h: int) -> TokenAttention:
        """Head ``h`` as a :class:`~nlanalysis.blocks.attention.LazyAttention`."""
        if not -self.num_heads <= h < self.num_heads:
            raise IndexError(f"head {h} out of range for {self.num_heads} heads")
        return TokenAttention(self, h % self.num_heads)

    def mean(self) -> TokenAttention:
        """The head-averaged map ``mean_h A_h`` as a :class:`~nlanalysis.blocks.attention.LazyAttention`."""
        return TokenAttention(self, None)

    def grid_maps(self, cells: Tensor) -> Tensor:
        """Maps of the queries at patch ``cells`` ``[K, 2]`` (row, col) over the patch grid.

        Returns:
            ``[B, heads, K, H_g, W_g]`` attention weights on the patch keys (the mass on
            class/register keys is left out, not renormalised).
        """
        index = cells[:, 0].long() * self.layout.grid[1] + cells[:, 1].long()
        rows = self.probs_rows(index.to(self.device))
        return self.layout.to_grid(rows[..., self.layout.n_prefix :])


class TokenAttention(LazyAttention):
    """One head of a :class:`HeadAttention` (``head=h``) or the head mean (``head=None``).

    Rows are ``[B, N_query, N_key]`` over patch queries, as for any NL block, so
    :func:`nlanalysis.measure.measure_block` and :class:`~nlanalysis.capture.QueryMaps`-style code
    work on a ViT head unchanged.
    """

    def __init__(self, heads: HeadAttention, head: int | None) -> None:
        self.heads = heads
        self.head = head
        self.query_shape = heads.query_shape
        self.key_shape = heads.key_shape
        self.query_independent = False
        self.distribution = heads.keys == "all"
        self.nonnegative = True

    def _batch_size(self) -> int:
        return self.heads.batch_size

    @property
    def device(self) -> torch.device:
        return self.heads.device

    def image(self, b: int) -> TokenAttention:
        return TokenAttention(self.heads.image(b), self.head)

    def _select(self, rows: Tensor) -> Tensor:
        return rows.mean(dim=1) if self.head is None else rows[:, self.head]

    def take(self, index: Tensor) -> Tensor:
        return self._select(self.heads.take(index))

    def rows(self, start: int, stop: int) -> Tensor:
        return self._select(self.heads.rows(start, stop))
