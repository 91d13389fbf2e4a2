"""``nlanalysis compare-runs OUT [--long OUT2]``: seed-paired margins over the baseline, and the plateau rule."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..files import atomic_write
from ..train.compare import load_results, paired_margins, plateau
from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "compare-runs", main, help="seed-paired mIoU margins of a training folder (and the plateau rule)",
        description="Reads the finished runs of a `nlanalysis train --out` folder (OUT/runs/*.json) and prints, per "
        "variant, the mean mIoU and the seed-paired margin over the baseline (or each --against variant) with its 95% t-interval and paired "
        "t-test p-value; a variant is called better/worse only when the interval excludes 0. With --long (the same "
        "grid on a longer schedule) also the plateau rule of reports/controls/PLAN.md.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="a training folder")
    p.add_argument("--long", type=Path, metavar="OUT2", help="the same grid trained longer")
    p.add_argument("--against", nargs="+", default=["baseline"], metavar="VARIANT",
                   help="the variants to pair with (default: baseline); e.g. --against baseline gc snl for the gate of "
                   "reports/controls/PLAN.md (is an NL block better than GC and SNL?)")
    p.add_argument("--csv", type=Path, metavar="PREFIX", help="also write PREFIX_margins.csv (and PREFIX_plateau.csv)")


def main(args: argparse.Namespace) -> int:
    short = load_results(args.out)
    margins = pd.concat([paired_margins(short, baseline=ref).assign(against=ref) for ref in args.against],
                        ignore_index=True)
    print(margins.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    tables = {"margins": margins}
    if args.long is not None:
        tables["plateau"] = plateau(short, load_results(args.long))
        print()
        print(tables["plateau"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.csv is not None:
        for name, table in tables.items():
            path = args.csv.with_name(f"{args.csv.name}_{name}.csv")
            with atomic_write(path, encoding="utf-8") as f:  # as pandas writes to a path
                table.to_csv(f, index=False)
    return 0
