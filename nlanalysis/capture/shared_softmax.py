"""One softmax per layer: a captured ViT's attention output computed from the maps being measured.

A fused ``F.scaled_dot_product_attention`` never hands out its softmax, so measuring the maps means
computing ``softmax(scale * q k^T)`` a second time. While a captured attention module runs,
:class:`SharedSoftmax` (a ``TorchFunctionMode``, active only inside that module's forward) offers
each ``scaled_dot_product_attention`` call to a handler, which may answer it itself: with
:func:`nlanalysis.measure.heads.attend`, which measures the rows and returns ``softmax @ value`` from
the same pass. The model's modules and weights are untouched; a call the handler declines (masks,
dropout, causal or grouped attention, gradients, other dtypes or devices) runs torch's own kernel.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["SharedSoftmax", "innermost", "sdpa_arguments"]

_SDPA = F.scaled_dot_product_attention
_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def sdpa_arguments(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments of a ``scaled_dot_product_attention`` call by name (``None``: ones it does not take)."""
    if len(args) > len(_NAMES) or any(name not in _NAMES for name in kwargs):
        return None
    named = dict(_DEFAULTS, **dict(zip(_NAMES, args)), **kwargs)
    return named if all(name in named for name in _NAMES[:3]) else None


def innermost(mode: TorchFunctionMode) -> bool:
    """Whether ``mode`` is the innermost active torch function mode (so leaving it pops it, not another)."""
    n = torch._C._len_torch_function_stack()
    return n > 0 and torch._C._get_function_stack_at(n - 1) is mode


class SharedSoftmax(TorchFunctionMode):
    """Offers every ``F.scaled_dot_product_attention`` call made while active to ``handler``.

    Args:
        handler: called with the call's arguments by name (:func:`sdpa_arguments`); returns the
            attention output ``[B, heads, N, d_v]``, or ``None`` to let torch compute it.
    """

    def __init__(self, handler: Callable[[dict[str, Any]], Tensor | None]) -> None:
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is _SDPA:
            named = sdpa_arguments(args, kwargs)
            if named is not None:
                out = self.handler(named)
                if out is not None:
                    return out
        return func(*args, **kwargs)
