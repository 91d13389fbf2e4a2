"""The ViT flags the commands share (``--vit-heads`` ...): one definition each, added where a command takes it."""
from __future__ import annotations

import argparse

from ..checkpoints.vit.heads import valid_head_count

__all__ = ["head_count_arg"]


def head_count_arg(text: str) -> int:
    """``--vit-heads H``: a whole number of at least 1 (``0`` is no "not given", a negative count no shape)."""
    try:
        return int(valid_head_count(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of attention heads per layer is a whole number, at least 1") from None
