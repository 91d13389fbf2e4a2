"""The main job: analyse the shipped trained models on the shipped demo scenes, write the report.

``nlanalysis demo`` = ``nlanalysis extract`` (every trained checkpoint in ``nlanalysis/weights``,
the validation scenes in ``nlanalysis/data/demo/scenes_val``, query points on objects, saved maps,
random-projection controls) followed by ``nlanalysis report`` over all of them. Nothing is
downloaded or trained: both the scenes and the checkpoints ship with the package.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .data.scenes import demo_scenes_path
from .extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunSpec, run_extract
from .files import require_folder
from .report.runs import Report, write_report
from .report.staging import report_folder
from .train.run import SHIPPED_DIR, shipped_checkpoints

__all__ = ["run_demo"]


def run_demo(out: str | os.PathLike[str] = "nlanalysis-demo", *, scenes: int = 120, progress: bool = True) -> Report:
    """Extract every shipped checkpoint on ``scenes`` demo scenes into ``out/runs/VARIANT`` and
    write the report to ``out/report``. Reruns resume (finished images are skipped)."""
    if scenes < 1:
        raise ValueError(f"--scenes {scenes}: give at least 1 demo scene (300 ship)")
    checkpoints = shipped_checkpoints()
    if not checkpoints:
        raise FileNotFoundError(
            f"{SHIPPED_DIR}: no trained checkpoints ship with this installation; "
            "train them with `nlanalysis train --out runs/train --ship` (see README, Training)"
        )
    out = Path(out)
    for folder in (out, out / "runs"):  # a file there: said before any extract
        require_folder(folder, "the demo's runs and report")
    report_folder(out / "report")
    ann, images = demo_scenes_path()
    runs = {}
    start = time.perf_counter()
    for variant, ckpt in checkpoints.items():
        if variant == "baseline":  # no block to analyse: it is the task-metric reference
            continue
        if progress:
            print(f"[{variant}] extract on {scenes} scenes", flush=True)
        runs[variant] = out / "runs" / variant
        spec = RunSpec(
            model=ModelSpec(ckpt),
            data=DataSpec(coco_ann=ann, coco_images=images, limit=scenes),
            output=OutputSpec(runs[variant], save_maps=True, queries="objects:3"),
            measure=MeasureSpec(jsd_pairs=256, controls=True, query_dependence="all"),
        )
        run_extract(spec, progress=progress, command=["nlanalysis", "demo", "--out", str(out), "--scenes", str(scenes)])
    report = write_report(list(runs.values()), out / "report", labels=runs)
    if progress:
        print(f"demo done in {time.perf_counter() - start:.0f} s")
    return report
