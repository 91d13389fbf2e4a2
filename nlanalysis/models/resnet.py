"""Bottleneck ResNets with NL/GC blocks where published checkpoints put them.

Key names are torchvision's (``conv1``, ``bn1``, ``layerS.I.conv2``, ``downsample.0``), which
mmdetection's ``ResNet`` (``mmdet/models/backbones/resnet.py``) and timm's ``ResNet`` share, so
their backbone weights load unchanged. NL/GC blocks go where each codebase puts them:

* mmdetection 2.x/3.x plugins (``plugins=[dict(cfg=..., stages=..., position='after_conv3')]``,
  attribute ``nonlocal_block`` / ``context_block`` + postfix), the GCNet repository's
  ``context_block`` (``after_1x1`` = ``after_conv3``, ``after_3x3`` = ``after_conv2``,
  ``after_add``) and timm's ``attn_layer`` (attribute ``se``): inside a bottleneck;
* the NL paper's placement (arXiv 1711.07971, Sec. 4: one block before the last residual block
  of res4): a standalone entry of the stage's ``Sequential``, so ``layer3.5`` is the NL block and
  ``layer3.6`` the last bottleneck.

Only the network up to the last NL/GC block is built and run: the analysis needs the blocks'
inputs, not the detector heads.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from ..blocks import ContextBlock, NonLocal2d, SimplifiedNonLocal2d, SpatialGaussian2d
from ..blocks.pooled_context import PooledResidual2d, SqueezeExcitation2d
from ..blocks.position_attention import PositionAttention2d
from .arch import BlockSpec, ResNetArch

__all__ = ["PluginBottleneck", "ResNetBackbone", "build_block", "build_model"]

_BLOCK_CLASSES = {"NonLocal2d": NonLocal2d, "ContextBlock": ContextBlock, "SimplifiedNonLocal2d": SimplifiedNonLocal2d,
                  "PositionAttention2d": PositionAttention2d, "SqueezeExcitation2d": SqueezeExcitation2d,
                  "PooledResidual2d": PooledResidual2d, "SpatialGaussian2d": SpatialGaussian2d}  # fmt: skip
_INNER_POSITIONS = ("after_conv1", "after_conv2", "after_conv3", "after_add")


def build_block(spec: BlockSpec) -> nn.Module:
    """The NL/GC module of ``spec`` (this project's blocks, key-compatible with mmcv)."""
    return _BLOCK_CLASSES[spec.type](spec.in_channels, **spec.options)


class PluginBottleneck(Bottleneck):
    """torchvision's ``Bottleneck`` with blocks plugged in at mmdetection's positions.

    ``after_conv1``/``after_conv2`` follow the ReLU of that conv, ``after_conv3`` follows
    ``bn3`` (before the residual add), ``after_add`` follows the add (before the last ReLU).

    Args:
        inplanes, planes, stride, downsample, groups, base_width: as torchvision's ``Bottleneck``.
        style: ``pytorch`` (stride on ``conv2``) or ``caffe`` (stride on ``conv1``).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        style: str = "pytorch",
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, groups, base_width)
        if style == "caffe" and stride != 1:
            self.conv1.stride = (stride, stride)
            self.conv2.stride = (1, 1)
        self.plugin_names: dict[str, list[str]] = {pos: [] for pos in _INNER_POSITIONS}

    def add_plugin(self, attribute: str, position: str, module: nn.Module) -> None:
        """Attach ``module`` as ``self.<attribute>`` and run it at ``position``."""
        if "." in attribute or hasattr(self, attribute):
            raise ValueError(f"cannot add a block named {attribute!r} to a bottleneck")
        self.add_module(attribute, module)
        self.plugin_names[position].append(attribute)

    def _plugins(self, x: Tensor, position: str) -> Tensor:
        for name in self.plugin_names[position]:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = self._plugins(self.relu(self.bn1(self.conv1(x))), "after_conv1")
        out = self._plugins(self.relu(self.bn2(self.conv2(out))), "after_conv2")
        out = self._plugins(self.bn3(self.conv3(out)), "after_conv3")
        identity = x if self.downsample is None else self.downsample(x)
        out = self._plugins(out + identity, "after_add")
        return self.relu(out)


class ResNetBackbone(nn.Module):
    """Stem and stages ``layer1..layerK`` of a ResNet, possibly cut after its last NL/GC block.

    ``forward(images [B, 3, H, W])`` returns the output of the last entry built.

    Args:
        arch: the architecture.
        truncate: build only up to the residual block holding (or the entry that is) the last
            NL/GC block; ``False`` builds all stages (no classifier).
    """

    def __init__(self, arch: ResNetArch, truncate: bool = True) -> None:
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        last_stage, last_index = len(arch.stage_blocks), None
        if truncate and arch.blocks:
            last = max(arch.blocks, key=lambda b: (b.stage, b.index))
            last_stage, last_index = last.stage, last.index
        by_entry = {(b.stage, b.index): b for b in arch.blocks if b.position == "standalone"}
        plugins: dict[tuple[int, int], list[BlockSpec]] = {}
        for b in arch.blocks:
            if b.position != "standalone":
                plugins.setdefault((b.stage, b.index), []).append(b)

        self.stage_names: list[str] = []
        inplanes = 64
        for stage in range(1, last_stage + 1):
            planes = 64 * 2 ** (stage - 1)
            n_entries = arch.entries(stage)
            if stage == last_stage and last_index is not None:
                n_entries = last_index + 1
            entries: list[nn.Module] = []
            first = True
            for index in range(n_entries):
                spec = by_entry.get((stage, index))
                if spec is not None:
                    entries.append(build_block(spec))
                    continue
                stride = 2 if first and stage > 1 else 1
                downsample = None
                if first:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes * 4),
                    )
                block = PluginBottleneck(
                    inplanes, planes, stride, downsample, arch.groups, arch.width_per_group, arch.style
                )
                for p in plugins.get((stage, index), []):
                    carried = {"after_conv1": block.conv1, "after_conv2": block.conv2}.get(p.position, block.conv3).out_channels
                    if p.in_channels != carried:  # found here, not as a shape error in the first forward
                        raise ValueError(f"block {p.name!r} takes {p.in_channels} channels, but {p.position} of its bottleneck "
                                         f"carries {carried}: check its position (--config, --position)")  # fmt: skip
                    block.add_plugin(p.attribute, p.position, build_block(p))
                entries.append(block)
                inplanes, first = planes * 4, False
            name = f"layer{stage}"
            self.add_module(name, nn.Sequential(*entries))
            self.stage_names.append(name)
        self._check_blocks_built()

    def _check_blocks_built(self) -> None:
        names = dict(self.named_modules())
        for b in self.arch.blocks:
            if b.name not in names:
                raise ValueError(
                    f"block {b.name!r} does not fit the architecture (stage depths {self.arch.stage_blocks})"
                )

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


class _Prefix(nn.Module):
    """Holds one child under a checkpoint's prefix name (``backbone``, ``module``) and runs it."""

    def __init__(self, name: str, child: nn.Module) -> None:
        super().__init__()
        self.child_name = name
        self.add_module(name, child)

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self, self.child_name)(x)


def build_model(arch: ResNetArch, truncate: bool = True) -> nn.Module:
    """The backbone of ``arch`` nested under its key prefix, in eval mode.

    ``model.named_modules()`` and ``model.state_dict()`` then use the checkpoint's names: with
    ``prefix='backbone.'`` the NL block of ``backbone.layer3.5.nonlocal_block.g.conv.weight`` is
    the module ``backbone.layer3.5.nonlocal_block``.
    """
    model: nn.Module = ResNetBackbone(arch, truncate=truncate)
    for part in reversed([p for p in arch.prefix.split(".") if p]):
        model = _Prefix(part, model)
    return model.eval()
