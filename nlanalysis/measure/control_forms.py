"""Random-projection controls in the form of each block (issue 15, "controls in the right form").

The ``ctrl_*`` control (:mod:`.controls`) is always a softmax map whose *mean* entropy equals the
trained maps'. Beside it, each site gets a control in its own form (columns ``ctrl_form_*``, and
``ctrl_form`` saying which):

* ``softmax-per-query`` (gaussian, embedded Gaussian, ViT heads and head mean): the same random
  query/key projections of the site's input, ``softmax(tau_i * q_i . k_j)`` with one temperature
  per query, ``tau_i`` chosen so that row ``i``'s normalised entropy equals the trained row ``i``'s
  (:func:`per_query_temperature`): sharpness matched query by query, not on average.
* ``relu-concat`` (concatenation): ``ReLU(a_i + b_j + c) / N_k`` with ``a_i = u . x_i`` (query side)
  and ``b_j = v . x_j`` (key side, 2x2 max-pooled when the block sub-samples), ``u, v`` random
  (``N(0, 1/C)``). The form's sharpness is its share of zero weights: the one number ``c`` is set so
  that the share of positive ``a_i + b_j + c`` over the valid pairs equals the trained map's
  (:func:`concat_terms`), as the ``ctrl_*`` control sets one temperature. The spread of the query
  term against the key term stays the random projections': in a trained block it is learned (on
  the shipped model the key term's spread is ~4x the query term's), and it is what makes rows
  alike. A row is all zero when ``a_i + c + max_j b_j <= 0``.
* ``signed-dot`` (dot product): ``q_i . k_j / N_k`` of random projections, no softmax, signed as
  the block's. Its statistics (cosine distance) do not depend on a scale: nothing is matched.

``ctrl_form_gap`` says how far the matched sharpness is off: per query, the mean absolute entropy
gap over the rows (rows whose target no temperature reaches, e.g. keys tied at the maximum, keep
the nearest one); concatenation, the gap in the share of zero weights; NaN for ``signed-dot``.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from ..blocks.attention import LazyAttention, PairwiseAttention
from .blocks import key_mask, measure_block
from .controls import CONVERGED, logit_entropy, random_projection_attention
from .controls import _LOG_TAU_BRACKET as LOG_TAU_BRACKET
from .stats import nans

__all__ = [
    "FORMS",
    "block_form_controls",
    "FORM_COLUMNS",
    "RELU_CONCAT",
    "SIGNED_DOT",
    "SOFTMAX_MEAN",
    "SOFTMAX_PER_QUERY",
    "child_generator",
    "concat_terms",
    "control_form",
    "entropy_of_rows",
    "form_control_maps",
    "per_query_temperature",
    "positive_share",
    "row_entropies",
    "solve_row_temperatures",
]

#: the form of the ``ctrl_*`` columns' control (softmax at the trained maps' mean entropy).
SOFTMAX_MEAN = "softmax-mean-entropy"
SOFTMAX_PER_QUERY, RELU_CONCAT, SIGNED_DOT = "softmax-per-query", "relu-concat", "signed-dot"
#: the forms a ``ctrl_form`` value can name.
FORMS = (SOFTMAX_MEAN, SOFTMAX_PER_QUERY, RELU_CONCAT, SIGNED_DOT)
#: the numeric columns of the form control, after ``ctrl_form`` (as :mod:`nlanalysis.schema` orders them).
FORM_COLUMNS = ("ctrl_form_att", "ctrl_form_att_jsd", "ctrl_form_att_own_object", "ctrl_form_gap")
#: query rows whose temperatures are solved at once (memory ``rows x N_k`` per map).
MATCH_CHUNK = 256
_MODE_FORM = {"gaussian": SOFTMAX_PER_QUERY, "embedded_gaussian": SOFTMAX_PER_QUERY, "concatenation": RELU_CONCAT,
              "dot_product": SIGNED_DOT}  # fmt: skip


def control_form(att: LazyAttention) -> str | None:
    """The form of control that fits ``att``'s maps (``None``: none, e.g. a map shared by every query)."""
    if att.query_independent:
        return None
    if isinstance(att, PairwiseAttention):
        return _MODE_FORM[att.mode]
    return SOFTMAX_PER_QUERY if att.nonnegative else None  # ViT heads and their mean


def child_generator(parent: torch.Generator | None, salt: int = 0) -> torch.Generator:
    """A generator seeded from ``parent``'s current state and ``salt``, without drawing from ``parent``:
    the form controls get their own deterministic stream, and every number drawn after them from
    ``parent`` (later JSD pairs, controls) stays as without them."""
    state = (parent if parent is not None else torch.Generator().manual_seed(0)).get_state()
    digest = hashlib.blake2b(state.numpy().tobytes() + int(salt).to_bytes(8, "little", signed=True), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") % (2**63))


@torch.no_grad()
def row_entropies(att: LazyAttention, kmask: Tensor | None = None, chunk_size: int = 256) -> Tensor:
    """Normalised entropy of every query row of non-negative maps ``att`` over the valid keys.

    Args:
        att: ``B`` images of ``[N_q, N_k]`` maps.
        kmask: optional bool ``[B, N_k]``: True on valid keys (rows are renormalised over them).
        chunk_size: rows at a time.

    Returns:
        ``[B, N_q]`` float64 on the CPU, ``H(p_i) / log max(n_valid_keys, 2)``; NaN on all-zero rows.
    """
    if not att.nonnegative:
        raise ValueError("row entropies need non-negative maps (a signed dot-product map has none)")
    out = torch.empty(att.batch_size, att.n_query, dtype=torch.float64)
    for start, rows in att.chunks(chunk_size):
        out[:, start : start + rows.shape[1]] = entropy_of_rows(rows, kmask[:, None, :] if kmask is not None else None).cpu()
    return out


def entropy_of_rows(rows: Tensor, kmask: Tensor | None = None) -> Tensor:
    """Normalised entropy ``[...]`` (float64, on ``rows``' device: a caller that needs it on the host copies it) of
    non-negative rows ``[..., N_k]`` over the keys where ``kmask`` (bool, broadcastable to ``rows``) is True,
    renormalised there; NaN on all-zero rows."""
    rows = rows.double()
    n_key = torch.tensor(float(rows.shape[-1]), dtype=torch.float64)
    if kmask is not None:
        rows = rows * kmask
        n_key = kmask.sum(-1, keepdim=True).double()[..., 0]
    total = rows.sum(-1)
    h = torch.log(total) - torch.xlogy(rows, rows).sum(-1) / total
    return torch.where(total > 0, h / torch.log(n_key.clamp(min=2)).to(h.device), math.nan)


def per_query_temperature(query: Tensor, key: Tensor, target: Tensor, key_mask: Tensor | None = None,
                          chunk: int = MATCH_CHUNK) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One temperature per query row such that ``softmax(tau_i * q_i . k_j)`` over the valid keys has
    normalised entropy ``target_i`` (:func:`~.controls.solve_log_temperature` with every row its own map).

    Args:
        query: ``[M, N, d]`` queries of ``M`` maps.
        key: ``[M, d, N_k]`` keys.
        target: ``[M, N]`` normalised entropies (NaN: a row not matched; it keeps ``tau = 1``).
        key_mask: optional bool ``[N_k]``: True on valid keys (shared by the maps).
        chunk: rows solved at once.

    Returns:
        ``(tau, gap)``, ``[M, N]`` float64 each, on ``query``'s device (per-row values: they stay where the maps
        are): the temperature (the nearest one in ``[e^-12, e^12]`` where no temperature reaches the target) and
        ``|entropy - target|`` (NaN where the target is).
    """
    m, n, _ = query.shape
    if key.shape[0] != m or key.shape[1] != query.shape[2] or target.shape != (m, n):
        raise ValueError(f"query [M, N, d], key [M, d, N_k] and target [M, N] disagree: {tuple(query.shape)}, "
                         f"{tuple(key.shape)}, {tuple(target.shape)}")  # fmt: skip
    tau = torch.ones(m, n, dtype=torch.float64, device=query.device)
    gap = torch.full((m, n), math.nan, dtype=torch.float64, device=query.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        logits = torch.matmul(query[:, start:stop], key)  # [M, c, N_k]
        flat = target[:, start:stop].reshape(-1)
        log_tau, h = solve_row_temperatures(logits.reshape(-1, logits.shape[-1]), flat, key_mask)
        tau[:, start:stop] = log_tau.exp().view(m, -1)
        gap[:, start:stop] = (h - flat.to(h)).abs().view(m, -1)
    return tau, gap


def solve_row_temperatures(logits: Tensor, target: Tensor, key_mask: Tensor | None = None, *,
                           iterations: int = 30) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``log tau`` per row bringing the normalised entropy of ``softmax(tau * logits_r)`` to ``target_r``.

    The steps of :func:`~.controls.solve_log_temperature` with every row its own map (Newton on ``log tau``
    in a bisection bracket ``[-12, 12]``, the same tolerance :data:`~.controls.CONVERGED` and at most
    ``iterations`` steps), but each row stops once it has converged: later steps run on the rows still
    open only. A converged row's ``log tau`` is frozen there in both, so the results are the same.

    Args:
        logits: ``[R, N_k]`` rows.
        target: ``[R]`` normalised entropies (NaN: not matched, ``log tau = 0``).
        key_mask: optional bool ``[N_k]``: True on valid keys (shared by the rows).

    Returns:
        ``(log_tau, entropy)``, ``[R]`` float64 each, as :func:`~.controls.solve_log_temperature`'s.
    """
    r, n = logits.shape
    dev = logits.device
    if target.shape != (r,):
        raise ValueError(f"target must be [R] = [{r}] (one entropy per row), got {tuple(target.shape)}")
    if key_mask is None:
        key_mask = torch.ones(n, dtype=torch.bool, device=dev)
    if key_mask.shape != (n,):
        raise ValueError(f"key_mask must be [N_k] = [{n}], got {tuple(key_mask.shape)}")
    masked = ~key_mask.to(dev)
    log_n = math.log(float(key_mask.sum().clamp(min=2).double()))
    target = target.to(device=dev, dtype=torch.float64)
    x = torch.zeros(r, dtype=torch.float64, device=dev)
    lo, hi = torch.full_like(x, -LOG_TAU_BRACKET), torch.full_like(x, LOG_TAU_BRACKET)
    rows = (~target.isnan()).nonzero()[:, 0]  # the rows still open
    for _ in range(iterations):
        if rows.numel() == 0:
            break
        h, slope = logit_entropy(logits[rows, None], masked, x[rows], log_n)
        gap = h - target[rows]
        left = gap.abs() > CONVERGED
        rows, gap, slope, xr = rows[left], gap[left], slope[left], x[rows][left]
        lo[rows], hi[rows] = torch.where(gap > 0, xr, lo[rows]), torch.where(gap > 0, hi[rows], xr)
        step = xr - gap / slope
        bisect = ~step.isfinite() | (step <= lo[rows]) | (step >= hi[rows])
        x[rows] = torch.where(bisect, (lo[rows] + hi[rows]) / 2, step)
    return x, logit_entropy(logits[:, None], masked, x, log_n)[0]


def positive_share(a: Tensor, b: Tensor) -> float:
    """The share of pairs ``(i, j)`` with ``a_i + b_j > 0``, for ``a`` ``[N]`` and ``b`` ``[N_k]`` (float64,
    by sorting: ``O((N + N_k) log N_k)``, no ``N x N_k`` array)."""
    if a.numel() == 0 or b.numel() == 0:
        return math.nan
    sorted_b = torch.sort(b.double()).values
    above = b.numel() - torch.searchsorted(sorted_b, -a.double(), right=True)  # b_j > -a_i
    return float(above.sum()) / (a.numel() * b.numel())


def concat_terms(a_rand: Tensor, b_rand: Tensor, a_trained: Tensor, b_trained: Tensor) -> tuple[Tensor, Tensor]:
    """The query and key terms of the ``relu-concat`` control from random projections, at the trained form's sparsity.

    Args:
        a_rand, b_rand: ``[N]``, ``[N_k]`` random query / key terms (``u . x_i``, ``v . x_j``) of the valid positions.
        a_trained, b_trained: the trained block's terms ``w_q . theta_i``, ``w_k . phi_j`` of the same positions.

    Returns:
        ``(a, b)`` float64: ``a_rand`` and ``b_rand`` shifted so that the share of positive ``a_i + b_j`` is the
        trained one (the shift halfway between the two pair sums where the share steps to it). Only this one
        number is matched: the spread of the query term against the key term stays the random projections'
        (the trained block's balance is learned, and it is what makes its rows alike).
    """
    a, b = a_rand.double(), b_rand.double()
    target = positive_share(a_trained, b_trained)
    if math.isnan(target):
        return a, b
    return a, b + _shift(a, b, round(target * a.numel() * b.numel()))


def _shift(a: Tensor, b: Tensor, count: int) -> float:
    """The shift ``c`` with exactly ``count`` pairs ``a_i + b_j + c > 0`` (up to ties): minus the midpoint between
    the ``count``-th and the next largest pair sum, found without forming the ``N x N_k`` sums (sorted ``b``,
    a bisection on the threshold, then the two sums next to it)."""
    b_sorted = torch.sort(b).values
    pairs = a.numel() * b.numel()

    def above(t: float) -> int:  # pairs with a_i + b_j > t
        return int((b.numel() - torch.searchsorted(b_sorted, t - a, right=True)).sum())

    lo, hi = float(a.min() + b.min()) - 1.0, float(a.max() + b.max())  # above(lo) = pairs, above(hi) = 0
    if count <= 0:
        return -hi
    for _ in range(200):  # above(lo) >= count > above(hi)
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if above(mid) >= count else (lo, mid)
    j = torch.searchsorted(b_sorted, lo - a, right=True)  # per query: first key with a_i + b_j > lo
    upper = torch.where(j < b.numel(), a + b_sorted[j.clamp(max=b.numel() - 1)], math.inf).min()  # the count-th sum
    if count >= pairs:
        return -float(upper) + 0.5
    lower = torch.where(j > 0, a + b_sorted[(j - 1).clamp(min=0)], -math.inf).max()  # the next one below
    return -float(upper + lower) / 2


@torch.no_grad()
def block_form_controls(att: LazyAttention, x: Tensor, valid: Tensor | None, objects: Tensor | None, row_ok: Tensor | None,
                        **measure: object) -> dict[str, Tensor | str | None]:  # fmt: skip
    """The control in the form of an NL block's maps, per image (:func:`control_form`; none for a shared map).

    Args:
        att: the block's maps (the trained ones, whose sharpness the control matches).
        x: its input ``[B, C, H, W]`` (the control projects it at random).
        valid, objects: optional ``[B, H, W]`` masks, as :func:`~.blocks.measure_block`'s.
        row_ok: ``[B, N_q]`` the trained rows that count (valid, not all zero); ``None``: the valid ones.
        measure: ``jsd_pairs``, ``generator``, ``kernels``, ``convention``, ``zero`` for measuring the
            control as :func:`~.blocks.measure_block` does. Its random draws come from
            :func:`child_generator` of ``generator``, which is not drawn from.

    Returns:
        ``{"ctrl_form": form, column: [B] float64}`` for :data:`FORM_COLUMNS` (NaN without a control).
    """
    b = x.shape[0]
    form = control_form(att)
    out: dict[str, Tensor | str | None] = {"ctrl_form": form, **{name: nans(b) for name in FORM_COLUMNS}}
    if form is None:
        return out
    gen = child_generator(measure.pop("generator", None))  # type: ignore[arg-type]
    x = x.detach()
    valid, objects = (None if t is None else t.to(x.device) for t in (valid, objects))  # the masks meet the maps' rows
    kmask = key_mask(valid.bool(), att.key_shape).flatten(1) if valid is not None else None
    qmask = valid.bool().flatten(1) if valid is not None else torch.ones(b, att.n_query, dtype=torch.bool)
    counted = row_ok.cpu() if row_ok is not None else qmask.cpu()
    for i in range(b):
        if not bool(counted[i].any()):
            continue
        ki = kmask[i] if kmask is not None else None
        maps, gap = form_control_maps(form, att.image(i), x[i : i + 1], qmask[i], ki, counted[i], gen)
        sl = slice(i, i + 1)
        stats = measure_block(maps, x[sl], x[sl], valid=valid[sl] if valid is not None else None,
                              objects=objects[sl] if objects is not None else None, generator=gen, **measure)  # fmt: skip
        for name, value in zip(FORM_COLUMNS, (stats.att, stats.att_jsd, stats.att_own_object)):
            out[name][i] = float(value[0, 0])  # type: ignore[index]
        out["ctrl_form_gap"][i] = gap  # type: ignore[index]
    return out


@torch.no_grad()
def form_control_maps(form: str, att: LazyAttention, x: Tensor, qmask: Tensor, kmask: Tensor | None, counted: Tensor,
                   gen: torch.Generator) -> tuple[PairwiseAttention, float]:  # fmt: skip
    """One image's control maps in ``form`` and the gap of its matched sharpness (see the module docstring).

    Args:
        form: one of ``softmax-per-query``, ``relu-concat``, ``signed-dot``.
        att: the trained maps of the image (a batch of one; for ``relu-concat`` a concatenation
            :class:`PairwiseAttention`, whose query/key terms are read).
        x: its input ``[1, C, H, W]``.
        qmask, kmask: bool ``[N_q]`` valid queries, ``[N_k]`` valid keys (or ``None``: all).
        counted: bool ``[N_q]`` the trained rows whose sharpness is matched (valid, not all zero).
        gen: draws the random projections.
    """
    if form == RELU_CONCAT:
        rand = random_projection_attention(x, att.key_shape, 1, gen)  # query [1, N, 1] = u . x_i, key [1, 1, N_k] = v . x_j
        kv = kmask if kmask is not None else torch.ones(att.n_key, dtype=torch.bool, device=x.device)
        qv = qmask.to(x.device)
        a, b = concat_terms(rand.query[0, qv, 0], rand.key[0, 0, kv], att.query[0, qv, 0], att.key[0, 0, kv])
        query, key = torch.zeros_like(rand.query), torch.zeros_like(rand.key)
        query[0, qv, 0], key[0, 0, kv] = a.to(query), b.to(key)
        gap = abs(positive_share(a, b) - positive_share(att.query[0, qv, 0], att.key[0, 0, kv]))
        return PairwiseAttention("concatenation", query, key, att.query_shape, att.key_shape), gap
    # as the ctrl_* control: C' (embedded Gaussian, dot product), C (gaussian), C // 2 for other maps
    channels = att.query.shape[-1] if isinstance(att, PairwiseAttention) else max(x.shape[1] // 2, 1)
    rand = random_projection_attention(x, att.key_shape, channels, gen)
    if form == SIGNED_DOT:
        return PairwiseAttention("dot_product", rand.query, rand.key, att.query_shape, att.key_shape), math.nan
    target = row_entropies(att, kmask[None] if kmask is not None else None)
    target = torch.where(counted[None], target, math.nan)
    tau, gap = per_query_temperature(rand.query, rand.key, target, kmask)
    scaled = rand.query * tau.to(rand.query)[..., None]
    maps = PairwiseAttention("embedded_gaussian", scaled, rand.key, att.query_shape, att.key_shape)
    return maps, float(gap[counted[None].to(gap.device)].mean())
