"""What the NL and the ViT report share: :class:`Report`, which writes a report's tables, figures and
pages and records them, and ``index.md``/``index.html`` from one list of sections (:func:`write_pages`)."""
from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..tables import to_markdown, word_columns, write_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Report", "require_png", "start_report", "write_pages"]


@dataclass
class Report:
    """What :func:`~nlanalysis.report.runs.write_report` (or
    :func:`~nlanalysis.report.vit.write_vit_report`) wrote, and the writer of its files: tables
    (:meth:`table`), figures (:meth:`figure`) and pages (:meth:`write_pages`) of an NL or a ViT report alike.

    Attributes:
        out: the report folder.
        index_md, index_html: the report pages.
        tables: ``{name: summary frame}`` (``runs``, ``table1``, ``query_dependence``, ``diagnostics``,
            ``over_training``; a ViT run's
            ``layers``, ``heads``, ``per_image``, ``compare``).
        figures: the PNG of every figure (a PDF lies beside each), with ``captions``.
        text: the sentences of the summary.
        query_text: the reading of the query-dependence suite (:mod:`~nlanalysis.report.query_text`):
            the thresholds, then one line per block or layer; empty without the suite.
        notes: what could not be drawn, and why.
        formats: the figure formats written (``png`` needed).
        pages: the explore pages written beside the report (``explore/LABEL.html``).
    """

    out: Path
    index_md: Path
    index_html: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    query_text: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    formats: Sequence[str] = ("png", "pdf")
    captions: list[str] = field(default_factory=list)
    pages: list[Path] = field(default_factory=list)

    def table(self, name: str, frame: pd.DataFrame, caption: str | None = None, **kwargs: Any) -> list[str]:
        """Write ``tables/NAME.*`` (:func:`~nlanalysis.tables.write_table` with ``kwargs``), keep
        ``frame`` as ``tables[name]``; return the files' links (relative to ``out``)."""
        paths = write_table(frame, self.out / "tables" / name, caption, **kwargs)
        self.tables[name] = frame
        return [p.relative_to(self.out).as_posix() for p in paths]

    def figure(self, fig: Figure, name: str, caption: str) -> None:
        """Save ``fig`` as ``figures/NAME.*`` (:func:`~nlanalysis.plots.save_figure`) with its caption; ``NAME_2``, ``NAME_3``,
        ... where the name is taken (labels that differ only in characters a file name drops)."""
        from ..plots import save_figure

        taken = {p.stem for p in self.figures}
        name = next(n for n in (name, *(f"{name}_{i}" for i in range(2, len(taken) + 3))) if n not in taken)
        save_figure(fig, self.out / "figures" / name, self.formats)
        self.figures.append(self.out / "figures" / f"{name}.png")
        self.captions.append(caption)

    def figure_sections(self) -> list[tuple[str, Any]]:
        """A ``("figure", ...)`` section (:func:`write_pages`) of each figure, in the order drawn."""
        return [("figure", (p.relative_to(self.out).as_posix(), c)) for p, c in zip(self.figures, self.captions)]

    def write_pages(self, sections: Sequence[tuple[str, Any]], title: str) -> None:
        """Write ``index.md`` and ``index.html`` from ``sections`` (:func:`write_pages`)."""
        write_pages(sections, self.out, title, pdf="pdf" in self.formats)


def require_png(formats: Sequence[str], who: str) -> None:
    """Refuse figure ``formats`` without ``png``: the report pages show the PNGs."""
    if "png" not in formats:
        raise ValueError(f"{who}: formats {list(formats)} must include png (the report pages show the PNGs)")


def start_report(out: Path, formats: Sequence[str]) -> Report:
    """Make ``out/tables`` and ``out/figures``; return an empty :class:`Report` of ``out``."""
    for d in (out / "tables", out / "figures"):
        d.mkdir(parents=True, exist_ok=True)
    return Report(out, out / "index.md", out / "index.html", formats=tuple(formats))


def write_pages(sections: Sequence[tuple[str, Any]], out: str | os.PathLike[str], title: str, pdf: bool = True) -> tuple[Path, Path]:
    """Write ``out/index.md`` and ``out/index.html`` from ``sections``; return their paths.

    Each section is ``(kind, body)``: ``("h1" | "h2" | "p", text)``, ``("list", [text, ...])``,
    ``("table", (text frame, caption, [file links]))`` or ``("figure", (PNG path relative to out,
    caption))`` (with ``pdf``, a link to the PDF beside the PNG). Text may use ``**bold**``,
    ```code``` and ``[links](relative/path)``.
    """
    out = Path(out)
    md, page = out / "index.md", out / "index.html"
    rendered = [_render(kind, body, pdf) for kind, body in sections]
    md.write_text("\n".join(m for m, _ in rendered))
    head = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body>"]  # fmt: skip
    page.write_text("\n".join([*head, *(h for _, h in rendered), "</body></html>"]) + "\n")
    return md, page


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}caption{caption-side:bottom;text-align:left;font-size:12px;color:#444;padding-top:.4em}
img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}figcaption{font-size:13px;color:#333}code{font-size:92%}"""


def _render(kind: str, body: Any, pdf: bool) -> tuple[str, str]:
    """One section (see :func:`write_pages`) as ``(Markdown, HTML)``."""
    if kind in ("h1", "h2"):
        return f"{'#' * int(kind[1])} {body}\n", f"<{kind}>{_inline_html(body)}</{kind}>"
    if kind == "p":
        return f"{body}\n", f"<p>{_inline_html(body)}</p>"
    if kind == "list":
        return "".join(f"- {item}\n" for item in body), "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in body) + "</ul>"
    if kind == "table":
        table, cap, links = body
        md = to_markdown(table, cap) + "\nFiles: " + ", ".join(f"[{Path(l).name}]({l})" for l in links) + "\n"
        left = word_columns(table)
        align = ["" if c not in left else ' style="text-align:left"' for c in table.columns]
        head = "".join(f"<th{a}>{html.escape(str(c))}</th>" for a, c in zip(align, table.columns))
        rows = "".join("<tr>" + "".join(f"<td{a}>{html.escape(str(v))}</td>" for a, v in zip(align, row)) + "</tr>"
                       for row in table.itertuples(index=False))  # fmt: skip
        files = " ".join(f'<a href="{html.escape(l)}">{html.escape(Path(l).name)}</a>' for l in links)
        return md, (f"<table><caption>{_inline_html(cap)} Files: {files}</caption>"
                    f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip
    if kind == "figure":
        rel, text = body
        img = f'<img src="{html.escape(rel)}" alt="{html.escape(Path(rel).stem)}">'
        pdf_md, img = (f" ([PDF]({rel[:-4]}.pdf))", f'<a href="{html.escape(rel[:-4])}.pdf">{img}</a>') if pdf else ("", img)
        return f"![{Path(rel).stem}]({rel})\n\n{text}{pdf_md}\n", f"<figure>{img}<figcaption>{_inline_html(text)}</figcaption></figure>"
    raise ValueError(f"write_pages: unknown section kind {kind!r}")
