"""The Jensen-Shannon divergence of sampled query pairs, per head: which rows a batch's pairs need
(:class:`_Plan`), the JSD of a pair of normalised rows, and each image's mean and standard error.

As :func:`nlanalysis.metrics.mean_pairwise_jsd_sampled`: ordered pairs with i = j allowed, all
``n^2`` of them when ``jsd_pairs >= n^2``, else ``jsd_pairs`` uniform draws per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..metrics.divergence import _jsd_normalized
from ..metrics.threads import statistics_threads
from .stats import nans

__all__: list[str] = []

_LN2 = math.log(2.0)


@dataclass
class _Plan:
    """JSD pairs of a batch: the query rows to keep (``image``, ``query``: one entry per row), and the
    pairs as positions in that list (``a``, ``b``) with their image."""

    image: Tensor
    query: Tensor
    a: Tensor
    b: Tensor
    pair_image: Tensor
    exact: Tensor  # [B] bool: all pairs of that image were used

    def table_rows(self, b: int, nq: int) -> Tensor:
        """``[b, nq]`` (CPU): each planned query's row in the table of kept rows, ``-1`` for the others."""
        sel = torch.full((b, nq), -1, dtype=torch.long)
        sel[self.image.cpu(), self.query.cpu()] = torch.arange(self.query.numel())
        return sel


def _jsd_plan(
    qmask: Tensor | None, nq: int, b: int, jsd_pairs: int, generator: torch.Generator | None, dev: torch.device
) -> _Plan | None:
    """As :func:`nlanalysis.metrics.mean_pairwise_jsd_sampled`: ordered pairs with i = j allowed,
    all ``n^2`` of them when ``jsd_pairs >= n^2``, else ``jsd_pairs`` uniform draws, per image."""
    if jsd_pairs <= 0:
        return None
    num = max(jsd_pairs, 2)
    images, queries, pa, pb, pimg, exact = [], [], [], [], [], torch.zeros(b, dtype=torch.bool)
    offset = 0
    for i in range(b):
        index = qmask[i].nonzero()[:, 0].cpu() if qmask is not None else torch.arange(nq)
        n = index.numel()
        if n == 0:
            continue
        if num >= n * n:
            qi, qj = (g.reshape(-1) for g in torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"))
            exact[i] = True
        else:
            qi = torch.randint(n, (num,), generator=generator)
            qj = torch.randint(n, (num,), generator=generator)
        uniq, inverse = torch.unique(torch.cat([qi, qj]), return_inverse=True)
        images.append(torch.full((uniq.numel(),), i))
        queries.append(index[uniq])
        pa.append(inverse[: qi.numel()] + offset)
        pb.append(inverse[qi.numel() :] + offset)
        pimg.append(torch.full((qi.numel(),), i))
        offset += uniq.numel()
    if not images:
        return None
    cat = lambda ts: torch.cat(ts).to(dev)  # noqa: E731
    return _Plan(cat(images), cat(queries), cat(pa), cat(pb), cat(pimg), exact)


def _exact_below(k: int) -> float:
    """The JSD (bits) below which a pair of rows over ``k`` keys is summed again exactly (``row_stats.c``'s
    ``JSD_EXACT_BELOW``, the native pair JSD's cut): 8 float32 ulps of ``log2 k`` (the fast form's rounding, at most
    ~5.8 of them measured) over 1e-4 -- 0.036 bits at ``k = 196``."""
    return 8.0 * 2.0**-24 * math.log2(max(k, 2)) * 1e4


def _xlogx(t: Tensor) -> Tensor:
    """``sum_j t_j log t_j`` over the last dim (``0 log 0 = 0``: the log of ``t`` clamped to the smallest normal
    float), on one temporary: on the CPU torch's ``xlogy`` takes ~3x a ``log``."""
    return t.clamp_min(torch.finfo(t.dtype).tiny).log_().mul_(t).sum(-1)


def _pair_jsd(table: Tensor, table_ent: Tensor, a: Tensor, c: Tensor, step: int | None = None) -> Tensor:
    """JSD (bits) of row pairs ``(a, c)`` of normalised rows ``table`` ``[U, H+1, K]`` -> ``[P, H+1]`` float64, NaN
    where either row's entropy ``table_ent`` ``[U, H+1]`` is (an all-zero row); ``step``: elements per temporary
    (default 2^18 on the CPU, where temporaries that stay in cache and are not handed back to the system take ~60% of
    the time of 2^20; 2^22 on a GPU, fewer launches).

    As the native :func:`nlanalysis.kernels.pair_jsd`: the fast form ``H(m) - (H(p) + H(q)) / 2`` in float32, each
    row's entropy from the row itself (``table_ent``, which the logits give, is off by ~u |logit| where the logits are
    large; here it only marks all-zero rows), is within a few float32 ulps of ``log2 K`` bits: 1e-4 relative above
    :func:`_exact_below`. The pairs below it (near-identical rows: ~1e-8 bits, less than that rounding) are summed
    again in float64 from the rows as they are (~1e-14 bits). Half-precision rows are summed in float32."""
    table = table if table.dtype in (torch.float32, torch.float64) else table.float()
    u, maps, k = table.shape
    step = step or (1 << 18 if table.device.type == "cpu" else 1 << 22)
    h = (-_xlogx(table)).masked_fill(table_ent.isnan(), math.nan)  # [U, H+1]
    per = max(1, step // max(1, maps * k))
    out = []
    for i in range(0, a.numel(), per):
        ai, ci = a[i : i + per], c[i : i + per]
        # [P, H+1, K]; index_select: ~5x indexing's speed on the CPU
        m = table.index_select(0, ai).add_(table.index_select(0, ci)).mul_(0.5)
        out.append(((-_xlogx(m) - 0.5 * (h[ai] + h[ci])) / _LN2).double())
    fast = torch.cat(out) if out else h.new_zeros(0, maps, dtype=torch.float64)
    redo = (fast < _exact_below(k)).nonzero()  # [n, 2]: pair, map (NaN is not below)
    rows, per = table.reshape(u * maps, k), max(1, step // max(1, k))
    for i in range(0, redo.shape[0], per):
        pi, hi = redo[i : i + per].unbind(1)
        ia, ic = a[pi] * maps + hi, c[pi] * maps + hi  # the two rows of each pair, as they are, in float64
        m = (rows.index_select(0, ia).double() + rows.index_select(0, ic).double()) * 0.5
        once, where = torch.unique(torch.cat([ia, ic]), return_inverse=True)  # each row's entropy once
        h64 = _xlogx(rows.index_select(0, once).double())[where]
        fast[pi, hi] = (0.5 * (h64[: pi.numel()] + h64[pi.numel() :]) - _xlogx(m)) / _LN2
    return fast.clamp_(0.0, 1.0)


def _jsd(plan: _Plan | None, values: Tensor | tuple[Tensor, Tensor, Tensor] | None, b: int, heads: int) -> tuple[Tensor, Tensor]:
    """Mean JSD (bits) over each image's pairs, and its standard error (0 where every pair was used).

    ``values``: the pairs' values ``[P, heads+1]`` (NaN for pairs with an all-zero row), or already
    per image ``(count, mean, variance)`` ``[B, heads+1]`` each (the native kernel's).
    """
    jsd = torch.full((b, heads + 1), math.nan, dtype=torch.float64)
    err = jsd.clone()
    if plan is None or values is None:
        return jsd, err
    if isinstance(values, tuple):
        count, mean, var = values
    else:
        v = values.double().cpu()
        img = plan.pair_image.cpu()
        ok = v == v
        v0 = torch.where(ok, v, 0.0)
        count = torch.zeros(b, heads + 1, dtype=torch.float64).index_add_(0, img, ok.double())
        mean = torch.zeros(b, heads + 1, dtype=torch.float64).index_add_(0, img, v0) / count
        sq = torch.where(ok, (v - mean[img]) ** 2, 0.0)
        var = torch.zeros(b, heads + 1, dtype=torch.float64).index_add_(0, img, sq) / (count - 1).clamp(min=1)
    jsd = torch.where(count > 0, mean, math.nan)
    err = torch.where(plan.exact[:, None], torch.where(count > 0, 0.0, math.nan), var.sqrt() / count.sqrt())
    return jsd, err


def _table_jsd(plan: _Plan | None, table: Tensor | None, b: int, step: int = 1024) -> tuple[Tensor, Tensor]:
    """Per image, the mean JSD (bits) of the plan's pairs of one map's rows ``table`` ``[S, N_k]`` (a row
    per planned query) and its standard error ``[B]``; rows renormalised in float64 (as
    :func:`nlanalysis.metrics.mean_pairwise_jsd_sampled`). An NL block's JSD, eager or native.

    A float32 CPU table goes through :func:`nlanalysis.kernels.table_jsd` where the kernels build (one
    pass per pair, no ``[pairs, N_k]`` float64 temporaries); otherwise eager PyTorch, ``step`` pairs at a
    time, on the table's device (a GPU's), on :func:`~nlanalysis.metrics.threads.statistics_threads`."""
    if plan is None or table is None:
        return nans(b), nans(b)
    native = table.dtype == torch.float32 and table.device.type == "cpu" and table.dim() == 2
    if native:
        from .. import kernels as _native  # loaded on first use: a plain `import nlanalysis` stays light

        native = _native.available()
    if native:
        values = _native.table_jsd(table, plan.a.cpu(), plan.b.cpu())
    else:

        def unit(index: Tensor) -> Tensor:
            r = table[index].double()
            return r / r.sum(-1, keepdim=True)

        with statistics_threads():
            values = torch.cat([_jsd_normalized(unit(plan.a[i : i + step]), unit(plan.b[i : i + step]), 2.0)
                                for i in range(0, plan.a.numel(), step)])  # fmt: skip
    jsd, err = _jsd(plan, values[:, None], b, 0)
    return jsd[:, 0], err[:, 0]
