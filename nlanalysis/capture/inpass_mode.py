"""A ``TorchFunctionMode`` active only while one module runs: pushed by its forward pre-hook, popped by its
forward hook. The ViT heads' shared softmax (:mod:`.shared_softmax`) and the NL blocks' own pass
(:mod:`.inpass_blocks`) are two of them: each offers the module's torch calls to a handler."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["ModuleMode", "Ops"]


#: where torch keeps the C implementation behind each namespace's functions (what a mode receives from a call that
#: goes through a wrapper made before the set was)
_C_HOMES = {id(torch.Tensor): torch._C.TensorBase, id(torch): torch._C._VariableFunctions, id(torch.nn.functional): torch._C._nn}


class Ops:
    """The torch functions at ``places``, ``(namespace, name)`` pairs such as ``(torch.Tensor, "softmax")``, as a
    ``TorchFunctionMode`` receives them: ``func in ops`` where ``func`` is what a place holds now (another tool may
    have replaced torch's function with a wrapper: TorchLens does, process-wide, from its first trace on, and the
    mode then receives the wrapper), what it held when the set was made, or torch's C implementation behind it
    (``torch._C``: received where a wrapper made before the set calls it). A name alone is never trusted: an
    unrelated function of the same name (a custom operator ``mylib::softmax``) is not in the set. Answers are
    remembered per function (a mode sees every call of its module's forward); one remembered as not in the set
    and later installed at a place stays out: the call is then left to torch, never answered wrongly."""

    def __init__(self, *places: tuple[object, str]) -> None:
        self.places = places
        fixed = [getattr(owner, name) for owner, name in places]
        fixed += [getattr(_C_HOMES[id(owner)], name) for owner, name in places if hasattr(_C_HOMES.get(id(owner)), name)]
        self._fixed = tuple(fixed)
        self._known: dict[Any, bool] = {}

    def _find(self, func: Callable) -> bool:
        return any(func is f for f in self._fixed) or any(func is getattr(owner, name, None) for owner, name in self.places)

    def __contains__(self, func: Callable) -> bool:
        try:
            return self._known[func]
        except KeyError:
            found = self._known[func] = self._find(func)
            return found
        except TypeError:  # an unhashable callable
            return self._find(func)


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
