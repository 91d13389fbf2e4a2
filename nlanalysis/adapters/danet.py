"""Adapter for DANet's position attention module (Fu et al., CVPR 2019, arXiv 1809.02983).

Covers the DANet repository's ``PAM_Module`` (https://github.com/junfu1115/DANet,
``encoding/nn/da_att.py``; recognised by class name and attributes, the repository is never
imported) and this project's key-compatible
:class:`~nlanalysis.blocks.position_attention.PositionAttention2d`. Row i over keys j is
``softmax_j(query_conv(x)_i . key_conv(x)_j)`` (no scale); the output is
``x + gamma * (A value_conv(x))``, so the context term is ``z - x``, the :class:`BlockAdapter`
default. Not covered: DANet's channel attention ``CAM_Module`` (a ``C x C`` map over channels,
no map over positions) and mmsegmentation's ``DAHead`` ``PAM`` (another layout).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..blocks.attention import LazyAttention
from ..blocks.position_attention import PositionAttention2d, position_attention
from .base import BlockAdapter
from .registry import register_adapter

__all__ = ["DANetAdapter"]

_ATTRS = ("query_conv", "key_conv", "value_conv", "gamma")


@register_adapter
class DANetAdapter(BlockAdapter):
    family = "danet"
    description = "DANet PAM_Module (position attention, junfu1115/DANet) and nlanalysis PositionAttention2d"

    def matches(self, module: nn.Module) -> bool:
        if isinstance(module, PositionAttention2d):
            return True
        return type(module).__name__ == "PAM_Module" and all(hasattr(module, a) for a in _ATTRS)

    def attention(self, module: nn.Module, x: Tensor) -> LazyAttention:
        return position_attention(module, x)

    def describe(self, module: nn.Module) -> dict[str, Any]:
        conv, gamma = module.query_conv, module.gamma.detach().reshape(-1)[0].item()
        return {**super().describe(module), "mode": "position_attention", "in_channels": conv.in_channels,
                "inter_channels": conv.out_channels, "sub_sample": False, "gamma": gamma}  # fmt: skip
