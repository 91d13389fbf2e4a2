"""Adapter for mmcv's ``NonLocal2d`` and ``ContextBlock`` instances.

mmcv (``mmcv/cnn/bricks/non_local.py``, ``context_block.py``) is what mmdetection,
mmsegmentation and mmaction2 build their NL/GC models from. Blocks are recognised by class
name, defining module and attributes; mmcv itself is never imported, so this adapter costs
nothing when mmcv is absent. The GCNet repository's ``ContextBlock`` (``mmdet/ops/gcb``) has the
same attributes and is read by the same code.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..blocks.attention import LazyAttention
from ..blocks.context_block import context_attention
from ..blocks.non_local import mmcv_style_attention
from .base import BlockAdapter, MapCall, UnsupportedBlockError
from .registry import register_adapter

_NL_ATTRS = ("mode", "g", "conv_out", "in_channels", "inter_channels", "sub_sample", "use_scale")
_GC_ATTRS = ("pooling_type", "channel_add_conv", "channel_mul_conv")
_MMCV_NL = "mmcv.cnn.bricks.non_local"  # where the forward and pairwise functions map_call knows are defined


def _is_ours(module: nn.Module) -> bool:
    return type(module).__module__.startswith("nlanalysis.")


@register_adapter
class MMCVAdapter(BlockAdapter):
    family = "mmcv"
    description = "mmcv NonLocal2d (4 modes, sub_sample) and ContextBlock; GCNet repository ContextBlock"

    def matches(self, module: nn.Module) -> bool:
        if _is_ours(module):
            return False
        name = type(module).__name__
        if name in ("NonLocal1d", "NonLocal2d", "NonLocal3d") and all(hasattr(module, a) for a in _NL_ATTRS):
            return True
        return name == "ContextBlock" and all(hasattr(module, a) for a in _GC_ATTRS)

    def attention(self, module: nn.Module, x: Tensor) -> LazyAttention:
        name = type(module).__name__
        if name in ("NonLocal1d", "NonLocal3d"):
            raise UnsupportedBlockError(f"mmcv {name} is not supported: only 2-D blocks (NonLocal2d) are analysed")
        if name == "ContextBlock":
            return context_attention(module, x)
        return mmcv_style_attention(module, x)

    def map_call(self, module: nn.Module) -> MapCall | None:
        """mmcv's own ``NonLocal2d`` forward (``mmcv/cnn/bricks/non_local.py``, not a subclass that overrides
        it): ``pairwise_weight.softmax(dim=-1)`` (softmax modes), then ``torch.matmul(pairwise_weight, g_x)``."""
        if type(module).__name__ != "NonLocal2d" or not hasattr(module, "mode"):
            return None
        ours = (getattr(type(module), name, None) for name in ("forward", module.mode))
        if any(getattr(f, "__module__", None) != _MMCV_NL for f in ours):
            return None
        return MapCall("softmax" if module.mode in ("gaussian", "embedded_gaussian") else "matmul", module.mode, module.g)

    def describe(self, module: nn.Module) -> dict[str, Any]:
        info = super().describe(module)
        if type(module).__name__ == "ContextBlock":
            channels = getattr(module, "in_channels", getattr(module, "inplanes", None))
            info.update(mode="gc", in_channels=channels, pooling_type=module.pooling_type)
        else:
            info.update(
                mode=module.mode,
                in_channels=module.in_channels,
                inter_channels=module.inter_channels,
                sub_sample=module.sub_sample,
            )
        return info
