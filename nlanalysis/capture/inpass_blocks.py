"""One attention pass per NL block: while a captured block runs, the maps it forms are the maps measured.

For a block whose adapter knows its forward (:meth:`~nlanalysis.adapters.BlockAdapter.map_call`), a
:class:`BlockCalls` mode (a ``TorchFunctionMode`` active only inside that block's forward, as
the shared softmax is for ViT layers) watches the block's own torch calls and serves the one that
receives its maps (:mod:`nlanalysis.measure.inpass_blocks` measures them):

* ``sdpa`` -- this project's ``NonLocal2d``, ``gaussian`` / ``embedded_gaussian``: the fused attention
  call is answered chunk by chunk of queries, each chunk's softmax measured by the native kernel and
  multiplied by the values (output equal to the fused kernel's to float32 rounding);
* ``softmax`` -- mmcv's ``NonLocal2d``, ``gaussian`` / ``embedded_gaussian``: the softmax of the logits
  the block formed is computed by the native kernel, which measures the rows as it writes them (output
  equal to torch's softmax to float32 rounding); with ``kernels="eager"`` or off the CPU torch computes
  the softmax and its result is measured in row chunks (eager);
* ``matmul`` -- both families, ``dot_product`` / ``concatenation`` (and ``sub_sample``): the maps the
  block formed are measured in row chunks (eager, views of its tensor) just before ``maps @ g(x)``,
  which torch computes as without a capture (the output is unchanged).

No map is formed twice, and the extra memory is a chunk of logits (``sdpa``) or none beyond the
block's own ``[B, N, N_k]`` tensors. The statistics equal the recompute path's to float32 rounding.

Not served, so recomputed from the block's input by the adapter as before: GC and SNL blocks (this
project's ``ContextBlock`` / ``SimplifiedNonLocal2d``, mmcv's and the GCNet repository's
``ContextBlock``: one shared map per image, cheap), AlexHex7's ``NONLocalBlock2D``, timm's
``NonLocalAttn``, DANet's PAM, subclasses that override the forward; this project's softmax modes
with ``kernels="eager"`` or off the CPU; captures with ``controls`` or ``query_dependence`` (they
read the maps again; ``"cheap"`` is served where the native kernel measures softmax maps without object labels,
its suite from the same pass); ``share_softmax=False``; and any forward whose call does not come as expected
(gradients kept, other dtypes or shapes, non-finite values): the record then takes the recompute path.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters import BlockInfo
from ..adapters.base import MapCall
from ..blocks.attention import DenseAttention, PairwiseAttention
from ..kernels import all_finite, uses_native
from ..measure.blocks import BlockMaps, block_masks
from ..measure.inpass_blocks import attend_block, formed_block, softmax_block
from ..measure.native_suite import block_suite
from .inpass_mode import ModuleMode, Ops
from .records import QueryMaps

__all__ = ["BlockCalls", "InPassBlock"]

_OPS = {"sdpa": Ops((F, "scaled_dot_product_attention")), "softmax": Ops((torch.Tensor, "softmax"), (torch, "softmax"), (F, "softmax")),
        "matmul": Ops((torch, "matmul"), (torch.Tensor, "matmul"), (torch, "bmm"), (torch.Tensor, "bmm"))}  # fmt: skip


class BlockCalls(ModuleMode):
    """Offers every torch call made while active to ``handler(func, args, kwargs)``, which returns the
    call's result, or ``None`` to let torch run it; pushed while one block runs (:class:`~.inpass_mode.ModuleMode`)."""

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.alive:
            out = self.handler(func, args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def _sdpa_plain(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Tensor, Any] | None:
    """``(q, k, v, scale)`` of a ``scaled_dot_product_attention(q, k, v, scale=...)`` call with no mask, dropout,
    causal or grouped attention, on float32 CPU tensors without gradients to keep; ``None`` otherwise."""
    if len(args) != 3 or set(kwargs) - {"scale", "attn_mask", "dropout_p", "is_causal", "enable_gqa"}:
        return None
    if kwargs.get("attn_mask") is not None or kwargs.get("dropout_p") or kwargs.get("is_causal") or kwargs.get("enable_gqa"):
        return None
    scale = kwargs.get("scale")
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        return None
    if not all(isinstance(t, Tensor) and t.dim() == 4 and t.dtype == torch.float32 and t.device.type == "cpu" for t in args):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return None
    return (*args, scale)


def _key_grid(grid: tuple[int, int], n_key: int) -> tuple[int, int] | None:
    """The key grid of ``n_key`` keys over a query ``grid``: the grid itself or its 2x2 max-pool (``None``: neither)."""
    h, w = grid
    return (h, w) if n_key == h * w else (h // 2, w // 2) if n_key == (h // 2) * (w // 2) else None


class InPassBlock:
    """The hooks of one captured block that measure its maps in its own pass (see the module docstring).

    Args:
        site: the :class:`~nlanalysis.capture.blocks.BlockSite` (capture, measure options).
        block: the block; call: where its forward receives its maps.
    """

    def __init__(self, site: Any, block: BlockInfo, call: MapCall) -> None:
        self.site, self.block, self.call = site, block, call
        self.seen: dict[str, Any] = {}
        self.calls = BlockCalls(self.handle)
        self._funcs = _OPS[call.kind]

    def attach(self, handles: list) -> None:
        """Register the hooks (on ``handles``): the mode is active while the block runs."""
        module = self.block.module
        handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
        if self.call.kind == "matmul":
            handles.append(self.call.value.register_forward_hook(lambda mod, a, out: self.seen.__setitem__("value", out)))
        handles.append(module.register_forward_hook(lambda mod, a, out: self.calls.pop(), always_call=True))

    def close(self) -> None:
        self.calls.close()
        self.seen.clear()

    def take(self) -> tuple[BlockMaps, QueryMaps | None] | None:
        """What this forward's pass measured (``None``: nothing; the record recomputes), once."""
        found = self.seen.pop("maps", None)
        self.seen.clear()
        return found

    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.seen.clear()  # what a forward that failed left
        x = self.block.adapter.block_input(args, kwargs) if args or kwargs else None
        if isinstance(x, Tensor) and x.dim() == 4:
            self.seen.update(grid=(x.shape[-2], x.shape[-1]), batch=x.shape[0])
            self.calls.push()

    def handle(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """The result of a call of the block's forward, where it is the call that receives the maps; else ``None``."""
        if func not in self._funcs or "maps" in self.seen or "grid" not in self.seen:
            return None
        cap, kind = self.site.cap, self.call.kind
        state = cap.generator.get_state()  # restored where the pass is declined after drawing its pairs
        found = self._attend(args, kwargs) if kind == "sdpa" else self._softmax(func, args, kwargs) if kind == "softmax" else self._matmul(args)
        if found is None:
            cap.generator.set_state(state)
            return None
        out, att, maps = found
        with torch.no_grad():
            queries = cap.query_maps(self.block.name, att) if cap.queries is not None else None
        self.seen["maps"] = (maps, queries)
        self.site.served += 1
        return out

    def _masks_for(self, n_key: int, device: torch.device) -> tuple[tuple[int, int], tuple[int, int], Any] | None:
        grid, b = self.seen["grid"], self.seen["batch"]
        keys = _key_grid(grid, n_key)
        if keys is None:
            return None
        valid, objects = self.site.cap.cell_masks(grid, b, "block input")
        return grid, keys, block_masks(valid, objects, b, grid, keys, device)

    def _options(self) -> dict[str, Any]:
        m = self.site.measure_kwargs
        return dict(jsd_pairs=m["jsd_pairs"], generator=self.site.cap.generator, chunk_size=m["chunk_size"],
                    cos=dict(convention=m["convention"], zero=m["zero"]))  # fmt: skip

    def _attend(self, args: tuple, kwargs: dict) -> tuple[Tensor, PairwiseAttention, BlockMaps] | None:
        """The fused call ``softmax(scale q k^T) v`` of ``[B, 1, N, C']`` q, ``[B, 1, N_k, C']`` k, ``[B, 1, N_k, d]`` v."""
        call = _sdpa_plain(args, kwargs)
        if call is None:
            return None
        q, k, v, scale = call
        b = self.seen["batch"]
        if q.shape[:2] != (b, 1) or k.shape[:2] != (b, 1) or v.shape[:3] != k.shape[:3] or q.shape[3] != k.shape[3]:
            return None
        if q.shape[2] != self.seen["grid"][0] * self.seen["grid"][1] or not uses_native(self.site.measure_kwargs["kernels"], q.device):
            return None
        where = self._masks_for(k.shape[2], q.device)
        if where is None:
            return None
        grid, keys, masks = where
        if self._level() != "off" and not self._suite(masks):
            return None
        scale = scale if scale is not None else q.shape[3] ** -0.5
        att = PairwiseAttention(self.call.mode, q[:, 0], k[:, 0].transpose(1, 2), grid, keys, scale=float(scale))
        suite = block_suite(att, masks.qmask, grid, keys, self.site.cap.stride(grid)) if self._suite(masks) else None
        out, maps = attend_block(att, v, masks, suite=suite, **self._options())
        if not all_finite(out) or (suite is not None and maps.suite is None):  # a NaN/inf in q, k or v:
            return None  # torch's kernel, the recompute path (also where the suite must be eager: a valid all-zero row)
        return out, att, maps

    def _maps_tensor(self, t: Any) -> bool:
        """Whether ``t`` has the shape of this forward's maps ``[B, N, N_k]`` (any key grid the block can have)."""
        grid = self.seen["grid"]
        return isinstance(t, Tensor) and t.dim() == 3 and t.shape[:2] == (self.seen["batch"], grid[0] * grid[1]) \
            and _key_grid(grid, t.shape[2]) is not None  # fmt: skip

    def _softmax(self, func: Callable, args: tuple, kwargs: dict) -> tuple[Tensor, DenseAttention, BlockMaps] | None:
        """``softmax(logits, dim=-1)`` of the block's ``[B, N, N_k]`` logits: the kernel's, or torch's measured after."""
        logits, dim = args[0] if args else kwargs.get("input"), args[1] if len(args) > 1 else kwargs.get("dim")
        extra = {k: v for k, v in kwargs.items() if k not in ("input", "dim", "_stacklevel") and v is not None}
        if len(args) > 2 or extra or dim not in (-1, 2) or not self._maps_tensor(logits) or not logits.is_floating_point():
            return None
        grid, keys, masks = self._masks_for(logits.shape[2], logits.device)
        grads = torch.is_grad_enabled() and logits.requires_grad
        native = logits.dtype == torch.float32 and logits.is_contiguous() and uses_native(self.site.measure_kwargs["kernels"], logits.device)
        if self._level() != "off" and not (native and not grads and self._suite(masks)):
            return None  # the suite reads the maps again: the recompute path
        if native and not grads:
            suite = block_suite(None, masks.qmask, grid, keys, self.site.cap.stride(grid), logits=logits) if self._suite(masks) else None
            probs, maps = softmax_block(logits, grid, keys, self.call.mode, masks, suite=suite, **self._options())
            if not bool(torch.isfinite(probs.sum())) or (suite is not None and maps.suite is None):  # a NaN/inf in the logits:
                return None  # torch's softmax, the recompute path (also where the suite must be eager)
        else:
            with torch.set_grad_enabled(grads):
                probs = func(*args, **kwargs)
            maps = self._formed(probs, grid, keys, masks)
        return probs, DenseAttention(probs.detach(), grid, keys, self.call.mode), maps

    def _level(self) -> str:
        return self.site.measure_kwargs["query_dependence"]

    def _suite(self, masks: Any) -> bool:
        """Whether the cheap suite comes from this pass (``"cheap"``: only without object labels, whose object
        context the eager suite measures; :meth:`_attend` and :meth:`_softmax` decline those)."""
        return self._level() == "cheap" and masks.own is None

    def _matmul(self, args: tuple) -> tuple[None, DenseAttention, BlockMaps] | None:
        """``maps @ g(x)``: the maps ``[B, N, N_k]`` measured before torch multiplies them (it returns ``None``)."""
        if self._level() != "off":  # the suite reads the maps again (signed / concatenation maps: eager)
            return None
        value = self.seen.get("value")
        if len(args) != 2 or not self._maps_tensor(args[0]) or not isinstance(args[1], Tensor) or not isinstance(value, Tensor):
            return None
        maps, g = args
        if g.untyped_storage().data_ptr() != value.untyped_storage().data_ptr() or g.shape[:2] != (maps.shape[0], maps.shape[2]):
            return None  # not the values: e.g. theta @ phi, whose shape can match when C' = N_k
        grid, keys, masks = self._masks_for(maps.shape[2], maps.device)
        found = self._formed(maps, grid, keys, masks)
        return None, DenseAttention(maps.detach(), grid, keys, self.call.mode), found

    @torch.no_grad()
    def _formed(self, maps: Tensor, grid: tuple[int, int], keys: tuple[int, int], masks: Any) -> BlockMaps:
        options = self._options()
        cos = options.pop("cos")
        return formed_block(maps, grid, keys, self.call.mode, masks, **options, **cos)
