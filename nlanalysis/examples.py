"""The built-in example: ResNet-50 with one NL block where the NL paper puts it, on a real photo.

Placement (Wang et al., arXiv 1711.07971, Mask R-CNN setting): one NL block right before the last
residual block of res4 (``layer3.5`` of a ResNet-50, so the last residual block becomes
``layer3.6``), one model per pairwise function; plus a GC model with ``context_block`` after conv3
of every residual block of res3-res4 (GCNet's placement, cut after res4).

No pretrained weights can be downloaded here, so the networks are **untrained**: torchvision's
default initialisation (seeded), with the blocks' output transforms initialised non-zero so the
``output`` statistic is defined. The numbers describe random projections of random features, the
control against which trained models are read -- not the paper's finding. Trained models come
from ``nlanalysis train`` and the shipped checkpoints.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import PAIRWISE_MODES
from .models import BlockSpec, ResNetArch, build_model
from .models.arch import DEPTHS

__all__ = ["EXAMPLE_VARIANTS", "example_arch", "example_model"]

EXAMPLE_VARIANTS = (*PAIRWISE_MODES, "gc")


def example_arch(variant: str) -> ResNetArch:
    """ResNet-50 (to res4) with the example's block(s) for ``variant`` (a mode, or ``gc``)."""
    if variant == "gc":
        blocks = [
            BlockSpec(f"layer{s}.{i}.context_block", "ContextBlock", 256 * 2 ** (s - 1), "after_conv3", {"ratio": 1 / 16})
            for s in (2, 3)
            for i in range(DEPTHS[50][s - 1])
        ]
    elif variant in PAIRWISE_MODES:
        blocks = [BlockSpec("layer3.5", "NonLocal2d", 1024, "standalone", {"mode": variant})]
    else:
        raise ValueError(f"unknown example variant {variant!r}; choose from {EXAMPLE_VARIANTS}")
    return ResNetArch(DEPTHS[50], blocks)


def example_model(variant: str, seed: int = 0) -> nn.Module:
    """The untrained example network for ``variant``, seeded, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(example_arch(variant))
    for module in model.modules():
        # default (Kaiming-uniform) init for every conv, so no block starts as the identity
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return model.eval()
