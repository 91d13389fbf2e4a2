"""``nlanalysis report``: result sets in, the figures, tables and text of a paper out.

:func:`write_report` (``nlanalysis report RUN_DIR... --out DIR``) writes::

    DIR/index.md, DIR/index.html   the report: runs, a short text of the numbers, Table 1, figures
    DIR/tables/runs.csv            one row per result set: label, variant, seed, step, task metric
    DIR/tables/table1.{csv,md,tex} GCNet's Table 1 form (each variant's last training step)
    DIR/tables/over_training.*     every step, where a variant has several
    DIR/figures/*.{png,pdf}        Figure 2 form per variant and block, distributions,
                                   statistics over training, query-distance heat maps

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
"""
from __future__ import annotations

import fnmatch
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..extract.maps import ImageMaps
from ..extract.results import ResultSet, head_mean_rows, load_run
from ..extract.store import sha256_file
from ..schema import check_ranges
from ..tables import (
    CONVENTION_TEXT,
    METRIC_NAMES,
    caption,
    final_steps,
    format_ci,
    format_table,
    short_block_names,
    summarise,
    to_markdown,
    word_columns,
    write_table,
)
from .staging import staged_folder

__all__ = ["Report", "RunMeta", "Runs", "describe_run", "find_image", "find_images", "load_runs", "summary_text", "write_pages", "write_report"]

#: task metrics looked up in a checkpoint's meta, in order of preference.
METRIC_KEYS = ("miou", "mIoU", "bbox_mAP", "segm_mAP", "accuracy", "top1", "pixel_accuracy")


@dataclass
class RunMeta:
    """What a result set is: its label and the facts of its checkpoint.

    Attributes:
        label: unique name of the run in a report.
        path: the run directory.
        variant: what the run is an instance of (the checkpoint meta's ``variant``, else the label).
        seed, step, total_steps: training seed and step of the checkpoint (``None`` if unknown).
        metric_name, metric: the task metric recorded with the checkpoint (``None`` if unknown).
        checkpoint: the checkpoint file the run analysed.
        source: where the facts came from (``run.json``, ``checkpoint meta`` or ``none``), with why.
    """

    label: str
    path: Path
    variant: str
    seed: int | None = None
    step: int | None = None
    total_steps: int | None = None
    metric_name: str | None = None
    metric: float | None = None
    checkpoint: str | None = None
    source: str = "none"


def _checkpoint_meta(run: ResultSet) -> tuple[dict[str, Any], str]:
    """The checkpoint meta of ``run`` and where it came from."""
    ckpt = run.info.get("checkpoint", {})
    if isinstance(ckpt.get("meta"), dict):
        return ckpt["meta"], "run.json"
    path = Path(ckpt.get("path", ""))
    if not ckpt.get("path") or not path.is_file():
        return {}, f"none (run.json records no checkpoint meta and {path} is gone)"
    if ckpt.get("sha256") and sha256_file(path) != ckpt["sha256"]:
        return {}, f"none ({path} changed since the run was made)"
    from ..checkpoints import load_checkpoint

    try:
        return load_checkpoint(path).meta or {}, "checkpoint meta"
    except (ValueError, OSError) as err:
        return {}, f"none (cannot read {path}: {err})"


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def describe_run(run: ResultSet, label: str | None = None) -> RunMeta:
    """The facts of ``run``'s checkpoint: variant, seed, training step, task metric.

    They are read from ``run.json`` where it records the checkpoint's meta, else from the
    checkpoint file itself (when it still exists and its sha256 matches the run's). ``label``
    defaults to the checkpoint's file name without extension.
    """
    meta, source = _checkpoint_meta(run)
    ckpt = run.info.get("checkpoint", {}).get("path")
    label = label or (Path(ckpt).stem if ckpt else run.path.name)
    seed = meta.get("seed", (meta.get("train_config") or {}).get("seed") if isinstance(meta.get("train_config"), dict) else None)
    metric_name = next((k for k in METRIC_KEYS if isinstance(meta.get(k), (int, float))), None)
    return RunMeta(
        label=label,
        path=run.path,
        variant=str(meta.get("variant") or label),
        seed=_int_or_none(seed),
        step=_int_or_none(meta.get("step", meta.get("iter"))),
        total_steps=_int_or_none(meta.get("total_steps")),
        metric_name=metric_name,
        metric=float(meta[metric_name]) if metric_name else None,
        checkpoint=ckpt,
        source=source,
    )


@dataclass
class Runs:
    """Several result sets with their labels, and their metrics in one labelled frame.

    Attributes:
        results: the result sets, in the order given.
        meta: one :class:`RunMeta` per result set.
        frame: every run's ``metrics`` with the run columns of :mod:`nlanalysis.tables`.
    """

    results: list[ResultSet]
    meta: list[RunMeta]
    frame: pd.DataFrame

    def table(self) -> pd.DataFrame:
        """One row per run: label, variant, seed, step, task metric, images, checkpoint, folder."""
        rows = []
        for res, m in zip(self.results, self.meta):
            counts = res.info.get("counts", {})
            done = res.metrics["image_id"].nunique() if len(res.metrics) else 0
            rows.append({"label": m.label, "variant": m.variant, "seed": m.seed, "step": m.step,
                         "metric_name": m.metric_name, "metric": m.metric, "images": counts.get("done", done),
                         "failed": counts.get("failed", len(res.failures)), "complete": res.complete,
                         "checkpoint": Path(m.checkpoint).name if m.checkpoint else None, "facts_from": m.source,
                         "run_dir": str(res.path)})  # fmt: skip
        return pd.DataFrame(rows)

    def by_label(self, label: str) -> tuple[ResultSet, RunMeta]:
        for res, m in zip(self.results, self.meta):
            if m.label == label:
                return res, m
        raise KeyError(f"no run labelled {label!r}; labels: {[m.label for m in self.meta]}")


def _unique_labels(metas: list[RunMeta], explicit: list[bool]) -> None:
    """Keep given labels; make default ones unique (the run folder's name, then a number)."""
    given = {m.label for m, e in zip(metas, explicit) if e}
    defaults = [m.label for m, e in zip(metas, explicit) if not e]
    used = set(given)
    for m, e in zip(metas, explicit):
        if e:
            continue
        label = f"{m.label} ({m.path.name})" if defaults.count(m.label) > 1 or m.label in given else m.label
        base, n = label, 2
        while label in used:
            label, n = f"{base} #{n}", n + 1
        m.label = label
        used.add(label)


def load_runs(
    runs: Sequence[str | os.PathLike[str] | ResultSet],
    labels: Mapping[str, str | os.PathLike[str]] | None = None,
    blocks: str | Sequence[str] | None = None,
) -> Runs:
    """Open result sets and label them.

    Args:
        runs: run directories (or loaded result sets).
        labels: ``{label: RUN_DIR}`` (``--label NAME=RUN_DIR``); a run named here but not in
            ``runs`` is added. Unlabelled runs are named after their checkpoint file.
        blocks: glob(s) on block names; only matching blocks are kept.
    """
    labels = dict(labels or {})
    given = {str(Path(p).resolve()): name for name, p in labels.items()}
    items: dict[str, str | os.PathLike[str] | ResultSet] = {}  # one entry per run folder, in order
    for r in [*runs, *labels.values()]:
        items.setdefault(str(Path(r.path if isinstance(r, ResultSet) else r).resolve()), r)
    if not items:
        raise ValueError("report: give at least one RUN_DIR (a result set of `nlanalysis extract`)")
    results = [r if isinstance(r, ResultSet) else load_run(r) for r in items.values()]
    for r in results:  # an impossible value (att = 99) is refused before anything is computed from it
        check_ranges(r.metrics, r.metrics_source or str(r.path))
    names = [given.get(str(Path(r.path).resolve())) for r in results]
    metas = [describe_run(r, name) for r, name in zip(results, names)]
    _unique_labels(metas, [name is not None for name in names])
    patterns = [blocks] if isinstance(blocks, str) else list(blocks or [])
    frames = []
    for res, m in zip(results, metas):
        f = head_mean_rows(res.metrics).copy()  # a ViT run: one row per layer, the head mean
        if patterns and len(f):
            f = f[f["block"].map(lambda b: any(fnmatch.fnmatchcase(b, p) for p in patterns))]
        f.insert(0, "label", m.label)
        f.insert(1, "variant", m.variant)
        f.insert(2, "seed", np.nan if m.seed is None else float(m.seed))
        f.insert(3, "step", np.nan if m.step is None else float(m.step))
        f.insert(4, "metric_name", m.metric_name)
        f.insert(5, "metric", np.nan if m.metric is None else m.metric)
        frames.append(f)
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    if frame.empty:
        which = f" with blocks matching {patterns}" if patterns else ""
        raise ValueError(f"report: the runs hold no metrics rows{which} ({', '.join(str(r.path) for r in results)})")
    return Runs(results, metas, frame)


# -- images for the figures ----------------------------------------------------------------------


def find_images(run: ResultSet, image_ids: Sequence[Any], image_root: str | os.PathLike[str] | None = None) -> list[Path | None]:
    """The file of each of ``image_ids`` in ``run`` (``None`` where it cannot be found).

    Looks in, in order: ``image_root / file_name``; the ``path`` column of ``images.csv``
    (where the run records it); the COCO image folder the run was given; the image files and
    folders it was given (relative paths are taken from the current directory).
    """
    table = run.images.assign(_id=run.images["image_id"].astype(str)).drop_duplicates("_id").set_index("_id")
    args = run.info.get("selection_args", {})
    listed: dict[str, Path] | None = None
    found: list[Path | None] = []
    for image_id in image_ids:
        key = str(image_id)
        if key not in table.index:
            found.append(None)
            continue
        file_name = str(table.loc[key, "file_name"])
        candidates = [Path(image_root) / file_name] if image_root is not None else []
        if "path" in table:
            candidates.append(Path(str(table.loc[key, "path"])))
        if args.get("coco_images"):
            candidates.append(Path(args["coco_images"]) / file_name)
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None and args.get("images"):
            if listed is None:  # the files the run was given, listed once
                listed = _listed_files(args["images"])
            hit = listed.get(key)
        found.append(hit if hit is not None and hit.is_file() else None)
    return found


def find_image(run: ResultSet, image_id: Any, image_root: str | os.PathLike[str] | None = None) -> Path | None:
    """The file of one image of ``run`` (see :func:`find_images`), or ``None``."""
    return find_images(run, [image_id], image_root)[0]


def _listed_files(paths: Sequence[str]) -> dict[str, Path]:
    from ..extract.sources import file_images

    try:
        return {str(it.image_id): Path(it.path) for it in file_images(paths)}
    except (ValueError, OSError):
        return {}


def _load_pixels(path: Path | None, maps: ImageMaps) -> np.ndarray | None:
    if path is None:
        return None
    from ..data import ImageReadError, load_image

    try:
        pixels = load_image(path)
    except ImageReadError:
        return None
    return pixels if pixels.shape[:2] == tuple(int(v) for v in maps["original_size"]) else None


# -- the text --------------------------------------------------------------------------------------


def _fmt(v: float, low: float = math.nan, high: float = math.nan) -> str:
    return format_ci(v, low, high)


_NOT_GCNET = "**not** the one to two orders of magnitude below it that GCNet reports"


def _verdict(input_: float, value: float, what: str) -> tuple[bool, str]:
    """Whether ``value`` (output or att) lies at least 10x below ``input_`` (GCNet's finding), in words."""
    if not (math.isfinite(input_) and math.isfinite(value)):
        return False, f"`{what}` cannot be compared with `input` (not available)"
    if value <= 0:
        return True, f"`{what}` is 0"
    ratio = input_ / value
    if ratio >= 1000:
        return True, f"`{what}` is more than 1000× below `input` (practically 0)"
    if ratio >= 100:
        return True, f"`{what}` is {ratio:.0f}× below `input`: more than two orders of magnitude"
    if ratio >= 10:
        return True, f"`{what}` is {ratio:.0f}× below `input`: one to two orders of magnitude, as GCNet found"
    if ratio >= 1.5:
        return False, f"`{what}` is only {ratio:.1f}× below `input`: {_NOT_GCNET}"
    if ratio > 1 / 1.5:
        return False, f"`{what}` is about as large as `input` ({1 / ratio:.2f}×): {_NOT_GCNET}"
    return False, f"`{what}` is {1 / ratio:.1f}× **larger** than `input`: {_NOT_GCNET}"


def _ci(r: pd.Series, stat: str) -> str:
    return _fmt(r[stat], r.get(f"{stat}_low", math.nan), r.get(f"{stat}_high", math.nan))


def _row_text(r: pd.Series, block: str) -> tuple[bool | None, str]:
    """One Table 1 row in words, and whether its ``att`` is 10x below ``input`` (None: by construction)."""
    step = f" (step {int(r['step'])})" if pd.notna(r.get("step", math.nan)) else ""
    seeds = int(r["seeds"]) if pd.notna(r.get("seeds", math.nan)) else 1
    count = f"{int(r['images'])} images" + (f", {seeds} seeds" if seeds > 1 else "")
    head = f"`{r['variant']}`{step}, block `{block}` ({r.get('mode') or 'unknown mode'}, {count})"
    nums = ", ".join(f"`{s}` {_ci(r, s)}" for s in ("input", "output", "att") if pd.notna(r.get(s, math.nan)))
    if pd.notna(r.get("metric", math.nan)):
        nums += f"; {METRIC_NAMES.get(r['metric_name'], r['metric_name'])} {_ci(r, 'metric')}"
    if r.get("query_independent"):
        return None, (f"{head}: {nums}. One map serves every query by construction, so `att` = 0, and the block adds the "
                      "same context at every position (`output` = 0 up to float rounding).")  # fmt: skip
    below, on_att = _verdict(r["input"], r.get("att", math.nan), "att")
    on_output = _verdict(r["input"], r.get("output", math.nan), "output")[1]
    text = f"{head}: {nums}. Here {on_att}; {on_output}."
    uniform = below and r.get("att_entropy", 0) >= 0.99
    if uniform:
        text += (f" But the maps are nearly uniform (normalised entropy {_fmt(r['att_entropy'])}; uniform attention gives "
                 "`att` = 0 with nothing learned), so a small `att` here says little about learned query-independence.")  # fmt: skip
    if pd.notna(r.get("ctrl_att", math.nan)) and r["ctrl_att"] > 0:
        ratio = r["att"] / r["ctrl_att"]
        rel = "about as much as" if abs(ratio - 1) < 0.1 else f"{ratio:.2g}× as much as"
        text += (f" Random query/key projections of the same features at the same sharpness give `att` {_ci(r, 'ctrl_att')}: "
                 f"the trained maps differ between queries {rel} those.")  # fmt: skip
    if pd.notna(r.get("att_jsd", math.nan)):
        entropy = r.get("att_entropy", math.nan)
        text += f" Jensen–Shannon divergence between query maps {_ci(r, 'att_jsd')} bits"
        text += f", normalised entropy {_fmt(entropy)}." if pd.notna(entropy) and not uniform else "."
    elif pd.isna(r.get("att_entropy", math.nan)):
        text += " The maps are signed (not distributions), so JSD and entropy are undefined."
    return below, text


def summary_text(summary: pd.DataFrame, convention: str = "1-cos") -> list[str]:
    """Sentences stating the numbers of a Table 1 summary as measured, block by block.

    The first says how many blocks (that could) show GCNet's finding, `att` at least ten times
    below `input`, and how many do not; then one per row, with the ratio in words, and a warning
    where a small `att` only reflects nearly uniform maps.
    """
    short = short_block_names(summary["block"].tolist())
    verdicts, out = [], []
    for _, r in summary.iterrows():
        below, text = _row_text(r, short[r["block"]])
        out.append(text)
        if below is not None:
            verdicts.append(below)
    if verdicts:
        far, near = sum(verdicts), len(verdicts) - sum(verdicts)
        out.insert(0, f"Of {len(verdicts)} block(s) whose maps can depend on the query, {far} {'has' if far == 1 else 'have'} "
                      "`att` at least ten times below `input` (GCNet's qualitative finding on trained COCO models); "
                      f"{near} {'does' if near == 1 else 'do'} not. Distances: cosine distance "
                      f"{CONVENTION_TEXT.get(convention, convention)}, averaged over all ordered pairs of positions "
                      "(i = j included), then over images; brackets are 95% confidence intervals.")  # fmt: skip
    return out


# -- the report ------------------------------------------------------------------------------------


@dataclass
class Report:
    """What :func:`write_report` wrote.

    Attributes:
        out: the report folder.
        index_md, index_html: the report pages.
        tables: ``{name: summary frame}`` (``runs``, ``table1``, ``over_training``).
        figures: the PNG of every figure (a PDF lies beside each).
        text: the sentences of the summary.
        notes: what could not be drawn, and why.
    """

    out: Path
    index_md: Path
    index_html: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _representatives(runs: Runs, final: pd.DataFrame) -> list[str]:
    """One run per variant for the per-image figures: its last step, lowest seed, first given."""
    chosen: dict[str, tuple] = {}
    labels = list(dict.fromkeys(final["label"]))
    for m in runs.meta:
        if m.label not in labels:
            continue
        key = (m.seed if m.seed is not None else math.inf, labels.index(m.label))
        if m.variant not in chosen or key < chosen[m.variant][0]:
            chosen[m.variant] = (key, m.label)
    return [label for _, label in chosen.values()]


def _choose_images(res: ResultSet, n: int, image_ids: Sequence[Any] | None) -> list[Any]:
    have = list(res.maps)
    if image_ids is not None:
        wanted = {str(i) for i in image_ids}
        return [i for i in have if str(i) in wanted]
    return have[:n]


def _maps_figures(
    runs: Runs,
    labels: list[str],
    blocks: list[str],
    figures: Path,
    *,
    n_images: int,
    image_ids: Sequence[Any] | None,
    image_root: Any,
    formats: Sequence[str],
    notes: list[str],
) -> list[tuple[str, Path, str]]:
    """Figure 2 form per (run, block) and the query-distance heat map per run, for ``labels``."""
    from ..plots import plot_query_distances, plot_query_maps, save_figure

    out = []
    for label in labels:
        res, meta = runs.by_label(label)
        ids = _choose_images(res, n_images, image_ids)
        if not ids:
            notes.append(f"`{label}`: no saved query maps" + (" for the requested images" if image_ids else " (run extract with --save-maps)"))
            continue
        maps = [res.maps[i] for i in ids]
        files = find_images(res, ids, image_root)
        pixels = [_load_pixels(p, m) for p, m in zip(files, maps)]
        missing = [str(i) for i, p in zip(ids, pixels) if p is None]
        if missing:
            notes.append(f"`{label}`: image file(s) of {', '.join(missing)} not found; their maps are drawn on grey (give --image-root)")
        ckpt = Path(meta.checkpoint).name if meta.checkpoint else meta.label
        for block in [b for b in maps[0].blocks if b in blocks]:
            fig = plot_query_maps(maps, block, images=pixels, title=f"{label} (checkpoint {ckpt})")
            stem = figures / f"query_maps_{_slug(label)}_{_slug(block)}"
            save_figure(fig, stem, formats)
            out.append(("query_maps", Path(f"{stem}.png"),
                        f"`{label}`, block `{block}`: each query's attention map over the image (GCNet Figure 2 form). "
                        "Numbered dots are the query points; one colour scale per image."))  # fmt: skip
        drawn = [b for b in maps[0].blocks if b in blocks]
        if drawn and len(maps[0].query_yx):
            fig = plot_query_distances(maps[0], drawn, title=f"{label} (checkpoint {ckpt})")
            stem = figures / f"query_distances_{_slug(label)}"
            save_figure(fig, stem, formats)
            out.append(("query_distances", Path(f"{stem}.png"),
                        f"`{label}`, image {ids[0]}: cosine distance (1 − cos) between the maps of its query points, per block."))  # fmt: skip
    return out


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
    title: str = "Do the non-local blocks' attention maps depend on the query?",
) -> Report:
    """Write the report of ``runs`` into ``out`` (see the module docstring).

    Args:
        runs: run directories, loaded result sets, or :class:`Runs` from :func:`load_runs`.
        out: the report folder (created; an earlier report there is replaced, other files in it are kept).
        labels: ``{label: RUN_DIR}``; other runs are named after their checkpoint.
        blocks: glob(s): report only these blocks.
        images: images per Figure 2 (the first ones of each run with saved maps).
        image_ids: draw these images instead.
        image_root: folder holding the images (by ``file_name``), when they moved since extract.
        formats: figure formats.
        title: the report's heading.

    The report is written into a temporary folder beside ``out`` and renamed into place when
    complete (:func:`~nlanalysis.report.staging.staged_folder`): a failed report leaves ``out``
    as it was. Every run's metrics are checked against the columns' ranges first.
    """
    if "png" not in formats:
        raise ValueError(f"report: formats {list(formats)} must include png (the report pages show the PNGs)")
    loaded = runs if isinstance(runs, Runs) else load_runs(runs, labels, blocks)
    frame = loaded.frame
    conventions = sorted(set(frame["convention"].dropna())) if "convention" in frame else ["1-cos"]
    if len(conventions) > 1:
        raise ValueError(f"report: the runs use different distance conventions {conventions}; report them separately")
    out = Path(out)
    with staged_folder(out, REPORT_ENTRIES) as work:
        report = _write_report_files(loaded, work, conventions[0] if conventions else "1-cos", images=images, image_ids=image_ids,
                                     image_root=image_root, formats=formats, title=title)  # fmt: skip
    report.out, report.index_md, report.index_html = out, out / "index.md", out / "index.html"
    report.figures = [out / p.relative_to(work) for p in report.figures]
    return report


#: what :func:`write_report` writes into its folder (replaced whole by the next report; other files are kept).
REPORT_ENTRIES = frozenset({"index.md", "index.html", "tables", "figures"})


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
) -> Report:
    """Write the report's files into the (empty) folder ``out``; see :func:`write_report`."""
    from ..plots import plot_distributions, plot_over_training, save_figure

    frame = loaded.frame
    tables_dir, figures_dir = out / "tables", out / "figures"
    for d in (tables_dir, figures_dir):
        d.mkdir(parents=True, exist_ok=True)
    report = Report(out, out / "index.md", out / "index.html")
    notes = report.notes
    for res, m in zip(loaded.results, loaded.meta):
        if not res.complete:
            notes.append(f"`{m.label}`: the run is not complete ({res.info.get('counts', {})}); its numbers cover the images done so far")
        if len(res.failures):
            notes.append(f"`{m.label}`: {len(res.failures)} image(s) failed and are left out (see {res.path / 'failures.csv'})")
        if m.source != "checkpoint meta" and m.source != "run.json":
            notes.append(f"`{m.label}`: no variant/seed/step/task metric known: {m.source}")

    runs_table = loaded.table()
    runs_table.to_csv(tables_dir / "runs.csv", index=False, lineterminator="\n")
    report.tables["runs"] = runs_table

    final = final_steps(frame)
    table1 = summarise(final, by=("variant", "step"))
    cap = caption(table1, convention)
    write_table(table1, tables_dir / "table1", cap)
    report.tables["table1"] = table1
    report.text = summary_text(table1, convention)

    figures: list[tuple[str, Path, str]] = []
    fig = plot_distributions(final, by="label", convention=convention)
    save_figure(fig, figures_dir / "distributions", formats)
    figures.append(("distributions", figures_dir / "distributions.png",
                    "Distance between positions per image (dots), per block, for each run's last training step. "
                    "input: block input features; output: the context term it adds; att: the attention maps of the queries."))  # fmt: skip

    steps = frame.dropna(subset=["step"]).groupby("variant")["step"].nunique() if frame["step"].notna().any() else pd.Series(dtype=int)
    if (steps > 1).any():
        training = frame[frame["variant"].isin(steps[steps > 1].index)]
        over = summarise(training, by=("variant", "step"))
        write_table(over, tables_dir / "over_training", caption(over, convention))
        report.tables["over_training"] = over
        fig = plot_over_training(training, convention=convention)
        save_figure(fig, figures_dir / "over_training", formats)
        figures.append(("over_training", figures_dir / "over_training.png",
                        "Each statistic against the training step (snapshot checkpoints), per variant; band: 95% CI."))  # fmt: skip

    blocks_kept = list(dict.fromkeys(frame["block"]))
    figures += _maps_figures(loaded, _representatives(loaded, final), blocks_kept, figures_dir, n_images=images,
                             image_ids=image_ids, image_root=image_root, formats=formats, notes=notes)  # fmt: skip
    report.figures = [p for _, p, _ in figures]

    sections = _sections(title, loaded, runs_table, table1, cap, report, figures, out)
    write_pages(sections, out, title, pdf="pdf" in formats)
    return report


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


def _sections(title, runs, runs_table, table1, cap, report, figures, out) -> list[tuple[str, Any]]:
    s: list[tuple[str, Any]] = [("h1", title)]
    s.append(("p", f"{len(runs.results)} result set(s) of `nlanalysis extract`; Table 1 and the distributions use each "
                   "variant's last training step. GCNet (arXiv 1904.11492, Sec. 3) found that in trained NL blocks the "
                   "attention maps of different queries are nearly the same: att and output distances one to two orders "
                   "of magnitude below the input distance."))  # fmt: skip
    s.append(("h2", "Summary"))
    s.append(("list", report.text or ["No block with query-dependent maps among the runs."]))
    if report.notes:
        s.append(("h2", "Notes"))
        s.append(("list", report.notes))
    s.append(("h2", "Table 1"))
    s.append(("table", (format_table(table1), cap, ["tables/table1.csv", "tables/table1.md", "tables/table1.tex"])))
    if "over_training" in report.tables:
        s.append(("p", "The same for every training step: `tables/over_training.csv` (`.md`, `.tex`)."))
    s.append(("h2", "Figures"))
    for _kind, path, text in figures:
        rel = path.relative_to(out).as_posix()
        s.append(("figure", (rel, text)))
    s.append(("h2", "Runs"))
    runs_caption = ("Variant, seed, step and task metric as each checkpoint records them (facts_from: where they were read). "
                    "Run folders and checkpoint paths: `tables/runs.csv`.")  # fmt: skip
    s.append(("table", (_runs_display(runs_table), runs_caption, ["tables/runs.csv"])))
    return s


def write_pages(sections: Sequence[tuple[str, Any]], out: str | os.PathLike[str], title: str, pdf: bool = True) -> tuple[Path, Path]:
    """Write ``out/index.md`` and ``out/index.html`` from ``sections``; return their paths.

    Each section is ``(kind, body)``: ``("h1" | "h2" | "p", text)``, ``("list", [text, ...])``,
    ``("table", (text frame, caption, [file links]))`` or ``("figure", (PNG path relative to out,
    caption))`` (with ``pdf``, a link to the PDF beside the PNG). Text may use ``**bold**`` and
    ```code```.
    """
    out = Path(out)
    md, page = out / "index.md", out / "index.html"
    md.write_text(_render_md(list(sections), pdf))
    page.write_text(_render_html(list(sections), title, pdf))
    return md, page


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _render_md(sections: list[tuple[str, Any]], pdf: bool = True) -> str:
    parts = []
    for kind, body in sections:
        if kind == "h1":
            parts.append(f"# {body}\n")
        elif kind == "h2":
            parts.append(f"## {body}\n")
        elif kind == "p":
            parts.append(f"{body}\n")
        elif kind == "list":
            parts.append("".join(f"- {item}\n" for item in body))
        elif kind == "table":
            table, cap, links = body
            parts.append(to_markdown(table, cap) + "\nFiles: " + ", ".join(f"[{Path(l).name}]({l})" for l in links) + "\n")
        elif kind == "figure":
            rel, text = body
            link = f" ([PDF]({rel[:-4]}.pdf))" if pdf else ""
            parts.append(f"![{Path(rel).stem}]({rel})\n\n{text}{link}\n")
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}caption{caption-side:bottom;text-align:left;font-size:12px;color:#444;padding-top:.4em}
img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}figcaption{font-size:13px;color:#333}code{font-size:92%}"""


def _render_html(sections: list[tuple[str, Any]], title: str, pdf: bool = True) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>"]  # fmt: skip
    for kind, body in sections:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{_inline_html(body)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_html(body)}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in body) + "</ul>")
        elif kind == "table":
            table, cap, links = body
            left = word_columns(table)
            align = ["" if c not in left else ' style="text-align:left"' for c in table.columns]
            head = "".join(f"<th{a}>{html.escape(str(c))}</th>" for a, c in zip(align, table.columns))
            rows = "".join("<tr>" + "".join(f"<td{a}>{html.escape(str(v))}</td>" for a, v in zip(align, row)) + "</tr>"
                           for row in table.itertuples(index=False))  # fmt: skip
            files = " ".join(f'<a href="{html.escape(l)}">{html.escape(Path(l).name)}</a>' for l in links)
            parts.append(f"<table><caption>{_inline_html(cap)} Files: {files}</caption>"
                         f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip
        elif kind == "figure":
            rel, text = body
            img = f'<img src="{html.escape(rel)}" alt="{html.escape(Path(rel).stem)}">'
            if pdf:
                img = f'<a href="{html.escape(rel[:-4])}.pdf">{img}</a>'
            parts.append(f"<figure>{img}<figcaption>{_inline_html(text)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
