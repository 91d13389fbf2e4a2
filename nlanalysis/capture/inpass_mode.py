"""A ``TorchFunctionMode`` active only while one module runs: pushed by its forward pre-hook, popped by its
forward hook. The ViT heads' shared softmax (:mod:`.shared_softmax`) and the NL blocks' own pass
(:mod:`.inpass_blocks`) are two of them: each offers the module's torch calls to a handler."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["ModuleMode", "Ops"]


class Ops:
    """A set of torch functions as a ``TorchFunctionMode`` receives them: ``func in ops`` by identity, or by name
    where another tool has replaced torch's functions with wrappers of its own (TorchLens does, process-wide,
    from its first trace on): the mode then receives the wrapper, not the originals (or, where this module was
    imported after the wrapping, the originals and not the wrappers). Answers are remembered per function:
    a mode sees every call of its module's forward."""

    def __init__(self, *ops: Callable) -> None:
        self.ops, self.names = ops, frozenset(op.__name__ for op in ops)
        self._known: dict[Any, bool] = {}

    def __contains__(self, func: Callable) -> bool:
        try:
            return self._known[func]
        except KeyError:
            found = self._known[func] = func in self.ops or getattr(func, "__name__", None) in self.names
            return found
        except TypeError:  # an unhashable callable
            return func in self.ops or getattr(func, "__name__", None) in self.names


class ModuleMode(TorchFunctionMode):
    """A mode pushed while one module runs and popped after it (:meth:`push`, :meth:`pop`; :meth:`close` when
    the capture ends: a forward interrupted by a ``BaseException`` skips the hooks that pop).

    Args:
        handler: what the subclass offers the calls to; ``alive`` is False once closed.
    """

    def __init__(self, handler: Callable[..., Any]) -> None:
        super().__init__()
        self.handler = handler
        self.alive = True
        self.pushed = False

    def push(self) -> None:
        """Make the mode active (once; :meth:`pop` leaves it)."""
        if not self.pushed:
            self.__enter__()
            self.pushed = True

    def pop(self) -> None:
        n = torch._C._len_torch_function_stack()  # pop only when innermost: never a mode pushed inside the forward
        if self.pushed and n > 0 and torch._C._get_function_stack_at(n - 1) is self:
            self.__exit__(None, None, None)
            self.pushed = False

    def close(self) -> None:
        """Pop the mode if it is still active; one that cannot be popped declines every call from now on."""
        self.alive = False
        self.pop()
