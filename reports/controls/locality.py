"""The locality control of the object-context lifts (reports/controls/PLAN.md, session 15, 02:50 and 02:55).

Maps by spatial distance alone read an own-object lift above 1 and an own-group lift below 1 (the planted check's
locality twins, PLAN 02:20 and 02:40), so a lift read alone does not say object- or group-specific. The control
(``nlanalysis.metrics.locality_control``, what ``extract --locality-control`` adds as it measures) gives each image's
trained maps a locality-matched counterpart: maps ``softmax_j(-||p_i - p_j||^2 / (2 sigma^2))`` over the image's
cells (``p``: cell centres in input pixels), ``sigma`` set so that their mean attention distance (as the suite
computes ``att_distance_px``) equals the image's trained ``att_distance_px`` (NaN where the target lies beyond the
uniform map's distance until session 16; since then ``sigma = inf``, the uniform map, there), and the same
object-context statistics on them, with the cells labelled as ``extract`` labels them (each cell takes the object at
its centre pixel, COCO categories); ratios are read only over controls whose lift is at least 1e-3 (session 16). This script computes it after the
fact, from result sets extracted without the flag.

Everything it needs is in a kept result set (``metrics.csv``: per image and block ``att_distance_px`` and the
lifts) and the scenes' annotations: no model, no maps. Reading, per group of result sets (their names' prefix
before ``_s<seed>``), for ``same_category_lift`` and ``own_object_lift_objects``: the log of trained / control per
image, its mean and 95% interval over images nested in seeds (``nlanalysis.tables.summarise``), "above its
locality control" where the interval of the ratio lies above 1, "below" where below 1, else "not distinguishable
from locality".

Run from the repository root: ``python reports/controls/locality.py --ann ANN SET... [--out CSV]`` (``make.sh
locality`` runs the 02:55 entry's own check on the planted/locality sets first, then the finals).
"""
from __future__ import annotations

import argparse
import functools
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from nlanalysis.capture import cell_centres
from nlanalysis.controls import ROUNDING
from nlanalysis.extract.coco import load_coco
from nlanalysis.extract.object_sites import compact_labels
from nlanalysis.metrics.locality_control import READABLE, LocalityGrid, locality_control
from nlanalysis.tables import summarise

LIFTS = ("same_category_lift", "own_object_lift_objects")


@functools.lru_cache(maxsize=16)
def locality_grid(grid: tuple[int, int], cell: tuple[float, float]) -> LocalityGrid:
    """Every cell of ``grid`` valid, queries and keys alike (the scenes are analysed at their own size, no padding)."""
    return LocalityGrid.of(grid, cell, grid, cell)


def image_labels(coco, image_id: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    """The image's cell labels ``[N]`` (compact ``0..L-1``, 0 background) and each label's category ``[L]`` (-1: none),
    as ``extract`` labels cells: the object at each cell's centre pixel, objects in annotation order."""
    info = coco.imgs[image_id]
    pixels = torch.zeros(1, info["height"], info["width"], dtype=torch.int64)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    for k, ann in enumerate(anns, start=1):
        pixels[0][torch.from_numpy(coco.annToMask(ann).astype(bool))] = k
    compact, cats, _ = compact_labels(cell_centres(pixels, grid), [[a["category_id"] for a in anns]])
    return compact.reshape(-1), None if cats is None else cats[0]


def image_control(target: float, labels: Tensor, categories: Tensor | None, grid: tuple[int, int],
                  stride: tuple[float, float]) -> dict[str, float]:  # fmt: skip
    """One image's control (``nlanalysis.metrics.locality_control``): ``ctrl_local_sigma_px`` and the lifts of its
    locality-matched maps (NaN where unreached)."""
    n_labels = len(categories) if categories is not None else int(labels.max()) + 1
    return locality_control(target, locality_grid(grid, stride), labels, labels, categories, n_labels)


def set_controls(result_set: Path, ann_file: Path) -> pd.DataFrame:
    """A kept result set's rows (NL blocks: one map per image and block) with its locality control's columns
    (``ctrl_local_sigma_px``, ``ctrl_local_<lift>``). Cells are ``image_height / height`` input pixels apart (the
    scenes are analysed at their own size)."""
    frame = pd.read_csv(result_set / "metrics.csv")
    if "att_distance_px" not in frame:
        raise ValueError(f"{result_set}: metrics.csv has no att_distance_px (extract with --query-dependence cheap or all)")
    coco = load_coco(ann_file)
    found = []
    for _, r in frame.iterrows():
        grid = (int(r["height"]), int(r["width"]))
        stride = (float(r["image_height"]) / grid[0], float(r["image_width"]) / grid[1])
        labels, cats = image_labels(coco, int(r["image_id"]), grid)
        found.append(image_control(float(r["att_distance_px"]), labels, cats, grid, stride))
    return pd.concat([frame, pd.DataFrame(found, index=frame.index)], axis=1)


def group_of(result_set: Path) -> tuple[str, int]:
    """A result set's group and seed from its name (``planted_s0`` -> ``("planted", 0)``)."""
    found = re.fullmatch(r"(.+)_s(\d+)", result_set.name)
    if found is None:
        raise ValueError(f"{result_set}: expected a result set named GROUP_s<seed>")
    return found.group(1), int(found.group(2))


def summary(sets: list[Path], ann_file: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-image rows of every set with their controls, and per group and block: each lift, its control's and
    the log of trained / control (means and 95% intervals over images nested in seeds, ``summarise``)."""
    parts = []
    for s in sets:
        group, seed = group_of(s)
        parts.append(set_controls(s, ann_file).assign(variant=group, seed=seed, label=s.name))
    rows = pd.concat(parts, ignore_index=True)
    stats = []
    for name in LIFTS:  # the lifts are ratio statistics (geometric means); the control's likewise, through its log
        if name not in rows:  # result sets written before the column existed
            continue
        control = rows[f"ctrl_local_{name}"]  # read only over controls >= READABLE (session 16: not their Gaussian tails)
        control = control.where(np.isfinite(control) & (control >= READABLE))
        rows[f"log_ctrl_{name}"] = np.log(control)
        rows[f"log_ratio_{name}"] = np.log(rows[name] / control)
        stats += [name, f"log_ctrl_{name}", f"log_ratio_{name}"]
    table = summarise(rows, by=("variant",), stats=stats + ["ctrl_local_sigma_px", "att_distance_px"])  # inf sigma: left out
    for name in LIFTS:  # per group, images with the lift but no readable control (below READABLE), and with a lift of 0
        if f"log_ratio_{name}" in rows:  # (no log: out of the geometric means, counted apart)
            for column, missing in ((f"unread_{name}", rows[name].notna() & rows[f"log_ctrl_{name}"].isna()),
                                    (f"zero_{name}", rows[name] <= 0)):  # fmt: skip
                counts = missing.groupby([rows["variant"], rows["block"]], sort=False).sum()
                table[column] = [int(counts.get((v, b), 0)) for v, b in zip(table["variant"], table["block"])]
    return rows, table


def read(row: pd.Series) -> list[str]:
    """The 02:55 entry's words for one group's row of :func:`summary` (the lifts and their controls as geometric means)."""
    words = []
    for name in LIFTS:
        mean, low, high = (row.get(f"log_ratio_{name}{k}", math.nan) for k in ("", "_low", "_high"))
        if pd.isna(low):
            continue
        where = ("above its locality control" if low > ROUNDING else "below its locality control" if high < -ROUNDING
                 else "not distinguishable from locality")  # a shared map's ratio of exactly 1 +- rounding: neither
        unread, zero = (int(row.get(f"{k}_{name}", 0) or 0) for k in ("unread", "zero"))
        left = [f"{unread} images without a readable control"] * bool(unread) + [f"{zero} images with lift 0"] * bool(zero)
        words.append(f"{name} {row[name]:.3g} vs locality control {math.exp(row[f'log_ctrl_{name}']):.3g}: ratio "
                     f"{math.exp(mean):.4g} [{math.exp(low):.4g}, {math.exp(high):.4g}], {where}"
                     + (f" ({' and '.join(left)} left out)" if left else ""))  # fmt: skip
    return words


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sets", type=Path, nargs="+", help="kept result sets (metrics.csv with att_distance_px)")
    p.add_argument("--ann", type=Path, required=True, help="the scenes' instances.json")
    p.add_argument("--out", type=Path, help="write the per-image controls here (CSV)")
    args = p.parse_args(argv)
    rows, table = summary(args.sets, args.ann)
    if args.out is not None:  # the control's columns per image (the rest is in each set's metrics.csv)
        keep = ["label", "variant", "seed", "image_id", "block", "att_distance_px", "ctrl_local_sigma_px",
                *(c for name in LIFTS for c in (name, f"ctrl_local_{name}"))]  # fmt: skip
        tmp = args.out.with_name(args.out.name + ".tmp")
        rows[[c for c in keep if c in rows]].to_csv(tmp, index=False)
        tmp.replace(args.out)
    for _, row in table.iterrows():
        print(f"- {row['variant']} ({int(row['seeds'])} seeds, {int(row['images'])} images, {int(row['rows'])} rows): " + "; ".join(read(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
