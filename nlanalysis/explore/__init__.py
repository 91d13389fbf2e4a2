"""``nlanalysis explore``: hover any query of any image and see its attention map.

:func:`explore` turns a result set (best made with ``nlanalysis extract ... --save-maps all``)
into one self-contained HTML page (:class:`Explorer`: ``save(path)``, shown inline in Jupyter):
an image strip with statistics, the map of the query under the mouse over the image, up to 4
pinned queries with the cosine distances of their maps, a site selector (NL block; ViT layer,
head and head mean) with a layers x heads grid of ``att``, the image's statistics at that site,
arrow keys to move the query. ``nlanalysis.explore(run)`` is :func:`explore` (the module is callable).
"""
from __future__ import annotations

import sys
import types
from typing import Any

from .data import page_data
from .page import Explorer, explore, render_page

__all__ = ["Explorer", "explore", "page_data", "render_page"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Explorer:
        return explore(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
