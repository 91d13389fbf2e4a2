"""Adapter for timm's ``NonLocalAttn`` (``timm/layers/non_local_attn.py``).

Original code: https://github.com/huggingface/pytorch-image-models (``timm.layers.NonLocalAttn``,
earlier ``timm.models.layers``; unchanged math since it was added), adapted there from
BA-Transform/BAT-Image-Classification. Used by timm models built with ``attn_layer='nl'``.

The block is an embedded-Gaussian NL block without key sub-sampling:

* ``t``, ``p``, ``g``: 1x1 convs (with bias) ``C -> C'``, ``C' = make_divisible(C / 8, 8)``;
* row i over keys j: ``softmax_j(t_i . p_j * scale)`` with ``scale = C ** -0.5`` -- the *input*
  channels ``C``, not ``C'`` as in mmcv -- or ``1.0`` with ``use_scale=False``; the module stores
  it as the float attribute ``scale``, which is what this adapter reads;
* output ``norm(z(y)) + x`` (``z``: 1x1 conv ``C' -> C``, ``norm``: BatchNorm2d), so the context
  term is ``norm(z(y)) = output - x``, the :class:`BlockAdapter` default.

Not covered: ``BatNonLocalAttn`` in the same file. Its ``BilinearAttnTransform`` mixes rows and
columns with per-image, per-group ``block_size x block_size`` matrices (``y = P x Q``), not a
softmax over all key positions per query, so it has no pairwise map to compare; this adapter
doesn't match it. timm's ViT ``Attention`` is a different family too.
"""
from __future__ import annotations

from numbers import Real
from typing import Any

from torch import Tensor, nn

from ..blocks.attention import LazyAttention
from ..blocks.non_local import _check_input, pairwise_attention
from .base import BlockAdapter, UnsupportedBlockError, class_path
from .registry import register_adapter

__all__ = ["TimmAdapter"]

_ATTRS = ("t", "p", "g", "z", "norm", "scale")


@register_adapter
class TimmAdapter(BlockAdapter):
    family = "timm"
    description = "timm NonLocalAttn (embedded Gaussian, scale C**-0.5, no sub-sampling)"

    def matches(self, module: nn.Module) -> bool:
        return type(module).__name__ == "NonLocalAttn" and all(hasattr(module, a) for a in _ATTRS)

    def attention(self, module: nn.Module, x: Tensor) -> LazyAttention:
        scale = module.scale
        if not isinstance(scale, Real):
            raise UnsupportedBlockError(
                f"timm NonLocalAttn {class_path(module)}: expected a float "
                f"'scale' attribute (in_channels ** -0.5 or 1.0), got {type(scale).__name__}"
            )
        _check_input(x, module.t.in_channels)
        return pairwise_attention("embedded_gaussian", module.t(x), module.p(x), float(scale))

    def describe(self, module: nn.Module) -> dict[str, Any]:
        info = super().describe(module)
        info.update(
            mode="embedded_gaussian",
            in_channels=module.t.in_channels,
            inter_channels=module.t.out_channels,
            sub_sample=False,
            scale=float(module.scale),
        )
        return info
