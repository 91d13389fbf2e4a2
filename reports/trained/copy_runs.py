"""Copy result sets into reports/trained/runs/NAME/ (metrics.csv, run.json, images.csv, failures.csv; not the
maps) with each checkpoint's meta (variant, seed, step, task metric) written into run.json's ``checkpoint.meta``,
so the report reads them from the repository without the checkpoints (:func:`nlanalysis.report.describe_run`).

    python reports/trained/copy_runs.py RUN_DIR...
"""
import json
import shutil
import sys
from pathlib import Path

from nlanalysis.checkpoints import load_checkpoint

DEST = Path(__file__).resolve().parent / "runs"

for run in map(Path, sys.argv[1:]):
    out = DEST / run.name
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "images.csv", "failures.csv"):
        if (run / name).is_file():
            shutil.copyfile(run / name, out / name)
    info = json.loads((run / "run.json").read_text())
    ckpt = info.get("checkpoint", {})
    if "meta" not in ckpt and ckpt.get("path"):
        ckpt["meta"] = load_checkpoint(ckpt["path"]).meta
    (out / "run.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    print(out)
