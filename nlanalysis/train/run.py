"""The whole training job: data, every variant x seed, a summary table."""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..checkpoints.loader import save_atomic
from ..data.scenes import SceneParams, demo_scenes_path, write_scenes
from ..files import atomic_write
from .compare import plain_config, check_same_job, results_frame
from .data import SceneSet, load_scene_set
from .loop import TrainConfig, TrainResult, train_variant
from .variants import ALL_VARIANTS, VARIANTS

__all__ = ["SHIPPED_DIR", "TrainJob", "run_training", "ship_checkpoints", "shipped_checkpoints", "summarize"]

#: where the trained checkpoints that ship with the package live (one seed per variant, float16)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass
class TrainJob:
    """What ``nlanalysis train`` does (defaults: the full reference job)."""

    out: Path
    variants: Sequence[str] = tuple(VARIANTS)
    seeds: Sequence[int] = (0, 1, 2)
    train_scenes: int = 3000
    val_scenes: int | None = None  # None: all shipped validation scenes
    design: str = "shared"
    data_seed: int = 0
    source: str | None = None
    config: TrainConfig | None = None
    progress: bool = True
    num_items: tuple[int, int] | None = None  # SceneParams.num_items of the job's scenes (None: the shipped (3, 6))

    def __post_init__(self) -> None:
        if self.train_scenes < 1 or (self.val_scenes is not None and self.val_scenes < 1):
            raise ValueError(f"train_scenes and val_scenes must be at least 1, got {self.train_scenes} and {self.val_scenes}")
        if not list(self.seeds) or not list(self.variants):
            raise ValueError("give at least one seed and one variant")

    @classmethod
    def quick(cls, out: Path, **kw) -> TrainJob:
        """A smoke run (< 2 minutes on 2 CPU cores): two variants, one seed, few scenes, one epoch."""
        base = dict(variants=("baseline", "embedded_gaussian"), seeds=(0,), train_scenes=128, val_scenes=48,
                    config=TrainConfig(epochs=1, snapshots=(0.0, 1.0)))  # fmt: skip
        base.update(kw)
        return cls(out=out, **base)


def _drawn(job: TrainJob) -> tuple[str, SceneParams | None]:
    """The data folders' name part for the job's drawing parameters, and the parameters (None: the shipped ones)."""
    # another --source draws other items: its own folders (a job without it must not reuse them, nor the reverse)
    source = "" if job.source is None else "_src" + hashlib.sha1(str(Path(job.source).resolve()).encode()).hexdigest()[:8]
    if job.num_items is None:
        return job.design + source, None
    lo, hi = job.num_items
    return f"{job.design}_items{lo}-{hi}{source}", SceneParams(num_items=(lo, hi))


def _train_set(job: TrainJob) -> SceneSet:
    name, params = _drawn(job)
    folder = job.out / "data" / f"train_{name}_{job.train_scenes}_seed{job.data_seed}"
    ann = folder / "instances.json"
    if not ann.is_file():  # written last by write_scenes: its presence marks a complete set
        write_scenes(folder, "train", job.train_scenes, job.data_seed, job.design, source=job.source, params=params, overwrite=True)
    return load_scene_set(ann, folder / "images")


def _val_set(job: TrainJob) -> SceneSet:
    """The shipped validation scenes of the design and ``num_items`` (300, val split, seed 0, from the Debian
    package's Fashion-MNIST); with another ``source``, drawing parameters not shipped, or where they are
    missing (an old install), the same 300 scenes written once to ``out/data``."""
    name, params = _drawn(job)
    if job.design == "shared" and params is None and job.source is None:
        return load_scene_set(*demo_scenes_path(), limit=job.val_scenes)
    if job.source is None:
        try:
            return load_scene_set(*demo_scenes_path(job.design, job.num_items), limit=job.val_scenes)
        except FileNotFoundError:  # not shipped (other parameters, an old install): write the same scenes below
            pass
    folder = job.out / "data" / f"val_{name}_300_seed0"
    if not (folder / "instances.json").is_file():
        write_scenes(folder, "val", 300, 0, job.design, source=job.source, params=params, overwrite=True)
    return load_scene_set(folder / "instances.json", folder / "images", limit=job.val_scenes)


def run_training(job: TrainJob) -> pd.DataFrame:
    """Train every (variant, seed); returns the history (one row per snapshot), also written to
    ``out/training.csv``, with ``out/summary.csv`` and ``out/summary.json`` beside it.

    Resumable: each finished run is recorded in ``out/runs/{variant}_s{seed}.json``, and running the
    same job again skips the recorded runs (an interrupted run starts over)."""
    unknown = [v for v in job.variants if v not in ALL_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {sorted(ALL_VARIANTS)}")
    job.out.mkdir(parents=True, exist_ok=True)
    config = job.config or TrainConfig()
    train, val = _train_set(job), _val_set(job)
    data = {"train": train.digest(), "val": val.digest()}  # what a finished run's record must match to be reused
    about = f"train {train.source} ({len(train)} scenes), val {val.source} ({len(val)} scenes)"
    start = time.perf_counter()
    runs = [(seed, variant) for seed in dict.fromkeys(job.seeds)  # seed-major: a complete set of variants exists early
            for variant in dict.fromkeys(job.variants)]  # (each run once, however often it is named)
    done = {run: _done_run(job.out, run[1], TrainConfig(**{**vars(config), "seed": run[0]}), data)
            for run in runs}  # every recorded run checked before any is trained: no folder of mixed settings
    check_same_job(job.out / "runs", {"config": plain_config(config), "data": data})  # and every other run of the folder
    results: list[TrainResult] = []
    for seed, variant in runs:
        cfg = TrainConfig(**{**vars(config), "seed": seed})
        result = done[seed, variant]
        if result is None:
            ckpts = job.out / "checkpoints"  # of a killed run of it: its snapshots and its writer's temporary files
            for stale in [*ckpts.glob(f"{variant}_s{seed}_step*.pth"), *ckpts.glob(f".{variant}_s{seed}[._]*.tmp")]:
                stale.unlink()
            result = train_variant(variant, train, val, cfg, job.out / "checkpoints", progress=job.progress)
            _record_run(job.out, result, cfg, data, about)
        results.append(result)
        if job.progress:
            print(f"{variant:>22} seed {seed}: mIoU {result.miou:.4f}  ({result.seconds:.0f} s)", flush=True)
    history = pd.DataFrame([row for r in results for row in r.history])
    _replace_text(job.out / "training.csv", history.to_csv(index=False))
    summary = summarize(results)
    _replace_text(job.out / "summary.csv", summary.to_csv(index=False))
    info = {"seconds_total": time.perf_counter() - start, "train_scenes": len(train), "val_scenes": len(val),
            "design": job.design, "num_items": job.num_items or SceneParams().num_items, "train_data": train.source, "val_data": val.source, "config": vars(config),
            "runs": [{"variant": r.variant, "seed": r.seed, "miou": r.miou, "seconds": r.seconds} for r in results]}  # fmt: skip
    _replace_text(job.out / "summary.json", json.dumps(info, indent=2, default=list))
    return history


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (a killed job leaves the old file whole, not half a new one)."""
    with atomic_write(path) as f:
        f.write(text)


def _run_file(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / f"{variant}_s{seed}.json"


def _record_run(out: Path, result: TrainResult, config: TrainConfig, data: dict[str, str], about: str = "") -> None:
    """Mark a finished run (after its final checkpoint), so a rerun of the job skips it. ``data``: the
    digests of the train and val scenes (:meth:`SceneSet.digest`); ``about``: where they were read from."""
    path = _run_file(out, result.variant, result.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": json.loads(json.dumps(vars(config), default=list)), "data": data, "data_files": about,
              "result": {k: v for k, v in vars(result).items() if k != "checkpoints"}}  # fmt: skip
    _replace_text(path, json.dumps(record, indent=1))


def _done_run(out: Path, variant: str, config: TrainConfig, data: dict[str, str]) -> TrainResult | None:
    """The result of a run this job already finished in ``out`` (``None``: train it); refuses a run
    recorded there with other settings or other scenes (compared by content, not by path)."""
    path = _run_file(out, variant, config.seed)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        TrainResult(**record["result"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a finished-run record ({type(err).__name__}: {err}); delete it to train the run again") from None
    wanted = {"config": json.loads(json.dumps(vars(config), default=list)), "data": data}
    found = {"config": plain_config(record.get("config") or {}, keep_seed=True), "data": record.get("data")}
    if found != wanted:
        raise ValueError(f"{path}: this run was trained with other settings or other scenes; use another --out for a new configuration")
    return TrainResult(**record["result"])


def summarize(results: Sequence[TrainResult]) -> pd.DataFrame:
    """Per variant: final mIoU mean and sample sd over seeds, and the margin over the baseline."""
    frame = results_frame(results)  # (which refuses a run given twice)
    table = frame.groupby("variant", sort=False).agg(
        seeds=("seed", "count"), miou=("miou", "mean"), miou_sd=("miou", "std"), seconds=("seconds", "sum")
    )
    if "baseline" in table.index:
        base = frame[frame.variant == "baseline"].set_index("seed").miou
        margins = frame.assign(margin=frame.miou - frame.seed.map(base)).groupby("variant", sort=False).margin
        table["margin"] = margins.mean()
        table["margin_sd"] = margins.std()
    return table.reset_index()


def ship_checkpoints(checkpoint_dir: str | Path, dest: str | Path = SHIPPED_DIR, seed: int = 0,
                     variants: Sequence[str] | None = None) -> list[Path]:  # fmt: skip
    """Copy the final checkpoint of ``seed`` for every variant (of ``variants``, if given) to ``dest/{variant}.pth``, with
    floating-point tensors stored as float16 (they load into float32 models unchanged in layout;
    the rounding is ~1e-3 relative). Returns the written files."""
    import torch

    dest = Path(dest)
    written = []
    for variant in (v for v in ALL_VARIANTS if variants is None or v in variants):
        src = Path(checkpoint_dir) / f"{variant}_s{seed}.pth"
        if not src.is_file():
            continue
        payload = torch.load(src, map_location="cpu", weights_only=True)
        payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        payload["meta"] = {**payload.get("meta", {}), "storage": "float16", "shipped_from": src.name}
        written.append(save_atomic(payload, dest / f"{variant}.pth"))
    return written


def shipped_checkpoints(dest: str | Path = SHIPPED_DIR) -> dict[str, Path]:
    """``{variant: path}`` of the trained checkpoints shipped with the package (in variant order)."""
    dest = Path(dest)
    return {v: dest / f"{v}.pth" for v in ALL_VARIANTS if (dest / f"{v}.pth").is_file()}
