"""Does a scene design make the own group's context useful? The pilot check of reports/controls/PLAN.md.

A small CNN (3 conv layers) is trained for 3 epochs on single-item crops (the item's box, gray, 28 x 28)
of 4,000 train scenes, then scores each item of 1,000 val scenes (seed 0 for everything) three ways:
(a) alone, (b) with its log-probabilities summed over every item of its scene, (c) summed over the items
of its own group (the whole scene where a design has one group), and two readings of one context for the whole scene
(``scores``: the scene sum's top two classes, the scene's true classes). The PLAN's rule for ``query-specific``:
keep the design when (c) - (a) >= 10 points and (c) - (b) >= 5 points. ``shared`` runs beside it as the
check of the pilot itself (nlanalysis/data/scenes.py reports 52% alone and 74% summed over the scene).

``query-specific-v4`` (nlanalysis/data/scenes_v4.py: the same class pair in every scene) adds two columns: (f)
``pair_alone``, the item alone restricted to the fixed pair (what a network without context learns there: only those
two classes occur) and ``pair_group_sum``, the own group's vote restricted to it; its ``true_set`` is that same
restriction (every scene holds the pair), and ``group_minus_pair_alone`` = (c) - (f).

Run from the repository root: ``python reports/controls/pilot.py [--designs query-specific shared]
[--num-items LO HI] [--out CSV] [--confusion CSV]``; writes ``reports/controls/pilot.csv`` (the shipped scenes).
v4's check: ``--designs query-specific-v4 --num-items 4 10 --out reports/controls/pilot_v4.csv``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from nlanalysis.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from nlanalysis.data.scenes import LOOKALIKES, SPLITS, SceneParams, make_scene
from nlanalysis.data.scenes_v4 import PAIR


def crops(design: str, split: str, num: int, seed: int = 0, params: SceneParams | None = None,
          ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Every item's gray box crop ``[n, 1, 28, 28]``, its class, its scene and its group (0 with one group)."""
    items, labels = load_fashion_mnist(SPLITS[split])
    out, cls, scene_of, group = [], [], [], []
    for i in range(num):
        scene = make_scene(np.random.default_rng([seed, i]), items, labels, design, params)  # as write_scenes draws scene i
        gray = torch.from_numpy(scene.image).float().mean(-1) / 255.0
        for k, mask in enumerate(scene.masks):
            ys, xs = np.nonzero(mask)
            box = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            out.append(F.interpolate(box[None, None], size=(28, 28), mode="bilinear", antialias=True, align_corners=False)[0])
            cls.append(int(scene.labels[k]))
            scene_of.append(i)
            group.append(int(scene.groups[k]) if scene.groups is not None else 0)
    return torch.stack(out), np.asarray(cls), np.asarray(scene_of), np.asarray(group)


def classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def train(x: torch.Tensor, y: np.ndarray, epochs: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model, target = classifier(), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=order).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), target[batch]).backward()
            opt.step()
    return model.eval()


def _within(logp: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Each item's best class among its row of ``allowed`` classes ``[items, k]``."""
    return np.take_along_axis(allowed, np.take_along_axis(logp, allowed, 1).argmax(1)[:, None], 1)[:, 0]


def scores(model: nn.Module, x: torch.Tensor, y: np.ndarray, scene: np.ndarray, group: np.ndarray,
           pair: tuple[int, int] | None = None) -> dict[str, float]:  # fmt: skip
    """Item accuracy (percent): alone, summed over the scene, summed over the own group, and two readings of what
    one context for the whole scene (a query-independent block's) can carry: (d) ``scene_top2``, the item's best class
    among the scene sum's top two, (e) ``true_set``, among the scene's true classes (at best what one vector per scene
    could say: which classes the scene holds). With ``pair`` (a design whose every scene holds those two classes):
    also ``pair_alone`` and ``pair_group_sum``, the item alone and its own group's vote, each restricted to ``pair``."""
    with torch.no_grad():
        logp = F.log_softmax(model(x), -1).numpy()
    alone = logp.argmax(1)
    frame = pd.DataFrame(logp).assign(scene=scene, group=group)
    by_scene = frame.groupby("scene").transform("sum").drop(columns="group").to_numpy()
    by_group = frame.groupby(["scene", "group"]).transform("sum").to_numpy()
    top2 = np.argsort(-by_scene, 1, kind="stable")[:, :2]
    classes = pd.Series(y).groupby(scene).transform(lambda c: [sorted(set(c))] * len(c))
    width = max(len(c) for c in classes)
    true_set = np.array([c + [c[-1]] * (width - len(c)) for c in classes])  # padded with a repeat: the same choice
    out = {"items": len(y), "alone": 100 * (alone == y).mean(), "scene_sum": 100 * (by_scene.argmax(1) == y).mean(),
           "group_sum": 100 * (by_group.argmax(1) == y).mean(), "scene_top2": 100 * (_within(logp, top2) == y).mean(),
           "true_set": 100 * (_within(logp, true_set) == y).mean()}  # fmt: skip
    if pair is not None:
        allowed = np.broadcast_to(np.asarray(pair), (len(y), 2))
        out["pair_alone"] = 100 * (_within(logp, allowed) == y).mean()
        out["pair_group_sum"] = 100 * (_within(by_group, allowed) == y).mean()
    return out


def pair_confusion(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> pd.DataFrame:
    """How much the classifier confuses each pair of look-alike classes (:data:`LOOKALIKES`, within a family), on
    single items: ``two_way_error`` (percent, the mean over the two classes of the share of their items whose
    log-probability of the other class of the pair is above their own: the error of a choice between the two only)
    and the 10-way confusions ``a_as_b``, ``b_as_a`` (percent of class a's items whose argmax is b, and the reverse).
    Design v4 uses the pair with the largest ``two_way_error`` (its scenes hold those two classes only)."""
    with torch.no_grad():
        logp = F.log_softmax(model(x), -1).numpy()
    alone, rows = logp.argmax(1), []
    for family in LOOKALIKES:
        for a, b in combinations(family, 2):
            ia, ib = y == a, y == b
            err = [100 * (logp[ia, b] > logp[ia, a]).mean(), 100 * (logp[ib, a] > logp[ib, b]).mean()]
            rows.append({"a": a, "b": b, "name_a": CLASS_NAMES[a], "name_b": CLASS_NAMES[b], "items_a": int(ia.sum()),
                         "items_b": int(ib.sum()), "two_way_error": np.mean(err), "a_vs_b_error": err[0], "b_vs_a_error": err[1],
                         "a_as_b": 100 * (alone[ia] == b).mean(), "b_as_a": 100 * (alone[ib] == a).mean()})  # fmt: skip
    table = pd.DataFrame(rows)
    table["mean_10way"] = (table.a_as_b + table.b_as_a) / 2
    return table.sort_values("two_way_error", ascending=False, kind="stable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--designs", nargs="+", default=["query-specific", "shared"])
    parser.add_argument("--num-items", nargs=2, type=int, metavar=("LO", "HI"), help="SceneParams.num_items (default: the shipped (3, 6))")
    parser.add_argument("--out", default=str(Path(__file__).with_name("pilot.csv")))
    parser.add_argument("--confusion", metavar="CSV", help="also write the first design's classifier's look-alike pair "
                        "confusions on its val items (pair_confusion; v4's pair rule)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    params = SceneParams(num_items=tuple(args.num_items)) if args.num_items else None
    rows = []
    for design in args.designs:
        start = time.perf_counter()
        model = train(*crops(design, "train", 4000, params=params)[:2])
        val = crops(design, "val", 1000, params=params)
        pair = PAIR if design == "query-specific-v4" else None  # its fixed class pair
        rows.append({"design": design, "num_items": "-".join(map(str, (params or SceneParams()).num_items)), **scores(model, *val, pair=pair)})
        print(rows[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
        if args.confusion and design == args.designs[0]:
            pairs = pair_confusion(model, *val[:2])
            pairs.round(2).to_csv(args.confusion, index=False)
            print(pairs.round(2).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    table["group_minus_alone"], table["group_minus_scene"] = table.group_sum - table.alone, table.group_sum - table.scene_sum
    if "pair_alone" in table:
        table["group_minus_pair_alone"] = table.group_sum - table.pair_alone
    tmp = args.out + ".tmp"
    table.round(2).to_csv(tmp, index=False)
    os.replace(tmp, args.out)
    print(table.round(2).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
