"""Global Context (GC) block.

Paper: Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
arXiv 1904.11492 (Sec. 4). Layout follows mmcv's ``ContextBlock``
(``mmcv/cnn/bricks/context_block.py``) and the GCNet repository's ``mmdet/ops/gcb``: keys
``conv_mask.*``, ``channel_add_conv.{0,1,3}.*`` and ``channel_mul_conv.{0,1,3}.*``, so their
state dicts load here with ``strict=True``.

Its attention is one query-independent map ``softmax_j(W_k x_j)`` (``pooling_type='att'``) or
uniform average pooling (``'avg'``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .attention import SharedAttention
from .non_local import _check_input

__all__ = ["ContextBlock", "context_attention"]

FUSION_TYPES = ("channel_add", "channel_mul")


def _transform(channels: int, planes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, planes, kernel_size=1),
        nn.LayerNorm([planes, 1, 1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, channels, kernel_size=1),
    )


class ContextBlock(nn.Module):
    """GC block: ``z = x * sigmoid(T_mul(c)) + T_add(c)`` with ``c = sum_j a_j x_j``.

    Shapes: ``x`` ``[B, C, H, W]`` -> ``[B, C, H, W]``; attention one ``[B, H*W]`` map.

    Args:
        in_channels: channels ``C``.
        ratio: bottleneck ratio; the transforms have ``int(C * ratio)`` hidden channels.
        pooling_type: ``'att'`` (softmax of a 1x1 conv) or ``'avg'`` (uniform).
        fusion_types: any of ``'channel_add'``, ``'channel_mul'``.
    """

    _abbr_ = "context_block"

    def __init__(
        self,
        in_channels: int,
        ratio: float,
        pooling_type: str = "att",
        fusion_types: Sequence[str] = ("channel_add",),
    ) -> None:
        super().__init__()
        if pooling_type not in ("att", "avg"):
            raise ValueError(f"pooling_type must be 'att' or 'avg', got {pooling_type!r}")
        fusion_types = tuple(fusion_types)
        if not fusion_types or any(f not in FUSION_TYPES for f in fusion_types):
            raise ValueError(f"fusion_types must be a non-empty subset of {FUSION_TYPES}, got {fusion_types!r}")
        self.in_channels = in_channels
        self.ratio = ratio
        self.planes = int(in_channels * ratio)
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.channel_add_conv = _transform(in_channels, self.planes) if "channel_add" in fusion_types else None
        self.channel_mul_conv = _transform(in_channels, self.planes) if "channel_mul" in fusion_types else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv's init: Kaiming (fan_in) mask conv, last conv of each transform zero."""
        if self.pooling_type == "att":
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is not None:
                nn.init.zeros_(transform[-1].weight)
                nn.init.zeros_(transform[-1].bias)

    def attention(self, x: Tensor) -> SharedAttention:
        """The one map ``[B, H*W]`` every query shares, as lazy per-query rows."""
        return context_attention(self, x)

    def attention_maps(self, x: Tensor) -> Tensor:
        """``[B, H*W, H*W]``: the shared map repeated for every query."""
        return self.attention(x).full()

    def forward(self, x: Tensor) -> Tensor:
        weights = self.attention(x).weights  # [B, N]
        context = torch.einsum("bcn,bn->bc", x.flatten(2), weights)[..., None, None]
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out


def context_attention(block: nn.Module, x: Tensor) -> SharedAttention:
    """The shared map of any block laid out like mmcv's ``ContextBlock``.

    Reads only ``pooling_type``, ``conv_mask`` and the channel count (``in_channels``, or
    ``inplanes`` in the GCNet repository), so it serves this project's block and mmcv's alike.
    """
    _check_input(x, getattr(block, "in_channels", getattr(block, "inplanes", x.shape[1])))
    b, _, h, w = x.shape
    if block.pooling_type == "att":
        weights = block.conv_mask(x).flatten(1).softmax(dim=-1)
    else:
        weights = x.new_full((b, h * w), 1.0 / (h * w))
    return SharedAttention(weights, (h, w))
