"""Adapter for the NL blocks of AlexHex7/Non-local_pytorch (``NONLocalBlock2D``).

Original code: https://github.com/AlexHex7/Non-local_pytorch, files
``lib/non_local_{embedded_gaussian,gaussian,dot_product,concatenation}.py`` (the same math in
the ``Non-Local_pytorch_0.3.1/`` and ``Non-Local_pytorch_0.4.1_to_1.1.0/`` copies; only
``return_nl_map`` was added later), and the pre-split ``lib/non_local.py`` (kept as
``lib/backup/non_local.py``), which stores a ``mode`` attribute. Paper: Wang et al.,
"Non-local Neural Networks", arXiv 1711.07971.

Every variant defines a class named ``_NonLocalBlockND`` (subclasses ``NONLocalBlock1D/2D/3D``)
with ``g``, ``W`` (a conv, or ``Sequential(conv, BN)`` with ``bn_layer=True``), ``in_channels``,
``inter_channels = in_channels // 2``, ``dimension`` and ``sub_sample`` (default True: a 2x2
max-pool after ``g`` and ``phi``, so keys sit on the floor-halved grid). What each file computes,
on ``theta_x`` ``[B, N, C']`` and ``phi_x`` ``[B, C', N_k]``:

========================== =========================== ======================================
file                       row i over keys j           structure
========================== =========================== ======================================
``non_local_embedded_...`` softmax_j(theta_i . phi_j)  theta, phi; **no** 1/sqrt(C') scale
``non_local_gaussian``     softmax_j(x_i . x_j)        no theta; ``phi`` is the bare max-pool,
                                                       and exists only with ``sub_sample``
``non_local_dot_product``  theta_i . phi_j / N_k       theta, phi (same modules as embedded)
``non_local_concatenation`` ReLU(w . [theta_i; phi_j]) ``concat_project`` =
                           / N_k                       ``Sequential(Conv2d(2C', 1, bias=False),
                                                       ReLU)``
========================== =========================== ======================================

The embedded Gaussian and dot-product blocks have identical modules and state-dict keys, so the
variant is read, in this order, from: a ``mode`` attribute (the pre-split file has one; it is
also how a user declares the variant of a renamed or modified file, and then wins over the file
name), the structure (no ``theta`` -> gaussian; ``concat_project`` -> concatenation), and the name
of the file that defines the class (``type(m).__module__`` of the block's classes, e.g.
``lib.non_local_dot_product``). Ambiguity, and structure that contradicts the file name, raise
:class:`UnsupportedBlockError`. The repository is never imported.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..blocks.attention import PAIRWISE_MODES, LazyAttention
from ..blocks.non_local import _check_input, pairwise_attention
from .base import BlockAdapter, UnsupportedBlockError, class_path as _where
from .registry import register_adapter

__all__ = ["AlexHex7Adapter", "infer_mode"]

_CLASS_NAMES = frozenset({"_NonLocalBlockND", "NONLocalBlock1D", "NONLocalBlock2D", "NONLocalBlock3D"})
_ATTRS = ("g", "W", "in_channels", "inter_channels", "sub_sample", "dimension")
# the modes a defining file's name may hold; "embedded_gaussian" is tested before its substring "gaussian"
_FILE_TOKENS = ("embedded_gaussian", "dot_product", "concatenation", "gaussian")
_HINT = (
    "Hint: AlexHex7's embedded-Gaussian and dot-product blocks have the same modules; the adapter "
    "tells them apart by the defining file (lib/non_local_embedded_gaussian.py vs "
    "lib/non_local_dot_product.py). If you renamed that file, declare the variant on each block, "
    "e.g. `block.mode = 'dot_product'` (one of {modes})."
).format(modes=", ".join(PAIRWISE_MODES))


def _block_classes(module: nn.Module) -> list[type]:
    """The block's own classes (its type and bases up to ``nn.Module``)."""
    return [cls for cls in type(module).__mro__ if cls not in (nn.Module, object)]


def _mode_from_file(module: nn.Module) -> tuple[dict[str, str], list[str]]:
    """``{mode: module path}`` named by the files defining the block's classes, and all paths."""
    modes: dict[str, str] = {}
    paths: list[str] = []
    for cls in _block_classes(module):
        path = cls.__module__
        paths.append(path)
        stem = path.rsplit(".", 1)[-1]
        for mode in _FILE_TOKENS:
            if mode in stem:
                modes.setdefault(mode, path)
                break
    return modes, paths


def infer_mode(module: nn.Module) -> tuple[str, str]:
    """The pairwise function of an AlexHex7 block and how it was determined.

    Returns:
        ``(mode, source)`` with ``mode`` in :data:`~nlanalysis.blocks.PAIRWISE_MODES` and
        ``source`` one of ``"mode attribute"``, ``"structure"``, ``"file name"``.

    Raises:
        UnsupportedBlockError: the variant is ambiguous or its evidence contradicts itself.
    """
    declared = getattr(module, "mode", None)
    has_theta = isinstance(getattr(module, "theta", None), nn.Module)
    has_concat = isinstance(getattr(module, "concat_project", None), nn.Module)
    from_file, paths = _mode_from_file(module)
    file_mode, file_path = next(iter(from_file.items())) if len(from_file) == 1 else (None, None)

    if declared is not None:
        if declared not in PAIRWISE_MODES:
            raise UnsupportedBlockError(
                f"AlexHex7 block {_where(module)} has mode={declared!r}; expected one of {PAIRWISE_MODES}"
            )
        mode, source = declared, "mode attribute"
    elif len(from_file) > 1:
        raise UnsupportedBlockError(
            f"AlexHex7 block {_where(module)}: its defining modules name several variants {from_file}. {_HINT}"
        )
    elif not has_theta:
        mode, source = "gaussian", "structure"
    elif has_concat:
        mode, source = "concatenation", "structure"
    elif file_mode in ("embedded_gaussian", "dot_product"):
        mode, source = file_mode, "file name"
    elif file_mode is not None:
        raise UnsupportedBlockError(
            f"AlexHex7 block {_where(module)}: its defining file {file_path!r} is the {file_mode!r} "
            "variant, but the block has theta/phi and no concat_project, which that file's block "
            "doesn't; the block was modified, so its forward can't be assumed. Check the block's "
            "forward and declare its variant with `block.mode = ...`."
        )
    else:
        raise UnsupportedBlockError(
            f"AlexHex7 block {_where(module)} has theta/phi and no concat_project, so it is either the "
            f"embedded Gaussian or the dot-product variant, and none of its defining modules {paths} "
            f"says which. {_HINT}"
        )

    if source == "structure" and file_mode is not None and mode != file_mode:
        raise UnsupportedBlockError(
            f"AlexHex7 block {_where(module)}: its structure says {mode!r} but its defining file "
            f"{file_path!r} is the {file_mode!r} variant; the block was modified, so its forward "
            "can't be assumed. Check the block's forward and declare its variant with `block.mode = ...`."
        )
    if mode != "gaussian" and not has_theta:
        raise UnsupportedBlockError(f"AlexHex7 block {_where(module)}: mode {mode!r} needs theta/phi, the block has none")
    if mode == "concatenation" and not has_concat:
        raise UnsupportedBlockError(f"AlexHex7 block {_where(module)}: mode 'concatenation' needs concat_project")
    return mode, source


def _concat_weight(module: nn.Module) -> Tensor:
    """The ``[2C']`` weight of ``concat_project = Sequential(Conv2d(2C', 1, bias=False), ReLU)``."""
    project = module.concat_project
    conv = project[0] if isinstance(project, nn.Sequential) and len(project) == 2 else None
    ci = module.inter_channels
    if (
        not isinstance(conv, nn.Conv2d)
        or conv.bias is not None
        or conv.weight.shape != (1, 2 * ci, 1, 1)
        or not isinstance(project[1], nn.ReLU)
    ):
        raise UnsupportedBlockError(
            f"AlexHex7 block {_where(module)}: expected concat_project = Sequential(Conv2d({2 * ci}, 1, "
            f"kernel_size=1, bias=False), ReLU()), got {project}"
        )
    return conv.weight.flatten()


@register_adapter
class AlexHex7Adapter(BlockAdapter):
    family = "alexhex7"
    description = (
        "AlexHex7/Non-local_pytorch NONLocalBlock2D / _NonLocalBlockND (embedded Gaussian, Gaussian, "
        "dot product, concatenation; sub_sample)"
    )

    def matches(self, module: nn.Module) -> bool:
        names = {cls.__name__ for cls in type(module).__mro__}
        return bool(names & _CLASS_NAMES) and all(hasattr(module, a) for a in _ATTRS)

    def attention(self, module: nn.Module, x: Tensor) -> LazyAttention:
        if module.dimension != 2:
            raise UnsupportedBlockError(
                f"AlexHex7 block {_where(module)} has dimension={module.dimension}: only 2-D blocks "
                "(NONLocalBlock2D) are analysed; NONLocalBlock1D/3D maps are over sequences / "
                "space-time volumes"
            )
        mode, _ = infer_mode(module)
        _check_input(x, module.in_channels)
        key = module.phi(x) if mode != "gaussian" or module.sub_sample else x
        if mode == "gaussian" and key.shape[1] != module.in_channels:
            raise UnsupportedBlockError(
                f"AlexHex7 block {_where(module)}: in gaussian mode with sub_sample, phi must only "
                f"pool x (as in lib/non_local_gaussian.py), but it gives {key.shape[1]} channels; the "
                "pre-split lib/non_local.py has this bug (its forward fails for mode='gaussian')"
            )
        concat = _concat_weight(module) if mode == "concatenation" else None
        # no 1/sqrt(C') in any AlexHex7 variant: softmax(theta^T phi) unscaled
        return pairwise_attention(mode, x if mode == "gaussian" else module.theta(x), key, 1.0, concat)

    def describe(self, module: nn.Module) -> dict[str, Any]:
        info = super().describe(module)
        info.update(
            module=type(module).__module__,
            in_channels=module.in_channels,
            inter_channels=module.inter_channels,
            dimension=module.dimension,
            sub_sample=bool(module.sub_sample),
            bn_layer=isinstance(module.W, nn.Sequential),
        )
        try:
            mode, source = infer_mode(module)
        except UnsupportedBlockError as err:
            info.update(mode=None, problem=str(err))
        else:
            info.update(mode=mode, mode_source=source, scale=1.0 if mode in ("gaussian", "embedded_gaussian") else None)
        return info

    def block_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """``forward(x, return_nl_map=False)``: ``x`` positional or by name."""
        if args:
            return args[0]
        if "x" in kwargs:
            return kwargs["x"]
        return super().block_input(args, kwargs)

    def context_term(self, module: nn.Module, x: Tensor, z: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """``z - x = W(y)``; ``forward(x, return_nl_map=True)`` returns ``(z, map)``."""
        if isinstance(z, tuple):
            z = z[0]
        return z - x
