"""``nlanalysis demo-data``: write a COCO scene set composed from Fashion-MNIST items."""
from __future__ import annotations

import argparse
import time

from ..data.fashion_mnist import DEFAULT_SOURCE, INSTALL_HINT
from ..data.scenes import DESIGNS, SPLITS, SceneParams, write_scenes
from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "demo-data", run, help="write a small COCO data set of multi-object Fashion-MNIST scenes",
        description="Composes scenes of 3-6 Fashion-MNIST items (COCO instances JSON with boxes, RLE masks and "
        "10 categories, plus RGB PNGs). Design 'shared' puts one class per scene, so other items disambiguate a "
        "corrupted one (a dense task where global context helps); 'independent' draws classes at random (the "
        "negative control); 'query-specific' holds two tinted groups of two look-alike classes, so a corrupted item "
        "is resolved only by its own group (the positive control); 'query-specific-v4' holds the same look-alike pair in every "
        f"scene, in two tinted groups of equal size (nlanalysis.data.scenes_v4). Fashion-MNIST is read from {DEFAULT_SOURCE} (`{INSTALL_HINT}`) or --source.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (instances.json + images/)")
    p.add_argument("--split", choices=sorted(SPLITS), default="train",
                   help="train: items from the Fashion-MNIST train set; val: from its test set (default: train)")
    p.add_argument("--num", type=int, default=1000, metavar="N", help="number of scenes (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="scene i uses numpy default_rng([seed, i]) (default: 0)")
    p.add_argument("--design", choices=DESIGNS, default="shared", help="class sampling (default: shared)")
    p.add_argument("--size", type=int, default=112, help="canvas side in pixels (default: 112)")
    p.add_argument("--num-items", nargs=2, type=int, metavar=("LO", "HI"),
                   help="items per scene, as SceneParams.num_items (default 3 6; query-specific groups hold 2..HI//2, "
                   "query-specific-v4's max(2, ceil(LO/2))..HI//2 each, equal)")
    p.add_argument("--source", metavar="DIR", help="folder with the Fashion-MNIST IDX files (.gz or not)")
    p.add_argument("--overwrite", action="store_true", help="replace a scene set already in --out")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    params = SceneParams(num_items=tuple(args.num_items)) if args.num_items else None
    path = write_scenes(args.out, args.split, args.num, args.seed, args.design, args.size, args.source,
                        params=params, overwrite=args.overwrite)
    print(f"wrote {args.num} {args.design} scenes ({args.split}, seed {args.seed}, {args.size}x{args.size}) "
          f"to {path} and {path.parent / 'images'} in {time.perf_counter() - start:.1f} s")
    return 0
