"""Token layout of a Vision Transformer: class and register tokens versus patch tokens.

A ViT (Dosovitskiy et al., arXiv 2010.11929) runs attention over ``N = P + H_g * W_g`` tokens:
``P`` prefix tokens -- a class token and, in models trained with registers (Darcet et al.,
"Vision Transformers Need Registers", arXiv 2309.16588), ``R`` register tokens -- followed by the
patch tokens in row-major order over the ``H_g x W_g`` patch grid. Every supported family puts
the prefix first, in this order:

============================ ======================= ==========================================
family                       sequence                 where the layout is read
============================ ======================= ==========================================
timm ``VisionTransformer``   cls, reg_1..R, patches  ``num_prefix_tokens``, ``num_reg_tokens``,
                                                     ``patch_embed.patch_size``
torchvision ``VisionTrans.`` cls, patches            ``patch_size`` (one class token)
Hugging Face Dinov2 / ViT    cls, reg_1..R, patches  ``config.patch_size``,
                                                     ``config.num_register_tokens``
============================ ======================= ==========================================

The GCNet question (arXiv 1904.11492, Sec. 3) is about spatial positions, so the analysis uses
patch queries and patch keys by default; the class/register keys can be included on request
(``keys="all"``). Patch rows reshape to the patch grid with :meth:`TokenLayout.to_grid`.
"""
from __future__ import annotations

import math
import functools
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["KEY_SETS", "TokenLayout", "layout_of"]

#: which keys the statistics run over: patch keys only (default) or every token.
KEY_SETS = ("patch", "all")


@dataclass(frozen=True)
class TokenLayout:
    """Where the class, register and patch tokens sit in a ViT token sequence.

    Attributes:
        grid: ``(H_g, W_g)`` patch grid (patch tokens are row-major).
        n_cls: class tokens (0 or 1) at the start.
        n_reg: register tokens right after the class token.
        patch_size: ``(p_h, p_w)`` pixels per patch (``None`` when unknown).
    """

    grid: tuple[int, int]
    n_cls: int = 1
    n_reg: int = 0
    patch_size: tuple[int, int] | None = None

    # computed once per layout (the fields are frozen): every captured layer reads them ~20 times
    @functools.cached_property
    def n_prefix(self) -> int:
        """Class + register tokens before the patches."""
        return self.n_cls + self.n_reg

    @functools.cached_property
    def n_patch(self) -> int:
        return self.grid[0] * self.grid[1]

    @functools.cached_property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patch

    def check(self, n_tokens: int, where: str = "") -> None:
        """Raise a clear error unless a sequence of ``n_tokens`` fits this layout."""
        if n_tokens != self.n_tokens:
            raise ValueError(
                f"{where or 'attention'} sees {n_tokens} tokens, but the layout expects "
                f"{self.n_cls} class + {self.n_reg} register + {self.grid[0]}x{self.grid[1]} patch = {self.n_tokens}. "
                "Hint: pass layout=TokenLayout(grid=..., n_cls=..., n_reg=...) explicitly."
            )

    def patch_tokens(self, tokens: Tensor) -> Tensor:
        """The patch tokens of ``[B, N, C]`` -> ``[B, H_g * W_g, C]`` (a view)."""
        n_patch = tokens.shape[1] - self.n_prefix
        return tokens.narrow(1, self.n_prefix, n_patch) if n_patch >= 0 else tokens[:, self.n_prefix :]  # narrow: no index parse

    def to_grid(self, rows: Tensor) -> Tensor:
        """Reshape the last dimension (patch keys, ``H_g * W_g``) to the grid -> ``[..., H_g, W_g]``."""
        if rows.shape[-1] == self.n_tokens and self.n_prefix:
            rows = rows[..., self.n_prefix :]
        if rows.shape[-1] != self.n_patch:
            raise ValueError(f"expected {self.n_patch} patch keys (or {self.n_tokens} tokens), got {rows.shape[-1]}")
        return rows.reshape(*rows.shape[:-1], *self.grid)


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)  # type: ignore[call-overload]


def layout_of(model: nn.Module, input_size: tuple[int, int] | None = None, n_tokens: int | None = None) -> TokenLayout:
    """The token layout of a supported ViT for a model input of ``input_size`` pixels.

    Reads timm ``VisionTransformer`` (``num_prefix_tokens``, ``num_reg_tokens``, ``patch_embed``),
    torchvision ``VisionTransformer`` (``patch_size``) and Hugging Face Dinov2/ViT models
    (``config``). For any other model, or without ``input_size``, the layout is inferred from
    ``n_tokens`` alone: the smallest prefix ``P`` (0 to 16) with ``n_tokens - P`` a square (square
    grids only; a class token is assumed when ``P >= 1``, the rest counted as registers).

    Raises:
        ValueError: neither the model nor ``n_tokens`` determines the layout.
    """
    n_cls = n_reg = None
    patch = None
    if hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed"):  # timm
        n_reg = int(getattr(model, "num_reg_tokens", 0))
        n_cls = int(model.num_prefix_tokens) - n_reg
        patch = _pair(model.patch_embed.patch_size)
    elif hasattr(model, "class_token") and hasattr(model, "conv_proj") and hasattr(model, "patch_size"):  # torchvision
        n_cls, n_reg, patch = 1, 0, _pair(model.patch_size)
    elif hasattr(model, "config") and hasattr(model.config, "patch_size") and hasattr(model.config, "hidden_size"):  # HF
        n_cls, n_reg, patch = 1, int(getattr(model.config, "num_register_tokens", 0) or 0), _pair(model.config.patch_size)
    if patch is not None and input_size is not None:
        grid = (input_size[0] // patch[0], input_size[1] // patch[1])
        return TokenLayout(grid, n_cls, n_reg, patch)
    if n_tokens is None:
        raise ValueError(
            f"cannot tell the token layout of {type(model).__name__}: pass layout=TokenLayout(grid=(H, W), n_cls=1, n_reg=0)"
        )
    for prefix in range(0, 17):
        side = math.isqrt(n_tokens - prefix) if n_tokens > prefix else 0
        if side > 0 and side * side == n_tokens - prefix:
            if n_cls is None:
                n_cls, n_reg = min(prefix, 1), max(prefix - 1, 0)
            elif n_cls + n_reg != prefix:
                continue
            return TokenLayout((side, side), n_cls, n_reg, patch)
    raise ValueError(
        f"cannot infer a square patch grid from {n_tokens} tokens: pass layout=TokenLayout(grid=(H, W), n_cls=..., n_reg=...)"
    )
