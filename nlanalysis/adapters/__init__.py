"""Adapters: per-query attention of any supported block family, from the block's own weights.

Importing this package registers the built-in adapters (one module per family).
"""
from . import mmcv, nlanalysis_blocks  # noqa: F401  (registration side effects)
from . import alexhex7  # noqa: F401
from . import danet  # noqa: F401  (DANet position attention)
from . import timm  # noqa: F401
from . import vit  # noqa: F401  (ViT self-attention: timm, torch MHA, Hugging Face)
from .base import BlockAdapter, UnsupportedBlockError
from . import registry
from .registry import (
    BlockInfo,
    attention,
    attention_maps,
    check_features,
    find_adapter,
    get_adapter,
    list_adapters,
    list_blocks,
    register_adapter,
)

__all__ = ["BlockAdapter", "UnsupportedBlockError", *registry.__all__]  # the registry's names, re-exported
