"""The trained reference variants: where each block sits in :class:`~nlanalysis.models.SceneNet`.

One block at ``layer1.1`` (14 x 14 positions on a 112 x 112 scene, right before the stage's last
residual block, the NL paper's placement) for each of the four pairwise functions of the NL paper,
the simplified NL block and the GC block of the GCNet paper; a baseline without a block; and
an embedded-Gaussian variant with a second NL block at the coarser ``layer2.1`` (7 x 7).
"""
from __future__ import annotations

from ..blocks import PAIRWISE_MODES
from ..models import BlockSpec, SceneNetArch

__all__ = ["VARIANTS", "variant_arch"]

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


def variant_arch(variant: str, num_classes: int = 11) -> SceneNetArch:
    """The :class:`SceneNetArch` of a named variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return SceneNetArch(widths=WIDTHS, num_classes=num_classes, blocks=[BlockSpec(**vars(b)) for b in VARIANTS[variant]])
