"""Reading a result set back: ``nlanalysis.load_run(RUN_DIR)``."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..metrics.grouped import grouped_intervals
from ..schema import HEAD_MEAN, names
from .maps import MapsIndex
from .store import FAILURE_COLUMNS, RunStore, _read_json, assembled_text, frame_from_csv, is_run_file, parts_digest

__all__ = ["SUMMARY_COLUMNS", "ResultSet", "head_mean_rows", "load_run", "summarize"]


@dataclass
class ResultSet:
    """A run of ``nlanalysis extract``.

    Attributes:
        path: the run directory.
        metrics: one row per (image, block) (``metrics.csv``; see ``nlanalysis.extract``); for a
            ViT run, per (image, layer, head) with ``head == -1`` the head mean.
        failures: images that could not be analysed, with the reason.
        images: the whole selection in run order (``key``, ``image_id``, ``file_name``).
        info: ``run.json`` (settings, checkpoint, preprocessing, versions, times, counts).
        maps: ``{image_id: ImageMaps}``, lazy: a file is read when its image is first touched.
        complete: every selected image is done or failed.
        metrics_source: where ``metrics`` was read (``RUN_DIR/metrics.csv``, or its parts), named in errors.
    """

    path: Path
    metrics: pd.DataFrame
    failures: pd.DataFrame
    images: pd.DataFrame
    info: dict[str, Any]
    maps: MapsIndex
    complete: bool
    metrics_source: str = ""

    @property
    def analysis(self) -> str:
        """``nl-blocks`` (NL/GC blocks of a checkpoint) or ``vit-heads`` (a ViT's attention heads)."""
        return str(self.info.get("analysis", "nl-blocks"))  # runs made before ViTs were supported

    def summary(self) -> pd.DataFrame:
        """Mean of each statistic per block (over images; ViT: per layer, of the head-mean rows)."""
        return summarize(self.metrics)


#: statistics averaged per block in summaries: the ``stat`` columns of :mod:`nlanalysis.schema`.
SUMMARY_COLUMNS = names(roles=("stat",))


def head_mean_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per image and block: a ViT run's (a ``head`` column) head-mean rows
    (``head == HEAD_MEAN``), an NL/GC run's rows as they are."""
    return metrics[metrics["head"] == HEAD_MEAN] if "head" in metrics else metrics


def summarize(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean of each of :data:`SUMMARY_COLUMNS` per block, blocks in run order (NaN skipped; the
    table engine :func:`~nlanalysis.metrics.grouped.grouped_intervals`, intervals left out).

    ViT runs (a ``head`` column) are summarised by their head-mean rows (:func:`head_mean_rows`).
    """
    metrics = head_mean_rows(metrics)
    if metrics.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    cols = [c for c in SUMMARY_COLUMNS if c in metrics]
    return grouped_intervals(metrics, ["block"], cols).set_index("block")[cols]


def load_run(path: str | os.PathLike[str]) -> ResultSet:
    """Open a result set written by ``nlanalysis extract`` (or ``merge``).

    A run still in progress, or killed, is read from its per-image parts, so what is done so far
    is always visible; ``complete`` says whether anything is pending. A result set copied without
    its ``parts/`` (``metrics.csv``, ``failures.csv``, ``run.json``, ``images.csv``) is read from
    those files, with the counts ``run.json`` recorded.
    """
    store = RunStore(path)
    info = store.info()
    images = store.images()
    id_type = info["settings"]["selection"]["id_type"]
    keys = images["key"].tolist()
    metrics_csv = store.root / "metrics.csv"
    ids = dict(zip(images["image_id"], images["key"]))
    saved = bool(info["settings"].get("save_maps"))
    if not store.parts.is_dir() and is_run_file(metrics_csv):  # a directory or a pipe there is named, not read as none
        return _load_assembled(store, info, images, lambda done: MapsIndex(store.maps, {i: ids[i] for i in done if i in ids}, saved))
    done = store.done_keys()  # maps of images not done (left by a process killed before their part) are not the run's
    maps = MapsIndex(store.maps, {i: key for i, key in ids.items() if key in done}, saved)
    done_here = done & set(keys)  # metrics.csv is read where it holds exactly these parts (older run.json: as many)
    fresh = info["assembled_keys"] == parts_digest(done_here) if "assembled_keys" in info else info.get("assembled_parts") == len(done_here)
    text = None
    if is_run_file(metrics_csv) and fresh:
        with contextlib.suppress(ValueError):  # changed since it was assembled: the parts say what it held
            text = assembled_text(store.root, "metrics.csv", info)
    if text is not None:
        metrics, source = frame_from_csv(text, id_type, metrics_csv), str(metrics_csv)
    else:  # not assembled yet (running or killed), or metrics.csv changed since: read the parts
        metrics, source = frame_from_csv(store.read_metrics_text(keys), id_type, store.parts), f"{store.parts} (its parts in run order)"
    failed = store.failed_keys() - store.done_keys()
    failures = pd.DataFrame([_read_json(store.failure_path(k)) for k in keys if k in failed], columns=FAILURE_COLUMNS)
    counts = store.counts(keys)
    return ResultSet(store.root, metrics, failures, images, info, maps, counts["pending"] == 0, source)


def _load_assembled(store: RunStore, info: dict[str, Any], images: pd.DataFrame, index: Callable[[list], MapsIndex]) -> ResultSet:
    """A result set without ``parts/``: its assembled ``metrics.csv`` and ``failures.csv``, ``run.json``'s counts; ``index``
    makes the maps index of the images ``metrics.csv`` holds."""
    id_type = info["settings"]["selection"]["id_type"]
    metrics_csv, failures_csv = store.root / "metrics.csv", store.root / "failures.csv"
    metrics = frame_from_csv(assembled_text(store.root, "metrics.csv", info), id_type, metrics_csv)
    failures = frame_from_csv(assembled_text(store.root, "failures.csv", info), id_type, failures_csv) if is_run_file(failures_csv) else pd.DataFrame()
    failures = failures if len(failures.columns) else pd.DataFrame(columns=FAILURE_COLUMNS)
    counts = info.get("counts") or {}
    complete = bool(info.get("complete")) and counts.get("done") == (metrics["image_id"].nunique() if len(metrics) else 0)
    maps = index(list(dict.fromkeys(metrics["image_id"])) if len(metrics) else [])
    return ResultSet(store.root, metrics, failures, images, info, maps, complete, str(metrics_csv))
