"""An NL block's maps measured in the block's own attention pass, as they are formed: the
:class:`~.blocks.BlockMaps` that :func:`~.blocks.map_stats` gives for the same maps (the same pairs,
generator draws and rules), without forming the maps a second time.
:mod:`nlanalysis.capture.inpass_blocks` finds the call of a block's forward that these answer.

* :func:`attend_block` -- ``softmax(scale q k^T) @ value`` (a fused attention call): each chunk of
  logits goes through the native kernel (:func:`~.head_rows._native_rows`), which leaves its softmax in
  place for the chunk's output; the maps are never whole (one chunk of logits at a time).
* :func:`softmax_block` -- a softmax of the ``[B, N, N_k]`` logits the block formed: the kernel reads
  them once and writes the softmax the block receives (where torch's softmax would allocate its own);
  without key weights (no padding) the JSD pairs then read their rows there, so no table of rows is
  kept (13 MiB for the default 512 pairs at N = 3,400).
* :func:`formed_block` -- maps the block formed whole (any mode, any device): measured eagerly in
  row chunks of views of the block's tensor.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels as _native
from ..blocks.attention import DenseAttention, PairwiseAttention
from .block_rows import native_map_stats, pairwise_source
from .blocks import BlockMaps, BlockMasks, map_stats
from .head_rows import _native_rows
from .jsd_pairs import _Plan
from .native_suite import native_columns

__all__ = ["attend_block", "formed_block", "softmax_block"]


def _measured(att: PairwiseAttention | DenseAttention, stats: dict[str, Tensor], row_ok: Tensor, kmask: Tensor | None,
              suite: _native.SuiteSums | None, scale: float, cos: dict | None) -> BlockMaps:  # fmt: skip
    columns = native_columns(suite, stats, kmask, scale, cos) if suite is not None else None
    return BlockMaps(att.query_shape, att.key_shape, stats, row_ok, softmax=True, suite=columns)


@torch.no_grad()
def attend_block(att: PairwiseAttention, value: Tensor, masks: BlockMasks, *, jsd_pairs: int = 512,
                 generator: torch.Generator | None = None, cos: dict | None = None,
                 chunk_size: int = 256, suite: _native.SuiteSums | None = None) -> tuple[Tensor, BlockMaps]:  # fmt: skip
    """The block's attention output and its map statistics from one softmax (native kernels, float32 CPU).

    Args:
        att: the softmax maps (``gaussian`` / ``embedded_gaussian``), float32 on the CPU.
        value: ``[B, 1, N_k, d]`` the values (``g(x)`` over the keys), as the fused call receives them.
        masks: :func:`~.blocks.block_masks` of the maps; jsd_pairs, generator, cos: as :func:`~.blocks.map_stats`.
        chunk_size: as :func:`~.blocks.map_stats` (the rare JSD fallback's rows); the pass itself reads a
            ~16 MiB buffer of logits at a time, as the native path of :func:`~.blocks.map_stats` does.
        suite: the cheap query-dependence suite's sums (:func:`~.native_suite.block_suite`), from the same pass:
            then ``BlockMaps.suite`` holds its columns (``None`` where a valid row was all zero).

    Returns:
        ``output`` ``[B, 1, N, d]`` (``softmax @ value``; a view of a ``[B, N, 1, d]`` tensor) and the
        :class:`~.blocks.BlockMaps`.
    """
    b, n = att.batch_size, att.n_query
    if value.dim() != 4 or tuple(value.shape[:3]) != (b, 1, att.n_key):
        raise ValueError(f"value must be [B, 1, N_k, d] = [{b}, 1, {att.n_key}, d], got {tuple(value.shape)}")
    out = torch.empty(b, n, 1, value.shape[3])

    def rows_of(km: Tensor | None, plan: _Plan | None, sel: Tensor | None, labels: tuple | None) -> tuple:
        return _native_rows(pairwise_source(att), km, masks.qmask, plan, sel, labels, None, attend_to=(value, out), suite=suite)

    stats, row_ok = native_map_stats(att, masks.qmask, masks.kmask, masks.n_query, masks.n_key, masks.own, chunk_size, jsd_pairs,
                                     generator, cos or {}, rows_of)  # fmt: skip
    return out.transpose(1, 2), _measured(att, stats, row_ok, masks.kmask, suite, att.scale, cos)


@torch.no_grad()
def softmax_block(logits: Tensor, query_shape: tuple[int, int], key_shape: tuple[int, int], mode: str, masks: BlockMasks,
                  *, jsd_pairs: int = 512, generator: torch.Generator | None = None, cos: dict | None = None,
                  chunk_size: int = 256, suite: _native.SuiteSums | None = None) -> tuple[Tensor, BlockMaps]:  # fmt: skip
    """``softmax(logits, -1)`` and its map statistics from one kernel pass over the block's logits.

    Args:
        logits: ``[B, N, N_k]`` contiguous float32 CPU, the block's (already scaled) logits; read, not written.
        query_shape, key_shape, mode: the grids and pairwise function of the maps.
        masks, jsd_pairs, generator, cos, chunk_size, suite: as :func:`attend_block` (the suite's unary term
            from these logits: :func:`~.native_suite.block_suite` ``logits=``).

    Returns:
        ``probs`` ``[B, N, N_k]`` (a new tensor, as torch's softmax) and the :class:`~.blocks.BlockMaps`.
    """
    if logits.dtype != torch.float32 or logits.device.type != "cpu" or not logits.is_contiguous():
        raise ValueError(f"logits must be contiguous float32 on the CPU, got {logits.dtype} on {logits.device}")
    probs = torch.empty_like(logits)
    att = DenseAttention(probs, query_shape, key_shape, mode)  # filled by the pass; read again only by the JSD fallback

    def rows_of(km: Tensor | None, plan: _Plan | None, sel: Tensor | None, labels: tuple | None) -> tuple:
        table = None
        if km is None:  # no key weights: the JSD pairs read their rows in probs, after the pass (no table)
            s, sums = _native.row_stats(logits[:, None], None, masks.qmask, 0, 0, None, scale=1.0, objects=labels,
                                        probs=probs[:, None], mean=False, suite=suite)  # fmt: skip
            return s, sums, probs.view(-1, att.n_key) if plan is not None else None
        if plan is not None and sel is not None:  # the rows the JSD pairs need, weighted and renormalised by the kernel
            size = plan.query.numel()
            table = (sel, _native.workspace("jsd_rows", (size, 1, att.n_key)), torch.empty(size, 1),
                     torch.zeros(size, 1, dtype=torch.uint8))  # fmt: skip
        s, sums = _native.row_stats(logits[:, None], km, masks.qmask, 0, 0, table, scale=1.0, objects=labels,
                                    probs=probs[:, None], mean=False, suite=suite)  # fmt: skip
        return s, sums, None if table is None else table[1:]

    stats, row_ok = native_map_stats(att, masks.qmask, masks.kmask, masks.n_query, masks.n_key, masks.own, chunk_size, jsd_pairs,
                                     generator, cos or {}, rows_of)  # fmt: skip
    return probs, _measured(att, stats, row_ok, masks.kmask, suite, 1.0, cos)


def formed_block(maps: Tensor, query_shape: tuple[int, int], key_shape: tuple[int, int], mode: str, masks: BlockMasks,
                 **measure: object) -> BlockMaps:  # fmt: skip
    """The statistics of maps ``[B, N, N_k]`` the block formed whole (views of its tensor, eager, any device);
    ``measure``: :func:`~.blocks.map_stats`'s keywords (``chunk_size``, ``jsd_pairs``, ``generator``, ...)."""
    return map_stats(DenseAttention(maps.detach(), query_shape, key_shape, mode), masks, **{**measure, "kernels": "eager"})
