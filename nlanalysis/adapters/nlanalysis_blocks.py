"""Adapter for this project's own blocks (:mod:`nlanalysis.blocks`): they know their maps."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..blocks import ContextBlock, LazyAttention, NonLocal2d, SimplifiedNonLocal2d, SpatialGaussian2d
from .base import BlockAdapter, MapCall
from .registry import register_adapter

_BLOCKS = (NonLocal2d, ContextBlock, SimplifiedNonLocal2d)
_KNOWN = {name: {getattr(c, name) for c in (*_BLOCKS, SpatialGaussian2d)} for name in ("forward", "attention")}


@register_adapter
class NLAnalysisAdapter(BlockAdapter):
    family = "nlanalysis"
    description = "nlanalysis.blocks NonLocal2d (4 modes), ContextBlock, SimplifiedNonLocal2d, SpatialGaussian2d"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, _BLOCKS)

    def attention(self, module: nn.Module, x: Tensor) -> LazyAttention:
        return module.attention(x)

    def map_call(self, module: nn.Module) -> MapCall | None:
        """:class:`NonLocal2d`'s own forward: the fused attention call (softmax modes) or ``maps @ g(x)``."""
        if not isinstance(module, NonLocal2d) or type(module).forward is not NonLocal2d.forward:
            return None
        return MapCall("sdpa" if module.mode in ("gaussian", "embedded_gaussian") else "matmul", module.mode, module.g)

    def overridden(self, module: nn.Module) -> str | None:
        own = [name for name, known in _KNOWN.items() if getattr(type(module), name, None) not in known]
        return f"{type(module).__name__} overrides {' and '.join(own)}" if own else None

    def describe(self, module: nn.Module) -> dict[str, Any]:
        info = super().describe(module)
        info["in_channels"] = module.in_channels
        if isinstance(module, SpatialGaussian2d):  # an NL block's layout, maps by spatial distance
            info.update(mode="spatial_gaussian", inter_channels=module.inter_channels, sigma=module.sigma)
        elif isinstance(module, NonLocal2d):
            info.update(mode=module.mode, inter_channels=module.inter_channels, sub_sample=module.sub_sample)
        elif isinstance(module, ContextBlock):
            info.update(mode="gc", pooling_type=module.pooling_type, fusion_types=list(module.fusion_types))
        else:
            info.update(mode="snl")
        return info
