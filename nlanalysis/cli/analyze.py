"""``nlanalysis analyze``: the three statistics per block for images, printed as a table."""
from __future__ import annotations

import argparse

import pandas as pd
import torch

from ..analyze import analyze
from ..checkpoints.preprocess import Preprocess
from ..data import collate, load_image, prepare_image, sample_photos
from ..examples import EXAMPLE_VARIANTS, example_model
from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "analyze", run, help="print the GCNet statistics of every NL/GC block for a few images",
        description="Runs the built-in example models (untrained ResNet-50 with an NL block before the "
        "last block of res4, one per pairwise function, and a GC model) on images and prints, per block, "
        "the mean pairwise cosine distances of inputs, outputs (z - x) and attention maps.",
    )
    p.add_argument("--images", nargs="+", metavar="PATH", help="image files (default: matplotlib's grace_hopper.jpg)")
    p.add_argument("--variants", nargs="+", default=list(EXAMPLE_VARIANTS), choices=EXAMPLE_VARIANTS)
    p.add_argument("--scale", nargs=2, type=int, default=(1333, 800), metavar=("LONG", "SHORT"), help="resize bound")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")


def run(args: argparse.Namespace) -> int:
    if args.images:
        named = {path: load_image(path) for path in args.images}
    else:
        named = sample_photos(["grace_hopper"])
    pre = Preprocess(scale=tuple(args.scale))
    prepared = [prepare_image(img, pre) for img in named.values()]
    images, valid = collate(prepared)
    frames = []
    torch.set_grad_enabled(False)
    for variant in args.variants:
        frame = analyze(example_model(variant), images, valid=valid, image_ids=list(named))
        frame.insert(0, "variant", variant)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    cols = ["variant", "image", "block", "height", "width", "input", "output", "att", "att_jsd", "att_entropy", "att_zero_rows"]
    print(f"{len(named)} image(s), input {tuple(images.shape[-2:])}; untrained example networks (see `nlanalysis.examples`)")
    print("distances: mean over all ordered pairs of positions (i = j included) of 1 - cos; JSD in bits")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(table[cols].to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0
