"""The ``ctrl_*`` columns of an NL block's per-query maps: a random-projection control at the maps'
sharpness, then the control in the maps' own form (:mod:`.control_forms`); the same columns of ViT heads
come through :func:`control_columns` (:mod:`.head_controls`)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..blocks.attention import LazyAttention, PairwiseAttention
from .blocks import key_mask, measure_block
from .stats import CONTROLS, nans

__all__ = ["block_controls", "control_columns", "random_control"]


def block_controls(att: LazyAttention, x: Tensor, context: Tensor, valid: Tensor | None, objects: Tensor | None,
                    entropy: Tensor, row_ok: Tensor | None, jsd_pairs: int, generator: torch.Generator | None, cos: dict,
                    kernels: str) -> dict[str, Any]:  # fmt: skip
    """The ``ctrl_*`` columns of per-query maps: the random control at matched sharpness (non-negative maps),
    then the control in the maps' own form (issue 15)."""
    from .control_forms import block_form_controls

    ctrl: dict[str, Any] = {name: nans(x.shape[0]) for name in CONTROLS}
    if att.nonnegative:
        ctrl = random_control(att, x, context, valid, objects, entropy, row_ok, jsd_pairs, generator, cos, kernels)
    ctrl.update(block_form_controls(att, x, valid, objects, row_ok, jsd_pairs=jsd_pairs, generator=generator, kernels=kernels, **cos))
    return ctrl


def random_control(att, x, context, valid, objects, target, row_ok, jsd_pairs, generator, cos, kernels) -> dict[str, Tensor]:
    """``ctrl_att, ctrl_att_jsd, ctrl_att_own_object, ctrl_temperature`` per image (NaN where the
    temperature is not matched: :func:`nlanalysis.measure.controls.match_temperature`)."""
    from .controls import MATCH_ROWS, match_temperature, random_projection_attention

    b = x.shape[0]
    out = {name: nans(b) for name in CONTROLS}
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    channels = att.query.shape[-1] if isinstance(att, PairwiseAttention) and att.mode != "concatenation" else max(x.shape[1] // 2, 1)
    control = random_projection_attention(x.detach(), att.key_shape, channels, gen)
    kmask = key_mask(valid, att.key_shape).flatten(1) if valid is not None else None
    for i in range(b):
        rows = row_ok[i].nonzero()[:, 0]
        if rows.numel() == 0 or math.isnan(target[i]):
            continue
        sample = rows[torch.randperm(rows.numel(), generator=gen)[:MATCH_ROWS]].to(x.device)
        one = control.image(i)
        logits = torch.matmul(one.query[:, sample], one.key)  # [1, S, N_k]
        tau, ok = match_temperature(logits, target[i : i + 1], kmask[i] if kmask is not None else None)
        if not bool(ok[0]):
            continue
        one.scale = float(tau[0])
        sl = slice(i, i + 1)
        found = control_columns(one, x[sl], valid[sl] if valid is not None else None, objects[sl] if objects is not None else None,
                                tau, ok, jsd_pairs=jsd_pairs, generator=gen, kernels=kernels, **cos)  # fmt: skip
        for name in CONTROLS:
            out[name][i] = found[name][0]
    return out


def control_columns(maps: LazyAttention, x: Tensor, valid: Tensor | None, objects: Tensor | None, temperature: Tensor,
                    ok: Tensor, **measure: Any) -> dict[str, Tensor]:  # fmt: skip
    """The ``ctrl_*`` values ``[M]`` of random-projection maps matched at ``temperature`` ``[M]`` (:mod:`.controls`;
    ``M`` batch items, their input ``x`` ``[M, C, H, W]``, ``valid`` and ``objects``): :func:`measure_block`'s
    ``att``, ``att_jsd`` and ``att_own_object`` of each, and the temperature; NaN where not ``ok``. NL blocks
    and ViT heads (:func:`~nlanalysis.measure.head_controls.head_controls`) alike."""
    stats = measure_block(maps, x, x, valid=valid, objects=objects, **measure)
    found = (stats.att[:, 0], stats.att_jsd[:, 0], stats.att_own_object[:, 0], temperature)
    return {name: torch.where(ok.cpu(), value.double().cpu(), math.nan) for name, value in zip(CONTROLS, found)}
