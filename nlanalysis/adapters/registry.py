"""Registry of block adapters, and the functions that use it on any model.

In the style of torchvision's model registry: :func:`register_adapter` fills a dict and
refuses duplicates; :func:`list_blocks` finds analysable blocks in a model with glob filters.
"""
from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor, nn

from ..blocks.attention import LazyAttention
from .base import BlockAdapter, UnsupportedBlockError, class_path

__all__ = [
    "BlockInfo",
    "attention",
    "attention_maps",
    "check_features",
    "find_adapter",
    "get_adapter",
    "list_adapters",
    "list_blocks",
    "register_adapter",
]

_ADAPTERS: dict[str, BlockAdapter] = {}
#: model -> (its module tree as ``(name, id, class)`` triples, weak references to those modules, the
#: registry's size, the blocks found as ``(name, weak reference, adapter)``): :func:`list_blocks`'s
#: per-model cache (:func:`_found_blocks`)
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_adapter(cls: type[BlockAdapter]) -> type[BlockAdapter]:
    """Class decorator: register one instance of ``cls`` under ``cls.family``."""
    family = getattr(cls, "family", None)
    if not family:
        raise ValueError(f"{cls.__name__} has no 'family' name")
    if family in _ADAPTERS:
        raise ValueError(f"an adapter for family {family!r} is already registered ({type(_ADAPTERS[family]).__name__})")
    _ADAPTERS[family] = cls()
    return cls


def list_adapters() -> dict[str, str]:
    """``{family: description}`` of every registered adapter."""
    return {name: adapter.description for name, adapter in _ADAPTERS.items()}


def find_adapter(module: nn.Module) -> BlockAdapter | None:
    """The adapter whose family ``module`` belongs to, or ``None``."""
    for adapter in _ADAPTERS.values():
        if adapter.matches(module):
            return adapter
    return None


def get_adapter(module: nn.Module) -> BlockAdapter:
    """Like :func:`find_adapter` but raises a helpful :class:`UnsupportedBlockError`."""
    adapter = find_adapter(module)
    if adapter is None:
        known = "\n".join(f"  - {name}: {desc}" for name, desc in list_adapters().items())
        raise UnsupportedBlockError(
            f"no adapter for module of type {class_path(module)}. "
            f"Supported block families:\n{known}\n"
            "Hint: write a BlockAdapter subclass and decorate it with nlanalysis.adapters.register_adapter."
        )
    return adapter


def attention(block: nn.Module, x: Tensor) -> LazyAttention:
    """Lazy per-query attention of ``block`` for its input ``x`` ``[B, C, H, W]``."""
    check_features(x)
    return get_adapter(block).attention(block, x)


def attention_maps(block: nn.Module, x: Tensor) -> Tensor:
    """All per-query maps ``[B, N_query, N_key]`` of ``block`` for input ``x``.

    Materialises ``N x N`` values: for whole data sets use :func:`attention` (chunked rows)
    or :class:`nlanalysis.capture.Capture`.
    """
    return attention(block, x).full()


@dataclass(frozen=True)
class BlockInfo:
    """A block found in a model: dotted name, module and the adapter that reads it."""

    name: str
    module: nn.Module
    adapter: BlockAdapter

    @property
    def family(self) -> str:
        return self.adapter.family


def list_blocks(
    model: nn.Module,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> list[BlockInfo]:
    """Analysable blocks of ``model``, outermost first, filtered by ``fnmatch`` globs on names.

    A block's own submodules are not searched (an NL block's ``theta`` is not a block). The blocks of a
    model are found once and kept while its module tree stays the same (:func:`_found_blocks`).
    """
    include = [include] if isinstance(include, str) else list(include or [])
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    found = []
    for block in _found_blocks(model):
        if include and not any(fnmatch.fnmatchcase(block.name, pat) for pat in include):
            continue
        if any(fnmatch.fnmatchcase(block.name, pat) for pat in exclude):
            continue
        found.append(block)
    return found


def _found_blocks(model: nn.Module) -> tuple[BlockInfo, ...]:
    """Every block of ``model`` (no filters), from the cache when its module tree is unchanged.

    Asking every registered adapter about every module costs ~2 ms on a ViT-S (276 modules) per
    ``Capture``, i.e. per forward in ``extract``; checking the cache is one walk of the tree. It is
    used while every module of the tree is the same object at the same name with the same class (a
    module added, removed, replaced, renamed or given another class is seen, and so is an adapter
    registered since), and every block found still matches its adapter (``matches`` reads attributes).
    A module that is not a block and gains the attributes of one without a change of tree is not seen.
    """
    tree, modules = _tree(model)
    cached = _FOUND.get(model)
    if cached is not None and cached[0] == tree and cached[2] == len(_ADAPTERS) and cached[1].alive:
        # no module of the tree collected since: the ids are still those modules' (no id reused by another module)
        found = tuple(BlockInfo(name, ref(), adapter) for name, ref, adapter in cached[3])
        if all(b.adapter.matches(b.module) for b in found):
            return found
    found_list: list[BlockInfo] = []
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in skip):
            continue
        adapter = find_adapter(module)
        if adapter is None:
            continue
        skip.append(name)
        found_list.append(BlockInfo(name, module, adapter))
    try:  # weak references only: the cache keeps no module alive (the model may itself be a block)
        _FOUND[model] = (tree, _Watch(modules), len(_ADAPTERS), tuple((b.name, weakref.ref(b.module), b.adapter) for b in found_list))
    except TypeError:  # a module that takes no weak references (a custom __slots__): not cached
        pass
    return tuple(found_list)


class _Watch:
    """Weak references to modules that say, in one attribute read, whether any of them was collected since (``alive``):
    their callbacks run before a collected module's memory, and so its id, can be reused."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.alive = True
        self._refs = [weakref.ref(m, self._gone) for m in modules]

    def _gone(self, ref: weakref.ref) -> None:
        self.alive = False


def _tree(model: nn.Module) -> tuple[tuple, list[nn.Module]]:
    """The module tree of ``model`` as edges ``(parent id, name, child id, child class)`` in a fixed order
    (any module added, removed, replaced, moved, renamed or given another class changes it), and its modules."""
    edges: list[tuple] = [(0, "", id(model), type(model))]
    modules, seen, stack = [model], {id(model)}, [model]
    add_edge, add_module, push, mark = edges.append, modules.append, stack.append, seen.add  # every capture: ~20% faster
    while stack:
        parent = stack.pop()
        parent_id = id(parent)
        for name, child in parent._modules.items():
            child_id = id(child)
            add_edge((parent_id, name, child_id, type(child)))
            if child is not None and child_id not in seen:
                mark(child_id)
                add_module(child)
                push(child)
    return tuple(edges), modules


def check_features(x: Tensor) -> None:
    """Raise a clear error unless ``x`` is a finite ``[B, C, H, W]`` tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected the block input as a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D block input [B, C, H, W], got shape {tuple(x.shape)}")
    # a finite sum proves every value finite (NaN or inf would carry into it) in one read of x; only an
    # overflowing sum needs the exact check, whose temporaries cost ~7x as much (88 vs 13 ms, [1, 1024, 50, 68])
    x = x.detach()  # read, not differentiated: float() of a sum that requires grad warns
    if not math.isfinite(float(x.sum())) and not x.isfinite().all():
        raise ValueError("block input contains NaN or inf values")
