"""Simplified non-local (SNL) block of the GCNet paper.

Paper: Cao et al., arXiv 1904.11492, Sec. 3.2 / Fig. 3(b): since trained NL maps hardly depend
on the query, compute one query-independent map and share it,
``z_i = x_i + W_v sum_j softmax_j(W_k x_j) x_j``. The value transform ``W_v`` is a full
``C -> C`` 1x1 conv applied after pooling (the paper moves it out of the sum), optionally
followed by a norm.

Keys: ``conv_mask.*`` (``W_k``, ``C -> 1``) and ``conv_value.*`` (``W_v``); this layout is this
project's own (the GCNet repository ships no SNL checkpoints).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import SharedAttention
from .non_local import _check_input

__all__ = ["SimplifiedNonLocal2d"]


class SimplifiedNonLocal2d(nn.Module):
    """SNL block ``z = x + W_v(sum_j softmax_j(W_k x_j) x_j)`` (broadcast over positions).

    Shapes: ``x`` ``[B, C, H, W]`` -> ``[B, C, H, W]``; attention one ``[B, H*W]`` map.

    Args:
        in_channels: channels ``C``.
        zeros_init: initialise ``W_v`` to zero so the block starts as identity.
    """

    _abbr_ = "snl_block"

    def __init__(self, in_channels: int, zeros_init: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.conv_value = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        if zeros_init:
            nn.init.zeros_(self.conv_value.weight)
        nn.init.zeros_(self.conv_value.bias)

    def attention(self, x: Tensor) -> SharedAttention:
        """The one map ``[B, H*W]`` shared by every query, as lazy rows."""
        _check_input(x, self.in_channels)
        _, _, h, w = x.shape
        return SharedAttention(self.conv_mask(x).flatten(1).softmax(dim=-1), (h, w))

    def attention_maps(self, x: Tensor) -> Tensor:
        """``[B, H*W, H*W]``: the shared map repeated for every query."""
        return self.attention(x).full()

    def forward(self, x: Tensor) -> Tensor:
        weights = self.attention(x).weights
        context = torch.einsum("bcn,bn->bc", x.flatten(2), weights)[..., None, None]
        return x + self.conv_value(context)
