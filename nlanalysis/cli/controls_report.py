"""``nlanalysis controls-report ROOT --out OUT``: the issue-16 controls report from a controls folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..controls import write_controls_report
from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "controls-report", main, help="the controls report (issue 16): margins, the gate, attention readings",
        description="Reads the numbers reports/controls/make.sh keeps in the repository (reports/controls/runs; per design D: "
        "the training grid's run records D_e12, D_e24 for the plateau rule, D/VARIANT_sSEED result sets of the finals) "
        "and writes OUT/README.md with the seed-paired "
        "margins over baseline, GC and SNL, the gate and the attention readings of reports/controls/PLAN.md, plus "
        "OUT/D_training.csv and OUT/D_attention.csv.",
    )
    p.add_argument("root", type=Path, metavar="ROOT", help="the kept numbers (reports/controls/runs)")
    p.add_argument("--out", type=Path, required=True, help="output folder (reports/controls)")


def main(args: argparse.Namespace) -> int:
    print(f"wrote {write_controls_report(args.root, args.out)}")
    return 0
