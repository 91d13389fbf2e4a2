"""``nlanalysis train``: train the reference NL/GC scene models (CPU, seeded)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..data.scenes import DESIGNS
from ..train import ALL_VARIANTS, TrainConfig
from ..train.run import SHIPPED_DIR, TrainJob, run_training, ship_checkpoints
from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "train", run, help="train the reference NL/GC variants on Fashion-MNIST scenes",
        description="Trains SceneNet variants (no block, the four NL pairwise functions, SNL, GC, and a two-NL "
        "variant; the controls se, pooled_fc and danet_pam on request) for per-pixel classification of "
        "Fashion-MNIST scenes (--design). Training scenes come from the Debian package dataset-fashion-mnist (or "
        "--source); validation uses the 300 scenes shipped with the package for the design (and --num-items) where "
        "they ship, else (other parameters, or --source) the same 300 scenes written to OUT/data (val split, seed 0). Checkpoints (native format, mIoU in the "
        "meta) go to OUT/checkpoints, the history to OUT/training.csv, the per-variant summary to OUT/summary.csv. "
        "Rerunning the same command skips the runs already finished in OUT (OUT/runs), so a long job can go in "
        "batches.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--variants", nargs="+", choices=sorted(ALL_VARIANTS),
                   help="default: the reference variants (all but the controls se, pooled_fc, danet_pam)")
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    p.add_argument("--train-scenes", type=int, help="training scenes to generate (default 3000)")
    p.add_argument("--val-scenes", type=int, help="validation scenes to use (default: all 300)")
    p.add_argument("--epochs", type=int, help="default 6")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--snapshots", nargs="+", type=float, metavar="F",
                   help="fractions of training with a checkpoint and held-out mIoU (default 0 0.25 0.5 1)")
    p.add_argument("--design", choices=DESIGNS, default="shared")
    p.add_argument("--num-items", nargs=2, type=int, metavar=("LO", "HI"),
                   help="items per scene, as SceneParams.num_items (default 3 6; query-specific groups hold 2..HI//2, "
                   "query-specific-v4's max(2, ceil(LO/2))..HI//2 each, equal); "
                   "then the validation scenes are written too, not the shipped ones")
    p.add_argument("--image-shortcut", action="store_true",
                   help="add a 1x1 conv of the image's 8 x 8 cell means to the block's input position, in every "
                   "variant (SceneNetArch.image_shortcut; issue 16's v3 control design)")
    p.add_argument("--source", help="folder with Fashion-MNIST IDX .gz files (default: the Debian package's)")
    p.add_argument("--ship", type=Path, metavar="DIR", nargs="?", const=SHIPPED_DIR,
                   help="afterwards copy the final checkpoint of this job's variants, of seed 0 (else the first seed "
                   "given), to DIR as float16 (default DIR: the package's weights folder, the checkpoints that ship with it)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 variants, 1 seed, 128 scenes, 1 epoch (< 2 min)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                   "snapshots": args.snapshots}.items() if v is not None}  # fmt: skip
    if args.image_shortcut:
        overrides["image_shortcut"] = True
    job_kw = {k: v for k, v in {
        "variants": args.variants, "seeds": args.seeds, "train_scenes": args.train_scenes,
        "val_scenes": args.val_scenes}.items() if v is not None}  # fmt: skip
    job_kw.update(design=args.design, source=args.source, progress=not args.quiet,
                  num_items=tuple(args.num_items) if args.num_items else None)
    job = TrainJob.quick(args.out, **job_kw) if args.quick else TrainJob(out=args.out, **job_kw)
    if overrides:
        job.config = TrainConfig(**{**vars(job.config or TrainConfig()), **overrides})
    run_training(job)
    summary = pd.read_csv(args.out / "summary.csv")
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 160):
        print(summary.to_string(index=False))
    print(f"checkpoints in {args.out / 'checkpoints'}; history {args.out / 'training.csv'}")
    if args.ship:
        seed = 0 if 0 in job.seeds else job.seeds[0]
        for path in ship_checkpoints(args.out / "checkpoints", args.ship, seed=seed, variants=job.variants):
            print(f"shipped {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    return 0
