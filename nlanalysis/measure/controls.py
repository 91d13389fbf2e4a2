"""Controls that make raw attention distances interpretable.

A mean pairwise distance between attention maps means little alone: it depends on how sharp the
maps are and on how varied the features are. Beside each trained block the analysis therefore
reports the same statistics for

* **random projections at matched sharpness**: the block's own input features with random
  query/key projections in place of the trained ``theta``/``phi`` (Gaussian weights, seeded),
  ``softmax(tau * q_i . k_j)`` with the temperature ``tau`` chosen by bisection so that the mean
  normalised entropy of the maps equals the trained block's. What distance would maps of the same
  sharpness have if training had learned nothing about *which* keys matter?
* **uniform attention**: analytic, no computation: ``att = 0``, ``att_jsd = 0``, normalised
  entropy 1, and ``att_own_object = own_object_share``.

The random control needs a defined entropy, i.e. non-negative maps; for signed (dot-product) maps
it is not computed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..blocks.attention import LazyAttention, PairwiseAttention

__all__ = ["match_temperature", "mean_entropy", "random_projection_attention"]


def mean_entropy(att: LazyAttention, index: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Mean normalised entropy ``[B]`` of the rows ``index`` (non-zero rows only)."""
    rows = att.take(index).double()
    if key_mask is not None:
        rows = rows * key_mask[:, None, :]
    total = rows.sum(-1)
    ok = total > 0
    safe = torch.where(ok, total, 1.0)
    entropy = torch.log(safe) - torch.xlogy(rows, rows).sum(-1) / safe
    n_key = key_mask.sum(-1).double() if key_mask is not None else torch.full_like(total[:, 0], rows.shape[-1])
    entropy = entropy / torch.log(n_key.clamp(min=2))[:, None]
    return torch.where(ok, entropy, 0.0).sum(1) / ok.sum(1).clamp(min=1)


def random_projection_attention(
    x: Tensor, key_shape: tuple[int, int], channels: int, generator: torch.Generator, scale: float = 1.0
) -> PairwiseAttention:
    """Softmax attention from random projections of ``x`` ``[B, C, H, W]``.

    Queries ``W_q x_i``, keys ``W_k x_j`` with ``W ~ N(0, 1/C)`` of ``channels`` outputs; keys are
    2x2 max-pooled when ``key_shape`` is half the query grid (as sub-sampled NL blocks do).
    """
    b, c, h, w = x.shape
    wq = torch.randn(channels, c, generator=generator).to(x) / math.sqrt(c)
    wk = torch.randn(channels, c, generator=generator).to(x) / math.sqrt(c)
    keys = x
    if tuple(key_shape) != (h, w):
        if tuple(key_shape) != (h // 2, w // 2):
            raise ValueError(f"random control: cannot build keys of shape {key_shape} from a {h}x{w} grid")
        keys = F.max_pool2d(x, 2)
    query = torch.einsum("dc,bcn->bnd", wq, x.flatten(2))
    key = torch.einsum("dc,bcn->bdn", wk, keys.flatten(2))
    return PairwiseAttention("embedded_gaussian", query, key, (h, w), tuple(key_shape), scale=scale)


def match_temperature(
    control: PairwiseAttention,
    target: Tensor,
    index: Tensor,
    key_mask: Tensor | None = None,
    iterations: int = 40,
) -> list[PairwiseAttention]:
    """Per image, the control with its logit scale set so its mean entropy (over rows ``index``)
    equals ``target[b]``; bisection on ``log(scale)`` (entropy falls as the scale grows)."""
    out = []
    for b in range(control.batch_size):
        one = control.image(b)
        mask = key_mask[b : b + 1] if key_mask is not None else None
        lo, hi = -12.0, 12.0
        for _ in range(iterations):
            mid = (lo + hi) / 2
            one.scale = math.exp(mid)
            if mean_entropy(one, index, mask)[0] > target[b]:
                lo = mid
            else:
                hi = mid
        one.scale = math.exp((lo + hi) / 2)
        out.append(one)
    return out
