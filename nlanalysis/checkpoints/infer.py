"""The architecture of a ResNet-with-NL/GC checkpoint, from its keys, its config and flags.

Keys give the stage depths (``layerS.I.conv1.weight``), the ResNeXt width (``conv2`` shapes), every
NL/GC block and its options (:mod:`.layouts`), and each plugin's position up to an ambiguity
(``after_conv3`` vs ``after_add``; ``after_conv1`` vs ``after_conv2``). An mmdetection config
(``model.backbone``: ``style``, ``plugins``; mmdetection 1.x / GCNet ``gcb`` + ``stage_with_gcb``,
early GCNet ``ct`` + ``stage_with_ct``) and explicit overrides then settle what keys can't.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..models import BlockSpec, ResNetArch
from .config import SKIPPED
from .layouts import FoundBlock, key_modes

__all__ = ["apply_config", "apply_overrides", "drop_assumed", "find_backbone_prefix", "infer_arch"]

_STAGE_KEY = re.compile(r"^(.*?)layer(\d+)\.(\d+)\.conv1\.weight$")
_ABBR = {"NonLocal2d": "nonlocal_block", "ContextBlock": "context_block"}
#: other spellings of a plugin type: mmdetection 2.0-2.2's own ``NonLocal2D`` (mmdet/ops/plugin.py, ``nonlocal_block``;
#: its logits divided by sqrt(C'), as mmcv's) is mmcv's ``NonLocal2d`` without ``sub_sample``
_SAME_TYPE = {"NonLocal2D": "NonLocal2d"}
#: how a block's note on a setting its keys could not tell begins (:mod:`.layouts`, :func:`infer_arch`); dropped once
#: a config or a flag gives that setting
_ASSUMED = {"mode": ("mode ",), "use_scale": ("use_scale=", "timm use_scale="), "position": ("position ",)}
_GCNET_POSITIONS = {"after_1x1": "after_conv3", "after_3x3": "after_conv2", "after_add": "after_add"}


def find_backbone_prefix(state_dict: dict[str, Tensor]) -> str | None:
    """Key prefix of the ResNet stages (``''``, ``backbone.``, ``module.backbone.``), or ``None``."""
    prefixes: dict[str, int] = {}
    for key in state_dict:
        m = _STAGE_KEY.match(key)
        if m:
            prefixes[m.group(1)] = prefixes.get(m.group(1), 0) + 1
    if not prefixes:
        return None
    return max(prefixes, key=lambda p: (p.endswith("backbone."), prefixes[p], -len(p)))


def infer_arch(state_dict: dict[str, Tensor], prefix: str, blocks: list[FoundBlock]) -> tuple[ResNetArch, list[str]]:
    """Build a :class:`ResNetArch` from keys under ``prefix`` and the blocks found there.

    Raises:
        ValueError: a block outside the backbone's stages, or a backbone this can't rebuild.
    """
    notes: list[str] = []
    bottlenecks: dict[int, set[int]] = {}
    for key in state_dict:
        m = _STAGE_KEY.match(key)
        if m and m.group(1) == prefix:
            bottlenecks.setdefault(int(m.group(2)), set()).add(int(m.group(3)))
    if any(k.startswith(prefix + "stem.") for k in state_dict):
        raise ValueError(f"deep-stem ResNet ({prefix}stem.*, ResNetV1c/V1d) is not supported: only the 7x7 stem")
    if any(".conv2.conv_offset" in k or ".conv2_offset" in k for k in state_dict if k.startswith(prefix + "layer")):
        raise ValueError("deformable convolutions (DCN) in the backbone are not supported")
    if f"{prefix}layer1.0.bn1.weight" not in state_dict:
        raise ValueError(f"backbone normalisation is not BatchNorm (no {prefix}layer1.0.bn1.weight): not supported")
    stages = sorted(bottlenecks)
    if stages != list(range(1, len(stages) + 1)):
        raise ValueError(f"ResNet stages {stages} under {prefix!r} are not layer1..layerN")

    specs: list[BlockSpec] = []
    for block in blocks:
        if not block.prefix.startswith(prefix + "layer"):
            raise ValueError(
                f"{block.type} block {block.prefix} is outside the ResNet stages under {prefix!r}: "
                "only blocks inside backbone stages can be rebuilt"
            )
        name = block.prefix[len(prefix) :]
        parts = name.split(".")
        stage, index = int(parts[0][5:]), int(parts[1])
        if len(parts) == 2:
            position = "standalone"
        elif len(parts) == 3:
            out = state_dict[f"{prefix}layer{stage}.{index}.conv3.weight"].shape[0]
            width = state_dict[f"{prefix}layer{stage}.{index}.conv1.weight"].shape[0]
            if block.in_channels == out:
                position = "after_conv3"
                if width == out:  # ResNeXt-64x4d / 32x8d: the bottleneck is as wide as its output
                    notes.append(f"{block.prefix}: position after_conv3 assumed (after_conv2 has the same shapes here: "
                                 "give --position or the config)")  # fmt: skip
            elif block.in_channels == width:
                position = "after_conv2"
                notes.append(f"{block.prefix}: position after_conv2 assumed (after_conv1 has the same shapes)")
            else:
                raise ValueError(f"{block.prefix}: {block.in_channels} input channels fit no position in the bottleneck")
        else:
            raise ValueError(f"{block.prefix}: NL/GC block nested deeper than a bottleneck attribute is not supported")
        specs.append(BlockSpec(name, block.type, block.in_channels, position, dict(block.options)))
        notes.extend(block.notes)

    for s in stages:
        entries = sorted(bottlenecks[s] | {b.index for b in specs if b.position == "standalone" and b.stage == s})
        if entries != list(range(len(entries))):
            raise ValueError(f"{prefix}layer{s} has gaps in its block indices {entries}")
    stage_blocks = tuple(len(bottlenecks[s]) for s in stages)
    conv2 = state_dict[f"{prefix}layer1.0.conv2.weight"]
    width, per_group = conv2.shape[0], conv2.shape[1]  # layer1: width = width_per_group * groups
    arch = ResNetArch(stage_blocks, specs, groups=width // per_group, width_per_group=per_group, prefix=prefix)
    return arch, notes


def _plugin_options(kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    keep = {
        "NonLocal2d": ("reduction", "use_scale", "mode", "sub_sample", "norm_cfg"),
        "ContextBlock": ("ratio", "pooling_type", "fusion_types"),
    }.get(kind, ())
    options = {k: cfg[k] for k in keep if k in cfg}
    if "fusion_types" in options:
        options["fusion_types"] = list(options["fusion_types"])
    if isinstance(options.get("norm_cfg"), dict):
        options["norm_cfg"] = {k: v for k, v in options["norm_cfg"].items() if k != "requires_grad"}
    return options


def drop_assumed(notes: list[str], block: str, given: tuple[str, ...] = tuple(_ASSUMED)) -> None:
    """Remove from ``notes`` (in place) what was assumed of block ``block`` (its key prefix) about the ``given`` settings:
    a config or flag has said it since (run.json and ``inspect`` must not say "assumed" of a setting given)."""
    heads = tuple(f"{block}: {word}" for g in given for word in _ASSUMED[g])
    notes[:] = [n for n in notes if not (n.startswith(heads) and "assumed" in n)]


def apply_config(arch: ResNetArch, cfg: dict[str, Any], source: str, notes: list[str]) -> None:
    """Settle style, options and positions from an mmdetection config (in place), in ``notes`` (also in place) what it
    settled, without the notes that assumed what it says.

    Raises:
        ValueError: the config declares NL/GC blocks the checkpoint has no weights for.
    """
    skipped = cfg.get(SKIPPED) or []
    if skipped:  # left to their library's defaults: said, in case one of them sets an NL/GC option
        notes.append(f"{source}: {len(skipped)} config entr{'y' if len(skipped) == 1 else 'ies'} not literal-like, left out "
                     f"({'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''}); give an NL/GC option among them by flag")  # fmt: skip
    model = cfg.get("model")
    backbone = model.get("backbone") if isinstance(model, dict) else None
    if not isinstance(backbone, dict):
        notes.append(f"{source}: no model.backbone in the config; architecture from keys only")
        return
    if backbone.get("style") in ("pytorch", "caffe"):
        arch.style = backbone["style"]
    last = max((b.stage for b in arch.blocks), default=0)  # the stages every block's input goes through
    for name, default in (("strides", (1, 2, 2, 2)), ("dilations", (1, 1, 1, 1))):
        given = backbone.get(name)
        if isinstance(given, (list, tuple)) and tuple(given)[:last] != default[:last]:  # (DC5, dilated backbones)
            raise ValueError(f"the config ({source}) sets the backbone's {name}={tuple(given)}: only mmdetection's default "
                             f"{default} is rebuilt (layer1..layer{last} here)")  # fmt: skip
    declared: list[tuple[str, str, tuple | None, dict[str, Any], str]] = []  # type, attr, stages, options, position
    said: dict[int, set[str]] = {}  # per declaration, the settings its config states (not left to a default)
    for plugin in backbone.get("plugins") or []:
        pcfg = dict(plugin.get("cfg", {}))
        kind = pcfg.pop("type", "")
        kind = _SAME_TYPE.get(kind, kind)
        attr = _ABBR.get(kind, kind) + str(pcfg.pop("postfix", plugin.get("postfix", "")))
        declared.append((kind, attr, plugin.get("stages"), _plugin_options(kind, pcfg), plugin.get("position", "after_conv3")))
        said[len(declared) - 1] = {*pcfg, *(["position"] if "position" in plugin else [])}
    if isinstance(backbone.get("gcb"), dict):
        declared.append(("ContextBlock", "context_block", backbone.get("stage_with_gcb"), _plugin_options("ContextBlock", backbone["gcb"]), "after_conv3"))
    if isinstance(backbone.get("ct"), dict):
        ct = backbone["ct"]
        options = {"pooling_type": ct.get("pool", "att")}
        fusions = ct.get("fusions", "channel_add")
        options["fusion_types"] = list(fusions) if isinstance(fusions, (list, tuple)) else [fusions]
        if "ratio" in ct:
            options["ratio"] = ct["ratio"]
        position = _GCNET_POSITIONS.get(ct.get("insert_pos", "after_1x1"), "after_conv3")
        declared.append(("ContextBlock", "context_block", backbone.get("stage_with_ct"), options, position))
    for i, (kind, attr, stages, options, position) in enumerate(declared):
        # a setting the config leaves out is its library's default, unless an entry was left out as not literal-like
        # (then it may have been that setting: its note stays); gcb/ct declarations state their position
        given = tuple(_ASSUMED) if not skipped else tuple(g for g in _ASSUMED if g in said.get(i, {"position"}))
        if kind not in _ABBR:
            notes.append(f"{source}: plugin {kind} ({attr}) is not an NL/GC block; ignored")
            continue
        matched = [b for b in arch.blocks if b.attribute == attr and (stages is None or stages[b.stage - 1])]
        want = [i + 1 for i, on in enumerate(stages or [True] * len(arch.stage_blocks)) if on]
        missing = [s for s in want if not any(b.stage == s for b in matched)]
        if missing:
            raise ValueError(
                f"the config ({source}) puts {kind} '{attr}' in stage(s) {missing}, "
                "but the checkpoint has no weights for it there"
            )
        for block in matched:
            if block.type != kind:
                raise ValueError(f"the config ({source}) says {block.name} is a {kind}, the keys say {block.type}")
            block.options.update(options)
            block.position = position
            drop_assumed(notes, arch.prefix + block.name, given)
    if declared:
        notes.append(f"options and positions of configured blocks from {source}")


def _given_scale(block: BlockSpec, use: bool) -> list[str]:
    """``use_scale`` given for an NL block: a layout's own logit factor (``logit_scale``: timm's ``C**-0.5``, the GCNet
    repository's ``sqrt(C')``) goes with ``use_scale=False``, and a layout without one (AlexHex7's 1.0) takes mmcv's
    ``C'**-0.5`` with ``use_scale=True``; else the factor would win over the flag (``blocks.non_local``)."""
    block.options["use_scale"] = use
    own = block.options.get("logit_scale")
    if own is None or (use and own != 1.0):
        return []
    del block.options["logit_scale"]
    now = "none" if not use else "mmcv's 1/sqrt(C')"
    return [f"{block.name}: logit scale {now} (use_scale={use} given; the layout's own factor {own:.4g} dropped)"]


def apply_overrides(arch: ResNetArch, overrides: dict[str, Any], notes: list[str], modes: Mapping[str, tuple[str, ...]] | None = None) -> None:
    """Explicit settings (CLI flags) win over config and keys: ``style``, ``nl_mode``, ``use_scale``, ``position``; noted in
    ``notes`` (in place), without the notes that assumed them. ``modes``: ``{block key prefix: the modes its keys allow}``
    (:attr:`FoundBlock.modes`; a block not in it: those of its mode's keys in mmcv's layout)."""
    if overrides.get("style"):
        arch.style = overrides["style"]
        notes.append(f"style={arch.style} (given)")
    for block in arch.blocks:
        if block.type == "NonLocal2d":
            if overrides.get("nl_mode"):
                given, own = overrides["nl_mode"], block.options.get("mode", "embedded_gaussian")  # (NonLocal2d's default)
                allowed = (modes or {}).get(arch.prefix + block.name) or key_modes("", {**block.options, "mode": own})
                if given not in allowed:
                    either = ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else allowed[0]
                    raise ValueError(f"{block.name}: its keys allow mode {either}, not {given}")
                if own != given:  # the user's word wins, noted (run.json, inspect)
                    said = f"the checkpoint's own is {own}" if len(allowed) <= 2 else f"its keys allow {', '.join(allowed)}"
                    notes.append(f"{block.name}: mode {given} (given; {said})")
                block.options["mode"] = given
                drop_assumed(notes, arch.prefix + block.name, ("mode",))
            if overrides.get("use_scale") is not None:
                notes += _given_scale(block, bool(overrides["use_scale"]))
                drop_assumed(notes, arch.prefix + block.name, ("use_scale",))
        if overrides.get("position") and block.position != "standalone":
            block.position = overrides["position"]
            drop_assumed(notes, arch.prefix + block.name, ("position",))
