"""``nlanalysis report RUN_DIR... --out DIR``: the figures, tables and text of result sets."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..extract.results import ResultSet
from ..report.runs import write_report
from .vit_report import head_arg


def _label(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--label {text!r}: expected NAME=RUN_DIR")
    return name, path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="figures, tables (CSV/Markdown/LaTeX) and a short text from result sets",
        description="Writes OUT/index.md and OUT/index.html with GCNet's Table 1 form (task metric, input, output, att "
        "with 95% CIs, JSD, controls and diagnostics), a text of the numbers, and figures: each query's attention map "
        "over the image (GCNet Figure 2 form), distributions across images, statistics over training, and "
        "query-distance heat maps. Runs are labelled from their checkpoint's meta (variant, seed, step, task metric) "
        "or --label; runs of one variant with several seeds are pooled (CI over seeds). A ViT run (extract --model ... "
        "--save-maps) is reported alone, per layer and head, as `nlanalysis vit-report` does. Each run extracted with "
        "--save-maps all also gets its `nlanalysis explore` page, OUT/explore/LABEL.html, linked from the index.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="result sets of `nlanalysis extract` (use --save-maps for map figures)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="report folder, e.g. reports/NAME (an earlier report's files there are replaced, any other file is kept)")  # fmt: skip
    p.add_argument("--label", action="append", type=_label, default=[], metavar="NAME=RUN_DIR",
                   help="name a run (repeatable); a run named here need not be listed again")  # fmt: skip
    p.add_argument("--blocks", nargs="+", metavar="GLOB", help="report only blocks whose dotted name matches")
    p.add_argument("--images", type=int, default=6, metavar="N", help="images per attention-map figure (default 6)")
    p.add_argument("--image-ids", nargs="+", metavar="ID", help="draw these images in the attention-map figures")
    p.add_argument("--image-root", type=Path, metavar="DIR", help="folder of the image files, if they moved since extract")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf"], help="figure formats (png needed)")
    p.add_argument("--title", help="the report's heading")
    p.add_argument("--baseline-metric", type=float, metavar="X",
                   help="task metric of the model without a block, drawn as a line over training (e.g. the baseline's "
                        "mean mIoU in reports/training/summary.csv)")  # fmt: skip
    p.add_argument("--no-explore", action="store_true",
                   help="write no explore pages (the index gives the command that writes each): for reports kept in a "
                        "repository, where a page of every query of many images is too large")  # fmt: skip
    vit = p.add_argument_group("a ViT run")
    vit.add_argument("--nl-table", type=Path, metavar="CSV", help="Table 1 of an NL report to compare with")
    vit.add_argument("--heads", nargs=2, type=head_arg, metavar="LAYER:HEAD",
                     help="the two heads to draw (default: lowest and highest att)")  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=main)


def explore_page_writer(image_root: Path | None) -> Callable[[ResultSet, Path], Path]:
    """What the report calls to write a run's explore page (the report cannot import the explore package:
    it sits above it; :mod:`nlanalysis.report.explore_links`)."""

    def write(run: ResultSet, path: Path) -> Path:
        from ..explore import explore

        return explore(run, image_root=image_root).save(path)

    return write


def main(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise ValueError(f"--images {args.images}: need at least 1")
    names = [name for name, _ in args.label]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # a dict of them would keep the last run of each name and drop the others unseen
        raise ValueError(f"--label {', '.join(twice)}: a label names one run; given more than once")
    report = write_report(args.runs, args.out, labels=dict(args.label), blocks=args.blocks, images=args.images,
                          image_ids=args.image_ids, image_root=args.image_root, formats=args.formats, title=args.title,
                          nl_table=args.nl_table, heads=args.heads,
                          explore=None if args.no_explore else explore_page_writer(args.image_root),
                          baseline_metric=args.baseline_metric)  # fmt: skip
    table = report.tables.get("table1", report.tables.get("layers"))
    print(f"{report.index_md} (and index.html): {len(table)} table row(s), {len(report.figures)} figure(s)")
    for page in report.pages:
        print(f"explore page: {page}")
    for line in report.text:
        print(f"- {line}")
    for note in report.notes:
        print(f"note: {note}")
    return 0
