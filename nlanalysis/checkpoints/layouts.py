"""Key layouts of NL/GC blocks in the codebases whose checkpoints researchers have.

Each layout finds its blocks in a flat state dict by a signature key, infers the block's
constructor options from weight shapes, and renames its keys to this project's blocks (which use
mmcv's names, :mod:`nlanalysis.blocks`):

========================= ============================================ =====================
layout                    keys of one block                            source
========================= ============================================ =====================
``mmcv-nonlocal``         ``g``/``theta``/``phi``/``conv_out`` ``.conv.*``  mmcv ``NonLocal2d``
                          (``g.0.conv`` with sub_sample), ``concat_project.conv``
``mmcv-context``          ``conv_mask``, ``channel_{add,mul}_conv.{0,1,3}`` mmcv / GCNet ``ContextBlock``
``nlanalysis-snl``        ``conv_mask``, ``conv_value``                this project's SNL
``alexhex7``              ``g``, ``theta``, ``phi``, ``W`` (``W.0``/``W.1``)  AlexHex7/Non-local_pytorch
``timm``                  ``t``, ``p``, ``g``, ``z``, ``norm``          timm ``NonLocalAttn``
========================= ============================================ =====================

What keys can't tell (embedded Gaussian vs dot product, ``use_scale``) is assumed as the
source's default and said in the notes, for ``--config`` or flags to override. AlexHex7's
``lib/non_local.py`` of October-November 2018 (``lib/backup/non_local.py`` since) makes ``theta``,
``phi`` and ``concat_project`` whatever its ``mode``, so its keys are those of the concatenation
block: concatenation is assumed, and a warning says so (:data:`KEYS_CANNOT_TELL`); ``--nl-mode``
picks any mode those keys allow (:func:`key_modes`), and the modules it does not use stay unused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

__all__ = ["KEYS_CANNOT_TELL", "LAYOUTS", "MODE_MODULES", "BlockLayout", "FoundBlock", "find_blocks", "key_modes"]

#: the modules an NL block's pairwise term uses in each mode (besides ``g`` and the output conv, which every mode uses)
MODE_MODULES = {"gaussian": (), "embedded_gaussian": ("theta", "phi"), "dot_product": ("theta", "phi"),
                "concatenation": ("theta", "phi", "concat_project")}  # fmt: skip
#: in a note on a mode assumed where the keys allow modes of different forward passes: warned of at load, as well
KEYS_CANNOT_TELL = "the keys cannot tell"


@dataclass
class FoundBlock:
    """An NL/GC block found in a state dict.

    Attributes:
        prefix: full dotted key prefix of the block (``backbone.layer3.5.nonlocal_block``).
        layout: the :class:`BlockLayout` that recognised it.
        type: block class (``NonLocal2d``, ``ContextBlock``, ``SimplifiedNonLocal2d``).
        in_channels: input channels.
        options: constructor options inferred from shapes.
        notes: what was assumed because keys can't tell.
        modes: the NL modes whose checkpoints have these keys, the assumed one first (:func:`key_modes`; none: no NL block).
    """

    prefix: str
    layout: BlockLayout
    type: str
    in_channels: int
    options: dict[str, Any]
    notes: list[str]
    modes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockLayout:
    """One codebase's key layout for one block family."""

    name: str
    signature: re.Pattern[str]  # matches a full key; group 1 is the block prefix
    infer: Callable[[str, dict[str, Tensor]], tuple[str, int, dict[str, Any], list[str]]]
    rename: Callable[[str], str]  # block-relative key -> this project's block-relative key
    description: str


def _reduction(prefix: str, in_channels: int, inter: int) -> int:
    reduction = max(in_channels // inter, 1)
    if max(in_channels // reduction, 1) != inter:
        raise ValueError(f"{prefix}: {inter} inner channels of {in_channels} is not an integer reduction")
    return reduction


def _mode(prefix: str, keys: dict[str, Tensor], concat_key: str, theta_key: str, source: str) -> tuple[str, list[str]]:
    if concat_key in keys:
        return "concatenation", []
    if theta_key not in keys:
        return "gaussian", []
    return "embedded_gaussian", [
        f"{prefix}: mode embedded_gaussian assumed ({source} dot_product has the same keys; "
        "use --config or --nl-mode to say otherwise)"
    ]


def key_modes(layout: str, options: dict[str, Any]) -> tuple[str, ...]:
    """The NL modes whose blocks have the keys of a block of ``layout`` read as ``options`` (its mode first; none without
    one): embedded Gaussian and dot product have the same; AlexHex7's 2018 ``lib/non_local.py`` has those of its
    concatenation block in every mode (in gaussian mode with ``sub_sample`` its forward views phi's pooled C' channels
    as x's C: not the Gaussian this project rebuilds, so not that one)."""
    mode = options.get("mode")
    if mode is None:
        return ()
    if layout == "alexhex7" and mode == "concatenation":
        return ("concatenation", "embedded_gaussian", "dot_product") + (() if options.get("sub_sample") else ("gaussian",))
    return (mode,) if mode in ("gaussian", "concatenation") else (mode, *({"embedded_gaussian", "dot_product"} - {mode}))


def _infer_mmcv_nl(prefix: str, keys: dict[str, Tensor]) -> tuple[str, int, dict[str, Any], list[str]]:
    sub_sample = "g.0.conv.weight" in keys
    inter, in_channels = keys["g.0.conv.weight" if sub_sample else "g.conv.weight"].shape[:2]
    mode, notes = _mode(prefix, keys, "concat_project.conv.weight", "theta.conv.weight", "mmcv")
    options: dict[str, Any] = {
        "reduction": _reduction(prefix, in_channels, inter),
        "mode": mode,
        "sub_sample": sub_sample,
        "out_bias": "conv_out.conv.bias" in keys,
    }
    if "conv_out.bn.weight" in keys:
        options["norm_cfg"] = {"type": "BN"}
    elif "conv_out.gn.weight" in keys:  # num_groups is not in the keys: a config gives it (checked before the build)
        options["norm_cfg"] = {"type": "GN"}
    if mode == "embedded_gaussian":
        notes.append(f"{prefix}: use_scale=True assumed (mmcv's default)")
    return "NonLocal2d", int(in_channels), options, notes


def _infer_context(prefix: str, keys: dict[str, Tensor]) -> tuple[str, int, dict[str, Any], list[str]]:
    fusion = tuple(f for f in ("channel_add", "channel_mul") if f"{f}_conv.0.weight" in keys)
    planes, in_channels = keys[f"{fusion[0]}_conv.0.weight"].shape[:2]
    ratio = planes / in_channels
    if int(in_channels * ratio) != planes:
        ratio = (planes + 0.5) / in_channels
    pooling = "att" if "conv_mask.weight" in keys else "avg"
    return "ContextBlock", int(in_channels), {"ratio": ratio, "pooling_type": pooling, "fusion_types": list(fusion)}, []


def _infer_snl(prefix: str, keys: dict[str, Tensor]) -> tuple[str, int, dict[str, Any], list[str]]:
    return "SimplifiedNonLocal2d", int(keys["conv_value.weight"].shape[1]), {}, []


def _infer_alexhex7(prefix: str, keys: dict[str, Tensor]) -> tuple[str, int, dict[str, Any], list[str]]:
    sub_sample = "g.0.weight" in keys
    inter, in_channels = keys["g.0.weight" if sub_sample else "g.weight"].shape[:2]
    theta = "theta.weight"
    mode, notes = _mode(prefix, keys, "concat_project.0.weight", theta, "AlexHex7's")
    options: dict[str, Any] = {
        "reduction": _reduction(prefix, in_channels, inter),
        "mode": mode,
        "sub_sample": sub_sample,
        "use_scale": False,
        "out_bias": "W.0.bias" in keys or "W.bias" in keys,
    }
    if mode == "embedded_gaussian":
        options["logit_scale"] = 1.0  # AlexHex7 applies no 1/sqrt(C') scale
    if "W.1.weight" in keys:
        options["norm_cfg"] = {"type": "BN"}
    if mode == "concatenation":
        modules = ", ".join(sorted({k.rsplit(".", 1)[0] for k in keys}))
        notes.append(
            f"{prefix}: mode concatenation assumed, but {KEYS_CANNOT_TELL}: its keys ({modules}) are those of AlexHex7's "
            "lib/non_local_concatenation.py and of that repository's 2018 lib/non_local.py in any mode (it makes theta, phi and concat_project "
            f"whatever its mode), so the mode may be any of {', '.join(key_modes('alexhex7', options))}; "
            "give it with --nl-mode (Python: overrides={'nl_mode': ...})"
        )
    return "NonLocal2d", int(in_channels), options, notes


def _rename_alexhex7(key: str) -> str:
    head, _, rest = key.partition(".")
    if head in ("g", "theta", "phi"):
        if rest.startswith("0."):
            return f"{head}.0.conv.{rest[2:]}"
        return f"{head}.conv.{rest}"
    if head == "W":
        if rest.startswith("0."):
            return f"conv_out.conv.{rest[2:]}"
        if rest.startswith("1."):
            return f"conv_out.bn.{rest[2:]}"
        return f"conv_out.conv.{rest}"
    if head == "concat_project" and rest.startswith("0."):
        return f"concat_project.conv.{rest[2:]}"
    return key


def _infer_timm(prefix: str, keys: dict[str, Tensor]) -> tuple[str, int, dict[str, Any], list[str]]:
    inter, in_channels = keys["t.weight"].shape[:2]
    options = {
        "reduction": _reduction(prefix, in_channels, inter),
        "mode": "embedded_gaussian",
        "use_scale": True,
        "logit_scale": float(in_channels) ** -0.5,  # timm scales by C**-0.5, not C'**-0.5
        "norm_cfg": {"type": "BN"},
        "out_bias": "z.bias" in keys,
    }
    return "NonLocal2d", int(in_channels), options, [f"{prefix}: timm use_scale=True assumed (its default)"]


_TIMM_NAMES = {"t": "theta", "p": "phi", "g": "g", "z": "conv_out"}


def _rename_timm(key: str) -> str:
    head, _, rest = key.partition(".")
    if head == "norm":
        return f"conv_out.bn.{rest}"
    if head in _TIMM_NAMES:
        return f"{_TIMM_NAMES[head]}.conv.{rest}"
    return key


def _same(key: str) -> str:
    return key


LAYOUTS: tuple[BlockLayout, ...] = (
    BlockLayout("mmcv-nonlocal", re.compile(r"^(.+?)\.g(?:\.0)?\.conv\.weight$"), _infer_mmcv_nl, _same,
                "mmcv/mmdetection/this project's NonLocal2d (g/theta/phi/conv_out as ConvModule)"),
    BlockLayout("mmcv-context", re.compile(r"^(.+?)\.channel_(?:add|mul)_conv\.0\.weight$"), _infer_context, _same,
                "mmcv/GCNet-repository ContextBlock (conv_mask, channel_add_conv.{0,1,3})"),
    BlockLayout("nlanalysis-snl", re.compile(r"^(.+?)\.conv_value\.weight$"), _infer_snl, _same,
                "this project's SimplifiedNonLocal2d (conv_mask, conv_value)"),
    BlockLayout("alexhex7", re.compile(r"^(.+?)\.W(?:\.0)?\.weight$"), _infer_alexhex7, _rename_alexhex7,
                "AlexHex7/Non-local_pytorch NONLocalBlock2D (g, theta, phi, W)"),
    BlockLayout("timm", re.compile(r"^(.+?)\.z\.weight$"), _infer_timm, _rename_timm, "timm NonLocalAttn (t, p, g, z, norm)"),
)  # fmt: skip


def find_blocks(state_dict: dict[str, Tensor]) -> list[FoundBlock]:
    """Every NL/GC block in ``state_dict``, in key order.

    Raises:
        ValueError: a block whose shapes make no sense (message names its prefix).
    """
    found: dict[str, FoundBlock] = {}
    for key in state_dict:
        for layout in LAYOUTS:
            match = layout.signature.match(key)
            if not match or match.group(1) in found:
                continue
            prefix = match.group(1)
            keys = {k[len(prefix) + 1 :]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
            if layout.name == "timm" and not {"t.weight", "p.weight", "g.weight"} <= set(keys):
                continue
            if layout.name == "alexhex7" and not ({"g.weight", "g.0.weight"} & set(keys)):
                continue
            try:
                kind, channels, options, notes = layout.infer(prefix, keys)
            except KeyError as err:
                raise ValueError(f"{prefix}: incomplete {layout.name} block, key {prefix}.{err.args[0]} missing") from err
            found[prefix] = FoundBlock(prefix, layout, kind, channels, options, notes, key_modes(layout.name, options))
    # a block nested in another (never in real layouts) would be counted twice: keep outermost
    return [b for b in found.values() if not any(b.prefix.startswith(o + ".") for o in found)]
