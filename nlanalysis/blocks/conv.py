"""1x1 convolution with an optional norm layer, key-compatible with mmcv's ``ConvModule``.

mmcv (https://github.com/open-mmlab/mmcv, ``mmcv/cnn/bricks/conv_module.py``) names the
convolution ``conv`` and the norm layer by its kind (``bn`` for BatchNorm, ``gn`` for GroupNorm),
and drops the conv bias when a norm follows. Checkpoints of NL blocks trained with mmcv
therefore carry keys such as ``conv_out.conv.weight`` and ``conv_out.bn.running_mean``; this
module reproduces exactly that layout so those state dicts load with ``strict=True``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ConvNorm", "norm_layer"]


def norm_layer(norm_cfg: dict[str, Any], num_features: int) -> tuple[str, nn.Module]:
    """Build ``(attribute name, layer)`` for an mmcv-style norm config.

    Args:
        norm_cfg: ``{"type": "BN"}``, ``{"type": "SyncBN"}`` or ``{"type": "GN", "num_groups": G}``.
        num_features: channels normalised.
    """
    cfg = dict(norm_cfg)
    kind = cfg.pop("type", None)
    cfg.pop("requires_grad", None)
    if kind in ("BN", "BN2d", "SyncBN"):
        return "bn", nn.BatchNorm2d(num_features, **cfg)
    if kind == "GN":
        if "num_groups" not in cfg:
            raise ValueError("norm_cfg of type 'GN' needs 'num_groups'")
        return "gn", nn.GroupNorm(num_channels=num_features, **cfg)
    raise ValueError(f"unsupported norm_cfg type {kind!r}: use 'BN', 'SyncBN' or 'GN'")


class ConvNorm(nn.Module):
    """``Conv2d(1x1)`` optionally followed by a norm layer and a ReLU.

    Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm_cfg: optional mmcv-style norm config; when given the conv has no bias.
        bias: conv bias; ``None`` means "only when there is no norm" (mmcv's ``'auto'``).
        relu: apply ReLU at the end (mmcv's ``act_cfg=dict(type='ReLU')``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_cfg: dict[str, Any] | None = None,
        bias: bool | None = None,
        relu: bool = False,
    ) -> None:
        super().__init__()
        if bias is None:
            bias = norm_cfg is None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)
        self.norm_name: str | None = None
        if norm_cfg is not None:
            self.norm_name, layer = norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, layer)
        self.relu = relu

    @property
    def norm(self) -> nn.Module | None:
        return None if self.norm_name is None else getattr(self, self.norm_name)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        return torch.relu(x) if self.relu else x
