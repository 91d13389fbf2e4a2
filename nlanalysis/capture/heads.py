"""The ViT site of :class:`~nlanalysis.capture.core.Capture`: every self-attention layer, per head.

For each attention module a registered ViT adapter (:mod:`nlanalysis.adapters.vit`) recognises, and
each forward: queries and keys come from hooks on the module's own projections (timm ``qkv``, Hugging
Face ``q_proj``/``k_proj``), or are recomputed from its input where the projection is functional
(``nn.MultiheadAttention``); the softmax is recomputed in float32 (fused kernels never expose it), or,
with the native kernels, the module's ``F.scaled_dot_product_attention`` call is answered from the
softmax being measured (:mod:`nlanalysis.capture.shared_softmax`: one softmax per layer, not two); the
per-head outputs are what the output projection receives. The residual stream ``x`` into the
transformer block and its LayerScale are read from the enclosing block when the adapter knows it
(``enclosing_block``); otherwise ``input`` and ``output`` are the attention module's (``input_space``).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..adapters import BlockInfo
from ..adapters.vit import ViTAttentionAdapter, check_tokens
from ..blocks.heads import HeadAttention
from ..blocks.tokens import KEY_SETS, TokenLayout, layout_of
from ..kernels import all_finite
from ..measure.head_controls import control_generator, head_controls
from ..measure.query_dep import DEFAULT_LEVEL, check_level
from ..measure.head_suite import HeadSuite, SuiteRows
from ..measure.heads import HeadsBatch, HeadStats, attend, gram_matrices, heads_batch, key_mask, measure_heads, uses_native
from ..measure.query_dep import CROSS_SITE
from ..nograd import detached
from ..schema import VIT
from .core import Capture, Site, check_site_options
from .records import SiteRecord
from .shared_softmax import SharedSoftmax

__all__ = ["HeadSite", "LayerRecord", "ViTCapture"]


#: a ViT layer's record: a :class:`~nlanalysis.capture.records.SiteRecord` with ``layer``, ``layout`` and
#: ``input_space`` (``query_shape`` = ``key_shape`` = the patch grid), ``stats`` a ``HeadStats``
LayerRecord = SiteRecord

#: module -> (the weight's shape, dtype, device and storage, the Gram matrices' device and the LayerScale's shape, dtype
#: and device; the weight's fingerprint (:func:`_fingerprint`); a copy of the LayerScale vector; the Gram matrices)
_GRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: fingerprint columns (independent coefficient vectors): see :func:`_fingerprint`
_PRINTS = 2
#: the longest row of integers summed whole (longer rows are cut in rows of this length, and a shorter last one)
_ROW = 1024
#: (row length, bytes of the integer view, device) -> ``[_PRINTS, row length]`` float64 coefficients (:func:`_coefficients`)
_COEFFICIENTS: dict[tuple[int, int, torch.device], Tensor] = {}
_INTS = {1: torch.int8, 2: torch.int16, 4: torch.int32}


def _gram(module: nn.Module, adapter: ViTAttentionAdapter, gamma: Tensor | None, device: torch.device) -> Tensor:
    """Gram matrices of the output projection (LayerScale folded in), in float32 (what
    :func:`~nlanalysis.measure.heads.measure_heads` reads), kept while the weight's fingerprint and the LayerScale are
    those they were made from (and the weight's shape, dtype, device and storage).

    Not keyed on ``_version``/``data_ptr`` alone: a write through ``.data`` (an EMA's ``p.data.copy_(...)``) changes
    neither. Not compared with a kept copy of the weight either: a ViT-L's would be 96 MiB on the model's device for as
    long as the module lives. The fingerprint (:func:`_fingerprint`: exact; any change of one element, however small,
    always seen) costs about what comparing with a copy did (~0.04 ms a ViT-S layer on a CPU: its bits as float64 times
    a [2, 384] matrix) and keeps 2 float64 numbers per row (6 KiB a ViT-S layer, 16 KiB a ViT-L one); the LayerScale
    vector is compared with a copy (1.5 KiB, 4 KiB: its fingerprint would cost three more ops a layer). Making the
    matrices again costs ~1.3 ms (float64). On CUDA each comparison waits for the device (once a layer, twice with a LayerScale): not folded
    into one a forward, which would fingerprint every layer at the first (and key the check on a forward that blocks
    run directly share an index with); the layers' statistics come to the host one layer at a time anyway."""
    weight = adapter.out_weight(module)[0].detach()
    key = (weight.shape, weight.dtype, weight.device, weight.data_ptr(), device,
           None if gamma is None else (gamma.shape, gamma.dtype, gamma.device))  # fmt: skip
    prints = _fingerprint(weight)
    cached = _GRAMS.get(module)
    if (cached is None or cached[0] != key or not torch.equal(cached[1], prints)
            or (gamma is not None and not torch.equal(cached[2], gamma))):  # fmt: skip
        gram = gram_matrices(weight, adapter.num_heads(module), gamma).to(device, torch.float32)
        cached = (key, prints, None if gamma is None else gamma.detach().clone(), gram)
        _GRAMS[module] = cached
    return cached[3]


def _fingerprint(t: Tensor) -> Tensor:
    """``[_PRINTS, rows]`` float64: each row of ``t``'s bits, read as integers, times
    :data:`_PRINTS` vectors of coefficients (:func:`_coefficients`).

    Exact: the integers are below ``2**(8 s - 1)`` (``s`` the view's bytes), the coefficients below ``2**b`` with
    ``m * 2**(8 s - 1 + b) <= 2**53`` for rows of ``m``, so every product and partial sum is an integer float64 holds
    exactly, whatever the order of the sum (threads, BLAS blocking, CUDA): the same bits give the same fingerprint,
    and a change of the bits by ``delta`` moves it by exactly ``c . delta`` (no rounding to hide it). A change of one
    element of a row, however small (one ulp, a sign, a NaN's payload), moves it by ``c_j delta_j != 0`` (``c_j >= 1``):
    always seen; two elements of a row swapped move it by ``(c_i - c_j) delta != 0`` (a column's coefficients are
    distinct): always seen. Other changes of a row (several elements; a permutation of rows, each moved row changing
    as a whole) go unseen only where ``c . delta = 0`` in every column: for coefficients drawn at random, with
    probability at most ``(2**b - m)**-_PRINTS`` per changed row (~2**-26 for a ViT-S's float32 rows of 384, b = 13;
    ~2**-23 for a ViT-L's of 1024, b = 12), and every changed row must go unseen. Comparing values instead
    (``w.double() @ R``) would lose a change of a tiny element under the rounding of the sum; a float32's bits read
    as an integer move by at least 1 whatever its value."""
    ints = t.reshape(1) if t.dim() == 0 else t
    size = ints.element_size()
    if size in _INTS:
        ints = ints.view(_INTS[size])
    else:  # wider (float64): its 4-byte pieces
        ints = (ints if ints.stride(-1) == 1 else ints.contiguous()).view(torch.int32)
    m = ints.shape[-1]
    if m <= _ROW:
        rows, tail = ints.reshape(-1, m), None
    else:
        flat = ints.reshape(-1)
        cut = flat.numel() // _ROW * _ROW
        rows, tail = flat[:cut].view(-1, _ROW), flat[cut:]
    coef = _coefficients(rows.shape[-1], ints.element_size(), t.device)
    prints = coef @ rows.double().T
    if tail is not None and tail.numel():
        prints = torch.cat([prints, coef[:, : tail.numel()] @ tail.double()[:, None]], 1)
    return prints


def _coefficients(m: int, size: int, device: torch.device) -> Tensor:
    """``[_PRINTS, m]`` float64 integer coefficients for rows of ``m`` integers of ``size`` bytes: in ``[1, 2**b)``,
    ``b`` the most that keeps a row's sum exact (:func:`_fingerprint`; at most 20), distinct within a column; drawn
    once from a fixed seed (the same every run), kept per row length, size and device (6 KiB for rows of 384)."""
    key = (m, size, device)
    coef = _COEFFICIENTS.get(key)
    if coef is None:
        b = min(53 - (8 * size - 1) - (m - 1).bit_length(), 20)  # (m - 1).bit_length() = ceil(log2 m)
        if 2**b - 1 < m:  # m <= _ROW: never
            raise ValueError(f"no exact fingerprint of rows of {m} integers of {size} bytes")
        g = torch.Generator().manual_seed(0x5EED_6A4D)
        coef = torch.stack([torch.randperm(2**b - 1, generator=g)[:m] + 1 for _ in range(_PRINTS)]).to(device, torch.float64)
        _COEFFICIENTS[key] = coef
    return coef


class HeadSite(Site):
    """ViT self-attention layers: per-head maps and statistics (:func:`~nlanalysis.measure.heads.measure_heads`).

    Args:
        keys: ``"patch"`` (default: patch queries over patch keys) or ``"all"`` (class and register
            keys included).
        layout: the token layout; read from the model (and its input size) when omitted.
        keep_attention: keep each layer's :class:`HeadAttention` in its record: ``True`` on the CPU (its
            queries and keys copied to the host), ``"device"`` where it was computed (no copy: for callbacks
            that read it as the record is made and let go of it, e.g. the ViT locality of ``extract``).
        chunk_size, jsd_pairs, convention, zero: passed to :func:`~nlanalysis.measure.heads.measure_heads`.
        recompute: recompute q/k from the module input even where hooks could read them
            (for checking the hooks; slower).
        kernels: ``"auto"`` (default), ``"native"`` or ``"eager"``: the statistics' implementation
            (:func:`~nlanalysis.measure.heads.measure_heads`; native: :mod:`nlanalysis.kernels`).
        controls: also compute the random-projection control at matched sharpness per head
            (:func:`nlanalysis.measure.head_controls.head_controls`; ``keys="patch"`` only; slow: for runs
            that want it), in ``stats.controls``; drawn from the capture's ``seed``, their own stream per
            forward and layer.
        share_softmax: with the native kernels and ``stats``, answer each captured module's plain
            ``F.scaled_dot_product_attention`` call from the softmax being measured, computed once instead
            of twice (:mod:`nlanalysis.capture.shared_softmax`; the model's outputs equal its fused
            kernel's to float32 rounding, about 1e-6 relative); ``False`` leaves every op to torch.
        query_dependence: ``"off"``, ``"cheap"`` (default) or ``"all"``: the query-dependence suite per head
            (:mod:`nlanalysis.measure.query_dep`; distances from the layout's patch size).

    Attributes:
        shared_calls: attention calls answered from the measured maps (``share_softmax``), over all forwards.
        cross_site: ``{(call, layer name, use): [B, heads + 1]}`` each layer's ``cross_site_cos`` against the layer
            before it in the forward, measured with the suite (:class:`~nlanalysis.measure.head_suite.HeadSuite`)
            from the rows both layers formed anyway; :class:`~nlanalysis.measure.cross_site.CrossSite` takes them
            from here (and lets go of them).
    """

    noun = "ViT self-attention module"
    supported = "supported: timm Attention, torch.nn.MultiheadAttention, Hugging Face Dinov2/ViT attention."

    def __init__(self, cap: Capture, keys: str = "patch", layout: TokenLayout | None = None, keep_attention: bool | str = False,
                 chunk_size: int | None = None, jsd_pairs: int = 64, convention: str = "1-cos", zero: str = "exclude",
                 recompute: bool = False, kernels: str = "auto", share_softmax: bool = True, controls: bool = False,
                 query_dependence: str = DEFAULT_LEVEL) -> None:  # fmt: skip
        if keys not in KEY_SETS:
            raise ValueError(f"keys must be one of {KEY_SETS}, got {keys!r}")
        check_site_options(chunk_size, jsd_pairs, share_softmax, "ViT heads")
        super().__init__(cap)
        self.keys = keys
        self.layout = layout
        if keep_attention not in (False, True, "device"):
            raise ValueError(f"keep_attention must be False, True or 'device', got {keep_attention!r}")
        self.keep_attention = keep_attention
        self.measure_kwargs = dict(chunk_size=chunk_size, convention=convention, zero=zero, kernels=kernels)
        self.query_dependence = check_level(query_dependence)
        self.jsd_pairs = jsd_pairs
        self.recompute = recompute
        self.controls = controls and cap.stats
        self.share_softmax = share_softmax and cap.stats and not recompute
        self.shared_calls = 0
        self._batch: tuple[tuple, int, HeadsBatch] | None = None
        self._seen: dict[str, dict[str, Tensor]] = {}
        self._sharing: list[SharedSoftmax] = []
        self._rows: tuple[int, SuiteRows] | None = None  # (forward, the last layer's rows for cross_site_cos)
        self._layouts: tuple[tuple | None, TokenLayout | None] = (None, None)  # ((forward, input size, tokens), layout)
        self.cross_site: dict[tuple[int, str, int], Tensor] = {}

    def close(self) -> None:
        for sharing in self._sharing:
            sharing.close()
        self._sharing.clear()
        self._seen.clear()
        self._batch = None
        self._rows = None
        self._layouts = (None, None)

    def attach(self, index: int, block: BlockInfo) -> Callable[[nn.Module, tuple, dict, Any], SiteRecord]:
        """Hooks on the module's projections and enclosing block; returns what makes the module's record."""
        module, adapter, handles = block.module, block.adapter, self.cap._handles
        seen = self._seen.setdefault(block.name, {})
        parent_name = block.name.rsplit(".", 1)[0] if "." in block.name else None
        parent = _submodule(self.cap.model, parent_name) if parent_name else None
        known, gamma = adapter.enclosing_block(parent)
        gamma = None if gamma is None else detached(gamma)  # read, never differentiated: detached once per capture
        info = adapter.describe(module)

        def put(kind: str, value: Any) -> None:  # returns None: the hooks change nothing
            seen[kind] = value

        if known and parent is not None:
            handles.append(parent.register_forward_pre_hook(
                lambda mod, a, kw: put("residual", a[0] if a else kw.get("hidden_states", kw.get("x", kw.get("input")))),
                with_kwargs=True))  # fmt: skip
        if not self.recompute:
            for kind, sub in adapter.taps(module).items():
                handles.append(sub.register_forward_hook(lambda mod, a, out, kind=kind: put(kind, out)))
        proj = adapter.out_proj(module) if self.cap.stats else None
        put_proj = None if proj is None else (lambda mod, a: put("proj_in", a[0]))
        if self.share_softmax:  # where the span ends at proj, its pre-hook also takes the heads' outputs: put_proj None
            put_proj = self._share_softmax(index, module, adapter, seen, proj, put_proj)
        if put_proj is not None:
            handles.append(proj.register_forward_pre_hook(put_proj))

        def record(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> SiteRecord:
            try:
                return self.record(index, block, info, known, gamma, seen, args, kwargs, output)
            finally:
                seen.clear()

        return record

    def _share_softmax(self, index: int, module: nn.Module, adapter: ViTAttentionAdapter, seen: dict[str, Any],
                       proj: nn.Module | None = None, put_proj: Callable | None = None) -> Callable | None:  # fmt: skip
        """Hooks that keep a :class:`SharedSoftmax` active while ``module`` runs (or only between the two submodules of
        the adapter's ``sdpa_span``: every torch call under the mode pays a trip through Python), answering its
        attention call with :func:`~nlanalysis.measure.heads.attend` (the maps and statistics go to
        ``seen["maps"]``) where that call is one ``attend`` computes exactly. Where the span ends at ``proj``, its one
        pre-hook there runs ``put_proj`` (the heads' outputs) first, and ``None`` is returned; else ``put_proj``, for
        the caller to register."""
        heads = adapter.num_heads(module)

        def handler(call: dict[str, Any]) -> Tensor | None:
            q, k, v, scale = call["query"], call["key"], call["value"], call["scale"]
            if "maps" in seen or "batch" in seen:  # a second call in this forward
                return None
            b, h, n, d = q.shape
            if k.shape != q.shape or v.shape[:3] != q.shape[:3] or h != heads or not uses_native(self.measure_kwargs["kernels"], q.device):
                return None
            try:
                layout = self._layout(n)
                layout.check(n)
            except ValueError:  # the record's hook reports it
                return None
            # called without gradients (SharedSoftmax)
            att = HeadAttention(detached(q), detached(k), scale if scale is not None else d**-0.5, layout, self.keys)
            batch = seen["batch"] = self._heads_batch(index, layout, b, q.device)  # the record uses it either way
            suite = seen["suite"] = self._suite(att, batch)
            out, maps = attend(att, v, batch, self.measure_kwargs["chunk_size"], suite=suite)
            if not all_finite(out):  # a NaN/inf in q, k or v: torch's kernel, the plain path
                return None
            seen["maps"] = (maps, att)
            self.shared_calls += 1
            return out

        sharing = SharedSoftmax(handler)
        self._sharing.append(sharing)
        span = adapter.sdpa_span(module)
        running = [False]  # this module's forward is running: a span's submodule may be shared with another module

        def enter(mod: nn.Module, args: tuple) -> None:
            for left in ("maps", "batch", "suite"):  # left by a forward that failed after its attention call
                seen.pop(left, None)
            if adapter.calls_sdpa(mod):
                if span is None:
                    sharing.push()
                else:
                    running[0] = True

        def leave(mod: nn.Module, args: tuple, output: Any) -> None:
            running[0] = False
            sharing.pop()

        handles = self.cap._handles
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
        if span is not None:  # the mode only between the span's two submodules (adapters.vit.ViTAttentionAdapter.sdpa_span)
            handles.append(span[0].register_forward_hook(lambda mod, args, output: sharing.push() if running[0] else None))
            if put_proj is not None and span[1] is proj:  # one pre-hook on proj, not two: the heads' outputs, then the mode off

                def put_and_pop(mod: nn.Module, args: tuple, put_proj: Callable = put_proj) -> None:
                    put_proj(mod, args)
                    sharing.pop()

                handles.append(span[1].register_forward_pre_hook(put_and_pop))
                return None
            handles.append(span[1].register_forward_pre_hook(lambda mod, args: sharing.pop()))
        return put_proj

    def record(self, index: int, block: BlockInfo, info: dict[str, Any], known: bool, gamma: Tensor | None,
               seen: dict[str, Tensor], args: tuple, kwargs: dict, output: Any) -> SiteRecord:  # fmt: skip
        """The record of layer ``index`` in this forward, from what its hooks saw."""
        cap, module, adapter = self.cap, block.module, block.adapter
        where = f"attention module {block.name!r}"
        adapter.check_call(module, args, kwargs)
        tokens = detached(adapter.tokens(module, adapter.block_input(args, kwargs)))
        maps, att = seen.get("maps", (None, None))  # measured while the model attended (share_softmax)
        # an answered attention call had a finite output, so finite q, k and v for every token: projections of
        # these tokens (a NaN or inf in a token makes every entry of its q, k, v projections non-finite)
        check_tokens(tokens, adapter.embed_dim(module), where, known_finite=maps is not None)
        b, n, _ = tokens.shape
        layout = self._layout(n)
        layout.check(n, where)
        if att is None:
            q, k = adapter.qk_from_taps(module, seen) if "qkv" in seen or "q" in seen else adapter.query_key(module, tokens)
            att = HeadAttention(detached(q).float(), detached(k).float(), adapter.scale(module), layout, self.keys)
        residual = seen.get("residual")
        use_block = known and isinstance(residual, Tensor) and residual.shape == tokens.shape
        record = cap.site_record(block, info, (layout.grid, layout.grid), layer=index, layout=layout,
                                 input_space="block" if use_block else "attention")  # fmt: skip
        if cap.stats:
            proj_in = seen.get("proj_in")
            if proj_in is None:
                proj_in = adapter.head_values(module, tokens)
            scale = gamma if use_block else None  # LayerScale (detached): applied by measure_heads
            x = detached(residual) if use_block else tokens
            out = detached(adapter.output(module, output))
            gram = _gram(module, adapter, gamma if use_block else None, att.query.device)
            batch = seen.get("batch") or self._heads_batch(index, layout, b, att.query.device)  # type: ignore[assignment]
            suite = seen.get("suite") if maps is not None else self._suite(att, batch)
            record.stats = measure_heads(
                att, x.float(), out.float(), proj_in=detached(proj_in).float(), gram=gram, branch_scale=scale,
                batch=batch, maps=maps, query_dependence=self.query_dependence,
                stride=layout.patch_size or cap.stride(layout.grid), suite=suite, **self.measure_kwargs,
            )  # fmt: skip
            if suite is not None:  # this layer's rows: the next layer's cross-site comparison
                self._rows = (cap._calls, suite.rows)
                self.cross_site[(record.call, record.name, record.use)] = suite.values[CROSS_SITE]
        if self.controls and record.stats is not None and self.keys == "patch":
            record.stats.controls = self._controls(tokens, layout, record.stats, att, index)
        if cap.queries is not None:
            record.queries = cap.query_maps(block.name, _HeadsAsKeys(att))
        if self.keep_attention:
            host = self.keep_attention != "device"
            record.attention = HeadAttention(att.query.cpu() if host else att.query, att.key.cpu() if host else att.key,
                                             att.scale, layout, self.keys)  # fmt: skip
        return record

    def _layout(self, n: int) -> TokenLayout:
        """The token layout of a layer seeing ``n`` tokens in this forward: the one given, else read from the model
        once per forward and token count (every layer asks, twice with ``share_softmax``)."""
        if self.layout is not None:
            return self.layout
        key = (self.cap._calls, self.cap._input_size, n)
        if self._layouts[0] != key:
            self._layouts = (key, layout_of(self.cap.model, self.cap._input_size, n_tokens=n))
        return self._layouts[1]

    def _suite(self, att: HeadAttention, batch: HeadsBatch) -> HeadSuite | None:
        """The layer's query-dependence suite (``None`` when off), with the previous layer's rows of this forward."""
        if self.query_dependence == "off":
            return None
        layout = att.layout
        previous = self._rows[1] if self._rows is not None and self._rows[0] == self.cap._calls else None
        return HeadSuite(att, batch.qmask, key_mask(batch), layout.patch_size or self.cap.stride(layout.grid), previous, batch.memo)

    def _controls(self, tokens: Tensor, layout: TokenLayout, stats: HeadStats, att: HeadAttention, index: int) -> dict[str, Tensor]:
        """The random-projection control of every head (:func:`~nlanalysis.measure.head_controls.head_controls`), drawn
        from its own generator (:func:`~nlanalysis.measure.head_controls.control_generator`: the JSD pairs stay as without),
        on the tokens' device (the masks go there; only per-image numbers come back)."""
        valid, objects = self.cap.cell_masks(layout.grid, tokens.shape[0], "tokens")
        return head_controls(
            tokens, layout, stats.att_entropy, att.query.shape[-1], valid=valid, objects=objects, jsd_pairs=self.jsd_pairs,
            generator=control_generator(self.cap.seed, self.cap._calls, index),
            convention=self.measure_kwargs["convention"], zero=self.measure_kwargs["zero"], trained=att,
        )  # fmt: skip

    def _heads_batch(self, index: int, layout: TokenLayout, b: int, device: torch.device) -> HeadsBatch:
        """Masks and JSD pairs of this forward, built by its first measured layer and shared by the rest
        (a new one when the layout, batch or mask changes, or the layers start over: a new forward)."""
        cap = self.cap
        key = (cap._calls, layout, b, id(cap._valid), id(cap._objects), str(device))
        cached = self._batch
        if cached is None or cached[0] != key or index <= cached[1]:
            valid, objects = cap.cell_masks(layout.grid, b, "tokens")  # each patch takes the label at its centre, as NL cells do
            built = heads_batch(layout, self.keys, b, valid, jsd_pairs=self.jsd_pairs, generator=cap.generator, device=device,
                                objects=objects)  # fmt: skip
            cached = (key, index, built)
        self._batch = (key, index, cached[2])
        return cached[2]


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` for a name :meth:`~torch.nn.Module.named_modules` gave (``_modules`` lookups:
    ~2 us, not ~40 us, per layer and capture)."""
    module = model
    for atom in name.split("."):
        module = module._modules[atom]
    return module


class ViTCapture(Capture):
    """:class:`Capture` of ViT self-attention layers only (``site="vit-heads"``; :class:`HeadSite` lists
    its options): ``rec.stats.att[:, -1]`` is a layer's head-averaged distance per image."""

    default_site = VIT


class _HeadsAsKeys:
    """A view of per-head maps for :meth:`nlanalysis.capture.Capture.query_maps`: each query's row
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
