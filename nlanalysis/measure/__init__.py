"""The statistics of an attention site on a batch: NL/GC blocks (:mod:`.blocks`), ViT heads
(:mod:`.heads`, with the native kernels of :mod:`nlanalysis.kernels`), and the random-projection
controls at matched sharpness (:mod:`.controls`, :mod:`.head_controls`)."""
from .blocks import BlockStats, key_labels, key_mask, measure_block

__all__ = ["BlockStats", "key_labels", "key_mask", "measure_block"]
