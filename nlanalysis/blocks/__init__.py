"""Attention blocks: non-local (four pairwise functions), GC and simplified NL, and the locality control."""
from .attention import PAIRWISE_MODES, LazyAttention, PairwiseAttention, SharedAttention
from .context_block import ContextBlock
from .conv import ConvNorm
from .non_local import NonLocal2d
from .simplified_non_local import SimplifiedNonLocal2d
from .spatial_gaussian import SpatialGaussian2d

__all__ = [
    "PAIRWISE_MODES",
    "ContextBlock",
    "ConvNorm",
    "LazyAttention",
    "NonLocal2d",
    "PairwiseAttention",
    "SharedAttention",
    "SimplifiedNonLocal2d",
    "SpatialGaussian2d",
]
