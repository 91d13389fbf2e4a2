"""torchvision's ``VisionTransformer`` (``torchvision.models.vision_transformer``: ``vit_b_16`` ...) in timm names.

torchvision's encoder block is timm's: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(x))``, exact GELU, LayerNorm eps
1e-6, a class token and a position table with its class entry. Only the names differ: ``class_token``,
``conv_proj``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_N.{ln_1, self_attention.in_proj_weight /
in_proj_bias (query, key, value stacked, as timm's qkv), self_attention.out_proj, ln_2, mlp.0 / mlp.3}`` (before
torchvision 0.14 ``mlp.linear_1`` / ``mlp.linear_2``), ``encoder.ln``; the classifier ``heads.*`` is dropped. A
torchvision ViT does not say its head count (see :func:`nlanalysis.checkpoints.vit.models.spec_of`), and has no
run-time resize of its table (its ``interpolate_embeddings`` helper for fine-tuning uses ``align_corners=True``,
which is not reproduced: the table is resized bicubic, ``align_corners=False``, without antialias).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from .convert import CheckpointError, ConvertedViT, _split_prefix, _Taken

__all__ = ["torchvision_to_timm"]

_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_BLOCK = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
    "self_attention.in_proj_weight": "attn.qkv.weight", "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight", "self_attention.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias", "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias",
    "mlp.linear_1.weight": "mlp.fc1.weight", "mlp.linear_1.bias": "mlp.fc1.bias",
    "mlp.linear_2.weight": "mlp.fc2.weight", "mlp.linear_2.bias": "mlp.fc2.bias",
}  # fmt: skip
_TOP = {
    "class_token": "cls_token", "conv_proj.weight": "patch_embed.proj.weight", "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.pos_embedding": "pos_embed", "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
}  # fmt: skip


def torchvision_to_timm(sd: Mapping[str, Tensor], source: str = "state dict") -> ConvertedViT:
    """torchvision ``VisionTransformer`` names -> timm names.

    Raises:
        CheckpointError: a convolutional stem (``conv_proj.conv_*``, torchvision's ``conv_stem_configs``), which the
            rebuild does not make.
    """
    prefix, sd = _split_prefix(sd)
    take = _Taken(prefix, source)
    out: dict[str, Tensor] = {}
    dropped = []
    for key, value in sd.items():
        m = _LAYER.match(key)
        name = _TOP.get(key) or (f"blocks.{m.group(1)}.{_BLOCK[m.group(2)]}" if m and m.group(2) in _BLOCK else None)
        if name is not None:
            out[name] = take(key, value, name)
        elif key.startswith("conv_proj."):
            raise CheckpointError(f"{source}: {prefix}{key}: a convolutional stem (torchvision conv_stem_configs) is not supported")
        else:
            dropped.append(key)  # heads.*; anything else is missed by the strict load, naming it
    return ConvertedViT(out, source, "torchvision", dropped=dropped, sources=take.sources, origin=take.origin,
                        resize_as="align_corners=False; torchvision's interpolate_embeddings uses align_corners=True")  # fmt: skip
