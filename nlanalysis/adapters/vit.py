"""Adapters for Vision Transformer self-attention: timm, torchvision and Hugging Face.

ViT self-attention (Dosovitskiy et al., arXiv 2010.11929) is the non-local block's successor:
each head ``h`` has a map ``softmax(scale * q_h k_h^T)`` over all tokens (Vaswani et al., arXiv
1706.03762). The GCNet question (arXiv 1904.11492, Sec. 3) -- do the maps depend on the query? --
is asked here per layer and per head. Fused kernels never expose the maps, so each adapter
recomputes them from the module's own projections; tests check the result against the module's
own output (``proj(sum_h A_h v_h)``) and, where the library offers them, its returned weights.

================= ============================================ ========================================
family            modules (matched by class name + attributes) q / k / scale recomputed from
================= ============================================ ========================================
``timm-vit``      timm ``Attention`` (``vision_transformer``;   ``qkv`` (fused Linear), ``q_norm`` /
                  fused ``scaled_dot_product_attention`` or     ``k_norm``; scale ``head_dim ** -0.5``
                  not; optional ``norm`` / ``gate`` before      (what SDPA uses) when ``fused_attn``,
                  ``proj``)                                     else the module's ``scale``
``torch-mha``     ``torch.nn.MultiheadAttention`` used as self- ``in_proj_weight`` / ``in_proj_bias``;
                  attention (torchvision ``VisionTransformer``  scale ``head_dim ** -0.5``
                  encoder blocks call it with ``need_weights=
                  False``, the fused path)
``hf-vit``        Hugging Face ``Dinov2*Attention``,            transformers >= 5: ``q_proj`` /
                  ``Dinov2WithRegisters*Attention``,            ``k_proj``, ``scaling``; 4.x: ``attention.
                  ``ViT*Attention``, ``DeiT*Attention``         query`` / ``.key``, ``attention_head_size
                  (transformers 4.x and >= 5 layouts)           ** -0.5``
================= ============================================ ========================================

Unlike the NL adapters, the block input here is a token sequence ``[B, N, C]`` (class and
register tokens first, then patches; see :mod:`nlanalysis.blocks.tokens`), and the context term is
the module's output itself (the attention branch before LayerScale and the residual add).
:meth:`ViTAttentionAdapter.head_attention` gives per-head maps ``[B, heads, N_query, N_key]``;
:meth:`ViTAttentionAdapter.attention` the head mean as a ``LazyAttention``. Per-layer statistics
over a whole model (with LayerScale and the residual stream of the enclosing block) come from
:class:`nlanalysis.capture.Capture` (:mod:`nlanalysis.capture.heads`). No library is imported here.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks.heads import HeadAttention, TokenAttention
from ..blocks.tokens import TokenLayout, layout_of
from ..schema import VIT
from .base import BlockAdapter, UnsupportedBlockError, class_path as _where
from .registry import register_adapter

__all__ = ["HFViTAdapter", "MHAAdapter", "TimmViTAdapter", "ViTAttentionAdapter", "check_tokens"]


def check_tokens(x: Tensor, dim: int, where: str, known_finite: bool = False) -> None:
    """Raise a clear error unless ``x`` is a finite token tensor ``[B, N, dim]`` (``known_finite``: the values
    were already shown finite, only the type and shape are checked)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: expected the tokens as a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{where}: expected tokens [B, N, {dim}], got shape {tuple(x.shape)}")
    if not known_finite and not torch.isfinite(x.detach().sum()) and not x.isfinite().all():  # one cheap reduction first
        raise ValueError(f"{where}: tokens contain NaN or inf values")


# enclosing blocks ``(norm, layer scale)``: their attention branch is ``layer_scale(attn(norm(x)))`` added to ``x``
_KNOWN_BLOCKS = {
    "Block": ("norm1", "ls1"),  # timm vision_transformer.Block
    "EncoderBlock": ("ln_1", None),  # torchvision vision_transformer.EncoderBlock
    "Dinov2Layer": ("norm1", "layer_scale1"),
    "Dinov2WithRegistersLayer": ("norm1", "layer_scale1"),
    "ViTLayer": ("layernorm_before", None),
    "DeiTLayer": ("layernorm_before", None),
}


def _by_name(module: nn.Module, args: tuple[Any, ...]) -> dict[str, Any]:
    """The positional arguments of ``module``'s forward by their parameter names (none where they do not bind)."""
    try:
        bound = inspect.signature(type(module).forward).bind_partial(module, *args)
    except (TypeError, ValueError):
        return {}
    return dict(list(bound.arguments.items())[1:])


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """``[B, N, heads * d]`` -> ``[B, heads, N, d]``."""
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)


class ViTAttentionAdapter(BlockAdapter):
    """Common contract of the ViT attention families.

    Subclasses say how to get queries and keys (recomputed from tokens, or from the outputs of
    the module's own projection layers seen by hooks -- free during a forward), the output
    projection, and the module's output.
    """

    #: a ViT layer's heads, over token sequences ``[B, N, C]`` (:class:`nlanalysis.capture.heads.HeadSite`)
    site = VIT
    token_input = True

    # -- what each family defines ----------------------------------------------------------------
    def num_heads(self, module: nn.Module) -> int:
        """Heads (default: the module's ``num_heads``)."""
        return int(module.num_heads)

    def embed_dim(self, module: nn.Module) -> int:
        raise NotImplementedError

    def scale(self, module: nn.Module) -> float:
        raise NotImplementedError

    def qkv(self, module: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Recompute ``(q, k, v)``, each ``[B, heads, N, d]`` (q/k after their norms)."""
        raise NotImplementedError

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        """Submodules whose forward outputs give q/k for free: ``{"qkv": m}`` or ``{"q": m, "k": m}``."""
        return {}

    def qk_from_taps(self, module: nn.Module, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def calls_sdpa(self, module: nn.Module) -> bool:
        """Whether the module's forward computes attention with one ``F.scaled_dot_product_attention``
        call on ``[B, heads, N, d]`` q/k/v (then the capture may answer it from
        the measured maps, :mod:`nlanalysis.capture.shared_softmax`). Families that do not say so keep
        every op of their forward to torch."""
        return False

    def sdpa_span(self, module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """Two submodules the forward calls around its attention call, ``(after, before)``: the call comes after
        ``after``'s forward and before ``before``'s, so the capture's mode need only be active in between (every
        torch call under a mode pays a trip through Python: ~2.4 ms per ViT-S forward over the whole module, ~0.9
        ms over the span). ``None``: the whole forward. Where the call falls outside the span it is not answered
        and the maps are recomputed: slower, not wrong."""
        return None

    def out_proj(self, module: nn.Module) -> nn.Module | None:
        """The output projection (a Linear over concatenated heads), if the forward calls it as a module
        (so a pre-hook sees the per-head outputs); ``None`` if it is applied functionally."""
        return None

    def out_weight(self, module: nn.Module) -> tuple[Tensor, Tensor | None]:
        """``(W [C, heads * d], b [C] or None)`` of the output projection (default: :meth:`out_proj`'s)."""
        proj = self.out_proj(module)
        return proj.weight, proj.bias

    # -- shared ------------------------------------------------------------------------------------
    def enclosing_block(self, parent: nn.Module | None) -> tuple[bool, Tensor | None]:
        """``(known, gamma)``: whether ``parent`` (holding the attention module) is a known pre-norm block
        (:data:`_KNOWN_BLOCKS`), and its LayerScale vector (``None``: none)."""
        spec = _KNOWN_BLOCKS.get(type(parent).__name__) if parent is not None else None
        if spec is None or not hasattr(parent, spec[0]):
            return False, None
        ls = getattr(parent, spec[1], None) if spec[1] is not None else None
        if ls is None or isinstance(ls, nn.Identity):
            return True, None
        gamma = getattr(ls, "gamma", getattr(ls, "lambda1", None))
        if not isinstance(gamma, Tensor):
            return False, None  # an unknown LayerScale: fall back to the attention module's own output
        return True, gamma

    def block_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """The input tokens from a forward hook's arguments (positional, or ``hidden_states``/``x``/``query``)."""
        if args:
            return args[0]
        for name in ("hidden_states", "x", "query"):
            if name in kwargs:
                return kwargs[name]
        return super().block_input(args, kwargs)

    def check_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse forwards whose maps the recomputation would not reproduce (masks, causal, cross-attention), given by
        keyword or by position (``mha(x, x, x, key_padding_mask)``, timm's ``attn(x, None, True)``)."""
        if len(args) > (3 if isinstance(module, nn.MultiheadAttention) else 1):  # more than the tokens: read them by name
            kwargs = {**_by_name(module, args), **kwargs}
        for name in ("attn_mask", "attention_mask", "key_padding_mask", "head_mask"):
            if kwargs.get(name) is not None:
                raise UnsupportedBlockError(
                    f"{_where(module)} was called with {name}: masked attention is not analysed (ViT encoders use none)"
                )
        if kwargs.get("is_causal"):
            raise UnsupportedBlockError(f"{_where(module)} was called with is_causal=True: causal attention is not analysed")
        if isinstance(module, nn.MultiheadAttention):
            query = self.block_input(args, kwargs)
            key = args[1] if len(args) > 1 else kwargs.get("key")
            if key is not None and key is not query and not torch.equal(key, query):
                raise UnsupportedBlockError(f"{_where(module)} was called as cross-attention (key != query)")
        elif len(args) > 1 and isinstance(args[1], Tensor):
            raise UnsupportedBlockError(f"{_where(module)} was called with a mask argument: masked attention is not analysed")

    def tokens(self, module: nn.Module, x: Tensor) -> Tensor:
        """``[B, N, C]`` tokens from the module's first input (identity except for sequence-first MHA)."""
        return x

    def query_key(self, module: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Recompute ``(q, k)`` ``[B, heads, N, d]`` from the module input tokens."""
        q, k, _ = self.qkv(module, tokens)
        return q, k

    def head_attention(
        self, module: nn.Module, tokens: Tensor, layout: TokenLayout | None = None, keys: str = "patch"
    ) -> HeadAttention:
        """Per-head maps ``[B, heads, N_query, N_key]`` of ``module`` for its input ``tokens`` ``[B, N, C]``
        (sequence-first ``[N, B, C]`` for such an ``nn.MultiheadAttention``).

        Args:
            layout: where class/register/patch tokens sit; inferred from ``N`` (square grid,
                smallest prefix) when omitted.
            keys: ``"patch"`` or ``"all"`` (see :class:`~nlanalysis.blocks.heads.HeadAttention`).
        """
        tokens = self.tokens(module, tokens)
        check_tokens(tokens, self.embed_dim(module), _where(module))
        layout = layout or layout_of(module, n_tokens=tokens.shape[1])
        with torch.no_grad():
            q, k = self.query_key(module, tokens.detach())
        return HeadAttention(q, k, self.scale(module), layout, keys)

    def attention(self, module: nn.Module, x: Tensor) -> TokenAttention:
        """The head-averaged map over patch queries and patch keys for input tokens ``x`` ``[B, N, C]``."""
        return self.head_attention(module, x).mean()

    def head_values(self, module: nn.Module, tokens: Tensor) -> Tensor:
        """Recompute the per-head outputs ``sum_j A_hij v_hj`` concatenated over heads -> ``[B, N, heads * d]``.

        This is what the output projection sees (before timm's optional ``norm``/``gate``).
        """
        q, k, v = self.qkv(module, tokens)
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale(module))
        return o.transpose(1, 2).flatten(2)

    def context_term(self, module: nn.Module, x: Tensor, z: Any) -> Tensor:
        """The attention branch: the module's output itself (no residual inside the module)."""
        return self.output(module, z)

    def output(self, module: nn.Module, z: Any) -> Tensor:
        """The module's output tokens ``[B, N, C]`` from whatever its forward returned."""
        return z[0] if isinstance(z, (tuple, list)) else z

    def describe(self, module: nn.Module) -> dict[str, Any]:
        info = super().describe(module)
        heads = self.num_heads(module)
        info.update(mode="self_attention", num_heads=heads, embed_dim=self.embed_dim(module), scale=self.scale(module))
        return info


_TIMM_ATTRS = ("qkv", "num_heads", "scale", "proj", "q_norm", "k_norm")


@register_adapter
class TimmViTAdapter(ViTAttentionAdapter):
    family = "timm-vit"
    description = "timm ViT Attention (fused SDPA or not; qkv Linear, q/k norms, optional norm/gate before proj)"

    def matches(self, module: nn.Module) -> bool:
        return (
            type(module).__name__ == "Attention"
            and type(module).__module__.startswith("timm.")
            and all(hasattr(module, a) for a in _TIMM_ATTRS)
            and isinstance(module.qkv, nn.Linear)
        )

    def embed_dim(self, module: nn.Module) -> int:
        return module.qkv.in_features

    def _head_dim(self, module: nn.Module) -> int:
        return getattr(module, "head_dim", module.qkv.out_features // (3 * module.num_heads))

    def scale(self, module: nn.Module) -> float:
        # the fused path calls F.scaled_dot_product_attention without a scale: head_dim ** -0.5
        if getattr(module, "fused_attn", False):
            return self._head_dim(module) ** -0.5
        return float(module.scale)

    def _split(self, module: nn.Module, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return module.q_norm(q), module.k_norm(k), v

    def qkv(self, module: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self._split(module, module.qkv(tokens))

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        return {"qkv": module.qkv}

    def calls_sdpa(self, module: nn.Module) -> bool:
        return bool(getattr(module, "fused_attn", False))

    def sdpa_span(self, module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """timm: ``k_norm(k)`` (an ``Identity`` without qk-norm), then the attention call, then ``proj``."""
        return module.k_norm, module.proj

    def qk_from_taps(self, module: nn.Module, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        q, k, _ = self._split(module, outputs["qkv"])
        return q, k

    def out_proj(self, module: nn.Module) -> nn.Module:
        return module.proj

    def head_values(self, module: nn.Module, tokens: Tensor) -> Tensor:
        o = super().head_values(module, tokens)
        o = module.norm(o) if hasattr(module, "norm") else o
        gate = getattr(module, "gate", None)
        return o * gate(tokens).sigmoid() if gate is not None else o

    def describe(self, module: nn.Module) -> dict[str, Any]:
        info = super().describe(module)
        info.update(
            fused=bool(getattr(module, "fused_attn", False)),
            qk_norm=not isinstance(module.q_norm, nn.Identity),
        )
        return info


@register_adapter
class MHAAdapter(ViTAttentionAdapter):
    family = "torch-mha"
    description = "torch.nn.MultiheadAttention as self-attention (torchvision VisionTransformer encoder blocks)"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    def overridden(self, module: nn.Module) -> str | None:
        return None if type(module).forward is nn.MultiheadAttention.forward else f"{type(module).__name__} overrides forward"

    def _check(self, module: nn.Module) -> None:
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise UnsupportedBlockError(
                f"{_where(module)}: only self-attention with one in_proj_weight, no bias_k/bias_v and no "
                "add_zero_attn is analysed (what torchvision's VisionTransformer builds)"
            )

    def embed_dim(self, module: nn.Module) -> int:
        return int(module.embed_dim)

    def scale(self, module: nn.Module) -> float:
        return float(module.head_dim) ** -0.5

    def tokens(self, module: nn.Module, x: Tensor) -> Tensor:
        """``[B, N, C]`` tokens from the module's ``query`` argument (``[N, B, C]`` unless batch_first)."""
        return x if module.batch_first else x.transpose(0, 1)

    def qkv(self, module: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self._check(module)
        q, k, v = F.linear(tokens, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
        h = module.num_heads
        return _split_heads(q, h), _split_heads(k, h), _split_heads(v, h)

    def query_key(self, module: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
        self._check(module)
        e = module.embed_dim
        bias = module.in_proj_bias[: 2 * e] if module.in_proj_bias is not None else None
        q, k = F.linear(tokens, module.in_proj_weight[: 2 * e], bias).chunk(2, dim=-1)
        return _split_heads(q, module.num_heads), _split_heads(k, module.num_heads)

    def out_weight(self, module: nn.Module) -> tuple[Tensor, Tensor | None]:
        return module.out_proj.weight, module.out_proj.bias

    def output(self, module: nn.Module, z: Any) -> Tensor:
        out = z[0] if isinstance(z, (tuple, list)) else z
        return out if module.batch_first else out.transpose(0, 1)


_HF_PREFIXES = ("Dinov2", "ViT", "DeiT")


def _hf_v5(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))


def _hf_v4(module: nn.Module) -> bool:
    inner = getattr(module, "attention", None)
    out = getattr(module, "output", None)
    return (
        inner is not None
        and all(isinstance(getattr(inner, a, None), nn.Linear) for a in ("query", "key", "value"))
        and isinstance(getattr(out, "dense", None), nn.Linear)
    )


@register_adapter
class HFViTAdapter(ViTAttentionAdapter):
    family = "hf-vit"
    description = "Hugging Face Dinov2 / Dinov2WithRegisters / ViT / DeiT attention (transformers 4.x and >= 5 layouts)"

    def matches(self, module: nn.Module) -> bool:
        name = type(module).__name__
        return (
            name.endswith("Attention")
            and name.startswith(_HF_PREFIXES)
            and type(module).__module__.startswith("transformers.")
            and (_hf_v5(module) or _hf_v4(module))
        )

    def _inner(self, module: nn.Module) -> nn.Module:
        return module if _hf_v5(module) else module.attention

    def num_heads(self, module: nn.Module) -> int:
        return int(self._inner(module).num_attention_heads)

    def embed_dim(self, module: nn.Module) -> int:
        inner = self._inner(module)
        return (inner.q_proj if _hf_v5(module) else inner.query).in_features

    def _head_dim(self, module: nn.Module) -> int:
        inner = self._inner(module)
        return int(getattr(inner, "head_dim", getattr(inner, "attention_head_size", 0)))

    def scale(self, module: nn.Module) -> float:
        inner = self._inner(module)
        return float(getattr(inner, "scaling", self._head_dim(module) ** -0.5))

    def _linears(self, module: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        if _hf_v5(module):
            return module.q_proj, module.k_proj, module.v_proj, module.o_proj
        inner = module.attention
        return inner.query, inner.key, inner.value, module.output.dense

    def qkv(self, module: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, _ = self._linears(module)
        h = self.num_heads(module)
        return _split_heads(q(tokens), h), _split_heads(k(tokens), h), _split_heads(v(tokens), h)

    def taps(self, module: nn.Module) -> dict[str, nn.Module]:
        q, k, _, _ = self._linears(module)
        return {"q": q, "k": k}

    def calls_sdpa(self, module: nn.Module) -> bool:
        config = getattr(self._inner(module), "config", None)  # transformers picks the kernel per call from it
        return getattr(config, "_attn_implementation", None) == "sdpa"

    def qk_from_taps(self, module: nn.Module, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        h = self.num_heads(module)
        return _split_heads(outputs["q"], h), _split_heads(outputs["k"], h)

    def out_proj(self, module: nn.Module) -> nn.Module:
        return self._linears(module)[3]

    def describe(self, module: nn.Module) -> dict[str, Any]:
        info = super().describe(module)
        info["layout"] = "transformers>=5" if _hf_v5(module) else "transformers 4.x"
        return info
