"""Training one variant on scene segmentation, with snapshots and held-out mIoU.

Seeded and reproducible on the CPU: the seed fixes the initialisation (``torch.manual_seed``)
and the batch order (its own ``torch.Generator``), and deterministic algorithms are on, so the
same seed gives the same weights on one machine and torch build with the same number of intra-op threads (torch's
thread count, like another CPU, changes the order floats are summed in, and the weights drift apart: see the README's
Training section; every run of ``reports/controls`` used torch's default of 2 threads on the 2-core machine). Snapshots are written in this project's checkpoint format at
fractions of training (0 = initialisation), each with the held-out mIoU in its meta, so the
analysis can follow query-independence through training.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checkpoints import Preprocess, save_checkpoint
from ..models import SceneNet
from .data import SceneSet, normalize, scene_preprocess
from .variants import variant_arch

__all__ = ["TrainConfig", "TrainResult", "evaluate", "train_variant"]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in every checkpoint's meta)."""

    epochs: int = 6
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    background_weight: float = 0.2  # loss weight of background pixels (items cover ~10% of a scene)
    seed: int = 0
    snapshots: Sequence[float] = (0.0, 0.25, 0.5, 1.0)
    loss_stride: int = 2  # the loss compares logits and labels at 1/loss_stride of the input size
    image_shortcut: bool = False  # SceneNetArch.image_shortcut (issue 16's v3 control design)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "loss_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        outside = [f for f in self.snapshots if not 0.0 <= float(f) <= 1.0]
        if outside:  # fractions of training; out of range they would be dropped unseen
            raise ValueError(f"snapshots are fractions of training in [0, 1], got {outside}")


@dataclass
class TrainResult:
    variant: str
    seed: int
    miou: float
    pixel_accuracy: float
    seconds: float
    checkpoints: list[Path] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def _confusion(model: nn.Module, data: SceneSet, num_classes: int, batch_size: int = 64) -> Tensor:
    pre = scene_preprocess(data.images.shape[-1])
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            logits = model(normalize(data.images[start : start + batch_size], pre))
            pred = logits.argmax(1).flatten()
            true = data.masks[start : start + batch_size].flatten()
            conf += torch.bincount(true * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    return conf


def evaluate(model: nn.Module, data: SceneSet) -> tuple[float, float]:
    """``(mIoU, pixel accuracy)`` on ``data``; mIoU averages the classes present in the labels."""
    conf = _confusion(model, data, data.num_classes).double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = conf.sum(1) > 0
    miou = (tp[present] / union[present]).mean().item()
    return miou, (tp.sum() / conf.sum()).item()


def _batch_loss(model: nn.Module, train: SceneSet, idx: Tensor, pre: Preprocess, stride: int, class_weight: Tensor) -> Tensor:
    """Weighted cross-entropy of the scenes ``idx``, the logits compared with every ``stride``-th label."""
    labels = train.masks[idx]
    if stride > 1:
        labels = labels[:, stride // 2 :: stride, stride // 2 :: stride]
    logits = model(normalize(train.images[idx], pre))
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels, weight=class_weight)


def train_variant(
    variant: str,
    train: SceneSet,
    val: SceneSet,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train ``variant`` on ``train``, evaluate on ``val``, write snapshots under ``out_dir``.

    Files: ``{variant}_s{seed}_step{k}.pth`` at each snapshot and ``{variant}_s{seed}.pth``
    (the final weights), all in the native checkpoint format with mIoU in the meta.
    """
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    size = train.images.shape[-1]
    pre = scene_preprocess(size)
    model = SceneNet(variant_arch(variant, train.num_classes, image_shortcut=config.image_shortcut))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    class_weight = torch.ones(train.num_classes)
    class_weight[0] = config.background_weight
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=total, pct_start=0.15)
    snap_steps = sorted({round(f * total) for f in config.snapshots} | {total})
    out = Path(out_dir)
    result = TrainResult(variant, config.seed, math.nan, math.nan, 0.0)
    meta_base = {"variant": variant, "train_config": _plain(asdict(config)), "train_data": train.source,
                 "val_data": val.source, "task": "semantic segmentation of Fashion-MNIST scenes"}  # fmt: skip

    def snapshot(step: int) -> None:
        miou, acc = evaluate(model, val)
        final = step == total
        name = f"{variant}_s{config.seed}.pth" if final else f"{variant}_s{config.seed}_step{step}.pth"
        meta = {**meta_base, "step": step, "total_steps": total, "epoch": step / steps_per_epoch,
                "miou": miou, "pixel_accuracy": acc, "final": final}  # fmt: skip
        result.checkpoints.append(save_checkpoint(out / name, model, pre, meta))
        result.history.append({"variant": variant, "seed": config.seed, "step": step, "miou": miou, "pixel_accuracy": acc})
        result.miou, result.pixel_accuracy = miou, acc
        model.train()

    start_time = time.perf_counter()
    step = 0
    if 0 in snap_steps:
        snapshot(0)
    bar = tqdm(total=total, desc=f"{variant} seed {config.seed}", disable=not progress, leave=False)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(train), generator=generator)
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            loss = _batch_loss(model, train, idx, pre, config.loss_stride, class_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
            if step in snap_steps:
                snapshot(step)
    bar.close()
    result.seconds = time.perf_counter() - start_time
    return result


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
