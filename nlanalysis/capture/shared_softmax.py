"""One softmax per layer: a captured ViT's attention output computed from the maps being measured.

A fused ``F.scaled_dot_product_attention`` never hands out its softmax, so measuring the maps means
computing ``softmax(scale * q k^T)`` a second time. While a captured attention module runs,
:class:`SharedSoftmax` (a ``TorchFunctionMode``, active only inside that module's forward, or only in the
part of it around the call where the adapter knows it: ``sdpa_span``, timm's ``k_norm`` .. ``proj``) offers
each plain ``scaled_dot_product_attention`` call to a handler, which may answer it itself: with
:func:`nlanalysis.measure.heads.attend`, which measures the rows and returns ``softmax @ value`` from
the same pass. The model's modules and weights are untouched; a call that is not plain (masks,
dropout, causal or grouped attention, other dtypes or devices) or that the handler declines runs
torch's own kernel. With gradients on (a notebook's plain ``model(x)``), an answered call stays
differentiable: its backward recomputes torch's own attention from the saved q, k and v and
differentiates that (:class:`_Answered`), so the gradients are torch's.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nograd import without_grad
from .inpass_mode import ModuleMode, Ops

__all__ = ["SharedSoftmax", "sdpa_arguments"]

_SDPA = F.scaled_dot_product_attention
_SDPA_OPS = Ops((F, "scaled_dot_product_attention"))
_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_NAME_SET = frozenset(_NAMES)
_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def sdpa_arguments(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments of a ``scaled_dot_product_attention`` call by name (``None``: ones it does not take)."""
    if len(args) > len(_NAMES) or not _NAME_SET.issuperset(kwargs):
        return None
    named = dict(_DEFAULTS, **dict(zip(_NAMES, args)), **kwargs)
    return named if "query" in named and "key" in named and "value" in named else None


def _plain(call: dict[str, Any]) -> bool:
    """Whether a call is ``softmax(scale q k^T) v`` on float32 CPU ``[B, heads, N, d]`` tensors with no mask,
    dropout, causal or grouped attention and a positive scale."""
    q, k, v, scale = call["query"], call["key"], call["value"], call["scale"]
    if call["attn_mask"] is not None or call["dropout_p"] or call["is_causal"] or call["enable_gqa"]:
        return False
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        return False
    return _plain_tensor(q) and _plain_tensor(k) and _plain_tensor(v)


def _plain_tensor(t: Any) -> bool:
    return isinstance(t, Tensor) and t.dim() == 4 and t.dtype == torch.float32 and t.device.type == "cpu"


class _Answered(torch.autograd.Function):
    """An answered attention call as an autograd node: forward hands back the handler's output; backward
    recomputes ``F.scaled_dot_product_attention`` of the saved inputs and returns its gradients."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, scale: float | None, answer: list[Tensor]) -> Tensor:
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return answer.pop()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip((q, k, v), ctx.needs_input_grad[:3])]
            out = _SDPA(*inputs, scale=ctx.scale)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad))
        return (*(next(grads) if t.requires_grad else None for t in inputs), None, None)


class SharedSoftmax(ModuleMode):
    """Offers every plain ``F.scaled_dot_product_attention`` call made while active to ``handler``.

    Used as a context manager, or pushed while one module runs and popped after it (:meth:`push`,
    :meth:`pop`; :meth:`close` when the capture ends: a forward interrupted by a ``BaseException``
    skips the hooks that pop).

    Args:
        handler: called (without gradients) with the call's arguments by name (:func:`sdpa_arguments`) when
            the call is plain (float32 CPU, no mask, dropout, causal or grouped attention); returns the
            attention output ``[B, heads, N, d_v]``, or ``None`` to let torch compute it.
    """

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.alive and func in _SDPA_OPS:
            named = sdpa_arguments(args, kwargs)
            if named is not None and _plain(named):
                out = without_grad(self.handler, named)
                if out is not None:
                    q, k, v = named["query"], named["key"], named["value"]
                    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
                        return _Answered.apply(q, k, v, named["scale"], [out])
                    return out
        return func(*args, **kwargs)
