"""DANet's position attention module (PAM).

Paper: Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019, arXiv 1809.02983
(Sec. 3.2). Original code: https://github.com/junfu1115/DANet, ``PAM_Module`` in
``encoding/nn/da_att.py`` (earlier ``encoding/nn/attention.py``), used as ``DANetHead.sa``, so
the repository's checkpoints hold it under ``head.sa.*`` (and ``auxlayer.sa.*`` where the head
has an auxiliary DANet head). Keys here are the same (``query_conv``, ``key_conv``,
``value_conv``: 1x1 convs with bias; ``gamma``: a scalar), so those state dicts load with
``strict=True``.

The map is an NL block's embedded Gaussian without a scale: row i over keys j is
``softmax_j(q_i . k_j)`` with ``q = query_conv(x)``, ``k = key_conv(x)`` (``C -> C // 8``);
the output is ``z = x + gamma * sum_j A_ij v_j`` with ``v = value_conv(x)`` (``C -> C``) and
``gamma`` zero at initialisation, so the block starts as the identity. DANet's paper shows maps
that follow same-class regions: published counter-evidence to GCNet's query-independence.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import PairwiseAttention
from .non_local import _check_input, pairwise_attention

__all__ = ["PositionAttention2d", "position_attention"]


class PositionAttention2d(nn.Module):
    """PAM ``z = x + gamma * (A v)`` with ``A = softmax(q^T k)`` over keys.

    Shapes: ``x`` ``[B, C, H, W]`` -> ``[B, C, H, W]``; attention ``[B, H*W, H*W]``.

    Args:
        in_channels: channels ``C``; query and key have ``C // 8`` (DANet's ``in_dim // 8``).
    """

    _abbr_ = "pam"

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 8:
            raise ValueError(f"PositionAttention2d needs in_channels >= 8 (query/key have C // 8), got {in_channels}")
        self.in_channels = in_channels
        self.inter_channels = in_channels // 8
        self.query_conv = nn.Conv2d(in_channels, self.inter_channels, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, self.inter_channels, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: Tensor) -> PairwiseAttention:
        """Lazy maps ``[B, H*W, H*W]`` (rows on demand)."""
        return position_attention(self, x)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        maps = self.attention(x).full()  # [B, N, N]
        out = torch.bmm(self.value_conv(x).flatten(2), maps.transpose(1, 2))
        return x + self.gamma * out.reshape(b, c, h, w)


def position_attention(block: nn.Module, x: Tensor) -> PairwiseAttention:
    """The maps of any block laid out like DANet's ``PAM_Module`` (this project's or the repository's).

    Reads only ``query_conv`` and ``key_conv``; the logits are unscaled.
    """
    _check_input(x, block.query_conv.in_channels)
    return pairwise_attention("embedded_gaussian", block.query_conv(x), block.key_conv(x), scale=1.0)
