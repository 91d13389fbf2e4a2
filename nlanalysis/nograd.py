"""``torch.no_grad`` for the per-layer path of a capture: the same effect, free where gradients are already off.

``@torch.no_grad()`` builds a context object per call and sets the grad mode twice even inside another
``no_grad``; a captured ViT forward passes through eight of them per layer, all but the first already
without gradients (~96 per ViT-S/14 forward). :func:`no_grad` and :func:`without_grad` check the mode
first and enter ``torch.no_grad()`` only where gradients are on.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = ["detached", "no_grad", "without_grad"]

F = TypeVar("F", bound=Callable[..., Any])


def no_grad(f: F) -> F:
    """Decorator: ``f`` runs without gradients, as under ``@torch.no_grad()``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return without_grad(f, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def without_grad(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``f(*args, **kwargs)`` without gradients (``with torch.no_grad():`` only where they are on)."""
    if not torch.is_grad_enabled():
        return f(*args, **kwargs)
    with torch.no_grad():
        return f(*args, **kwargs)


def detached(t: torch.Tensor) -> torch.Tensor:
    """``t.detach()`` where ``t`` requires grad, else ``t`` itself: the same values, read the same way, without a
    dispatched op per tensor (a captured forward without gradients detaches ~11 tensors per layer)."""
    return t.detach() if t.requires_grad else t
