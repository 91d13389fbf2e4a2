"""A non-local block whose maps depend only on where the query and key are: the locality control.

``p_ij = softmax_j(-||c_i - c_j||^2 / (2 sigma^2))`` over the block's grid (``c``: cell centres in cell
units), with an NL block's values and output transform: ``z = x + W_z(sum_j p_ij g(x_j))``. Every query's
map is centred on the query, so the maps are query-dependent by construction, and blind by construction to
everything the features carry (class, colour, object identity): a negative for statistics that should read
object- or group-specific context only where a block has it (``reports/controls/PLAN.md``, session 15).

It is a :class:`~nlanalysis.blocks.NonLocal2d` (embedded-Gaussian layout, same ``g`` and ``conv_out``, so a
trained NL block's weights load into it; ``theta`` and ``phi`` are kept for that but unused) whose maps come
from the positions: the logit ``-||c_i - c_j||^2 / (2 sigma^2)`` equals ``q_i . k_j`` with ``q_i = (y_i, x_i,
1)`` and ``k_j = (y_j, x_j, -(y_j^2 + x_j^2) / 2) / sigma^2`` up to a term of the query alone, which the
softmax over keys removes (coordinates centred on the grid: float32 loses little to cancellation); so its maps
are :class:`~nlanalysis.blocks.attention.PairwiseAttention` and its forward is the NL block's fused attention call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .attention import PairwiseAttention
from .non_local import NonLocal2d, _check_input

__all__ = ["SpatialGaussian2d"]


class SpatialGaussian2d(NonLocal2d):
    """``z = x + W_z(sum_j p_ij g(x_j))`` with ``p_ij = softmax_j(-||c_i - c_j||^2 / (2 sigma^2))``.

    Shapes: ``x`` ``[B, C, H, W]`` -> ``[B, C, H, W]``; attention ``[B, H*W, H*W]`` (the same for every image).

    Args:
        in_channels: channels ``C``; ``g`` has ``C // reduction``, as :class:`NonLocal2d`.
        sigma: the maps' width, in cells (> 0).
        reduction: as :class:`NonLocal2d`.
    """

    _abbr_ = "spatial_gaussian"

    def __init__(self, in_channels: int, sigma: float = 1.0, reduction: int = 2) -> None:
        super().__init__(in_channels, reduction=reduction, mode="embedded_gaussian")
        sigma = float(sigma)
        if not sigma > 0:
            raise ValueError(f"SpatialGaussian2d sigma must be > 0, got {sigma}")
        self.sigma = sigma  # not in the state dict: a checkpoint's architecture records it

    def attention(self, x: Tensor) -> PairwiseAttention:
        """The maps over ``x``'s grid ``[B, H*W, H*W]`` (rows on demand), from the positions alone."""
        _check_input(x, self.in_channels)
        b, _, h, w = x.shape
        y, xx = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device), torch.arange(w, dtype=x.dtype, device=x.device),
                               indexing="ij")  # fmt: skip
        y, xx = y.flatten() - (h - 1) / 2, xx.flatten() - (w - 1) / 2  # centred: small terms, little float32 cancellation
        query = torch.stack([y, xx, torch.ones_like(y)], -1)  # [N, 3]
        key = torch.stack([y, xx, -(y * y + xx * xx) / 2], 0) / self.sigma**2  # [3, N]
        query, key = query.expand(b, -1, -1).contiguous(), key.expand(b, -1, -1).contiguous()
        return PairwiseAttention("embedded_gaussian", query, key, (h, w), (h, w), scale=1.0)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, sigma={self.sigma:g}"
