"""Backbones with NL/GC blocks where published checkpoints put them."""
from .arch import BLOCK_TYPES, DEPTHS, POSITIONS, BlockSpec, ResNetArch
from .resnet import PluginBottleneck, ResNetBackbone, build_block, build_model
from .scene_net import SceneNet, SceneNetArch

#: architecture types of this project's checkpoint format: name -> (arch class, builder)
ARCH_TYPES = {
    "ResNet": (ResNetArch, lambda arch, truncate: build_model(arch, truncate=truncate)),
    "SceneNet": (SceneNetArch, lambda arch, truncate: SceneNet(arch, truncate=truncate).eval()),
}


def arch_type(arch: ResNetArch | SceneNetArch) -> str:
    """The registered type name of an architecture object."""
    for name, (cls, _) in ARCH_TYPES.items():
        if isinstance(arch, cls):
            return name
    raise TypeError(f"unregistered architecture type {type(arch).__name__}")


def arch_from_dict(data: dict) -> ResNetArch | SceneNetArch:
    """Rebuild an architecture from ``{'type': NAME, ...}`` (``ResNet`` when no type is given)."""
    name = data.get("type", "ResNet")
    if name not in ARCH_TYPES:
        raise ValueError(f"unknown architecture type {name!r}; known: {sorted(ARCH_TYPES)}")
    return ARCH_TYPES[name][0].from_dict({k: v for k, v in data.items() if k != "type"})


def build_arch(arch: ResNetArch | SceneNetArch, truncate: bool = True):
    """Build the model of any registered architecture (eval mode)."""
    return ARCH_TYPES[arch_type(arch)][1](arch, truncate)

__all__ = [
    "ARCH_TYPES",
    "SceneNet",
    "SceneNetArch",
    "arch_from_dict",
    "arch_type",
    "build_arch",
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
