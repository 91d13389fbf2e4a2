"""``nlanalysis explore RUN_DIR``: one self-contained HTML page to hover the maps of a result set."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "explore", main, help="write one self-contained HTML page to hover every query's attention map",
                    description="Writes RUN_DIR/explore.html (or --out): the run's images with the attention map of the query "
                    "under the mouse, per site (NL block; ViT layer, head, head mean), with the statistics beside it. "
                    "No server and no network: open it from disk. Extract with --save-maps all to hover every query.")  # fmt: skip
    p.add_argument("run", metavar="RUN_DIR", help="a result set of `nlanalysis extract` with saved maps")
    p.add_argument("--out", metavar="PAGE_HTML", help="the page to write: an .html file, new or a page explore wrote (default RUN_DIR/explore.html)")
    p.add_argument("--image-ids", nargs="+", metavar="ID", help="only these images")
    p.add_argument("--image-root", metavar="DIR", help="the folder of the image files, when they moved")


def main(args: argparse.Namespace) -> int:
    from ..explore import explore
    from ..explore.page import check_page

    out = check_page(Path(args.out) if args.out else Path(args.run) / "explore.html")  # before the maps are read
    page = explore(args.run, image_ids=args.image_ids, image_root=args.image_root)
    out = page.save(out)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB, {len(page.data['images'])} images, {len(page.data['sites'])} sites")
    for note in page.data.get("notes", []):  # what the page says of what it lacks (maps files gone, pictures not found)
        print(f"note: {note}")
    return 0
