"""Float64 sums over float32 rows for an NL block's statistics, one native pass each: the sum of unit
vectors behind the mean pairwise cosine distance (:func:`unit_sum`) and the JSD of sampled row pairs
(:func:`table_jsd`). No float64 copy of the rows is made; the rows are read in place.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from ..nograd import no_grad
from . import _check_cpu, _indices, _lib, _on_cpu, _ptr, workspace

__all__ = ["all_finite", "table_jsd", "unit_sum"]


@no_grad
def table_jsd(rows: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """JSD (bits) ``[P]`` float64 of the row pairs ``(a[p], b[p])`` of ``rows`` ``[S, K]`` (float32 on the CPU,
    rows contiguous; each renormalised in float64), NaN where either row sums to 0: what
    ``_jsd_normalized(r_a / r_a.sum(), r_b / r_b.sum(), 2)`` gives, in one pass per pair without temporaries."""
    lib = _lib()
    _check_cpu("rows", rows)
    if rows.dim() != 2:
        raise ValueError(f"table_jsd: rows must be [S, K], got {tuple(rows.shape)}")
    if rows.stride(1) != 1 or rows.stride(0) < rows.shape[1]:
        rows = rows.contiguous()
    a, b = _indices("table_jsd", a, b, rows.shape[0])
    out = torch.empty(a.numel(), dtype=torch.float64)
    ok = torch.empty(a.numel(), dtype=torch.uint8)
    lib.nl_table_jsd64(_ptr(rows), rows.stride(0), _ptr(a), _ptr(b), a.numel(), rows.shape[1], _ptr(out), _ptr(ok))
    return out.masked_fill_(ok == 0, float("nan"))


@no_grad
def unit_sum(v: Tensor, used: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``sum_i v_i / ||v_i||`` over the used non-zero rows of ``v`` ``[B, n, D]`` (float32 on the CPU), as
    :class:`nlanalysis.metrics.CosineAccumulator` sums them (float64 norms and sums).

    ``v`` is read in place when its rows or its columns are contiguous (a feature map ``x.flatten(2)``
    seen as ``.transpose(1, 2)`` is), copied otherwise; ``used`` ``[B, n]`` (bool) marks the rows to
    use (unused rows may hold anything). Returns ``s`` ``[B, D]`` float64 and, per item ``[B]`` int64,
    the used all-zero rows and the used rows holding NaN or inf (left out of ``s``).
    """
    lib = _lib()
    _check_cpu("v", v)
    if v.dim() != 3:
        raise ValueError(f"unit_sum: v must be [B, n, D], got {tuple(v.shape)}")
    bsz, n, d = v.shape
    if not (v.stride(2) == 1 or v.stride(1) == 1) or v.stride(0) < n * d:
        v = v.contiguous()
    if used is not None:
        _on_cpu("used", used)
        if tuple(used.shape) != (bsz, n):
            raise ValueError(f"unit_sum: used must be [{bsz}, {n}], got {tuple(used.shape)}")
        used = used.to(torch.uint8).contiguous()
    threads = max(torch.get_num_threads(), os.cpu_count() or 1)
    s = torch.empty(bsz, d, dtype=torch.float64)
    zero, bad = torch.empty(bsz, dtype=torch.int64), torch.empty(bsz, dtype=torch.int64)
    w = workspace("unit_sum_w", (bsz, n), torch.float64)
    part = workspace("unit_sum_part", (threads, bsz, d) if v.stride(2) == 1 else (1,), torch.float64)
    rc = lib.nl_unit_sum(_ptr(v), bsz, n, d, v.stride(0), v.stride(1), v.stride(2), _ptr(used), _ptr(s), _ptr(zero), _ptr(bad),
                         _ptr(w), _ptr(part), threads if v.stride(2) == 1 else 0)  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"unit_sum: OpenMP ran more threads than the {threads} it was given")
    return s, zero, bad


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill ``numel`` consecutive floats in some order (contiguous up to a permutation of dims)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted(zip(t.stride(), t.shape)):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


@no_grad
def all_finite(t: Tensor) -> bool:
    """Whether ``t`` holds no NaN or inf: one native pass over a dense float32 CPU tensor (in place, any dim
    order, e.g. an attention output seen through ``.transpose(1, 2)``), ``torch.isfinite(t).all()`` otherwise.
    Exact, unlike a finite-sum test (a sum of large finite values can overflow)."""
    if t.dtype != torch.float32 or t.device.type != "cpu" or not _dense(t):
        return bool(torch.isfinite(t).all())
    return bool(_lib().nl_all_finite(_ptr(t), t.numel()))
