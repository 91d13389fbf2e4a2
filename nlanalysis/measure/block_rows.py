"""An NL block's softmax maps through the native one-pass kernel (:mod:`nlanalysis.kernels`), as a
ViT layer's heads go (:mod:`.head_rows`).

For ``gaussian`` / ``embedded_gaussian`` blocks the maps are ``softmax(scale * q_i . k_j)`` over
float32 logits: the kernel reads each chunk of logits (one BLAS matmul per image; the keys may be a
sub-sampled grid, ``N_key != N_query``) once, and gives every statistic that reads the rows, with
the rows the JSD pairs need. The pairs and their JSD are those of :func:`nlanalysis.measure.measure_block`'s
eager path (:func:`~.jsd_pairs._jsd_plan` per image, from the same generator, over the counted rows;
:func:`~.jsd_pairs._table_jsd` in float64), so ``att_jsd`` does not move.
Loaded only when a block is measured with the kernels.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from .. import kernels as _native
from ..blocks.attention import LazyAttention, PairwiseAttention
from ..metrics import distance_from_sum
from .blocks import _counted, _sampled_jsd
from .head_rows import LogitSource, _native_rows
from .jsd_pairs import _jsd_plan, _Plan, _table_jsd
from .stats import nans, row_results

__all__ = ["RowPass", "native_map_stats", "native_softmax", "pairwise_source"]


def native_softmax(att: LazyAttention, kernels: str) -> bool:
    """Whether ``att``'s maps go through the native kernel with ``kernels=...``: softmax maps over
    float32 logits (:func:`nlanalysis.kernels.uses_native` says where the kernel runs)."""
    if kernels not in _native.KERNELS:
        raise ValueError(f"kernels must be one of {_native.KERNELS}, got {kernels!r}")
    softmax = isinstance(att, PairwiseAttention) and att.distribution and att.scale > 0
    return softmax and att.query.dtype == att.key.dtype == torch.float32 and _native.uses_native(kernels, att.device)


def pairwise_source(att: PairwiseAttention) -> LogitSource:
    """The logits ``q_i . k_j`` of a pairwise block (one map, no head mean), image by image."""

    def fill(i: int, lo: int, hi: int, out: Tensor) -> None:
        torch.matmul(att.query[i, lo:hi], att.key[i], out=out[0])

    return LogitSource(att.batch_size, 1, att.n_query, att.n_key, 0, 0, float(att.scale), fill, mean=False)


#: ``rows_of(km, plan, sel, labels) -> (s, sums, rows)``: one native pass over every row of a block's maps
#: (as :func:`~.head_rows._native_rows`), given the key weights, the JSD plan and its table rows, and the object labels;
#: ``rows`` may instead be the whole maps ``[B * N_q, N_k]`` (key weights all 1), whose planned rows the JSD reads
RowPass = Callable[[Tensor | None, _Plan | None, Tensor | None, tuple[Tensor, Tensor, Tensor] | None],
                   tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | Tensor | None]]  # fmt: skip


@torch.no_grad()
def native_map_stats(att, qmask, kmask, n_query, n_key, own, chunk_size, jsd_pairs, generator, cos,
                     rows_of: RowPass | None = None, suite: _native.SuiteSums | None = None) -> tuple[dict[str, Tensor], Tensor]:  # fmt: skip
    """As :func:`nlanalysis.measure.blocks._eager_map_stats` (same arguments and results), with the kernel.

    ``rows_of`` runs the pass (default: the logits of ``att``, :func:`pairwise_source`); a block measured in
    its own pass gives its own (:mod:`.inpass_blocks`), and ``att`` then serves only the rare JSD fallback.
    ``suite``: the cheap suite's sums, added to by the default pass (:mod:`.native_suite`; ``rows_of`` adds its own)."""
    b, nq = att.batch_size, att.n_query
    state = generator.get_state() if generator is not None else torch.get_rng_state()
    counted = qmask.cpu() if qmask is not None else torch.ones(b, nq, dtype=torch.bool)
    plan = _jsd_plan(counted if qmask is not None else None, nq, b, jsd_pairs, generator, torch.device("cpu"))
    sel = plan.table_rows(b, nq) if plan is not None else None
    km = kmask.float() if kmask is not None else None
    labels = own.labels() if own is not None else None
    if rows_of is None:
        s, sums, rows = _native_rows(pairwise_source(att), km, qmask, plan, sel, labels, None, suite=suite)
    else:
        s, sums, rows = rows_of(km, plan, sel, labels)
    att_dist = distance_from_sum(s[:, 0].double().square().sum(-1), n_query.long(), sums[3, :, 0].long(), **cos)
    if bool(sums[3].any()):  # valid all-zero rows: the eager path draws its pairs over the other rows
        generator.set_state(state) if generator is not None else torch.set_rng_state(state)
        counted = torch.cat([_counted(r * kmask[:, None, :] if kmask is not None else r,  # as the eager row pass finds them
                                      qmask[:, i : i + r.shape[1]] if qmask is not None else None)
                             for i, r in att.chunks(chunk_size)], 1).cpu()  # fmt: skip
        jsd, jsd_err = _sampled_jsd(att, counted, kmask, jsd_pairs, generator, att.device)
    elif isinstance(rows, Tensor) and plan is not None:  # the whole maps [B * N_q, N_k] (a block's own softmax): no table
        at = plan.image.cpu() * nq + plan.query.cpu()  # each planned row's place in them
        jsd, jsd_err = _table_jsd(replace(plan, a=at[plan.a.cpu()], b=at[plan.b.cpu()]), rows, b)
    else:
        jsd, jsd_err = _table_jsd(plan, rows[0][:, 0] if rows is not None else None, b)  # the one map's rows
    found = row_results(sums, n_query.double()[:, None], torch.log(n_key.double().clamp(min=2))[:, None], own is not None)
    return dict(att=att_dist, att_jsd=jsd, att_jsd_stderr=jsd_err, **{k: v[:, 0] for k, v in found.items()}), counted
