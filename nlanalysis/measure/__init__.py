"""The statistics of an attention site on a batch (:class:`.stats.SiteStats`): NL/GC blocks
(:mod:`.blocks`), ViT heads (:mod:`.heads`), with the native kernels of :mod:`nlanalysis.kernels`
for softmax maps (:mod:`.head_rows`, :mod:`.block_rows`), and the random-projection controls at
matched sharpness (:mod:`.controls`, :mod:`.head_controls`)."""
from .blocks import BlockStats, key_labels, key_mask, measure_block
from .stats import SiteStats

__all__ = ["BlockStats", "SiteStats", "key_labels", "key_mask", "measure_block"]
