"""How many attention heads a rebuilt ViT has: what the checkpoint states, else the caller's count, else 64-wide heads
for the widths of :data:`GUESSED_WIDTHS`; a caller's count that contradicts the checkpoint's is refused."""
from __future__ import annotations

import operator
from typing import Any

from .convert import CheckpointError, ConvertedViT

__all__ = ["GUESSED_WIDTHS", "head_count", "valid_head_count"]

#: widths whose standard timm / DINOv2 / torchvision ViTs all have 64-wide heads (Ti 192, S 384, B 768, L 1024,
#: DINOv2 g 1536): only for these is the head count guessed when nothing states it (ViT-H/14's 1280 is 16 heads of
#: 80, SigLIP so400m's 1152 is 16 of 72, timm's ViT-g/14 1408 is 16 of 88).
GUESSED_WIDTHS = (192, 384, 768, 1024, 1536)


def valid_head_count(value: Any) -> int | None:
    """``value`` as a head count (``None``: not given); ValueError for anything but a whole number of at least 1
    (``0`` is no "not given", a negative count no shape)."""
    if value is None:
        return None
    try:
        count = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        count = None
    if count is None or count < 1:
        raise ValueError(f"num_heads={value!r} (--vit-heads): the number of attention heads per layer is a whole number, at least 1")
    return count


def head_count(converted: ConvertedViT, dim: int, num_heads: int | None) -> tuple[int, str]:
    """``(heads, heads_from)``: the source's, else the caller's, else width / 64 for the widths of
    :data:`GUESSED_WIDTHS`; any other width without a stated count is refused (the weights cannot say), and so is a
    caller's count that differs from the one the source states (it would split the heads wrongly, without a word)."""
    num_heads = valid_head_count(num_heads)
    if converted.num_heads:
        if num_heads is not None and num_heads != converted.num_heads:
            raise CheckpointError(
                f"{converted.num_heads_from or converted.source}: states {converted.num_heads} attention heads per layer, "
                f"but num_heads= / --vit-heads says {num_heads}; --vit-heads is for checkpoints that do not state their head "
                f"count (timm and torchvision state dicts): leave it out (or give {converted.num_heads})"
            )
        return converted.num_heads, "checkpoint"
    if num_heads is not None:
        return num_heads, "caller (num_heads= / --vit-heads)"
    if dim in GUESSED_WIDTHS:
        return dim // 64, f"assumed head_dim 64 (every standard timm/DINOv2 ViT of width {dim} has 64-wide heads)"
    raise CheckpointError(
        f"{converted.source}: the weights do not say how many heads share the width {dim}, and no standard ViT of that "
        "width fixes it (only widths " + ", ".join(map(str, GUESSED_WIDTHS)) + " are guessed, as 64-wide heads); state it: "
        "num_heads= (load_vit) or --vit-heads (extract, inspect, vit-report), e.g. ViT-H/14 (width 1280): 16 heads of 80"
    )
