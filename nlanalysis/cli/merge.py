"""``nlanalysis merge RUN_DIR... --out DIR``: combine shards of one run into one result set."""
from __future__ import annotations

import argparse

from ..extract import merge_runs
from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "merge", main, help="combine result sets of shards (extract --shard I/N) into one",
        description="Copies the per-image results of each RUN_DIR into --out and assembles metrics.csv, "
        "failures.csv and run.json. Refuses runs with different settings (checkpoint, selection, preprocessing, "
        "queries, seed) and runs that overlap (hold the same image). Exits 1 where an image failed or the merged run "
        "is not complete (a shard missing), 2 on a refusal.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="result sets of shards of one run")
    p.add_argument("--out", required=True, metavar="DIR", help="the merged result set (a new or empty folder)")


def main(args: argparse.Namespace) -> int:
    info = merge_runs(args.runs, args.out)
    c = info["counts"]
    state = "complete" if info["complete"] else f"not complete: {c['pending']} images pending (missing shards?)"
    print(f"{args.out}: merged {len(args.runs)} run(s): {c['done']} of {c['total']} images done, {c['failed']} failed; {state}")
    return 1 if c["failed"] or not info["complete"] else 0  # missing shards: a script's `merge && report` stops here
