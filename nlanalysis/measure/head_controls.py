"""The random-projection control of :mod:`nlanalysis.measure.controls`, for every head of a ViT layer.

For head ``h``: the layer's own input tokens (what its q/k projections see, after the block's
norm) through random query/key projections of the head's width (Gaussian, a fresh pair per head),
``softmax(tau * q_i . k_j)`` over the patch keys, with ``tau`` set by the NL blocks' matcher
(:func:`~nlanalysis.measure.controls.match_temperature`: Newton steps inside a bisection bracket, all
maps of a layer at once) so that the maps' mean normalised entropy equals head ``h``'s (``att_entropy``).
Its ``att`` is the distance maps of the same sharpness would have if training had learned nothing
about *which* keys matter. The head-averaged map gets its own control, matched to *its* entropy (as
an NL block's one map does): a mean of the heads' controls would be broader than the head mean and
not at matched sharpness. ``ctrl_temperature`` is ``tau``; where the matching cannot reach the target
entropy (within :data:`~nlanalysis.measure.controls.MATCH_TOLERANCE`, 1e-3) the control is NaN.

Each control is one random draw per head and image: it varies from draw to draw (a few hundredths
of ``att`` on small models), so read it averaged over images. Keys are the patches (``keys="patch"``,
as the head statistics by default); for ``keys="all"`` it is not computed. Costs a few Newton steps
on 256 rows of every map of a layer at once, plus one pass over every row: ~0.5 s per photo for 12
layers x 6 heads at 224 on 2 CPU cores, meant for ``controls=True`` runs, not every analysis. Many
small ops: under CPU contention (another process using the cores) two torch threads can make it
~10x slower, one thread ~2x.

Everything runs on the tokens' device (a CUDA model's controls never leave the GPU): the projections are drawn
from the seeded CPU generator (:func:`control_generator`; a CUDA run draws the same numbers as a CPU one) and
only the small ``[maps, 2, d, C]`` matrices are moved to the device; the temperature matching, the control maps
and their statistics stay there, and only per-map numbers per image come back to the host.

Given the layer's maps (``trained``), each head and the head mean also get the control in their own
form (:func:`head_form_controls`, columns ``ctrl_form*``): ``softmax-per-query``, every query row's
temperature matched to that row's entropy in the trained map (:mod:`nlanalysis.measure.control_forms`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..blocks.attention import PairwiseAttention
from ..blocks.heads import HeadAttention
from .block_controls import control_columns
from .blocks import measure_block
from .control_forms import FORM_COLUMNS, SOFTMAX_PER_QUERY, entropy_of_rows, per_query_temperature
from .stats import CONTROLS, nans
from .controls import MATCH_ROWS, draw_projections, match_temperature
from ..blocks.tokens import TokenLayout

__all__ = ["CONTROL_COLUMNS", "Controls", "control_generator", "head_controls", "head_form_controls", "matched_controls"]

#: the control's columns (per head and head mean), as the NL blocks' ``ctrl_*``.
CONTROL_COLUMNS = CONTROLS


def control_generator(seed: int, call: int, layer: int) -> torch.Generator:
    """The generator of the controls of one layer in one forward of a capture seeded with ``seed``:
    its own stream, so turning controls on changes no other random draw (JSD pairs)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(call) * 10_007 + int(layer)) % (2**63))


@dataclass
class Controls:
    """The matched controls of one image: the heads' and then the head mean's (``heads + 1``).

    Attributes:
        maps: ``PairwiseAttention`` with one batch item per head (the last: the head mean), the
            temperature folded into its queries (``scale`` 1).
        temperature: ``[heads + 1]`` float64 ``tau`` (NaN where not matched), on the tokens' device.
        ok: ``[heads + 1]`` bool, on the tokens' device: matched (the target entropy was defined and reached within
            :data:`~nlanalysis.measure.controls.MATCH_TOLERANCE`).
    """

    maps: PairwiseAttention
    temperature: Tensor
    ok: Tensor


@torch.no_grad()
def matched_controls(
    tokens: Tensor,
    layout: TokenLayout,
    entropy: Tensor,
    head_dim: int,
    *,
    valid: Tensor | None = None,
    generator: torch.Generator | None = None,
    iterations: int = 30,
) -> list[Controls | None]:
    """Per image, the random-projection maps of every head and of the head mean, each with its
    temperature matched to that map's mean normalised entropy over up to 256 of the image's valid
    patch queries (:func:`nlanalysis.measure.controls.match_temperature`, all maps of the image at
    once); ``None`` for an image without a valid patch. Arguments as :func:`head_controls`."""
    b, maps = entropy.shape[0], entropy.shape[1]
    if tokens.dim() != 3 or tokens.shape[0] != b:
        raise ValueError(f"tokens must be [B, N, C] with B = {b}, got {tuple(tokens.shape)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    x = layout.patch_tokens(tokens.detach().float())  # [B, n, C]
    c, dev = x.shape[-1], x.device
    out: list[Controls | None] = []
    for i in range(b):
        vi = _valid_patches(valid, i, layout, dev)
        rows = vi.nonzero()[:, 0]
        if rows.numel() == 0:
            out.append(None)
            continue
        sample = rows[torch.randperm(rows.numel(), generator=gen)[:MATCH_ROWS].to(dev)]  # drawn on the CPU generator
        w = draw_projections(maps, head_dim, c, gen).to(dev)  # a fresh W_q, W_k per map, drawn on the CPU generator
        query = torch.einsum("hdc,nc->hnd", w[:, 0], x[i])  # [maps, n, d]
        key = torch.einsum("hdc,nc->hdn", w[:, 1], x[i])  # [maps, d, n]
        logits = torch.matmul(query[:, sample], key)  # [maps, S, n]
        tau, ok = match_temperature(logits, entropy[i].double(), vi, iterations=iterations)
        scaled = query * torch.where(ok, tau, 0.0).float()[:, None, None]
        attention = PairwiseAttention("embedded_gaussian", scaled, key, layout.grid, layout.grid, scale=1.0)
        out.append(Controls(attention, tau, ok))
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
    trained: HeadAttention | None = None,
) -> dict[str, Tensor | str]:
    """The random-projection control at matched sharpness for every head and the head-averaged map.

    Args:
        tokens: ``[B, N, C]`` the attention module's input (all tokens; the patches are used).
        layout: the token layout.
        entropy: ``[B, heads + 1]`` the layer's ``att_entropy`` (normalised; the head mean's last).
        head_dim: width of the random query/key projections (the heads' width).
        valid: optional bool ``[B, H_g, W_g]``: True on image patches.
        objects: optional int ``[B, H_g, W_g]`` object labels of the patches (``ctrl_att_own_object``).
        jsd_pairs, generator, convention, zero: as :func:`nlanalysis.measure.measure_block`
            (``generator`` also draws the projections and the rows the temperature is matched on).
        trained: the layer's maps (``keys="patch"``): with them, also the control matched per query
            (:func:`head_form_controls`), drawn from ``generator`` after the mean-entropy one.

    Returns:
        ``{column: [B, heads + 1] float64}`` on the CPU for :data:`CONTROL_COLUMNS` (NaN where there is no
        control: see :func:`matched_controls`); with ``trained``, also ``ctrl_form`` and its columns.
    """
    b, maps = entropy.shape
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    valid, objects = (None if t is None else t.to(tokens.device) for t in (valid, objects))  # the masks go where the tokens are
    controls = matched_controls(tokens, layout, entropy, head_dim, valid=valid, generator=gen)
    out = {name: nans(b, maps) for name in CONTROL_COLUMNS}
    x = layout.patch_tokens(tokens.detach().float()).transpose(1, 2).reshape(b, -1, *layout.grid)  # [B, C, H_g, W_g]
    for i, control in enumerate(controls):
        if control is None or not control.ok.any():
            continue
        found = control_columns(  # every map of the image as one batch (one item per head, then the head mean)
            control.maps, x[i : i + 1].expand(maps, -1, -1, -1), valid[i : i + 1].bool().expand(maps, -1, -1) if valid is not None else None,
            objects[i : i + 1].expand(maps, -1, -1).contiguous() if objects is not None else None, control.temperature, control.ok,
            jsd_pairs=jsd_pairs, generator=gen, convention=convention, zero=zero,
        )  # fmt: skip
        for name in CONTROL_COLUMNS:
            out[name][i] = found[name]
    if trained is not None:
        measure = dict(jsd_pairs=jsd_pairs, generator=gen, convention=convention, zero=zero)
        return {**out, **head_form_controls(tokens, layout, trained, head_dim, valid=valid, objects=objects, **measure)}
    return out


@torch.no_grad()
def head_form_controls(tokens: Tensor, layout: TokenLayout, trained: HeadAttention, head_dim: int, *, valid: Tensor | None = None,
                       objects: Tensor | None = None, generator: torch.Generator, **measure: Any) -> dict[str, Tensor | str]:  # fmt: skip
    """The ``softmax-per-query`` control (:mod:`~nlanalysis.measure.control_forms`) of every head and the head mean:
    a fresh pair of random projections per map, each query row's temperature matched to that row's entropy
    in the trained map (over the valid patch keys).

    Args:
        tokens, layout, head_dim, valid, objects: as :func:`head_controls`.
        trained: the layer's maps over patch keys (``keys="patch"``), ``B`` images.
        generator: draws the projections and the control's JSD pairs.
        measure: ``jsd_pairs``, ``convention``, ``zero`` as :func:`nlanalysis.measure.measure_block`.

    Returns:
        ``{"ctrl_form": "softmax-per-query", column: [B, heads + 1] float64}`` for
        :data:`~nlanalysis.measure.control_forms.FORM_COLUMNS` (NaN for an image without a valid patch).
    """
    if trained.keys != "patch":
        raise ValueError(f"the per-query control needs maps over patch keys (keys='patch'), got keys={trained.keys!r}")
    b, maps = trained.batch_size, trained.num_heads + 1
    out: dict[str, Tensor | str] = {"ctrl_form": SOFTMAX_PER_QUERY, **{name: nans(b, maps) for name in FORM_COLUMNS}}
    x = layout.patch_tokens(tokens.detach().float())  # [B, n, C]
    dev = x.device
    valid, objects = (None if t is None else t.to(dev) for t in (valid, objects))
    grid = x.transpose(1, 2).reshape(b, -1, *layout.grid)  # [B, C, H_g, W_g]
    for i in range(b):
        vi = _valid_patches(valid, i, layout, dev)
        if not bool(vi.any()):
            continue
        target = torch.where(vi, _map_row_entropies(trained.image(i), vi).to(dev), math.nan)  # [maps, n], on the device
        w = draw_projections(maps, head_dim, x.shape[-1], generator).to(dev)  # drawn on the CPU generator
        query = torch.einsum("hdc,nc->hnd", w[:, 0], x[i])
        key = torch.einsum("hdc,nc->hdn", w[:, 1], x[i])
        tau, gap = per_query_temperature(query, key, target, vi)  # [maps, n] each, on the device
        control = PairwiseAttention("embedded_gaussian", query * tau.float()[..., None], key, layout.grid, layout.grid)
        stats = measure_block(control, grid[i : i + 1].expand(maps, -1, -1, -1), grid[i : i + 1].expand(maps, -1, -1, -1),
                              valid=valid[i : i + 1].bool().expand(maps, -1, -1) if valid is not None else None,
                              objects=objects[i : i + 1].expand(maps, -1, -1).contiguous() if objects is not None else None,
                              generator=generator, **measure)  # fmt: skip
        for name, value in zip(FORM_COLUMNS, (stats.att, stats.att_jsd, stats.att_own_object, gap.nanmean(1).cpu()[:, None])):
            out[name][i] = value[:, 0].double()  # type: ignore[index]
    return out


def _valid_patches(valid: Tensor | None, i: int, layout: TokenLayout, device: torch.device) -> Tensor:
    """Bool ``[n_patch]`` on ``device``: image ``i``'s valid patches (all without a mask)."""
    if valid is None:
        return torch.ones(layout.n_patch, dtype=torch.bool, device=device)
    return valid[i].flatten().bool().to(device)


def _map_row_entropies(trained: HeadAttention, kmask: Tensor, chunk_size: int = 256) -> Tensor:
    """``[heads + 1, N_q]`` normalised row entropies of one image's heads and head mean over the keys ``kmask`` ``[N_k]``
    (on the maps' device)."""
    out = []
    for start in range(0, trained.n_query, chunk_size):
        rows = trained.rows(start, min(start + chunk_size, trained.n_query))[0]  # [heads, c, N_k]
        out.append(entropy_of_rows(torch.cat([rows, rows.mean(0, keepdim=True)]), kmask.to(rows.device)))
    return torch.cat(out, 1)
