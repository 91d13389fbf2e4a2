"""nlanalysis: do the attention maps of non-local blocks depend on the query?

The GCNet analysis (Cao et al., arXiv 1904.11492, Sec. 3) for any PyTorch model with non-local,
global-context or simplified-NL blocks:

>>> import nlanalysis
>>> maps = nlanalysis.attention_maps(block, x)           # [B, N_query, N_key]
>>> with nlanalysis.capture(model) as cap:              # hooks on every NL/GC block
...     model(images)
>>> cap.records[0].stats.att                            # mean pairwise cosine distance per image
>>> table = nlanalysis.analyze(model, images)           # one row per (image, block); a ViT: (image, layer, head)
"""
from .adapters import BlockAdapter, attention, attention_maps, list_adapters, list_blocks, register_adapter
from .analyze import analyze
from .capture.blocks import BlockRecord, Capture, capture
from .capture.records import SiteRecord
from .extract import load_run
from . import explore  # nlanalysis.explore(run): the page viewer of a result set (a callable module)
from .measure.blocks import BlockStats, measure_block
from .metrics import mean_pairwise_cosine_distance

__version__ = "0.1.0"


def __getattr__(name: str):
    """``nlanalysis.vit`` after a plain ``import nlanalysis``, imported on first use (it needs no timm or onnx either)."""
    if name == "vit":
        import importlib

        return importlib.import_module(".vit", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BlockAdapter",
    "BlockRecord",
    "BlockStats",
    "Capture",
    "SiteRecord",
    "analyze",
    "attention",
    "attention_maps",
    "capture",
    "explore",
    "list_adapters",
    "list_blocks",
    "load_run",
    "mean_pairwise_cosine_distance",
    "measure_block",
    "register_adapter",
]
