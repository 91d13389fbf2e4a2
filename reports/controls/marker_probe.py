"""Does the NL block's input carry the group marker? The marker check of reports/controls/PLAN.md.

For each checkpoint, the ridge probe of ``planted.py`` (the PLAN's fixed lambda, no tuning) from the
features at the NL block's input position -- the input of ``layer1[1]`` (the block, or in the baseline the
stage's last residual block): layer1.0's output, plus the image shortcut where a network has one -- to each item cell's group hue as ``(cos 2 pi h, sin 2 pi h)``, fitted on the
item cells of the first 300 *train* scenes, R^2 reported on the val scenes. Beside it, the same probe
from the image itself (each cell's mean RGB): how linearly the marker is written into the input.

Run from the repository root: ``python reports/controls/marker_probe.py --train-scenes DIR --val-scenes DIR
CKPT... [--out JSON] [--require R2]`` (``--require``: exit 1 when a checkpoint's val R^2 is below it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlanalysis.checkpoints.preprocess import Preprocess
from nlanalysis.models import arch_from_dict, build_arch
from nlanalysis.train.data import load_scene_set

from planted import PROBE_SCENES, block_inputs, group_hues, positions, r_squared, ridge_probe

SITE = "input of layer1.1"


def site_features(model: nn.Module, images: Tensor, pre, batch: int = 50) -> Tensor:
    """``[B, C, gh, gw]``: the input of ``model.layer1[1]`` (the NL block's input position) on ``uint8`` images."""
    return block_inputs(model, model.layer1[1], images, pre, batch)


def load_native(path: Path) -> tuple[nn.Module, Preprocess]:
    """A SceneNet in this project's native checkpoint format, with or without a block (eval mode)."""
    whole = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(whole, dict) or whole.get("format") != "nlanalysis-checkpoint":
        raise ValueError(f"{path}: not an nlanalysis native checkpoint")
    model = build_arch(arch_from_dict(whole["arch"]), truncate=False)
    model.load_state_dict(whole["state_dict"])
    return model.eval(), Preprocess.from_dict(whole.get("preprocess") or {})


def cell_rgb(images: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, 3, gh, gw]``: each grid cell's mean RGB in ``[0, 1]``."""
    return F.adaptive_avg_pool2d(images.float() / 255.0, grid)


def probe(split_features: dict[str, Tensor], split_hues: dict[str, Tensor]) -> dict[str, float]:
    """Fit on ``train``, R^2 on ``train`` and ``val``."""
    fits = {k: positions(split_features[k], split_hues[k]) for k in ("train", "val")}
    rows = ridge_probe(*fits["train"])
    return {"r2_train": r_squared(rows, *fits["train"]), "r2_val": r_squared(rows, *fits["val"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpts", type=Path, nargs="+", help="SceneNet checkpoints (any variant)")
    p.add_argument("--train-scenes", type=Path, required=True, help="the train scene folder (instances.json, images/)")
    p.add_argument("--val-scenes", type=Path, required=True, help="the val scene folder")
    p.add_argument("--out", type=Path, default=None, help="JSON of the results (default: print only)")
    p.add_argument("--require", type=float, default=None, help="exit 1 when a checkpoint's val R^2 is below this")
    args = p.parse_args(argv)
    scenes = {"train": load_scene_set(args.train_scenes / "instances.json", args.train_scenes / "images", limit=PROBE_SCENES),
              "val": load_scene_set(args.val_scenes / "instances.json", args.val_scenes / "images")}  # fmt: skip
    folders = {"train": args.train_scenes, "val": args.val_scenes}
    results, hues = [], {}
    for ckpt in args.ckpts:
        model, pre = load_native(ckpt)
        feats = {k: site_features(model, s.images, pre) for k, s in scenes.items()}
        grid = tuple(feats["train"].shape[-2:])
        if not hues:
            shape = tuple(scenes["train"].images.shape[-2:])
            hues = {k: group_hues(folders[k] / "instances.json", s.image_ids, shape, grid) for k, s in scenes.items()}
            pixels = probe({k: cell_rgb(s.images, grid) for k, s in scenes.items()}, hues)
            results.append({"source": "image (cell mean RGB)", **pixels})
            print(f"image cell RGB: R^2 val {pixels['r2_val']:.3f} (train {pixels['r2_train']:.3f})")
        r = probe(feats, hues)
        results.append({"source": str(ckpt), "site": SITE, **r})
        print(f"{ckpt}: R^2 val {r['r2_val']:.3f} (train {r['r2_train']:.3f})")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")
    below = [r["source"] for r in results if "site" in r and r["r2_val"] < (args.require if args.require is not None else -1)]
    if below:
        print(f"marker check fails (val R^2 below {args.require}): {', '.join(below)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
