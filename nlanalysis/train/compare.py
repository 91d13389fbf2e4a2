"""Seed-paired comparisons of trained variants: margins over the baseline and the plateau rule.

A training folder (``nlanalysis train --out OUT``) records each finished run in ``OUT/runs/*.json``;
:func:`load_results` reads them back. :func:`paired_margins` compares every variant with the
baseline seed by seed (the same seed gives both the same training scenes and batch order; their trunks start
alike only up to where the block is built: the block draws its initial weights from the same stream, so the layers
built after it start from other draws), with a
Student-t interval and a paired t-test over seeds; :func:`plateau` applies the plateau rule of
``reports/controls/PLAN.md`` to a short and a long schedule of the same grid.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..metrics.intervals import mean_ci
from .loop import TrainConfig, TrainResult

__all__ = ["check_same_job", "load_results", "plain_config", "paired_margins", "plateau", "results_frame"]


def load_results(out: str | Path) -> list[TrainResult]:
    """The finished runs of a training folder (``out/runs/{variant}_s{seed}.json``), or of a folder holding
    those records themselves (a copy kept in a repository, as ``reports/controls/runs/D_e12``), sorted by file name."""
    folder = Path(out) / "runs"
    if not folder.is_dir():
        folder = Path(out)
        if not any(folder.glob("*_s*.json")):
            raise FileNotFoundError(f"{out}: no finished runs (neither a `nlanalysis train --out` folder nor its run records)")
    check_same_job(folder)
    results, where = [], {}
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())["result"]
            result = TrainResult(**{k: v for k, v in record.items() if k != "checkpoints"})
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a finished-run record ({err})") from err
        first = where.setdefault((result.variant, result.seed), path)
        if first != path:  # a copy would count its seed twice in every paired interval
            raise ValueError(f"{path} and {first.name}: both record {result.variant!r} seed {result.seed}")
        results.append(result)
    return results


def plain_config(config: TrainConfig | Mapping[str, Any], keep_seed: bool = False) -> dict[str, Any]:
    """A run's training settings as its record holds them (JSON types), a field added later at its default; without the
    seed unless ``keep_seed`` (runs of one job differ only in it)."""
    given = vars(config) if isinstance(config, TrainConfig) else dict(config)
    plain = json.loads(json.dumps({**vars(TrainConfig()), **given}, default=list))
    return plain if keep_seed else {k: v for k, v in plain.items() if k != "seed"}


def check_same_job(folder: Path, wanted: Mapping[str, Any] | None = None) -> None:
    """Refuse run records in ``folder`` (``*_s*.json``) that were trained with other settings (the seed aside) or on other
    scenes than ``wanted`` (``{"config": ..., "data": ...}``), or than each other: their margins would compare
    runs of different jobs (another design's scenes, another schedule) as if they were one grid."""
    first: tuple[Path, dict] | None = None if wanted is None else (Path("this job"), dict(wanted))
    for path in sorted(Path(folder).glob("*_s*.json")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue  # named by the reader of the record
        if not isinstance(record, dict) or ("config" not in record and "data" not in record):  # not a record / older layout
            continue
        found = {"config": plain_config(record.get("config") or {}), "data": record.get("data")}
        if first is None:
            first = (path, found)
        elif found != first[1]:
            what = [k for k in ("config", "data") if found.get(k) != first[1].get(k)]
            detail = {k: (first[1]["config"].get(k), v) for k, v in found["config"].items() if first[1]["config"].get(k) != v}
            raise ValueError(f"{path}: trained with other {' and '.join('settings' if w == 'config' else 'scenes' for w in what)} "
                             f"than {first[0]}{f' ({detail})' if detail else ''}; one folder holds one job (use another --out)")


def results_frame(results: Sequence[TrainResult]) -> pd.DataFrame:
    """One row per run: variant, seed, miou, pixel_accuracy, seconds."""
    rows = [{"variant": r.variant, "seed": r.seed, "miou": r.miou, "pixel_accuracy": r.pixel_accuracy,
             "seconds": r.seconds} for r in results]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["variant", "seed", "miou", "pixel_accuracy", "seconds"])
    twice = frame[frame.duplicated(["variant", "seed"])]
    if len(twice):  # pairing by seed would match every copy with every copy
        raise ValueError("runs given twice: " + ", ".join(f"{v} seed {s}" for v, s in zip(twice.variant, twice.seed)))
    return frame


def _paired_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test (mean of the differences = 0); NaN below 2 pairs."""
    from scipy import stats

    if diffs.size < 2:
        return math.nan
    sd = float(diffs.std(ddof=1))
    if sd == 0.0:
        return 0.0 if diffs.mean() != 0 else 1.0
    t = float(diffs.mean()) / (sd / math.sqrt(diffs.size))
    return float(2.0 * stats.t.sf(abs(t), diffs.size - 1))


def paired_margins(results: Sequence[TrainResult], baseline: str = "baseline", level: float = 0.95) -> pd.DataFrame:
    """Per variant: final mIoU (mean, sd over seeds) and its seed-paired margin over ``baseline``.

    Columns: ``variant, seeds, pairs, miou, miou_sd, margin, margin_low, margin_high, margin_p, verdict,
    seconds_per_run``. Only seeds that both the variant and the baseline have are paired (``pairs`` of the
    variant's ``seeds``; ``miou`` is over all of them). ``verdict``
    is ``better``/``worse`` only when the interval excludes 0, else ``no difference shown``.
    """
    frame = results_frame(results)
    if baseline not in set(frame.variant):
        raise ValueError(f"no {baseline!r} runs to pair with (variants: {sorted(set(frame.variant))})")
    base = frame[frame.variant == baseline].set_index("seed").miou
    rows = []
    for variant, runs in frame.groupby("variant", sort=False):
        paired = runs[runs.seed.isin(base.index)]
        diffs = (paired.set_index("seed").miou - base).dropna().to_numpy()
        ci = mean_ci(diffs, level=level)
        low, high = ci.low, ci.high
        verdict = "better" if low > 0 else "worse" if high < 0 else "no difference shown"
        if variant == baseline:
            verdict = "baseline"
        rows.append({"variant": variant, "seeds": len(runs), "pairs": len(diffs), "miou": runs.miou.mean(), "miou_sd": runs.miou.std(),
                     "margin": ci.mean, "margin_low": low, "margin_high": high, "margin_p": _paired_p(diffs),
                     "verdict": verdict, "seconds_per_run": runs.seconds.mean()})  # fmt: skip
    return pd.DataFrame(rows)


def plateau(short: Sequence[TrainResult], long: Sequence[TrainResult], min_gain: float = 0.01) -> pd.DataFrame:
    """The plateau rule: a variant's short schedule has plateaued when the seed-paired mean of
    mIoU(long) - mIoU(short) is at most ``max(min_gain, sd over seeds of the short mIoU)``.

    Columns: ``variant, pairs, miou_short, miou_long, gain, threshold, plateau`` (``plateau`` is
    ``None`` for a variant without paired runs yet, or with one seed of the short schedule: no sd over seeds)."""
    a, b = results_frame(short), results_frame(long)
    rows = []
    for variant, runs in a.groupby("variant", sort=False):
        s = runs.set_index("seed").miou
        l_ = b[b.variant == variant].set_index("seed").miou.dropna()  # a failed long run is no pair
        seeds = s.dropna().index.intersection(l_.index)
        gain = float((l_[seeds] - s[seeds]).mean()) if len(seeds) else math.nan
        sd = float(s.std()) if len(s) > 1 else math.nan  # one seed has no spread: the rule cannot be read yet
        threshold = max(min_gain, sd) if not math.isnan(sd) else math.nan
        rows.append({"variant": variant, "pairs": len(seeds), "miou_short": s.mean(),
                     "miou_long": float(l_[seeds].mean()) if len(seeds) else math.nan, "gain": gain,
                     "threshold": threshold, "plateau": bool(gain <= threshold) if len(seeds) and not math.isnan(threshold) else None})  # fmt: skip
    return pd.DataFrame(rows)
