"""The planted own-group block of reports/controls/PLAN.md (session 12, end): can the analysis see it?

Per seed of v2's 12-epoch embedded-Gaussian finals, as the PLAN fixes it:

* the probe: ridge regression (no intercept, lambda = 1e-3 x trace(X^T X) / C) from the NL block's input
  features at each position (C channels) to the position's group hue as a unit vector (cos 2 pi h,
  sin 2 pi h) (hues are stored as fractions of the circle in ``[0, 1)``), fitted on the item positions of
  the first 300 *train* scenes; its R^2 is reported on the val scenes (never fitted there). A position is
  labelled by the pixel at its cell's centre, as the analysis labels its queries (``cell_centres``);
* the planted block: theta = phi = the probe's 2 x C map scaled (the other rows and the biases 0), so the
  logit of query i at key j is ``s * (h_i . h_j)``; g and W_z stay the trained ones. ``s`` is set by
  bisection so that the planted maps' mean row entropy on the first 30 train scenes equals the trained
  block's;
* its twin: the same with the probe's rows replaced by a random 2 x C matrix (seed 0) of the same
  Frobenius norm, ``s`` matched the same way; or (``--negative``) a probe of another label: an item's
  brightness (session 13) or the generator's noise level at each position (session 15); or the locality
  twin (session 15): the block swapped for maps by spatial distance only (``SpatialGaussian2d``, the
  trained ``g`` and ``conv_out``), its width matched to the trained block's entropy.

Both are saved in this project's checkpoint format; the extraction on the val scenes is not run here:
the script prints its ``nlanalysis extract`` commands. Run from the repository root:
``python reports/controls/planted.py --ckpt-dir DIR --train-scenes DIR [--val-scenes DIR] --out DIR``.
``--read DIR`` reads the extracted result sets (``DIR/planted_s*``, ``DIR/twin_s*``) by the PLAN's rules
(session 13): the check passes when the planted blocks read "attends its own group" with "att above its
form-matched control" and the twins do not read "attends its own group".
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from nlanalysis.capture import cell_centres
from nlanalysis.controls import attention_summary, read_attention
from nlanalysis.checkpoints import load_checkpoint, save_checkpoint
from nlanalysis.extract.coco import load_coco
from nlanalysis.train.data import load_scene_set, normalize

PROBE_SCENES, ENTROPY_SCENES = 300, 30


def group_hues(ann_file: str | Path, image_ids: list[int], shape: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """``float [B, gh, gw, 2]``: each grid cell's group hue as ``(cos 2 pi h, sin 2 pi h)``, NaN off the items
    (the cell is labelled by the pixel at its centre)."""
    coco = load_coco(ann_file)
    out = []
    for image_id in image_ids:
        hues = coco.imgs[image_id].get("group_hues")
        if hues is None:
            raise ValueError(f"{ann_file}: image {image_id} has no group_hues (not a query-specific scene set)")
        pixel = np.full((*shape, 2), np.nan)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None)):
            angle = 2 * math.pi * hues[ann["group"]]
            pixel[coco.annToMask(ann).astype(bool)] = (math.cos(angle), math.sin(angle))
        out.append(torch.from_numpy(pixel))
    pixels = torch.stack(out)  # [B, H, W, 2]
    return torch.stack([cell_centres(pixels[..., k], grid) for k in range(2)], -1)


def item_brightness(ann_file: str | Path, image_ids: list[int], images: Tensor, grid: tuple[int, int],
                    channels: str = "mean") -> tuple[Tensor, Tensor]:  # fmt: skip
    """Each item's mean gray level (``[0, 1]``; per pixel the RGB ``"mean"``, or the HSV value ``"max"``, which a
    tint leaves at the item's own intensity) over its visible pixels: per grid cell ``float [B, gh, gw]`` (NaN
    off the items; the cell is labelled by the pixel at its centre), and every item's ``[n_items]``."""
    coco = load_coco(ann_file)
    gray = (images.double().mean(1) if channels == "mean" else images.double().amax(1)) / 255.0  # [B, H, W]
    cells, every = [], []
    for b, image_id in enumerate(image_ids):
        pixel = torch.full(gray.shape[1:], math.nan, dtype=torch.float64)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None)):
            mask = torch.from_numpy(coco.annToMask(ann).astype(bool))
            level = gray[b][mask].mean()
            pixel[mask] = level
            every.append(float(level))
        cells.append(pixel)
    return cell_centres(torch.stack(cells), grid), torch.tensor(every, dtype=torch.float64)


def brightness_angles(levels: Tensor, lo: float, hi: float) -> Tensor:
    """``[..., 2]``: ``(cos a, sin a)`` with ``a = pi (m - lo) / (hi - lo)`` (the PLAN's session-13 label; NaN stays NaN)."""
    angle = math.pi * (levels - lo) / (hi - lo)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1)


NOISE_CAP = 0.35 * math.sqrt(2)  # the noise twin's sigma_cap (PLAN, session 15): two overlapping boxes at the largest draw
# (three or more boxes can exceed it, rarely: 34 of 90,403 noisy item pixels in 200 v3 scenes; noise_angles clamps them)


def scene_noise(ann_file: str | Path, image_ids: list[int], grid: tuple[int, int], source: str | Path | None = None) -> Tensor:
    """The noise twin's label (PLAN, session 15): per grid cell ``float [B, gh, gw]`` the standard deviation of the
    strong noise the generator added at the cell's centre pixel (:attr:`~nlanalysis.data.scenes.Scene.noise`), NaN
    off the items. Each scene is regenerated from the seed and parameters its ``instances.json`` records (the
    Fashion-MNIST split from ``source``, default the Debian package's); one whose masks differ from the
    annotation's is an error (``ValueError``)."""
    from dataclasses import fields

    from nlanalysis.data.fashion_mnist import load_fashion_mnist
    from nlanalysis.data.scenes import SPLITS, SceneParams, make_scene

    coco = load_coco(ann_file)
    info = coco.dataset.get("info", {})
    if not {"split", "seed", "design", "params"} <= set(info):
        raise ValueError(f"{ann_file}: info records no split/seed/design/params: not a scene set this generator wrote")
    names = {f.name for f in fields(SceneParams)}
    params = SceneParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["params"].items() if k in names})
    items, labels = load_fashion_mnist(SPLITS[info["split"]], source)
    cells = []
    for image_id in image_ids:
        scene = make_scene(np.random.default_rng([info["seed"], image_id - 1]), items, labels, info["design"], params)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns]) if anns else np.zeros((0, *scene.masks.shape[1:]), bool)
        if masks.shape != scene.masks.shape or not np.array_equal(masks, scene.masks):
            raise ValueError(f"{ann_file}: image {image_id} does not regenerate from its recorded seed and parameters")
        pixel = np.where(masks.any(0), scene.noise, np.nan)
        cells.append(torch.from_numpy(pixel))
    return cell_centres(torch.stack(cells), grid)


def noise_angles(sigma: Tensor) -> Tensor:
    """``[..., 2]``: ``(cos a, sin a)`` with ``a = pi min(sigma / NOISE_CAP, 1)`` (NaN stays NaN)."""
    angle = math.pi * (sigma / NOISE_CAP).clamp(max=1.0)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1)


def block_inputs(model: nn.Module, block: nn.Module, images: Tensor, pre, batch: int = 50) -> Tensor:
    """The block's input features ``[B, C, gh, gw]`` on ``uint8`` images (a forward pre-hook)."""
    seen: list[Tensor] = []
    handle = block.register_forward_pre_hook(lambda _mod, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                model(normalize(images[i : i + batch], pre))
    finally:
        handle.remove()
    return torch.cat(seen)


def positions(features: Tensor, hues: Tensor) -> tuple[Tensor, Tensor]:
    """The item positions' features ``[n, C]`` and hue vectors ``[n, 2]`` (float64)."""
    x = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double()
    y = hues.reshape(-1, 2).double()
    item = ~torch.isnan(y[:, 0])
    return x[item], y[item]


def ridge_probe(x: Tensor, y: Tensor) -> Tensor:
    """``[2, C]``: ridge regression without intercept, lambda = 1e-3 x trace(X^T X) / C (the PLAN's rule)."""
    gram = x.T @ x
    lam = 1e-3 * torch.trace(gram) / x.shape[1]
    return torch.linalg.solve(gram + lam * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y).T


def r_squared(probe: Tensor, x: Tensor, y: Tensor) -> float:
    """``1 - SS_res / SS_tot`` over both outputs (SS_tot around the outputs' means)."""
    res = ((y - x @ probe.T) ** 2).sum()
    tot = ((y - y.mean(0)) ** 2).sum()
    return float(1 - res / tot)


def mean_row_entropy(block: nn.Module, features: Tensor) -> float:
    """Mean entropy (nats) of the block's attention rows on ``features``."""
    with torch.no_grad():
        p = block.attention_maps(features).double()
    return float(-(p * torch.log(p.clamp_min(1e-300))).sum(-1).mean())


def plant(block: nn.Module, rows: Tensor, s: float, features: Tensor) -> None:
    """Set theta = phi = ``sqrt(s / scale) * rows`` (other rows, biases 0): logits ``s * (h_i . h_j)``, ``h = rows x``."""
    scale = block.attention(features[:1]).scale
    weight = torch.zeros_like(block.theta.conv.weight)
    weight[: rows.shape[0], :, 0, 0] = math.sqrt(s / scale) * rows.to(weight.dtype)
    with torch.no_grad():
        for conv in (block.theta.conv, block.phi.conv):
            conv.weight.copy_(weight)
            if conv.bias is not None:
                conv.bias.zero_()


def _solve_log(entropy: Callable[[float], float], target: float, bounds: tuple[float, float], rising: bool, what: str,
               steps: int = 60) -> float:  # fmt: skip
    """Bisection on a log-parameter ``t`` in ``bounds`` for ``entropy(t) == target`` (``entropy`` rising or falling
    in ``t``); ValueError where the target lies outside what the bounds reach."""
    lo, hi = bounds
    ends = entropy(lo), entropy(hi)
    if not min(ends) < target < max(ends):
        raise ValueError(f"target entropy {target:.4f} is outside what {what} in [e^{lo:g}, e^{hi:g}] reaches")
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (entropy(mid) < target) == rising else (lo, mid)
    return (lo + hi) / 2


def match_entropy(block: nn.Module, rows: Tensor, features: Tensor, target: float, steps: int = 60) -> tuple[float, float]:
    """Bisection on ``log s`` (row entropy falls as ``s`` grows): the ``s`` whose planted maps' mean row entropy
    is ``target``, and the entropy reached. The block is left planted with that ``s``."""

    def entropy(log_s: float) -> float:
        plant(block, rows, math.exp(log_s), features)
        return mean_row_entropy(block, features)

    log_s = _solve_log(entropy, target, (-20.0, 20.0), rising=False, what="s", steps=steps)
    return math.exp(log_s), entropy(log_s)


def match_sigma(block: nn.Module, features: Tensor, target: float, steps: int = 60) -> tuple[float, float]:
    """Bisection on ``log sigma`` (row entropy grows with ``sigma``): the width whose locality maps' mean row entropy
    is ``target`` on ``features``' grid, and the entropy reached. The block is left at that ``sigma``."""

    def entropy(log_sigma: float) -> float:
        block.sigma = math.exp(log_sigma)
        return mean_row_entropy(block, features)

    log_sigma = _solve_log(entropy, target, (-5.0, 5.0), rising=True, what="sigma", steps=steps)
    return math.exp(log_sigma), entropy(log_sigma)


def locality_twin(loaded, name: str, block: nn.Module, features: Tensor, target: float, out: Path, ckpt: Path, meta: dict) -> dict:
    """The locality twin (PLAN, session 15, 02:00): the block swapped for a :class:`SpatialGaussian2d` with its trained
    weights (``g``, ``conv_out``) and the ``sigma`` whose maps' mean row entropy is ``target``; saved, the model restored."""
    from nlanalysis.blocks import SpatialGaussian2d
    from nlanalysis.models import BlockSpec

    local = SpatialGaussian2d(block.in_channels, reduction=block.reduction)
    local.load_state_dict(block.state_dict())
    sigma, reached = match_sigma(local, features, target)
    parent, child = loaded.model.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]
    arch = copy.deepcopy(loaded.arch)
    arch.blocks = [BlockSpec(b.name, "SpatialGaussian2d", b.in_channels, b.position, {"sigma": sigma, "reduction": block.reduction})
                   if b.name == name else b for b in arch.blocks]  # fmt: skip
    setattr(parent, child, local)
    try:
        path = save_checkpoint(out / f"locality_{ckpt.name}", loaded.model, loaded.preprocess, meta, arch=arch)
    finally:
        setattr(parent, child, block)
    return {"s_locality": sigma, "entropy_locality": reached, "ckpt_locality": str(path)}


def twin_rows(probe: Tensor, seed: int = 0) -> Tensor:
    """A random ``2 x C`` matrix (normal, ``seed``) with the probe's Frobenius norm."""
    rows = torch.randn(probe.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return rows * (probe.double().norm() / rows.norm())


def plant_seed(ckpt: Path, train_dir: Path, val_dir: Path, out: Path, negative: str = "random") -> dict:
    """Build and save one seed's planted block and its negative (``"random"``: the random twin of the
    session-12 entry; ``"brightness"`` / ``"value"``: the brightness twins of the session-13 entries, labelled by
    the RGB mean / the HSV value); their numbers."""
    loaded = load_checkpoint(ckpt, truncate=False)
    model, (name, block) = loaded.model, next(iter(loaded.block_modules().items()))
    if getattr(block, "mode", None) != "embedded_gaussian":
        raise ValueError(f"{ckpt}: block {name} is not an embedded-Gaussian NL block")
    fits, levels = {}, {}
    for split, folder, limit in (("train", train_dir, PROBE_SCENES), ("val", val_dir, None)):
        scenes = load_scene_set(folder / "instances.json", folder / "images", limit=limit)
        feats = block_inputs(model, block, scenes.images, loaded.preprocess)
        hues = group_hues(folder / "instances.json", scenes.image_ids, tuple(scenes.images.shape[-2:]), tuple(feats.shape[-2:]))
        fits[split] = (feats, positions(feats, hues))
        if negative in ("brightness", "value"):
            levels[split] = item_brightness(folder / "instances.json", scenes.image_ids, scenes.images, tuple(feats.shape[-2:]),
                                            "mean" if negative == "brightness" else "max")  # fmt: skip
        elif negative == "noise":
            levels[split] = scene_noise(folder / "instances.json", scenes.image_ids, tuple(feats.shape[-2:]))
    probe = ridge_probe(*fits["train"][1])
    r2_train, r2_val = r_squared(probe, *fits["train"][1]), r_squared(probe, *fits["val"][1])
    features = fits["train"][0][:ENTROPY_SCENES]
    target = mean_row_entropy(block, features)
    trained = {k: v.clone() for k, v in block.state_dict().items()}
    result = {"ckpt": str(ckpt), "block": name, "r2_val": r2_val, "r2_train": r2_train, "entropy_trained": target,
              "probe_norm": float(probe.norm()), "entropy_uniform": math.log(features.shape[-2] * features.shape[-1])}
    if negative in ("brightness", "value", "noise"):
        if negative == "noise":
            labelled = {k: positions(fits[k][0], noise_angles(levels[k])) for k in ("train", "val")}
            label = {"noise_cap": NOISE_CAP}
        else:  # m_min, m_max over the train items
            lo, hi = float(levels["train"][1].min()), float(levels["train"][1].max())
            labelled = {k: positions(fits[k][0], brightness_angles(levels[k][0], lo, hi)) for k in ("train", "val")}
            label = {"brightness_range": [lo, hi]}
        other = ridge_probe(*labelled["train"])
        key = "noise" if negative == "noise" else "brightness"
        result |= {f"{key}_r2_train": r_squared(other, *labelled["train"]), f"{key}_r2_val": r_squared(other, *labelled["val"]), **label}
        kinds = (("planted", probe), (negative, other))
    elif negative == "locality":  # no probe: built after the planted block, below
        kinds = (("planted", probe),)
    else:
        kinds = (("planted", probe), ("twin", twin_rows(probe)))
    kept = {k: v for k, v in loaded.meta.items() if k not in ("miou", "pixel_accuracy")}  # the trained model's
    for kind, rows in kinds:
        block.load_state_dict(trained)
        s, reached = match_entropy(block, rows, features, target)
        meta = {**kept, "planted": {"kind": kind, "s": s, "probe_r2_val": r2_val, "source": str(ckpt),
                "source_miou": loaded.meta.get("miou"),
                "rows_frobenius": float(rows.norm()), "construction": "reports/controls/PLAN.md 2026-12-04 (session 12, end)"
                + {"brightness": "; the brightness twin: (session 13, 21:35)", "value": "; the value twin: (session 13, 21:45)",
                   "noise": "; the noise twin: (session 15, 01:40)"}.get(negative, "")}}
        path = save_checkpoint(out / f"{kind}_{ckpt.name}", model, loaded.preprocess, meta)
        result |= {f"s_{kind}": s, f"entropy_{kind}": reached, f"ckpt_{kind}": str(path)}
    block.load_state_dict(trained)
    if negative == "locality":
        meta = {**kept, "planted": {"kind": "locality", "source": str(ckpt), "source_miou": loaded.meta.get("miou"),
                                    "construction": "reports/controls/PLAN.md 2026-12-05 (session 15, 02:00)"}}  # fmt: skip
        result |= locality_twin(loaded, name, block, features, target, out, ckpt, meta)
    return result


def read_check(root: Path, negative: str = "random") -> tuple[bool, list[str]]:
    """The check's verdict from the result sets under ``root``, and its lines (one per kind, then the verdict).
    ``"random"``: the session-12 rule (planted own-group with att above its control, twin not own-group);
    ``"brightness"``, ``"value"``, ``"noise"``, ``"locality"``: the session-13 rule (planted own-group, the twin not; rule 2
    reported only)."""
    twin = "twin" if negative == "random" else negative
    readings, lines = {}, []
    for kind in ("planted", twin):
        sets = sorted(p for p in root.glob(f"{kind}_s*") if (p / "metrics.csv").is_file())
        if not sets:
            raise FileNotFoundError(f"{root}: no {kind}_s*/metrics.csv result sets")
        row = attention_summary(sets).iloc[0]
        readings[kind] = read_attention(row)
        lines.append(f"- {kind} ({len(sets)} result sets, {', '.join(p.name for p in sets)}): " + "; ".join(readings[kind]))
    own = [any(w.startswith("attends its own group") for w in readings[k]) for k in ("planted", twin)]
    above = any(w.startswith("att ") and "above its form-matched control" in w for w in readings["planted"])
    passes = own[0] and (above or negative != "random") and not own[1]
    rule2 = f" {'with' if above else 'without'} att above their form-matched control" if negative == "random" else ""
    lines.append(f"The check {'passes' if passes else 'fails'}: the planted blocks "
                 f"{'read' if own[0] else 'do not read'} \"attends its own group\"{rule2}; the {'' if twin == 'twin' else twin + ' '}twins "
                 f"{'read' if own[1] else 'do not read'} \"attends its own group\".")  # fmt: skip
    return passes, lines


def models_miou(built: Path, val_dir: Path) -> list[str]:
    """mIoU on the val scenes of every checkpoint a build wrote (``built``: its ``planted.json``) and of the trained
    final each was built from: reported beside the check, not part of it (the PLAN's entries)."""
    from nlanalysis.train.loop import evaluate

    scenes = load_scene_set(val_dir / "instances.json", val_dir / "images")
    lines = []
    for r in json.loads(built.read_text()):
        parts = [f"trained {evaluate(load_checkpoint(r['ckpt'], truncate=False).model, scenes)[0]:.4f}"]
        for key in sorted(k for k in r if k.startswith("ckpt_")):
            parts.append(f"{key[5:]} {evaluate(load_checkpoint(r[key], truncate=False).model, scenes)[0]:.4f}")
        lines.append(f"- seed {r['seed']}: mIoU " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt-dir", type=Path, help="a grid's 12-epoch checkpoints (embedded_gaussian_s{seed}.pth: v2's or v3's)")
    p.add_argument("--train-scenes", type=Path, help="the train scene folder (instances.json, images/)")
    p.add_argument("--val-scenes", type=Path, default=None,
                   help="the val scene folder (default: the one val_* folder beside --train-scenes)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/controls/planted"))
    p.add_argument("--read", type=Path, metavar="DIR", help="read the extracted planted_s*/twin_s* result sets in DIR instead")
    p.add_argument("--miou", type=Path, metavar="PLANTED_JSON", help="instead: the mIoU on --val-scenes of the models a build wrote")
    p.add_argument("--negative", choices=("random", "brightness", "value", "noise", "locality"), default="random",
                   help="the negative: the random twin (session 12), a brightness twin (session 13: RGB mean or HSV value) "
                        "the noise twin (session 15: the generator's noise level) or the locality twin (session 15: maps "
                        "by spatial distance only)")  # fmt: skip
    args = p.parse_args(argv)
    if args.read is not None:
        print("\n".join(read_check(args.read, args.negative)[1]))
        return 0
    if args.miou is not None:
        if args.val_scenes is None:
            p.error("--miou needs --val-scenes")
        print("\n".join(models_miou(args.miou, args.val_scenes)))
        return 0
    if args.ckpt_dir is None or args.train_scenes is None:
        p.error("--ckpt-dir and --train-scenes are required (unless --read)")
    val = args.val_scenes
    if val is None:
        found = sorted(args.train_scenes.parent.glob("val_*"))
        if len(found) != 1:
            p.error(f"give --val-scenes: {len(found)} val_* folders beside {args.train_scenes}")
        val = found[0]
    args.out.mkdir(parents=True, exist_ok=True)
    results, twin = [], "twin" if args.negative == "random" else args.negative
    for seed in args.seeds:
        r = plant_seed(args.ckpt_dir / f"embedded_gaussian_s{seed}.pth", args.train_scenes, val, args.out, args.negative)
        results.append({"seed": seed, **r})
        print(f"seed {seed}: probe R^2 val {r['r2_val']:.3f} (train {r['r2_train']:.3f}); entropy trained {r['entropy_trained']:.4f}, "
              f"planted {r['entropy_planted']:.4f} (s {r['s_planted']:.4g}), {twin} {r[f'entropy_{twin}']:.4f} (s {r[f's_{twin}']:.4g})"
              + (f"; brightness probe R^2 val {r['brightness_r2_val']:.3f}" if "brightness_r2_val" in r else "")
              + (f"; noise probe R^2 val {r['noise_r2_val']:.3f}" if "noise_r2_val" in r else ""))  # fmt: skip
        (args.out / "planted.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out / 'planted.json'}; the PLAN runs the check only where the probe's val R^2 >= 0.5. Extraction:")
    for r in results:
        for kind in ("planted", twin):
            print(f"nlanalysis extract --ckpt {r[f'ckpt_{kind}']} --coco-ann {val / 'instances.json'} --coco-images {val / 'images'}"
                  f" --controls --jsd-pairs 256 --query-dependence all --quiet --out {args.out / 'extract' / (kind + '_s' + str(r['seed']))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
