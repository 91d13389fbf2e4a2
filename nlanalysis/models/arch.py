"""Architecture descriptions of ResNets with NL/GC blocks, as plain data.

An :class:`ResNetArch` says everything needed to rebuild a backbone so its module names mirror
the checkpoint's keys: stage depths, stride style, key prefix (``backbone.`` for mmdetection),
and one :class:`BlockSpec` per NL/GC block. Both round-trip through ``to_dict`` / ``from_dict``
(plain ``dict``/``list``/``str``/``int``/``float``), which is what this project's checkpoint
format stores, so it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BLOCK_TYPES", "DEPTHS", "FITTED_OPTIONS", "POSITIONS", "BlockSpec", "ResNetArch"]

#: stage depths of the Bottleneck ResNets (He et al., arXiv 1512.03385), as torchvision/mmdet.
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

#: where a block sits: inside a bottleneck (mmdetection's plugin positions, plus the GCNet
#: repository's ``after_add``), or as its own entry of a stage's ``Sequential`` (NL paper).
POSITIONS = ("after_conv1", "after_conv2", "after_conv3", "after_add", "standalone")

#: block class names (as in mmcv) -> constructor options they accept besides ``in_channels``.
BLOCK_TYPES = {
    "NonLocal2d": ("reduction", "use_scale", "mode", "sub_sample", "norm_cfg", "logit_scale", "out_bias"),
    "ContextBlock": ("ratio", "pooling_type", "fusion_types"),
    "SimplifiedNonLocal2d": (),
    "PositionAttention2d": (),  # DANet's PAM (Fu et al. 2019)
    "SqueezeExcitation2d": ("ratio",),  # Hu et al. 2018: no map over positions
    "PooledResidual2d": (),  # global average pool -> FC -> add: no map over positions
    "SpatialGaussian2d": ("sigma", "reduction"),  # maps by spatial distance only: the locality control
}

#: block type -> options whose value is fitted to each model, as its weights are learnt, not chosen with the architecture.
#: The rule: an option is fitted when the checkpoint's maker sets it from that model's own weights or features, so two
#: seeds of one variant differ in it as in their weights; an option set from the layout or the variant alone (``mode``,
#: ``reduction``, a layout's ``logit_scale``) is architecture. A report pools seeds whose fitted options differ
#: (``nlanalysis.report.meta``). The locality twin's ``sigma`` is matched to the trained block's mean row entropy on that
#: model's features (``reports/controls/planted.py``, ``match_sigma``).
FITTED_OPTIONS = {"SpatialGaussian2d": ("sigma",)}


@dataclass
class BlockSpec:
    """One NL/GC block.

    Attributes:
        name: dotted module name inside the backbone, as in the checkpoint
            (``layer3.5.nonlocal_block``, ``layer4.0.context_block``, ``layer3.5`` when standalone).
        type: one of :data:`BLOCK_TYPES` (``NonLocal2d``, ``ContextBlock``, ``SimplifiedNonLocal2d``, ...).
        in_channels: channels of the block input.
        position: one of :data:`POSITIONS`.
        options: constructor options (see :data:`BLOCK_TYPES`).
    """

    name: str
    type: str
    in_channels: int
    position: str = "after_conv3"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in BLOCK_TYPES:
            raise ValueError(f"block {self.name!r}: unknown type {self.type!r}; expected one of {sorted(BLOCK_TYPES)}")
        if self.position not in POSITIONS:
            raise ValueError(f"block {self.name!r}: unknown position {self.position!r}; expected one of {POSITIONS}")
        unknown = set(self.options) - set(BLOCK_TYPES[self.type])
        if unknown:
            raise ValueError(f"block {self.name!r}: options {sorted(unknown)} do not apply to {self.type}")

    @property
    def stage(self) -> int:
        """1-based stage (``layerS``)."""
        return int(self.name.split(".")[0].removeprefix("layer"))

    @property
    def index(self) -> int:
        """Index of the entry in the stage's ``Sequential`` that holds (or is) the block."""
        return int(self.name.split(".")[1])

    @property
    def attribute(self) -> str | None:
        """Attribute name inside the bottleneck; ``None`` for a standalone block."""
        parts = self.name.split(".")
        return None if self.position == "standalone" else ".".join(parts[2:])


@dataclass
class ResNetArch:
    """A Bottleneck ResNet (torchvision / mmdetection key names) with NL/GC blocks.

    Attributes:
        stage_blocks: residual blocks per stage of the full network, e.g. ``(3, 4, 6, 3)``.
        blocks: the NL/GC blocks.
        style: ``pytorch`` (stride on the 3x3 conv, torchvision) or ``caffe`` (stride on conv1).
        groups: groups of the 3x3 convs (ResNeXt: 32).
        width_per_group: torchvision's ``width_per_group`` (64 for ResNet, 4 for ResNeXt-32x4d).
        prefix: key prefix of the backbone in the checkpoint (``backbone.``, ``module.``, or ``''``).
    """

    stage_blocks: tuple[int, ...]
    blocks: list[BlockSpec] = field(default_factory=list)
    style: str = "pytorch"
    groups: int = 1
    width_per_group: int = 64
    prefix: str = ""

    def __post_init__(self) -> None:
        self.stage_blocks = tuple(int(n) for n in self.stage_blocks)
        self.blocks = [b if isinstance(b, BlockSpec) else BlockSpec(**b) for b in self.blocks]
        if self.style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {self.style!r}")
        if self.prefix and not self.prefix.endswith("."):
            raise ValueError(f"prefix must be empty or end with '.', got {self.prefix!r}")
        for block in self.blocks:
            if not 1 <= block.stage <= len(self.stage_blocks):
                raise ValueError(f"block {block.name!r} is outside the {len(self.stage_blocks)} stages")

    @property
    def depth(self) -> int | None:
        """50/101/152 when the stage depths are standard, else ``None``."""
        return next((d for d, s in DEPTHS.items() if s == self.stage_blocks), None)

    def describe(self) -> str:
        """One line for ``inspect``: depth/width, stage blocks, style and key prefix."""
        name = f"ResNet-{self.depth}" if self.depth else "ResNet"
        if self.groups > 1:
            name = name.replace("ResNet", "ResNeXt") + f" {self.groups}x{self.width_per_group}d"
        return f"{name}, stage blocks {list(self.stage_blocks)}, style {self.style}, prefix {self.prefix!r}"

    def entries(self, stage: int) -> int:
        """Length of stage ``stage``'s ``Sequential``: residual blocks plus standalone blocks."""
        extra = sum(1 for b in self.blocks if b.position == "standalone" and b.stage == stage)
        return self.stage_blocks[stage - 1] + extra

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stage_blocks"] = list(self.stage_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetArch:
        data = dict(data)
        data["blocks"] = [BlockSpec(**b) for b in data.get("blocks", [])]
        return cls(**data)
