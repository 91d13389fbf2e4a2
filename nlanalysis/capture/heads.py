"""Forward hooks that measure every self-attention layer of a ViT, per head, during its forward.

The ViT counterpart of :class:`nlanalysis.capture.Capture` (same lifecycle: a context manager
that owns its hooks and always removes them). For each attention module a registered ViT adapter
(:mod:`nlanalysis.adapters.vit`) recognises, and each forward:

* queries and keys come from hooks on the module's own projection layers (timm ``qkv``, Hugging
  Face ``q_proj``/``k_proj``), so nothing is recomputed that the forward already computed; where
  the projection is applied functionally (``nn.MultiheadAttention``) they are recomputed from the
  module input. The softmax is recomputed in float32 (fused kernels never expose it).
* the per-head outputs are what the output projection receives (a pre-hook), or recomputed;
* with the native kernels, the module's ``F.scaled_dot_product_attention`` call is answered from
  the same softmax the statistics read (:mod:`nlanalysis.capture.shared_softmax`), so each layer's
  softmax is computed once, not twice (``share_softmax``);
* the residual stream ``x`` entering the transformer block, and the block's LayerScale, are read
  from the enclosing block when it is a known pre-norm block (timm ``Block``, torchvision
  ``EncoderBlock``, Hugging Face ``Dinov2Layer``/``ViTLayer``/...); otherwise ``input`` is the
  attention module's own input and ``output`` its output (``input_space`` says which).

Everything recorded is on the CPU; recomputation runs under ``no_grad``.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..adapters.vit import ViTAttentionAdapter, check_tokens
from .blocks import Capture, cell_centres, valid_cells
from .records import QueryMaps, SiteRecord
from ..blocks.heads import HeadAttention
from ..measure.head_controls import control_generator, head_controls
from ..measure.heads import HeadsBatch, HeadStats, MapStats, attend, gram_matrices, heads_batch, measure_heads, uses_native
from .shared_softmax import SharedSoftmax, innermost
from ..blocks.tokens import KEY_SETS, TokenLayout, layout_of

__all__ = ["LayerRecord", "ViTCapture"]


#: a ViT layer's record: a :class:`~nlanalysis.capture.records.SiteRecord` with ``layer``, ``layout`` and
#: ``input_space`` (``query_shape`` = ``key_shape`` = the patch grid), ``stats`` a ``HeadStats``
LayerRecord = SiteRecord


# enclosing blocks whose attention branch is ``layer_scale(attn(norm(x)))`` added to ``x``
_KNOWN_BLOCKS = {
    "Block": ("norm1", "ls1"),  # timm vision_transformer.Block
    "EncoderBlock": ("ln_1", None),  # torchvision vision_transformer.EncoderBlock
    "Dinov2Layer": ("norm1", "layer_scale1"),
    "Dinov2WithRegistersLayer": ("norm1", "layer_scale1"),
    "ViTLayer": ("layernorm_before", None),
    "DeiTLayer": ("layernorm_before", None),
}


def _layer_scale(parent: nn.Module | None) -> tuple[bool, Tensor | None]:
    """``(known, gamma)``: whether ``parent`` is a known pre-norm block, and its LayerScale vector."""
    if parent is None:
        return False, None
    spec = _KNOWN_BLOCKS.get(type(parent).__name__)
    if spec is None or not hasattr(parent, spec[0]):
        return False, None
    if spec[1] is None:
        return True, None
    ls = getattr(parent, spec[1], None)
    if ls is None or isinstance(ls, nn.Identity):
        return True, None
    gamma = getattr(ls, "gamma", getattr(ls, "lambda1", None))
    if not isinstance(gamma, Tensor):
        return False, None  # an unknown LayerScale: fall back to the attention module's own output
    return True, gamma


_GRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _gram(module: nn.Module, adapter: ViTAttentionAdapter, gamma: Tensor | None, device: torch.device) -> Tensor:
    """Gram matrices of the output projection (LayerScale folded in), cached while the weights are unchanged."""
    weight, _ = adapter.out_weight(module)
    key = (weight._version, weight.data_ptr(), None if gamma is None else (gamma._version, gamma.data_ptr()), str(device))
    cached = _GRAMS.get(module)
    if cached is None or cached[0] != key:
        cached = (key, gram_matrices(weight, adapter.num_heads(module), gamma).to(device))
        _GRAMS[module] = cached
    return cached[1]


class ViTCapture(Capture):
    """Context manager recording :class:`LayerRecord` s for the self-attention layers of a ViT.

    Hooks, lifecycle and query-point handling are those of :class:`nlanalysis.capture.Capture`
    (which in turn skips ViT attention: NL/GC blocks of a hybrid model are its business).

    Example::

        with ViTCapture(model) as cap:
            model(images)
        for rec in cap.records:
            print(rec.layer, rec.stats.att[:, -1])   # head-averaged att distance per image

    Args:
        model: a timm / torchvision / Hugging Face ViT (or any model with supported attention).
        blocks: glob(s) on dotted names of attention modules (default: all found).
        exclude: glob(s) to skip.
        keys: ``"patch"`` (default: patch queries over patch keys) or ``"all"`` (class and register
            keys included).
        layout: the token layout; read from the model (and its input size) when omitted.
        queries: ``(y, x)`` points whose per-head maps are kept, in ``query_space`` coordinates.
        query_space: ``"image"`` (model-input pixels) or ``"feature"`` (patch cells).
        stats: compute :class:`~nlanalysis.measure.heads.HeadStats`.
        keep_attention: keep each layer's :class:`HeadAttention` (on the CPU) in its record.
        keep_records, on_record: as in :class:`nlanalysis.capture.Capture`.
        chunk_size, jsd_pairs, convention, zero: passed to :func:`~nlanalysis.measure.heads.measure_heads`.
        seed: seeds the JSD pair sampling, and the controls (their own stream per forward and layer).
        recompute: recompute q/k from the module input even where hooks could read them
            (for checking the hooks; slower).
        kernels: the statistics' implementation (:func:`~nlanalysis.measure.heads.measure_heads`):
            ``"auto"`` (default) the native one-pass CPU kernels of :mod:`nlanalysis.kernels` where
            they build (system C compiler, ~0.3 s once per machine), ``"native"`` the same with a
            warning where they cannot, ``"eager"`` PyTorch ops (any device; same numbers to float32
            rounding).
        controls: also compute the random-projection control at matched sharpness per head
            (:func:`nlanalysis.measure.head_controls.head_controls`; ``keys="patch"`` only; slow: for runs
            that want it), in ``stats.controls``.
        share_softmax: with the native kernels and ``stats``, answer each captured module's
            ``F.scaled_dot_product_attention`` call (float32 CPU, no mask, dropout or causal
            attention) with :func:`~nlanalysis.measure.heads.attend`: the model's attention output then
            comes from the very softmax that is measured, computed once instead of twice. The
            model's outputs equal its fused kernel's to float32 rounding (about 1e-6 relative);
            ``False`` leaves every op of the model to torch.
    """

    token_blocks = True
    block_kind = "ViT self-attention module"
    supported = "supported: timm Attention, torch.nn.MultiheadAttention, Hugging Face Dinov2/ViT attention."

    def __init__(
        self,
        model: nn.Module,
        blocks: str | Iterable[str] | None = None,
        *,
        exclude: str | Iterable[str] | None = None,
        keys: str = "patch",
        layout: TokenLayout | None = None,
        queries: Sequence[Sequence[float]] | Tensor | None = None,
        query_space: Literal["image", "feature"] = "image",
        stats: bool = True,
        keep_attention: bool = False,
        keep_records: bool = True,
        on_record: Callable[[LayerRecord], None] | None = None,
        chunk_size: int | None = None,
        jsd_pairs: int = 64,
        convention: str = "1-cos",
        zero: str = "exclude",
        seed: int = 0,
        recompute: bool = False,
        kernels: str = "auto",
        share_softmax: bool = True,
        controls: bool = False,
    ) -> None:
        if keys not in KEY_SETS:
            raise ValueError(f"keys must be one of {KEY_SETS}, got {keys!r}")
        super().__init__(
            model, blocks, exclude=exclude, queries=queries, query_space=query_space, stats=stats,
            keep_records=keep_records, on_record=on_record, seed=seed,
        )  # fmt: skip
        self._layer = {b.name: i for i, b in enumerate(self.blocks)}
        self.keys = keys
        self.layout = layout
        self.keep_attention = keep_attention
        self.measure_kwargs = dict(chunk_size=chunk_size, convention=convention, zero=zero, kernels=kernels)
        self.jsd_pairs = jsd_pairs
        self._batch: tuple[tuple, int, HeadsBatch] | None = None
        self.recompute = recompute
        self.controls = controls and stats
        self.seed = seed
        self.share_softmax = share_softmax and stats and not recompute
        self.records: list[LayerRecord] = []  # type: ignore[assignment]
        self._seen: dict[str, dict[str, Tensor]] = {}
        self._sharing: list[_Sharing] = []
        #: attention calls answered from the measured maps (``share_softmax``), over all forwards
        self.shared_calls = 0

    def remove(self) -> None:
        """Remove every hook (idempotent) and drop tensors held between hooks."""
        super().remove()
        for sharing in self._sharing:
            sharing.close()
        self._sharing.clear()
        self._seen.clear()
        self._batch = None

    def _make_hook(self, block: Any) -> Callable[..., None]:
        """Hooks on the block's projections and enclosing block; returns the hook for the module itself."""
        return self._attach(self._layer[block.name], block)

    def _attach(self, index: int, block: Any) -> Callable[..., None]:
        name, module, adapter = block.name, block.module, block.adapter
        seen = self._seen.setdefault(name, {})
        parent_name = name.rsplit(".", 1)[0] if "." in name else None
        parent = self.model.get_submodule(parent_name) if parent_name else None
        known, gamma = _layer_scale(parent)
        info = adapter.describe(module)

        def keep(kind: str) -> Callable[..., None]:
            def hook(mod: nn.Module, args: tuple, output: Tensor) -> None:
                seen[kind] = output

            return hook

        def keep_input(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            seen["residual"] = args[0] if args else kwargs.get("hidden_states", kwargs.get("x", kwargs.get("input")))

        def keep_proj_input(mod: nn.Module, args: tuple) -> None:
            seen["proj_in"] = args[0]

        if known and parent is not None:
            self._handles.append(parent.register_forward_pre_hook(keep_input, with_kwargs=True))
        if not self.recompute:
            for kind, sub in adapter.taps(module).items():
                self._handles.append(sub.register_forward_hook(keep(kind)))
        proj = adapter.out_proj(module)
        if proj is not None and self.stats:
            self._handles.append(proj.register_forward_pre_hook(keep_proj_input))
        if self.share_softmax:
            self._share_softmax(index, module, adapter, seen)

        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            try:
                with torch.no_grad():
                    record = self._layer_record(index, name, mod, adapter, info, known, gamma, seen, args, kwargs, output)
            finally:
                seen.clear()
            if self.keep_records:
                self.records.append(record)
            if self.on_record is not None:
                self.on_record(record)

        return hook

    def _share_softmax(self, index: int, module: nn.Module, adapter: ViTAttentionAdapter, seen: dict[str, Any]) -> None:
        """Hooks that keep a :class:`SharedSoftmax` active while ``module`` runs, answering its
        attention call with :func:`~nlanalysis.measure.heads.attend` (the maps and statistics go to
        ``seen["maps"]``) where that call is one ``attend`` computes exactly."""
        heads = adapter.num_heads(module)

        def handler(call: dict[str, Any]) -> Tensor | None:
            q, k, v, scale = call["query"], call["key"], call["value"], call["scale"]
            if "maps" in seen or "batch" in seen:  # a second call in this forward
                return None
            if call["attn_mask"] is not None or call["dropout_p"] or call["is_causal"] or call["enable_gqa"]:
                return None
            if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
                return None
            if not all(isinstance(t, Tensor) and t.dim() == 4 and t.dtype == torch.float32 and t.device.type == "cpu" for t in (q, k, v)):
                return None
            if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
                return None
            b, h, n, d = q.shape
            if k.shape != q.shape or v.shape[:3] != q.shape[:3] or h != heads or not uses_native(self.measure_kwargs["kernels"], q.device):
                return None
            try:
                layout = self.layout or layout_of(self.model, self._input_size, n_tokens=n)
                layout.check(n)
            except ValueError:  # the record's hook reports it
                return None
            with torch.no_grad():
                att = HeadAttention(q, k, scale if scale is not None else d**-0.5, layout, self.keys)
                batch = seen["batch"] = self._heads_batch(index, layout, b, q.device)  # the record uses it either way
                out, maps = attend(att, v, batch, self.measure_kwargs["chunk_size"])
                if not bool(torch.isfinite(out.sum())):  # a NaN/inf in q, k or v: torch's kernel, the plain path
                    return None
            seen["maps"] = (maps, att)
            self.shared_calls += 1
            return out

        sharing = _Sharing(handler)
        self._sharing.append(sharing)

        def enter(mod: nn.Module, args: tuple) -> None:
            seen.pop("maps", None)  # left by a forward that failed after its attention call
            seen.pop("batch", None)
            if adapter.calls_sdpa(mod):
                sharing.enter()

        self._handles.append(module.register_forward_pre_hook(enter))
        self._handles.append(module.register_forward_hook(lambda mod, args, output: sharing.leave(), always_call=True))

    def _layer_record(
        self,
        index: int,
        name: str,
        module: nn.Module,
        adapter: ViTAttentionAdapter,
        info: dict[str, Any],
        known: bool,
        gamma: Tensor | None,
        seen: dict[str, Tensor],
        args: tuple,
        kwargs: dict,
        output: Any,
    ) -> LayerRecord:
        where = f"attention module {name!r}"
        adapter.check_call(module, args, kwargs)
        tokens = adapter.tokens(module, adapter.block_input(args, kwargs)).detach()
        check_tokens(tokens, adapter.embed_dim(module), where)
        b, n, _ = tokens.shape
        layout = self.layout or layout_of(self.model, self._input_size, n_tokens=n)
        layout.check(n, where)
        shared: tuple[MapStats, HeadAttention] | None = seen.get("maps")  # type: ignore[assignment]
        maps = None
        if shared is not None:  # measured while the model attended (share_softmax)
            maps, att = shared
            q = att.query
        else:
            if "qkv" in seen or "q" in seen:
                q, k = adapter.qk_from_taps(module, seen)
            else:
                q, k = adapter.query_key(module, tokens)
            att = HeadAttention(q.detach().float(), k.detach().float(), adapter.scale(module), layout, self.keys)
        residual = seen.get("residual")
        use_block = known and isinstance(residual, Tensor) and residual.shape == tokens.shape
        out = adapter.output(module, output).detach()
        scale = gamma.detach() if use_block and gamma is not None else None  # LayerScale: applied by measure_heads
        x = residual.detach() if use_block else tokens
        record = SiteRecord(
            name=name, family=adapter.family, info=info, call=self._calls, input_size=self._input_size,
            query_shape=layout.grid, key_shape=layout.grid, layer=index, layout=layout,
            input_space="block" if use_block else "attention",
        )  # fmt: skip
        if self.stats:
            proj_in = seen.get("proj_in")
            if proj_in is None:
                proj_in = adapter.head_values(module, tokens)
            gram = _gram(module, adapter, gamma if use_block else None, q.device)
            batch = seen.get("batch") or self._heads_batch(index, layout, b, q.device)  # type: ignore[assignment]
            record.stats = measure_heads(
                att, x.float(), out.float(), proj_in=proj_in.detach().float(), gram=gram, branch_scale=scale,
                batch=batch, maps=maps, **self.measure_kwargs,
            )  # fmt: skip
        if self.controls and record.stats is not None and self.keys == "patch":
            record.stats.controls = self._controls(tokens, layout, record.stats, q.shape[-1], index)
        if self.queries is not None:
            record.queries = self._head_query_maps(att, name)
        if self.keep_attention:
            record.attention = HeadAttention(att.query.cpu(), att.key.cpu(), att.scale, layout, self.keys)
        return record

    def _controls(self, tokens: Tensor, layout: TokenLayout, stats: HeadStats, head_dim: int, index: int) -> dict[str, Tensor]:
        """The random-projection control of every head (:func:`~nlanalysis.measure.head_controls.head_controls`), drawn
        from its own generator (:func:`~nlanalysis.measure.head_controls.control_generator`: the JSD pairs stay as without)."""
        valid = valid_cells(self._valid, layout.grid) if self._valid is not None else None
        objects = cell_centres(self._objects, layout.grid) if self._objects is not None else None
        return head_controls(
            tokens.cpu(), layout, stats.att_entropy, head_dim, valid=valid.cpu() if valid is not None else None,
            objects=objects.cpu() if objects is not None else None, jsd_pairs=self.jsd_pairs,
            generator=control_generator(self.seed, self._calls, index),
            convention=self.measure_kwargs["convention"], zero=self.measure_kwargs["zero"],
        )  # fmt: skip

    def _heads_batch(self, index: int, layout: TokenLayout, b: int, device: torch.device) -> HeadsBatch:
        """Masks and JSD pairs of this forward, built by its first measured layer and shared by the rest
        (a new one when the layout, batch or mask changes, or the layers start over: a new forward)."""
        key = (self._calls, layout, b, id(self._valid), id(self._objects), str(device))
        cached = self._batch
        if cached is None or cached[0] != key or index <= cached[1]:
            valid = objects = None
            for what, given in (("valid-pixel mask", self._valid), ("object label map", self._objects)):
                if given is not None and given.shape[0] != b:
                    raise ValueError(f"the {what} has batch {given.shape[0]}, the tokens {b}")
            if self._valid is not None:
                valid = valid_cells(self._valid, layout.grid)
            if self._objects is not None:  # each patch takes the label at its centre, as NL cells do
                objects = cell_centres(self._objects, layout.grid)
            built = heads_batch(layout, self.keys, b, valid, jsd_pairs=self.jsd_pairs, generator=self.generator, device=device,
                                objects=objects)  # fmt: skip
            cached = (key, index, built)
        self._batch = (key, index, cached[2])
        return cached[2]

    def _head_query_maps(self, att: HeadAttention, name: str) -> QueryMaps:
        """The core capture's query handling (coordinates, checks), on maps of every head and the mean."""
        return self._query_maps(name, _HeadsAsKeys(att))


class _Sharing:
    """One module's :class:`SharedSoftmax`: pushed while the module runs, popped after it, and
    closed with the capture (a forward interrupted by a ``BaseException`` skips the hooks that pop)."""

    def __init__(self, handler: Callable[[dict[str, Any]], Tensor | None]) -> None:
        self.alive = True
        self.pushed = False
        self.mode = SharedSoftmax(lambda call: handler(call) if self.alive else None)

    def enter(self) -> None:
        if not self.pushed:
            self.mode.__enter__()
            self.pushed = True

    def leave(self) -> None:
        if self.pushed and innermost(self.mode):  # never pop a mode pushed inside the forward and left there
            self.mode.__exit__(None, None, None)
            self.pushed = False

    def close(self) -> None:
        """Pop the mode if it is still active; one that cannot be popped declines every call from now on."""
        self.alive = False
        self.leave()


class _HeadsAsKeys:
    """A view of per-head maps for :meth:`nlanalysis.capture.Capture._query_maps`: each query's row
    is every head's patch map then the head mean's, so its ``maps`` come out ``[B, K, heads+1, H_g, W_g]``."""

    def __init__(self, att: HeadAttention) -> None:
        self.att = att
        self.query_shape = att.layout.grid
        self.key_shape = (att.num_heads + 1, *att.layout.grid)
        self.device = att.device

    def take(self, index: Tensor) -> Tensor:
        rows = self.att.probs_rows(index)[..., self.att.layout.n_prefix :]  # [B, H, K, n_patch]
        rows = torch.cat([rows, rows.mean(1, keepdim=True)], 1)
        return rows.transpose(1, 2).flatten(2)  # [B, K, (H+1) * n_patch]
