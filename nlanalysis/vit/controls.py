"""The random-projection control of :mod:`nlanalysis.controls`, for every head of a ViT layer.

For head ``h``: the layer's own input tokens (what its q/k projections see, after the block's
norm) through random query/key projections of the head's width (Gaussian, seeded, a fresh pair per
head), ``softmax(tau * q_i . k_j)`` over the patch keys, with ``tau`` set by bisection so that the
maps' mean normalised entropy equals head ``h``'s (``att_entropy``). Its ``att`` is the distance
maps of the same sharpness would have if training had learned nothing about *which* keys matter.
For the head mean: the mean of the heads' matched controls (what averaging the heads' maps gives
when each is a matched random control). ``ctrl_temperature`` is each head's ``tau`` (NaN for the
head mean).

Keys are the patches (``keys="patch"``, as the head statistics by default); for ``keys="all"``
the control is not computed (NaN). Costs about 40 entropy evaluations of 256 rows per head and
image, plus one pass over every row: meant for ``controls=True`` runs, not every analysis.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..blocks.attention import LazyAttention, PairwiseAttention
from ..controls import match_temperature, random_projection_attention
from ..measure import measure_block
from .tokens import TokenLayout

__all__ = ["CONTROL_COLUMNS", "MeanAttention", "head_controls", "matched_controls"]

#: the control's columns (per head and head mean), as the NL blocks' ``ctrl_*``.
CONTROL_COLUMNS = ("ctrl_att", "ctrl_att_jsd", "ctrl_att_own_object", "ctrl_temperature")

_ROWS = 256  # query rows the temperature is matched on, as nlanalysis.measure does for NL blocks


class MeanAttention(LazyAttention):
    """The row-wise mean of several maps of the same shapes (e.g. a layer's heads)."""

    def __init__(self, maps: Sequence[LazyAttention]) -> None:
        if not maps:
            raise ValueError("MeanAttention needs at least one map")
        first = maps[0]
        for m in maps[1:]:
            if (m.query_shape, m.key_shape, m.batch_size) != (first.query_shape, first.key_shape, first.batch_size):
                raise ValueError("MeanAttention: the maps differ in shape")
        self.maps = list(maps)
        self.query_shape, self.key_shape = first.query_shape, first.key_shape
        self.query_independent = all(m.query_independent for m in maps)
        self.distribution = all(m.distribution for m in maps)
        self.nonnegative = all(m.nonnegative for m in maps)

    def _batch_size(self) -> int:
        return self.maps[0].batch_size

    @property
    def device(self) -> torch.device:
        return self.maps[0].device

    def image(self, b: int) -> MeanAttention:
        return MeanAttention([m.image(b) for m in self.maps])

    def take(self, index: Tensor) -> Tensor:
        return torch.stack([m.take(index) for m in self.maps]).mean(0)


@torch.no_grad()
def matched_controls(
    tokens: Tensor,
    layout: TokenLayout,
    entropy: Tensor,
    head_dim: int,
    *,
    valid: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> list[list[PairwiseAttention | None]]:
    """Per image and head, the random-projection maps with their temperature matched to the head's
    mean normalised entropy (over up to 256 of the image's valid patch queries; ``None`` where the
    head's entropy is NaN or the image has no valid patch). Arguments as :func:`head_controls`."""
    b, heads = entropy.shape[0], entropy.shape[1] - 1
    if tokens.dim() != 3 or tokens.shape[0] != b:
        raise ValueError(f"tokens must be [B, N, C] with B = {b}, got {tuple(tokens.shape)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    x = _patch_grid(tokens, layout)
    out: list[list[PairwiseAttention | None]] = []
    for i in range(b):
        vi = valid[i : i + 1].bool() if valid is not None else None
        rows = vi.flatten(1)[0].nonzero()[:, 0] if vi is not None else torch.arange(layout.n_patch)
        kmask = vi.flatten(1).float() if vi is not None else None
        sample = rows[torch.randperm(rows.numel(), generator=gen)[:_ROWS]]
        per_head: list[PairwiseAttention | None] = []
        for h in range(heads):
            control = random_projection_attention(x[i : i + 1], layout.grid, head_dim, gen)  # fresh projections per head
            target = float(entropy[i, h])
            ok = rows.numel() > 0 and not math.isnan(target)
            per_head.append(match_temperature(control, torch.tensor([target]), sample, kmask)[0] if ok else None)
        out.append(per_head)
    return out


@torch.no_grad()
def head_controls(
    tokens: Tensor,
    layout: TokenLayout,
    entropy: Tensor,
    head_dim: int,
    *,
    valid: Tensor | None = None,
    objects: Tensor | None = None,
    jsd_pairs: int = 64,
    generator: torch.Generator | None = None,
    convention: str = "1-cos",
    zero: str = "exclude",
) -> dict[str, Tensor]:
    """The random-projection control at matched sharpness for every head and the head mean.

    Args:
        tokens: ``[B, N, C]`` the attention module's input (all tokens; the patches are used).
        layout: the token layout.
        entropy: ``[B, heads + 1]`` the layer's ``att_entropy`` (normalised; the head mean's last).
        head_dim: width of the random query/key projections (the heads' width).
        valid: optional bool ``[B, H_g, W_g]``: True on image patches.
        objects: optional int ``[B, H_g, W_g]`` object labels of the patches (``ctrl_att_own_object``).
        jsd_pairs, generator, convention, zero: as :func:`nlanalysis.measure.measure_block`
            (``generator`` also draws the projections and the rows the temperature is matched on).

    Returns:
        ``{column: [B, heads + 1] float64}`` for :data:`CONTROL_COLUMNS` (NaN where a head's
        entropy is NaN, i.e. it has no non-zero row).
    """
    b, heads = entropy.shape[0], entropy.shape[1] - 1
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    controls = matched_controls(tokens, layout, entropy, head_dim, valid=valid, generator=gen)
    out = {name: torch.full((b, heads + 1), math.nan, dtype=torch.float64) for name in CONTROL_COLUMNS}
    x = _patch_grid(tokens, layout)
    cos = dict(jsd_pairs=jsd_pairs, generator=gen, convention=convention, zero=zero)
    for i, per_head in enumerate(controls):
        xi = x[i : i + 1]
        vi = valid[i : i + 1].bool() if valid is not None else None
        oi = objects[i : i + 1] if objects is not None else None
        for h, one in enumerate(per_head):
            if one is None:
                continue
            stats = measure_block(one, xi, xi, valid=vi, objects=oi, **cos)
            out["ctrl_att"][i, h], out["ctrl_att_jsd"][i, h] = stats.att[0], stats.att_jsd[0]
            out["ctrl_att_own_object"][i, h], out["ctrl_temperature"][i, h] = stats.att_own_object[0], one.scale
        if heads and all(one is not None for one in per_head):
            stats = measure_block(MeanAttention(per_head), xi, xi, valid=vi, objects=oi, **cos)  # type: ignore[arg-type]
            out["ctrl_att"][i, heads], out["ctrl_att_jsd"][i, heads] = stats.att[0], stats.att_jsd[0]
            out["ctrl_att_own_object"][i, heads] = stats.att_own_object[0]
    return out


def _patch_grid(tokens: Tensor, layout: TokenLayout) -> Tensor:
    """``[B, N, C]`` tokens -> ``[B, C, H_g, W_g]`` patch features (float32)."""
    return layout.patch_tokens(tokens.detach().float()).transpose(1, 2).reshape(tokens.shape[0], -1, *layout.grid)
