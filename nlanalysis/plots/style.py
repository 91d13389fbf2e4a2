"""One fixed look for every figure, and deterministic files.

Every plotting function of :mod:`nlanalysis.plots` builds its figure inside
``matplotlib.rc_context(STYLE)`` (decorator :func:`styled`), so the user's ``matplotlibrc`` or
rcParams changed elsewhere do not alter the figures, and builds it with
:class:`matplotlib.figure.Figure` directly (no ``pyplot``: no global figure registry, no
interactive backend, nothing kept alive after the figure is dropped).

:func:`save_figure` writes PNG and PDF without the time stamp and software version matplotlib
normally embeds, so the same data gives byte-identical files.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DPI", "FORMATS", "STYLE", "new_figure", "save_figure", "styled"]

#: resolution of PNG files (the PDF is vector).
DPI = 120

#: the formats :func:`save_figure` writes by default.
FORMATS = ("png", "pdf")

#: rcParams applied while a figure is built and saved.
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "axes.prop_cycle": matplotlib.cycler(color=matplotlib.colormaps["tab10"].colors),
    "image.interpolation": "antialiased",
    "image.resample": True,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.bbox": None,  # keep the size the figure was given (tests check it)
    "savefig.facecolor": "white",
    "pdf.fonttype": 42,  # TrueType: text stays text in the PDF
    "svg.hashsalt": "nlanalysis",
    "path.simplify": True,
}

#: metadata that would make files differ from run to run (dates, versions) is left out.
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None},
}

F = TypeVar("F", bound=Callable[..., Any])


def styled(func: F) -> F:
    """Run ``func`` (which builds a figure) inside ``rc_context(STYLE)``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width: float, height: float) -> Figure:
    """A figure of about ``width`` x ``height`` inches (whole pixels at :data:`DPI`) with an Agg
    canvas and constrained layout."""
    fig = Figure(figsize=(round(width * DPI) / DPI, round(height * DPI) / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: str | os.PathLike[str], formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.png`` / ``stem.pdf`` (deterministic bytes); return the paths.

    The PNG is ``width * DPI`` x ``height * DPI`` pixels, the figure's own size.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(STYLE):
        for fmt in formats:
            if fmt not in _METADATA:
                raise ValueError(f"figure format {fmt!r}: use one of {sorted(_METADATA)}")
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(path, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
            paths.append(path)
    return paths
