"""Backbones with NL/GC blocks where published checkpoints put them."""
from .arch import BLOCK_TYPES, DEPTHS, POSITIONS, BlockSpec, ResNetArch
from .resnet import PluginBottleneck, ResNetBackbone, build_block, build_model

__all__ = [
    "BLOCK_TYPES",
    "DEPTHS",
    "POSITIONS",
    "BlockSpec",
    "PluginBottleneck",
    "ResNetArch",
    "ResNetBackbone",
    "build_block",
    "build_model",
]
