"""What a capture records per attention site and forward: one :class:`SiteRecord` for an NL/GC
block (:mod:`.blocks`) and for a ViT layer's heads (:mod:`.heads`) alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..schema import NL, VIT

if TYPE_CHECKING:  # ViT-only modules: not loaded by a plain ``import nlanalysis``
    from ..blocks.heads import HeadAttention
    from ..blocks.tokens import TokenLayout

__all__ = ["QueryMaps", "SiteRecord"]


@dataclass
class QueryMaps:
    """Attention maps of chosen query points.

    Attributes:
        feature_yx: ``[K, 2]`` long, (row, col) of each query on the site's query grid.
        image_yx: ``[K, 2]`` float, the query's position in model-input pixels (``None`` when the
            input size is unknown).
        maps: ``[B, K, H_k, W_k]`` float32, each query's map over the key grid (a ViT layer:
            ``[B, K, heads + 1, H_g, W_g]``, every head then the head mean, over the patch keys).
    """

    feature_yx: Tensor
    image_yx: Tensor | None
    maps: Tensor


@dataclass
class SiteRecord:
    """What one attention site (an NL/GC block, or a ViT layer's heads) did in one forward.

    Attributes:
        name: dotted module name in the model (ViT: of the attention module).
        family: adapter family (``nlanalysis``, ``mmcv``, ``timm-vit``, ``hf-vit``, ...).
        info: static facts from the adapter (mode, channels, heads, scale, ...).
        call: index of the model forward this record belongs to (0-based).
        use: the site's run in that forward, counted from 0 (a module called twice in one forward: 0, then 1).
        input_size: ``(H, W)`` of the model input, if known.
        query_shape, key_shape: ``(H, W)`` grids of queries and keys (ViT: the patch grid, both).
        stats: :class:`~nlanalysis.measure.stats.SiteStats` (per-map fields ``[B, 1]`` for a block,
            ``[B, heads + 1]`` for a ViT layer); ``None`` when
            statistics were switched off.
        queries: :class:`QueryMaps` of the chosen query points (``None`` without queries).
        x, z, context: block input, output and ``z - x`` (NL, only with ``keep_tensors=True``).
        layer: index among the captured attention modules (ViT only; model order).
        layout: the token layout: class / register / patch tokens (ViT only).
        input_space: ``"block"`` (residual stream into the transformer block, LayerScale applied
            to the output) or ``"attention"`` (the attention module's own input and output); ViT only.
        attention: the :class:`~nlanalysis.blocks.heads.HeadAttention` (CPU), ViT with
            ``keep_attention=True`` only.
    """

    name: str
    family: str
    info: dict[str, Any]
    call: int
    input_size: tuple[int, int] | None
    query_shape: tuple[int, int]
    key_shape: tuple[int, int]
    stats: Any = None
    queries: QueryMaps | None = None
    x: Tensor | None = None
    z: Tensor | None = None
    context: Tensor | None = None
    layer: int | None = None
    layout: TokenLayout | None = None
    input_space: str | None = None
    attention: HeadAttention | None = None
    use: int = 0

    @property
    def site(self) -> str:
        """:data:`~nlanalysis.schema.VIT` for a ViT layer's heads (it has a token layout), else :data:`~nlanalysis.schema.NL`."""
        return NL if self.layout is None else VIT

    def facts(self) -> dict[str, Any]:
        """The site's columns of a result row (not the per-map ``head``, counts or statistics)."""
        if self.layout is None:
            return {"block": self.name, "family": self.family, "mode": self.info.get("mode", ""),
                    "height": self.query_shape[0], "width": self.query_shape[1]}  # fmt: skip
        return {"layer": self.layer, "block": self.name, "family": self.family, "num_heads": self.stats.num_heads,
                "grid_h": self.layout.grid[0], "grid_w": self.layout.grid[1], "n_prefix": self.layout.n_prefix,
                "input_space": self.input_space}  # fmt: skip
