"""``nlanalysis inspect --ckpt FILE``: what a checkpoint holds and how it will be rebuilt.

Prints the detected format, the architecture, every NL/GC block with its mode and shapes, the
preprocessing, which keys are unused or missing, and what was assumed; for a ViT checkpoint (Hugging
Face, timm or ONNX layout) its layers, heads, tokens and attention modules. Errors are one line naming
the file (exit code 2).
"""
from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from ..blocks import PAIRWISE_MODES
from ..checkpoints import LoadedCheckpoint, check_checkpoint_file, load_checkpoint
from ..extract.analysis_nl import CHECKPOINT_OVERRIDES
from ..models import POSITIONS
from . import add_command
from ._vit_flags import add_vit_flags

__all__ = ["add_checkpoint_arguments", "checkpoint_overrides", "register"]


def add_checkpoint_arguments(parser: argparse.ArgumentParser, required: bool = True, ckpt_help: str = "checkpoint file (.pth)") -> None:
    """The ``--ckpt`` options shared by commands that load checkpoints (``inspect``, ``extract``)."""
    parser.add_argument("--ckpt", required=required, metavar="FILE", help=ckpt_help)
    parser.add_argument("--config", metavar="FILE", help="mmdetection config file (parsed, never executed)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow unrestricted unpickling if the safe loader refuses the file (runs code from it)")  # fmt: skip
    parser.add_argument("--style", choices=("pytorch", "caffe"), help="ResNet stride style (keys can't tell)")
    parser.add_argument("--nl-mode", choices=PAIRWISE_MODES, help="NL pairwise function (keys can't tell embedded_gaussian from dot_product, "
                        "nor any mode of AlexHex7's 2018 lib/non_local.py from concatenation)")  # fmt: skip
    parser.add_argument("--use-scale", action=argparse.BooleanOptionalAction, default=None, help="NL 1/sqrt(C') scale")
    parser.add_argument("--position", choices=POSITIONS[:-1], help="plugin position inside the bottleneck")
    add_vit_flags(parser, ("vit_heads",))


def checkpoint_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``overrides`` for :func:`nlanalysis.checkpoints.load_checkpoint` from parsed arguments."""
    return {k: getattr(args, k) for k in CHECKPOINT_OVERRIDES}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "inspect", run, help="show what a checkpoint holds and how it is rebuilt")
    add_checkpoint_arguments(parser)
    parser.add_argument("--all-keys", action="store_true", help="list every unused key, not a summary")


def _key_summary(keys: list[str], show_all: bool) -> list[str]:
    if show_all:
        return [f"    {k}" for k in keys]
    groups = Counter(".".join(k.split(".")[:2]) for k in keys)
    return [f"    {group}.*  ({n} keys)" for group, n in sorted(groups.items())]


def _nonfinite_warning(nonfinite: list[str]) -> list[str]:
    """The warning line for weights holding NaN or inf (checkpoint names), or none."""
    if not nonfinite:
        return []
    return [f"WARNING: NaN or inf in {len(nonfinite)} weight tensor(s), first {nonfinite[0]}: the checkpoint is broken and extract refuses it"]


#: the mode shown for block types that have one fixed form (no ``mode`` option)
_FIXED_MODES = {"ContextBlock": "gc", "SimplifiedNonLocal2d": "snl", "PositionAttention2d": "position_attention",
                "SqueezeExcitation2d": "se", "PooledResidual2d": "pooled_fc", "SpatialGaussian2d": "spatial_gaussian"}


def format_report(ckpt: LoadedCheckpoint, show_all: bool = False) -> str:
    """The ``inspect`` report as text."""
    arch = ckpt.arch
    modules = ckpt.block_modules()
    lines = [
        f"file: {ckpt.path}",
        f"format: {ckpt.format}",
        f"architecture: {arch.describe()}; rebuilt up to {ckpt.blocks[-1] if ckpt.blocks else '-'}",
        f"NL/GC blocks ({len(arch.blocks)}):",
    ]
    for spec in arch.blocks:
        name = arch.prefix + spec.name
        module = modules[name]
        opts = dict(spec.options)
        mode = opts.pop("mode", None) or _FIXED_MODES.get(spec.type, "?")
        inner = getattr(module, "inter_channels", getattr(module, "planes", None))
        shape = f"C={spec.in_channels}" + (f", inner={inner}" if inner is not None else "")
        rest = ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
        layout = ckpt.block_layouts.get(name, "?")
        lines.append(f"  {name}: {spec.type} mode={mode} {shape} position={spec.position} keys={layout}" + (f" [{rest}]" if rest else ""))
    p = ckpt.preprocess
    lines += [
        f"preprocessing ({p.source}): mean {list(p.mean)}, std {list(p.std)}, "
        f"{'RGB' if p.to_rgb else 'BGR'}, resize {'keeping ratio to fit' if p.keep_ratio else 'to'} {tuple(p.scale)}, "
        f"pad to multiple of {p.pad_divisor}",
        f"unused keys: {len(ckpt.unused_keys)}" + (" (beyond the last analysed block, neck, heads)" if ckpt.unused_keys else ""),
        *_key_summary(ckpt.unused_keys, show_all),
        f"missing keys: {len(ckpt.missing_keys)}" + (" (num_batches_tracked only: harmless)" if ckpt.missing_keys else ""),
    ]
    lines += _nonfinite_warning(ckpt.nonfinite)
    if ckpt.placeholders:
        lines.append(f"not loaded (inert placeholders): {', '.join(ckpt.placeholders)}")
    if ckpt.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in ckpt.notes]
    return "\n".join(lines)


def format_vit_report(path: str, layout: str, model: Any) -> str:
    """The ``inspect`` report of a ViT checkpoint (Hugging Face, timm or ONNX layout)."""
    from ..adapters import list_blocks
    from ..adapters.vit import ViTAttentionAdapter

    spec = getattr(model, "vit_spec", None)
    attention = [b for b in list_blocks(model) if isinstance(b.adapter, ViTAttentionAdapter)]
    lines = [f"file: {path}", f"format: ViT checkpoint, {layout} layout"]
    if spec is not None:
        lines.append(
            f"architecture: {spec.depth} layers x {spec.num_heads} heads (heads: {spec.heads_from}), width {spec.embed_dim}, "
            f"patch {spec.patch_size}, MLP {spec.mlp_hidden}, class token {'yes' if spec.class_token else 'no'}, "
            f"{spec.n_reg} register tokens, LayerScale {'yes' if spec.layer_scale else 'no'}, position table {spec.pos_grid[0]}x{spec.pos_grid[1]} patches"
        )  # fmt: skip
    lines.append(f"attention layers ({len(attention)}): " + ", ".join(b.name for b in attention[:3]) + (", ..." if len(attention) > 3 else ""))
    lines += _nonfinite_warning(getattr(model, "vit_nonfinite", []))
    lines.append("analysed by: nlanalysis extract --ckpt FILE (ViT: --vit-preprocess pad|crop, --vit-size, --vit-keys, --vit-heads), nlanalysis vit-report, nlanalysis.analyze")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints.vit.models import vit_checkpoint_layout

    layout = vit_checkpoint_layout(args.ckpt)
    if layout is not None:
        given = [flag for flag, value in (("--config", args.config), ("--trust-checkpoint", args.trust_checkpoint)) if value]
        given += [f"--{k.replace('_', '-')}" for k, v in checkpoint_overrides(args).items() if v is not None]
        if given:
            raise ValueError(f"{args.ckpt}: {', '.join(given)}: options of NL/GC checkpoints; this is a ViT checkpoint ({layout} layout)")
        import warnings

        from ..checkpoints.vit.models import load_vit

        with warnings.catch_warnings():  # built at 224 to be described, not analysed: no table resample to warn of
            warnings.filterwarnings("ignore", message=".*position table stored for", category=UserWarning)
            model = load_vit(args.ckpt, num_heads=args.vit_heads, allow_nonfinite=True)
        print(format_vit_report(args.ckpt, layout, model))
        return 0
    if args.vit_heads is not None:
        check_checkpoint_file(args.ckpt)  # a missing or damaged file says so, not that --vit-heads is for ViTs
        raise ValueError(f"{args.ckpt}: --vit-heads is for ViT checkpoints; this is an NL/GC checkpoint")
    ckpt = load_checkpoint(args.ckpt, config=args.config, trust=args.trust_checkpoint, overrides=checkpoint_overrides(args),
                           allow_nonfinite=True)  # fmt: skip
    print(format_report(ckpt, args.all_keys))
    return 0
