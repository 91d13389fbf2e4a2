"""The trained reference variants: where each block sits in :class:`~nlanalysis.models.SceneNet`.

One block at ``layer1.1`` (14 x 14 positions on a 112 x 112 scene, right before the stage's last
residual block, the NL paper's placement) for each of the four pairwise functions of the NL paper,
the simplified NL block and the GC block of the GCNet paper; a baseline without a block; and
an embedded-Gaussian variant with a second NL block at the coarser ``layer2.1`` (7 x 7).

:data:`CONTROL_VARIANTS` (issue 16's controls, not in the default job nor shipped) put at the same
place the blocks that answer "does a GC block do more than a pooled FC with a residual?" -- an SE
block and a global-average-pool -> FC -> add residual block, both with one context vector for
every position and no map -- and DANet's position attention module (query-dependent maps, the
published counter-evidence). Sizes at ``C = 64`` (extra parameters over the baseline): GC 2,225 (``C / 4`` = 16
hidden), SE 2,128 (16 hidden), pooled FC 4,160 (``C -> C``, no bottleneck), SNL 4,225, DANet PAM 5,201 (query/key
``C / 8`` = 8, value ``C``), the NL blocks 8,352-8,416. Every block but SE starts as the identity (its last
transform at zero); SE sits on the main path as in Hu et al. and starts by multiplying the signal by gates near 0.5.
"""
from __future__ import annotations

import functools

from ..blocks import PAIRWISE_MODES
from ..models import BlockSpec, SceneNetArch

__all__ = ["ALL_VARIANTS", "CONTROL_VARIANTS", "VARIANTS", "block_parameters", "variant_arch"]

WIDTHS = (32, 64, 96)


def _nl(name: str, channels: int, mode: str) -> BlockSpec:
    return BlockSpec(name, "NonLocal2d", channels, "standalone", {"mode": mode})


VARIANTS: dict[str, list[BlockSpec]] = {
    "baseline": [],
    **{mode: [_nl("layer1.1", WIDTHS[1], mode)] for mode in PAIRWISE_MODES},
    "snl": [BlockSpec("layer1.1", "SimplifiedNonLocal2d", WIDTHS[1], "standalone")],
    "gc": [BlockSpec("layer1.1", "ContextBlock", WIDTHS[1], "standalone", {"ratio": 1 / 4})],
    "embedded_gaussian_x2": [_nl("layer1.1", WIDTHS[1], "embedded_gaussian"), _nl("layer2.1", WIDTHS[2], "embedded_gaussian")],
}


def _at_layer1(block_type: str, **options) -> list[BlockSpec]:
    return [BlockSpec("layer1.1", block_type, WIDTHS[1], "standalone", options)]


CONTROL_VARIANTS: dict[str, list[BlockSpec]] = {
    "se": _at_layer1("SqueezeExcitation2d", ratio=1 / 4),
    "pooled_fc": _at_layer1("PooledResidual2d"),
    "danet_pam": _at_layer1("PositionAttention2d"),
}

#: every variant ``nlanalysis train --variants`` knows
ALL_VARIANTS: dict[str, list[BlockSpec]] = {**VARIANTS, **CONTROL_VARIANTS}


def variant_arch(variant: str, num_classes: int = 11, *, image_shortcut: bool = False) -> SceneNetArch:
    """The :class:`SceneNetArch` of a named variant (``image_shortcut``: see :class:`SceneNetArch`)."""
    if variant not in ALL_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(ALL_VARIANTS)}")
    blocks = [BlockSpec(**vars(b)) for b in ALL_VARIANTS[variant]]
    return SceneNetArch(widths=WIDTHS, num_classes=num_classes, blocks=blocks, image_shortcut=image_shortcut)


@functools.cache
def block_parameters(variant: str) -> int:
    """The parameters a variant's blocks add to the baseline's :class:`~nlanalysis.models.SceneNet` (counted on a
    freshly built model)."""
    from ..models.scene_net import SceneNet

    def count(name: str) -> int:
        return sum(p.numel() for p in SceneNet(variant_arch(name)).parameters())

    return count(variant) - count("baseline")
