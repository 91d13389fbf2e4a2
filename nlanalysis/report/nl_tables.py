"""The NL report's three tables from one summary: Table 1 (the paper's distances and controls), the
query-dependence table and the diagnostics (:data:`NL_TABLES`, :func:`write_nl_tables`), each as
CSV/Markdown/LaTeX and as a figure."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..tables import DIAGNOSTIC_STATS, HEADLINE_STATS, QUERY_TABLE_STATS, caption, format_table, select_stats
from .pages import Report

__all__ = ["NL_TABLES", "TableSpec", "write_nl_tables"]


@dataclass(frozen=True)
class TableSpec:
    """One table of the NL report.

    Attributes:
        name: ``tables/NAME.*`` and ``figures/NAME.*``.
        title: its heading (and the figure's title).
        stats: its statistics, in column order.
        metric: with the task metric column.
        needs: written only when the summary has one of these (besides ``att`` and the controls).
    """

    name: str
    title: str
    stats: Sequence[str]
    metric: bool = False
    needs: Sequence[str] = ()


NL_TABLES = (
    TableSpec("table1", "Table 1", HEADLINE_STATS, metric=True),
    TableSpec("query_dependence", "Table 2: what kind of query dependence", QUERY_TABLE_STATS,
              needs=[s for s in QUERY_TABLE_STATS if s not in ("att", "ctrl_form_att")]),
    TableSpec("diagnostics", "Table 3: diagnostics (sharpness, zero rows, own-object mass, local mass)", DIAGNOSTIC_STATS,
              needs=DIAGNOSTIC_STATS),
)  # fmt: skip


def _has_any(summary: pd.DataFrame, stats: Sequence[str]) -> bool:
    return any(s in summary and summary[s].notna().any() for s in stats)


def write_nl_tables(summary: pd.DataFrame, convention: str, report: Report) -> list[tuple[str, Any]]:
    """Write each table of :data:`NL_TABLES` that ``summary`` (:func:`~nlanalysis.tables.summarise`) has
    columns for (``tables/NAME.{csv,md,tex}``, ``figures/NAME.*``); return their page sections."""
    from ..plots.table import plot_table

    sections: list[tuple[str, Any]] = []
    for spec in NL_TABLES:
        if spec.needs and not _has_any(summary, spec.needs):
            continue
        part = select_stats(summary, spec.stats, metric=spec.metric)
        text = format_table(part, stats=spec.stats)
        cap = caption(part, convention)
        links = report.table(spec.name, part, cap, text=text)
        report.figure(plot_table(text, spec.title, cap), spec.name,
                      f"{spec.title} as a figure: the numbers of `tables/{spec.name}.csv`.")  # fmt: skip
        sections += [("h2", spec.title), ("table", (text, cap, links))]
    return sections
