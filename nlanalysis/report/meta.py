"""Result sets with their labels: what each run's checkpoint records (:func:`describe_run`) and
every run's metrics in one labelled frame (:func:`load_runs`)."""
from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..checkpoints.facts import METRIC_KEYS
from ..extract.definitions import definitions_note
from ..extract.results import ResultSet, head_mean_rows, load_run
from ..extract.store import sha256_file
from ..models.arch import FITTED_OPTIONS
from ..schema import check_ranges

__all__ = ["METRIC_KEYS", "RunMeta", "Runs", "describe_run", "load_runs"]



@dataclass
class RunMeta:
    """What a result set is: its label and the facts of its checkpoint.

    Attributes:
        label: unique name of the run in a report.
        path: the run directory.
        variant: what the run is an instance of: the checkpoint meta's ``variant``, else the run's own (its label, made
            unique by :func:`load_runs`): runs are pooled as seeds of one variant only where their checkpoints say so (two
            models whose checkpoints share a file name, ``latest.pth``, are two variants, not two seeds of one).
        seed, step: training seed and step of the checkpoint (``None`` if unknown).
        metric_name, metric: the task metric recorded with the checkpoint (``None`` if unknown).
        checkpoint: the checkpoint file the run analysed.
        source: where the facts came from (``run.json``, ``checkpoint meta`` or ``none``), with why.
        stated: whether the checkpoint meta states ``variant`` (else ``variant`` is the label).
    """

    label: str
    path: Path
    variant: str
    seed: int | None = None
    step: int | None = None
    metric_name: str | None = None
    metric: float | None = None
    checkpoint: str | None = None
    source: str = "none"
    stated: bool = False


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
    defaults to the checkpoint's file name without extension; ``variant`` is the meta's, else ``label`` (which
    :func:`load_runs` makes unique, and the variant with it: a run whose checkpoint states no variant is its own).
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
        metric_name=metric_name,
        metric=float(meta[metric_name]) if metric_name else None,
        checkpoint=ckpt,
        source=source,
        stated=bool(meta.get("variant")),
    )


@dataclass
class Runs:
    """Several result sets with their labels, and their metrics in one labelled frame.

    Attributes:
        results: the result sets, in the order given.
        meta: one :class:`RunMeta` per result set.
        frame: every run's ``metrics`` with the run columns of :mod:`nlanalysis.tables`, each image of a block of one
            checkpoint (variant, seed, step) once: where runs measured it again, the first run's row, the values it
            lacks taken column by column from the later runs, in order (:func:`_each_image_once`).
        notes: what the report should say about ``frame`` (the images measured again and left out, and the columns
            filled from a later run; runs written with different column definitions).
    """

    results: list[ResultSet]
    meta: list[RunMeta]
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)

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


def _own_variants(metas: list[RunMeta]) -> None:
    """Name the variant of each run whose checkpoint states none by its (unique) label: a variant of its own, not a seed of
    a namesake's (``expA/latest.pth`` and ``expB/latest.pth``); where the label is a variant another run's meta states
    (an unstated ``gaussian.pth`` beside stated ``gaussian`` runs), with its folder's name after it, then a number."""
    used = {m.variant for m in metas if m.stated}
    for m in metas:
        if m.stated:
            continue
        variant = m.label if m.label not in used else f"{m.label} ({m.path.name})"
        base, n = variant, 2
        while variant in used:
            variant, n = f"{base} #{n}", n + 1
        m.variant = variant
        used.add(variant)


def _distinct(runs: Sequence[str | os.PathLike[str] | ResultSet]) -> list[str | os.PathLike[str] | ResultSet]:
    """``runs`` with each run folder once (a run given twice, or by position and by ``--label``, is one run)."""
    seen: dict[str, str | os.PathLike[str] | ResultSet] = {}
    for r in runs:
        seen.setdefault(str(Path(r.path if isinstance(r, ResultSet) else r).resolve()), r)
    return list(seen.values())


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
    items = _distinct([*runs, *labels.values()])  # one entry per run folder, in order
    if not items:
        raise ValueError("report: give at least one RUN_DIR (a result set of `nlanalysis extract`)")
    results = [r if isinstance(r, ResultSet) else load_run(r) for r in items]
    for r in results:  # an impossible value (att = 99) is refused before anything is computed from it
        check_ranges(r.metrics, r.metrics_source or str(r.path))
    names = [given.get(str(Path(r.path).resolve())) for r in results]
    metas = [describe_run(r, name) for r, name in zip(results, names)]
    _unique_labels(metas, [name is not None for name in names])
    _own_variants(metas)
    _one_model_per_variant(results, metas)
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
    frame, notes = _each_image_once(frame, {m.label: _measurement(r) for r, m in zip(results, metas)},
                                    {m.label: r.info.get("settings") for r, m in zip(results, metas)})
    mixed = definitions_note({m.label: r.info.get("settings") for r, m in zip(results, metas)})
    return Runs(results, metas, frame, notes + ([mixed] if mixed else []))


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    """``value``'s leaves by their dotted paths (``measure.jsd_pairs``), lists by index (``arch.blocks.0.options.mode``)."""
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {path: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flat(v, f"{path}.{k}" if path else str(k)))
    return out or {path: value}


def _differing(a: Any, b: Any) -> list[str]:
    """The dotted paths where ``a`` and ``b`` differ (one side's missing leaf is ``None``)."""
    fa, fb = _flat(a), _flat(b)
    return [k for k in dict.fromkeys([*fa, *fb]) if fa.get(k) != fb.get(k)]


def _input(run: ResultSet) -> dict[str, Any] | None:
    """What a run measured the checkpoint's blocks on, and in which units: the architecture the weights were built into
    (``arch``; a ViT's ``model`` spec and input size), the preprocessing (input size, normalisation), the distance
    convention and the keys a map is over (a ViT's patches alone or with its prefix tokens); ``None`` where ``run.json``
    records no settings. Runs that differ in it are different measurements: a column means another thing (``1-cos`` or
    ``(1-cos)/2``), or is of another input (other resolution or normalisation)."""
    settings = run.info.get("settings")
    if not isinstance(settings, dict):
        return None
    model = settings.get("model")
    measure = settings.get("measure") if isinstance(settings.get("measure"), dict) else {}
    return {"architecture": settings.get("arch", {k: v for k, v in model.items() if k != "weights_sha256"} if isinstance(model, dict) else None),
            "preprocess": settings.get("preprocess"), "convention": measure.get("convention"), "zero": measure.get("zero"),
            "keys": measure.get("keys")}  # fmt: skip


def _checkpoint_sha(run: ResultSet) -> str | None:
    settings = run.info.get("settings") if isinstance(run.info.get("settings"), dict) else {}
    model = settings.get("model") if isinstance(settings.get("model"), dict) else {}
    return run.info.get("checkpoint", {}).get("sha256") or settings.get("checkpoint_sha256") or model.get("weights_sha256")


def _compared(how: dict[str, Any] | None) -> dict[str, Any] | None:
    """``how`` (:func:`_input`) as runs of one variant must share it: without the block options fitted per model
    (:data:`~nlanalysis.models.arch.FITTED_OPTIONS`: the locality twin's ``sigma``), in which seeds differ as in weights."""
    arch = how.get("architecture") if how else None
    blocks = arch.get("blocks") if isinstance(arch, dict) else None
    if not isinstance(blocks, list):
        return how
    kept = []
    for b in blocks:
        fitted = FITTED_OPTIONS.get(b.get("type"), ()) if isinstance(b, dict) else ()
        if fitted and isinstance(b.get("options"), dict):
            b = {**b, "options": {k: v for k, v in b["options"].items() if k not in fitted}}
        kept.append(b)
    return {**how, "architecture": {**arch, "blocks": kept}}


def _named(m: RunMeta) -> str:
    """A run in a refusal: its label and its folder (two labels can look alike: ``x (x)`` and ``x (x) #2``)."""
    return f"`{m.label}` (folder {m.path})"


def _shown(a: dict[str, Any], b: dict[str, Any], la: str, lb: str) -> str:
    """Where ``a`` (of ``la``) and ``b`` (of ``lb``) differ, the first four paths with both values; ``""`` where they do not."""
    diff, fa, fb = _differing(a, b), _flat(a), _flat(b)
    shown = "; ".join(f"{k}: {fa.get(k)!r} in `{la}`, {fb.get(k)!r} in `{lb}`" for k in diff[:4])
    return shown + (f" (and {len(diff) - 4} more)" if len(diff) > 4 else "")


def _one_checkpoint_per_seed(results: Sequence[ResultSet], metas: Sequence[RunMeta]) -> None:
    """Refuse two runs of one variant whose checkpoints' meta states the same seed and step but that are of different
    checkpoints (sha256): one table row would pool them as one seed (a planted block and its random twin, each saved with
    its source's meta). The same checkpoint twice is one seed, and its images count once (:func:`_each_image_once`); a
    run whose seed or checkpoint is not known is not compared."""
    seen: dict[tuple[str, int, int | None], tuple[RunMeta, str, ResultSet]] = {}
    for res, m in zip(results, metas):
        sha = _checkpoint_sha(res)
        if m.seed is None or not sha:
            continue
        first, first_sha, first_res = seen.setdefault((m.variant, m.seed, m.step), (m, sha, res))
        if first_sha == sha:
            continue
        a, b = _compared(_input(first_res)), _compared(_input(res))
        also = _shown(a, b, first.label, m.label) if a is not None and b is not None else ""
        step = "an unknown step" if m.step is None else f"step {m.step}"
        raise ValueError(f"report: {_named(first)} and {_named(m)} are both seed {m.seed} at {step} of variant {m.variant!r} "
                         f"(their checkpoints' meta says so) but of different checkpoints (sha256 {first_sha[:12]}... and "
                         f"{sha[:12]}...), which one table row would pool as one seed"
                         + (f"; they also differ in {also}" if also else "")
                         + ". Report them separately, or correct the `variant` or `seed` in their checkpoints' meta")  # fmt: skip


def _one_model_per_variant(results: Sequence[ResultSet], metas: Sequence[RunMeta]) -> None:
    """Refuse runs that one variant would pool (its seeds and steps) but that are of different models or measurements: an
    architecture (block mode, widths, ...), preprocessing or distance convention of one that another lacks (:func:`_input`;
    a run that records none is not compared), or two checkpoints of one seed and step (:func:`_one_checkpoint_per_seed`,
    checked first: it names the mix where the models differ too). Their checkpoints' meta states one variant, so the rows
    cannot be told apart: refused rather than split, since a split would give two table rows of one name, and the wrong
    meta is the user's to see."""
    _one_checkpoint_per_seed(results, metas)
    seen: dict[str, tuple[RunMeta, dict[str, Any]]] = {}
    for res, m in zip(results, metas):
        how = _compared(_input(res))
        if how is None:
            continue
        first = seen.setdefault(m.variant, (m, how))
        shown = _shown(first[1], how, first[0].label, m.label)
        if shown:
            raise ValueError(f"report: {_named(first[0])} and {_named(m)} are both of variant {m.variant!r} (their checkpoints' "
                             f"meta says so) but are different models or measurements, which one table row cannot pool: {shown}. "
                             "Report them separately, or correct the `variant` in their checkpoints' meta")  # fmt: skip


#: run settings that choose what is kept or which images and blocks are taken, not how an image's statistics are measured
_NOT_MEASUREMENT = frozenset({"selection", "queries", "query_placement", "save_maps", "blocks"})


def _measurement(run: ResultSet) -> str:
    """What makes two runs' rows of one image one measurement: the checkpoint (its sha256) and the input it was measured on,
    in the units of the columns (:func:`_input`: architecture, preprocessing and input size, distance convention); the run
    folder where either is not known.

    The settings of the statistics are not part of it (JSD pairs, the random-projection controls and their seed, the
    query-dependence suite's level, the locality control, the object masks): an image of a model measured again with
    other ones is still one image of that model, and counted twice it would narrow every interval as if there were twice
    the images. Nor is the column definitions' version: an image extracted again by a later nlanalysis is still one image
    (:func:`~nlanalysis.extract.definitions.definitions_note` names the versions a report mixes). Runs that differ in the
    input are different measurements, each kept: as different variants' rows, or refused where one variant would pool them
    (:func:`_one_model_per_variant`; a report of different conventions is refused too, :func:`~.runs.write_report`)."""
    sha, how = _checkpoint_sha(run), _input(run)
    if not sha or how is None:
        return f"run {run.path}"
    return json.dumps({"checkpoint": sha, **how}, sort_keys=True, default=str)


def _statistics(settings: Any) -> dict[str, Any]:
    """``settings`` but the selection, what is saved and the column definitions: those of the statistics (and input)."""
    if not isinstance(settings, dict):
        return {}
    kept = {k: v for k, v in settings.items() if k not in _NOT_MEASUREMENT}
    if isinstance(kept.get("measure"), dict):
        kept["measure"] = {k: v for k, v in kept["measure"].items() if k != "definitions"}
    return kept


def _each_image_once(
    frame: pd.DataFrame, measurement: Mapping[str, str], settings: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with each image of a block measured by one checkpoint on one input (``measurement`` of each label,
    :func:`_measurement`) once: the row of the first run that measured it, each value it lacks (a column it did not
    measure, or NaN for that image) taken from the next run in order that has one (:func:`_fill_from_later`). Counted
    again (a shard beside its whole run, a copied folder, the same model extracted again to save its maps or with other
    JSD pairs), an image would count as two independent ones and narrow every interval. The notes say which runs' rows
    were left out and how many images; where the runs' ``settings`` (per label) of the statistics differ, which; and the
    columns whose values were taken from a later run."""
    if "image_id" not in frame or "block" not in frame:
        return frame, []
    keys = ["_m", "block", "image_id"]
    keyed = frame.assign(_m=frame["label"].map(measurement))
    first = keyed.groupby(keys, sort=False)["label"].transform("first")
    again = frame["label"] != first
    if not again.any():
        return frame, []
    settings = settings or {}
    kept, filled = _fill_from_later(keyed, again, keys)
    notes = []
    for label, rows in frame[again].groupby("label", sort=False):
        by = list(dict.fromkeys(first[rows.index]))
        differ = list(dict.fromkeys(d for b in by for d in _differing(_statistics(settings.get(b)), _statistics(settings.get(label)))))
        what = "the same checkpoint and settings" if not differ else f"the same checkpoint and input; other settings: {', '.join(differ)}"
        taken = ", ".join(f"{c} ({n} image(s))" for c, n in filled.get(label, {}).items())
        notes.append(f"`{label}`: {rows['image_id'].nunique()} image(s) measured by {', '.join(f'`{b}`' for b in by)} first ({what}) "
                     "are counted once, from there: its rows of them are left out of the tables"
                     + (f", but for the values the first lacks, taken from it: {taken}" if taken else ""))  # fmt: skip
    return kept.drop(columns="_m").reset_index(drop=True), notes


#: the run columns of a row (:func:`load_runs`): its run's, never taken from another run's row of the image
_RUN_COLUMNS = ("label", "variant", "seed", "step", "metric_name", "metric")


def _fill_from_later(
    keyed: pd.DataFrame, again: pd.Series, keys: list[str]
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """The first rows of each ``keys`` (``keyed[~again]``), each missing value of a measured column taken from the first
    later row (``keyed[again]``, in run order) of that measurement, block and image that has one; and per later label,
    the columns it filled, with how many images."""
    kept, later = keyed[~again].copy(), keyed[again]
    where = pd.MultiIndex.from_frame(kept[keys])
    filled: dict[str, dict[str, int]] = {}
    for c in [c for c in keyed.columns if c not in (*keys, *_RUN_COLUMNS)]:
        missing = kept[c].isna().to_numpy()
        donors = later[later[c].notna()].drop_duplicates(keys)  # the first later value of each image
        if not missing.any() or donors.empty:
            continue
        pos = pd.MultiIndex.from_frame(donors[keys]).get_indexer(where)
        take = missing & (pos >= 0)
        if not take.any():
            continue
        source = donors.iloc[pos[take]]
        values = pd.Series(source[c].to_numpy(), index=kept.index[take])
        kept[c] = kept[c].where(~pd.Series(take, index=kept.index), values)
        for label, n in source.groupby("label", sort=False)["image_id"].nunique().items():
            filled.setdefault(str(label), {})[c] = int(n)
    return kept, filled
