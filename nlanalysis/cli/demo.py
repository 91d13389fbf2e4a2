"""``nlanalysis demo``: the shipped trained models on the shipped scenes, extract + report."""
from __future__ import annotations

import argparse
from pathlib import Path
from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "demo", run, help="analyse the shipped trained NL/GC models on the shipped demo scenes and write the report",
        description="Runs `extract` for every trained checkpoint shipped with the package on the shipped "
        "Fashion-MNIST validation scenes, then `report` over all of them, and prints where the report is.",
    )
    p.add_argument("--out", type=Path, default=Path("nlanalysis-demo"), help="output folder (default ./nlanalysis-demo)")
    p.add_argument("--scenes", type=int, default=120, help="demo scenes to analyse (default 120, at most 300)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    report = run_demo(args.out, scenes=args.scenes, progress=not args.quiet)
    print(f"report: {report.index_md} (and {report.index_html.name})")
    return 0
