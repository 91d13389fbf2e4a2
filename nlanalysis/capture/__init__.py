"""Forward hooks that measure a model's attention sites without editing it: one :class:`Capture`
(:mod:`.core`) for every site kind, NL/GC blocks (:mod:`.blocks`) and ViT self-attention heads
(:mod:`.heads`, which answers the model's fused attention call from the measured softmax through
:mod:`.shared_softmax`)."""
from .blocks import BlockCapture, BlockRecord, Capture, capture, cell_centres, valid_cells
from .records import QueryMaps, SiteRecord

__all__ = ["BlockCapture", "BlockRecord", "Capture", "QueryMaps", "SiteRecord", "capture", "cell_centres", "valid_cells"]
