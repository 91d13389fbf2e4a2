"""SceneNet: the small segmentation network this project trains on demo scenes.

Designed so that **global context can only come through the analysed block**: the NL block is
only worth analysing where it is useful (a pilot found NL blocks learn nothing query-specific when
the rest of the network already sees the whole image). On a 112 x 112 scene:

* a stride-4 stem (two 3x3 convs) and ``layer1`` (torchvision ``BasicBlock`` s, He et al.,
  arXiv 1512.03385) to stride 8: 14 x 14 positions; the block sits at ``layer1.1``, right
  before the stage's last residual block (the NL paper's placement);
* ``layer2``, a coarse stage at stride 16 (7 x 7) made of 1x1 convolutions only, so it adds no
  spatial context of its own; the optional second block sits at ``layer2.1``;
* a head that adds both stages at stride 8 (one 3x3 conv) and upsamples per-pixel class logits;
* optionally (``image_shortcut``) a 1x1 conv of the image's 8 x 8 cell means added to ``layer1.0``'s
  output, so each cell's colour reaches the block's input linearly (issue 16's v3 control design:
  trained networks drop a colour marker before the block otherwise, reports/controls/PLAN.md).

Without a block the receptive field is ~80 pixels, less than the scene; with one, every position
can see every other. Like :class:`~nlanalysis.models.ResNetArch`, the architecture is plain data
(round-trips through ``to_dict``/``from_dict``), stored in this project's checkpoint format.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from .arch import BlockSpec
from .resnet import build_block

__all__ = ["SceneNet", "SceneNetArch"]


@dataclass
class SceneNetArch:
    """Architecture of :class:`SceneNet`.

    Attributes:
        widths: channels of the stem, ``layer1`` (stride 8) and ``layer2`` (stride 16); the head
            uses ``widths[1]`` channels.
        num_classes: output classes per pixel (background included).
        blocks: NL/GC blocks, standalone entries ``layer1.1`` and/or ``layer2.1``.
        prefix: key prefix (always ``''``; kept for the loader's interface).
        image_shortcut: add ``Conv1x1(3 -> widths[1])(AvgPool8(image))`` to ``layer1.0``'s output
            (the block's input position).
    """

    widths: tuple[int, int, int] = (32, 64, 96)
    num_classes: int = 11
    blocks: list[BlockSpec] = field(default_factory=list)
    prefix: str = ""
    image_shortcut: bool = False

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.blocks = [b if isinstance(b, BlockSpec) else BlockSpec(**b) for b in self.blocks]
        for b in self.blocks:
            if b.name not in ("layer1.1", "layer2.1") or b.position != "standalone":
                raise ValueError(f"SceneNet block {b.name!r} ({b.position}): only standalone layer1.1 / layer2.1 exist")
            expected = self.widths[b.stage]
            if b.in_channels != expected:
                raise ValueError(f"SceneNet block {b.name!r}: in_channels {b.in_channels}, the stage has {expected}")

    def describe(self) -> str:
        """One line for ``inspect``."""
        shortcut = ", image shortcut at layer1.1" if self.image_shortcut else ""
        return f"SceneNet, widths {list(self.widths)}, {self.num_classes} classes{shortcut}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        if not self.image_shortcut:  # as written before the field existed: result sets recorded then still resume
            del data["image_shortcut"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneNetArch:
        return cls(**{k: v for k, v in data.items() if k != "type"})  # __post_init__ makes the blocks BlockSpecs


def _stage(cin: int, cout: int, block: BlockSpec | None) -> nn.Sequential:
    down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))
    entries: list[nn.Module] = [BasicBlock(cin, cout, stride=2, downsample=down)]
    if block is not None:
        entries.append(build_block(block))
    entries.append(BasicBlock(cout, cout))
    return nn.Sequential(*entries)


def _pointwise(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _coarse_stage(cin: int, cout: int, block: BlockSpec | None) -> nn.Sequential:
    """Stride-2 stage of 1x1 convs: no spatial mixing except through ``block``."""
    entries: list[nn.Module] = [_pointwise(cin, cout, 2)]
    if block is not None:
        entries.append(build_block(block))
    entries.append(_pointwise(cout, cout, 1))
    return nn.Sequential(*entries)


class SceneNet(nn.Module):
    """Per-pixel classifier ``[B, 3, H, W] -> [B, num_classes, H, W]`` (``H, W`` multiples of 16).

    With ``truncate=True`` only the modules up to the last NL/GC block are built and ``forward``
    returns that stage's features (what the analysis needs); otherwise the full network.
    """

    def __init__(self, arch: SceneNetArch, truncate: bool = False) -> None:
        super().__init__()
        self.arch = arch
        w0, w1, w2 = arch.widths
        by_name = {b.name: b for b in arch.blocks}
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0 // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w0 // 2), nn.ReLU(inplace=True),
            nn.Conv2d(w0 // 2, w0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.layer1 = _stage(w0, w1, by_name.get("layer1.1"))
        self.shortcut = nn.Conv2d(3, w1, 1) if arch.image_shortcut else None
        self.full = not truncate or "layer2.1" in by_name or not arch.blocks
        if self.full:
            self.layer2 = _coarse_stage(w1, w2, by_name.get("layer2.1"))
        if not truncate:
            self.lateral1 = nn.Conv2d(w1, w1, 1)
            self.lateral2 = nn.Conv2d(w2, w1, 1)
            self.head = nn.Sequential(
                nn.Conv2d(w1, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),
                nn.Conv2d(w1, arch.num_classes, 1),
            )  # fmt: skip
        self.truncate = truncate

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        c1 = self._layer1(x)
        if self.truncate:
            return self.layer2(c1) if self.full else c1
        c2 = self.layer2(c1)
        merged = self.lateral1(c1) + F.interpolate(self.lateral2(c2), size=c1.shape[-2:], mode="nearest")
        return F.interpolate(self.head(merged), size=size, mode="bilinear", align_corners=False)

    def _layer1(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W] -> [B, widths[1], H/8, W/8]``: stem and ``layer1`` (with the image shortcut, if any)."""
        if self.shortcut is None:
            return self.layer1(self.stem(x))
        h = self.layer1[0](self.stem(x)) + self.shortcut(F.avg_pool2d(x, 8))
        return self.layer1[1:](h)
