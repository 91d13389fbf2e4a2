"""Facts about result tables that every layer reads (bottom floor: imports nothing of the package)."""
from __future__ import annotations

__all__ = ["HEAD_MEAN"]

#: ``head`` value of the rows of a site's head-averaged map (and of an NL block's only map).
HEAD_MEAN = -1
