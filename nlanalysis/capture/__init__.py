"""Forward hooks that measure a model's attention sites without editing it: NL/GC blocks
(:mod:`.blocks`) and ViT self-attention heads (:mod:`.heads`, which answers the model's fused
attention call from the measured softmax through :mod:`.shared_softmax`)."""
from .blocks import BlockRecord, Capture, capture, cell_centres, valid_cells
from .records import QueryMaps, SiteRecord

__all__ = ["BlockRecord", "Capture", "QueryMaps", "SiteRecord", "capture", "cell_centres", "valid_cells"]
