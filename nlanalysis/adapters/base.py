"""The adapter contract: how the toolkit gets per-query attention out of a block family.

Attention inside a block's ``forward`` is computed by function calls (``softmax``, ``matmul``,
fused ``scaled_dot_product_attention``) that module hooks cannot see. An adapter therefore
recomputes it from the block's *input* and the block's *own weights*, and tests check the
recomputed map against the block's real output (``z = x + W_z(A g(x))``).

A new block family is one small module: subclass :class:`BlockAdapter`, decorate it with
:func:`nlanalysis.adapters.register_adapter`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from ..blocks.attention import LazyAttention
from ..schema import NL

__all__ = ["BlockAdapter", "MapCall", "UnsupportedBlockError", "class_path"]


def class_path(module: nn.Module) -> str:
    """``package.module.Class`` of a block, for error messages."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


class UnsupportedBlockError(TypeError):
    """A module that no registered adapter knows, or a known block in a form it can't analyse."""


class MapCall(NamedTuple):
    """The call of a block's own forward that receives its query maps (:meth:`BlockAdapter.map_call`), where a
    capture measures them in the block's pass (:mod:`nlanalysis.capture.inpass_blocks`).

    Attributes:
        kind: ``"sdpa"`` (``F.scaled_dot_product_attention`` of ``[B, 1, N, C']`` queries and ``[B, 1, N_k, C']``
            keys), ``"softmax"`` (a softmax over the last dim of the ``[B, N, N_k]`` logits) or ``"matmul"``
            (the ``[B, N, N_k]`` maps times the ``value`` branch's output as ``[B, N_k, C']``).
        mode: the pairwise function (:data:`~nlanalysis.blocks.attention.PAIRWISE_MODES`).
        value: the submodule whose output (viewed as ``[B, N_k, C']``) the maps multiply (``g``).
    """

    kind: str
    mode: str
    value: nn.Module


class BlockAdapter(ABC):
    """Recomputes one block family's per-query attention from the block's input.

    Attributes:
        family: short unique name used by the registry and in result sets.
        description: one line naming the classes/codebases covered.
        site: the kind of attention site its blocks are (:data:`~nlanalysis.schema.NL`: one map per
            block, over a ``[B, C, H, W]`` input; :data:`~nlanalysis.schema.VIT`: a ViT layer's heads);
            it picks how :class:`nlanalysis.capture.Capture` hooks, records and measures them.
    """

    family: ClassVar[str]
    description: ClassVar[str]
    site: ClassVar[str] = NL

    @abstractmethod
    def matches(self, module: nn.Module) -> bool:
        """True if ``module`` is a block of this family (by class and attributes, no imports)."""

    @abstractmethod
    def attention(self, module: nn.Module, x: Tensor) -> LazyAttention:
        """Lazy maps ``[B, N_query, N_key]`` for the block input ``x`` ``[B, C, H, W]``."""

    def map_call(self, module: nn.Module) -> MapCall | None:
        """Where ``module``'s own forward receives its maps, when the adapter knows that forward's code
        (``None``: unknown, the maps are recomputed from the input by :meth:`attention`)."""
        return None

    def overridden(self, module: nn.Module) -> str | None:
        """What ``module``'s class overrides of the code this adapter reads its maps from (a subclass's own ``forward``:
        its maps may not be those recomputed), or ``None``."""
        return None

    def describe(self, module: nn.Module) -> dict[str, Any]:
        """Static facts about the block (mode, channels, ...), for result sets and ``inspect``."""
        return {"family": self.family, "class": type(module).__name__}

    def block_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """The input tensor ``x`` from a forward hook's positional/keyword arguments."""
        if args:
            return args[0]
        if len(kwargs) == 1:
            return next(iter(kwargs.values()))
        raise UnsupportedBlockError(f"{self.family}: cannot find the block input among forward kwargs {list(kwargs)}")

    def context_term(self, module: nn.Module, x: Tensor, z: Tensor) -> Tensor:
        """What the block adds to its input before fusion (the paper's ``output``): ``z - x``."""
        return z - x

    def residual(self) -> bool:
        """Whether :meth:`context_term` is this default ``z - x`` of the block's output tensor, so that a capture
        may read the context from ``x`` and ``z`` without forming it (an override of :meth:`context_term` says no)."""
        return type(self).context_term is BlockAdapter.context_term
