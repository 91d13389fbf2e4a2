"""A text table (e.g. :func:`nlanalysis.tables.format_table`) drawn as a figure, for papers and slides."""
from __future__ import annotations

import textwrap

import pandas as pd
from matplotlib.figure import Figure

from .style import new_figure, styled

__all__ = ["plot_table", "table_cells"]


def table_cells(text: pd.DataFrame) -> list[list[str]]:
    """Each cell of ``text`` as drawn: the frame's string, an interval ``[lo, hi]`` on a second line."""
    return [[str(v).replace(" [", "\n[", 1) for v in row] for row in text.itertuples(index=False)]


@styled
def plot_table(text: pd.DataFrame, title: str | None = None, caption: str | None = None) -> Figure:
    """``text`` (strings) as a matplotlib table, one column as wide as its longest line."""
    cells = table_cells(text)
    heads = [textwrap.fill(str(c), 14) for c in text.columns]
    widths = [max(len(line) for cell in [h, *(row[j] for row in cells)] for line in cell.split("\n")) + 2
              for j, h in enumerate(heads)]  # fmt: skip
    width = max(6.0, 0.062 * sum(widths) + 0.4)
    wrap = int(width * 14)
    notes = textwrap.fill(caption, wrap) if caption else ""
    fig = new_figure(width, 0.36 * (len(cells) + 1.5) + 0.6 + 0.15 * notes.count("\n"))
    ax = fig.add_subplot()
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=heads, colWidths=[w / sum(widths) for w in widths], loc="upper center",
                     cellLoc="center", bbox=(0, 0, 1, 1))  # fmt: skip
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for (r, _c), cell in table.get_celld().items():
        cell.set_linewidth(0.3)
        cell.set_facecolor("0.93" if r == 0 else "white")
    if title:
        fig.suptitle(textwrap.fill(title, wrap))
    if notes:
        fig.supxlabel(notes, fontsize=7, ha="left", x=0.01)
    return fig
