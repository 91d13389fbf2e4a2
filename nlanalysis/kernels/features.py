"""Sums of unit feature vectors, one native pass each: a ViT layer's tokens (:func:`token_stats`: input, branch and
per-head rows ``[B, n, C]``) and an NL block's input and output read in its ``[B, C, H, W]`` layout
(:func:`feature_stats`), behind the mean pairwise cosine distances ``input`` and ``output``.
"""
from __future__ import annotations

from array import array

import torch
from torch import Tensor

from ..nograd import no_grad
from . import _addr, _check_cpu, _f32, _lib, _on_cpu, _ptr, workspace

__all__ = ["feature_stats", "token_stats"]


@no_grad
def token_stats(
    x: Tensor,
    branch: Tensor,
    heads_in: Tensor | None,
    gram: Tensor | None,
    qm: Tensor | None,
    branch_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``||sum_i v_i / ||v_i|| ||^2`` and all-zero counts ``[B, 2 + H]`` (input, branch, per head),
    as :func:`nlanalysis.measure.heads._token_stats`.

    Args:
        x, branch: ``[B, n, C]`` float32 (rows contiguous: views like ``x[:, 1:]`` are fine).
        heads_in: ``[B, n, H*d]`` what the output projection sees, or None; gram: ``[H, d, d]`` or None.
        qm: ``[B, n]`` query weights (1 valid, 0 not) or None.
        branch_scale: ``[C]`` LayerScale: the branch vectors are ``branch * branch_scale`` (no
            scaled copy of the branch is made), or None.
    """
    lib = _lib()
    b, n, c = x.shape
    if branch.shape != x.shape:
        raise ValueError(f"token_stats: branch must have x's shape {tuple(x.shape)}, got {tuple(branch.shape)}")

    def rows(name: str, t: Tensor) -> Tensor:
        _check_cpu(name, t)
        return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()

    x, branch = rows("x", x), rows("branch", branch)
    heads = gram.shape[0] if gram is not None and heads_in is not None else 0
    d = gram.shape[-1] if heads else 0
    if heads and (gram.dim() != 3 or gram.shape[1] != d or tuple(heads_in.shape) != (b, n, heads * d)):
        raise ValueError(f"token_stats: heads_in must be [{b}, {n}, H*d] for gram [H, d, d], got {tuple(heads_in.shape)} and {tuple(gram.shape)}")
    o = rows("heads_in", heads_in) if heads else None
    _on_cpu("gram", gram)
    _on_cpu("qm", qm)
    _on_cpu("branch_scale", branch_scale)
    if branch_scale is not None and branch_scale.numel() != c:
        raise ValueError(f"token_stats: branch_scale must have {c} entries, got {tuple(branch_scale.shape)}")
    if qm is not None and qm.numel() != b * n:
        raise ValueError(f"token_stats: qm must have {b} x {n} entries, got {tuple(qm.shape)}")
    # as float32 and contiguous (each conversion only where needed: a ViT layer at batch 1 pays every dispatched op)
    bscale, g, qm = _f32(branch_scale), _f32(gram) if heads else None, _f32(qm)
    go = None
    if heads:  # G_h o_i for every head and token: one batched BLAS call
        go = workspace("token_go", (b, heads, n, d))
        for i in range(b):  # per image: o[i] is a view (no copy of a strided [B, n, H*d] batch)
            torch.bmm(o[i].view(n, heads, d).transpose(0, 1), g, out=go[i])
    s2 = torch.empty(b, 2 + heads, dtype=torch.float64)
    zeros = torch.empty(b, 2 + heads, dtype=torch.int64)
    args = array("q", (  # nl_token_stats' arguments packed (NULL: 0): one ctypes conversion, not 17
        _addr(x), x.stride(0), _addr(branch), branch.stride(0), _addr(bscale), _addr(o), o.stride(0) if o is not None else 0,
        _addr(go), _addr(g), _addr(qm), b, n, c, heads, d, _addr(s2), _addr(zeros),
    ))  # fmt: skip
    rc = lib.nl_token_stats_packed(args.buffer_info()[0])
    if rc != 0:
        raise MemoryError("token_stats: could not allocate its buffers")
    return s2, zeros


@no_grad
def feature_stats(x: Tensor, y: Tensor, qm: Tensor | None, residual: bool = False) -> tuple[Tensor, Tensor] | None:
    """``||sum_i v_i / ||v_i|| ||^2`` and all-zero counts ``[B, 2]`` of an NL block's input tokens and output
    tokens, read in the block's ``[B, C, H, W]`` layout: as :func:`token_stats` of their ``[B, N, C]`` rows
    (float64 norms), without copying them into rows.

    Args:
        x: ``[B, C, H, W]`` float32, the block's input (the first vectors).
        y: ``[B, C, H, W]`` float32: the output vectors themselves, or (``residual``) the block's output ``z``,
            whose vectors ``z - x`` are read without forming that tensor.
        qm: ``[B, H*W]`` query weights (1 valid, 0 not) or None.

    Returns:
        ``(s2, zeros)`` (float64, int64), or ``None`` where a token of either, valid or not, holds NaN or inf (or
        its ``z - x`` overflows): the sums are not defined there, the caller's eager path decides.
    """
    lib = _lib()
    if x.dim() != 4 or y.shape != x.shape:
        raise ValueError(f"feature_stats: x and y must be [B, C, H, W] of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    b, c, h, w = x.shape
    n = h * w

    def channels(name: str, t: Tensor) -> Tensor:  # each channel's tokens contiguous: the [B, C, H, W] tensor itself
        _check_cpu(name, t)
        dense = (w == 1 or t.stride(3) == 1) and (h == 1 or t.stride(2) == (w if w > 1 else 1))
        return t if dense else t.contiguous()

    x, y = channels("x", x), channels("y", y)
    _on_cpu("qm", qm)
    if qm is not None and qm.numel() != b * n:
        raise ValueError(f"feature_stats: qm must have {b} x {n} entries, got {tuple(qm.shape)}")
    qm = _f32(qm)
    s2 = torch.empty(b, 2, dtype=torch.float64)
    zeros = torch.empty(b, 2, dtype=torch.int64)
    bad = torch.empty(b, 2, dtype=torch.int64)
    rc = lib.nl_feature_stats(_ptr(x), x.stride(0), x.stride(1), _ptr(y), y.stride(0), y.stride(1), int(residual), _ptr(qm), b, c, n,
                              _ptr(s2), _ptr(zeros), _ptr(bad))  # fmt: skip
    if rc != 0:
        raise MemoryError("feature_stats: could not allocate its buffers")
    return None if bool(bad.any()) else (s2, zeros)
