"""The last step of a ViT layer's statistics in one native call (``finalise.c``): every ``[B, M]`` field of
its :class:`~nlanalysis.measure.stats.SiteStats` from the token sums, the row sums and the JSD moments,
as ``nlanalysis.measure.heads._head_stats``'s PyTorch path computes them (tests compare the two). At
batch 1 that path is ~60 tiny ops per layer, whose dispatch costs more than the arithmetic.
"""
from __future__ import annotations

from array import array

import torch
from torch import Tensor

from . import _lib

__all__ = ["FINAL_FIELDS", "head_finalise"]

#: the float64 fields of :func:`head_finalise`'s first output, in order.
FINAL_FIELDS = ("input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows",
                "att_own_object", "own_object_share", "att_prefix_mass")  # fmt: skip
_CONVENTIONS = {"1-cos": 0, "(1-cos)/2": 1}
_ZERO_RULES = {"exclude": 0, "orthogonal": 1}


def _cpu(name: str, t: Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    """``t`` as a contiguous CPU tensor of ``dtype`` and ``shape`` (a column ``[B, 1]`` may be ``[B]``;
    ValueError naming ``name`` otherwise)."""
    if t.is_cpu and t.dtype == dtype and t.shape == shape and t.is_contiguous():  # the common case, checked first: ~0.3 us
        return t
    if t.device.type != "cpu" or (tuple(t.shape) != shape and (shape[1:] != (1,) or tuple(t.shape) != shape[:1])):
        raise ValueError(f"head_finalise: {name} must be a CPU tensor {shape}, got {tuple(t.shape)} on {t.device}")
    if t.dtype != dtype:
        t = t.view(dtype) if t.dtype == torch.bool and dtype == torch.uint8 else t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def head_finalise(
    s2: Tensor,
    zeros: Tensor,
    s_att: Tensor,
    sums: Tensor,
    n_query: Tensor,
    log_k: Tensor,
    jsd: tuple[Tensor, Tensor, Tensor] | None = None,
    exact: Tensor | None = None,
    *,
    heads_out: bool,
    objects: bool,
    convention: str = "1-cos",
    zero: str = "exclude",
) -> tuple[Tensor, Tensor]:
    """The per-map statistics of a ViT layer with ``H`` heads (``M = H + 1`` maps, the last the head mean).

    Args:
        s2: ``[B, 2 (+ H)]`` ``||sum_i v_i / ||v_i|| ||^2`` of the input, the branch and (with ``heads_out``)
            each head's output share (clamped at 0 here); zeros: ``[B, 2 (+ H)]`` their all-zero vectors.
        s_att: ``[B, M, K]`` float64 sum of the valid non-zero rows as unit vectors.
        sums: ``[8, B, M]`` float64 row sums (entropy, max, non-zero, zero rows, prefix mass, own-object
            mass, share, count).
        n_query: ``[B, 1]`` (or ``[B]``) valid queries (any dtype); log_k: ``[B, 1]`` (or ``[B]``) ``log max(n_key, 2)``.
        jsd: per image ``(count, mean, variance)`` ``[B, M]`` of the JSD pairs, or None (no JSD: NaN);
            exact: ``[B]`` bool, every pair of that image used (needed with ``jsd``).
        heads_out: per-head outputs measured (else their ``output`` is NaN, ``output_zero`` 0).
        objects: object labels given (else the own-object fields are NaN).
        convention: ``"1-cos"`` or ``"(1-cos)/2"``; zero: ``"exclude"`` or ``"orthogonal"`` (check
            ``"raise"`` first, then pass ``"exclude"``: with no zero vectors they agree).

    Returns:
        ``[11, B, M]`` float64, the fields :data:`FINAL_FIELDS` in order, and ``[2, B, M]`` int64
        ``input_zero``, ``output_zero``.
    """
    lib = _lib()
    if convention not in _CONVENTIONS or zero not in _ZERO_RULES:
        raise ValueError(f"head_finalise: convention must be one of {tuple(_CONVENTIONS)} and zero one of "
                         f"{tuple(_ZERO_RULES)}, got {convention!r} and {zero!r}")  # fmt: skip
    if s_att.dim() != 3 or s2.dim() != 2:
        raise ValueError(f"head_finalise: s_att must be [B, M, K] and s2 [B, T], got {tuple(s_att.shape)} and {tuple(s2.shape)}")
    b, maps, k = s_att.shape
    heads, cols = maps - 1, s2.shape[1]
    if cols != (2 + heads if heads_out else cols) or cols < 2 or s2.shape[0] != b:
        raise ValueError(f"head_finalise: s2 must be [{b}, {2 + heads if heads_out else '2 (+ H)'}], got {tuple(s2.shape)}")
    s2, zeros = _cpu("s2", s2, torch.float64, (b, cols)), _cpu("zeros", zeros, torch.int64, (b, cols))
    s_att, sums = _cpu("s_att", s_att, torch.float64, (b, maps, k)), _cpu("sums", sums, torch.float64, (8, b, maps))
    n_query, log_k = _cpu("n_query", n_query, torch.float64, (b, 1)), _cpu("log_k", log_k, torch.float64, (b, 1))
    moments = (None, None, None)
    if jsd is not None:
        if exact is None:
            raise ValueError("head_finalise: the JSD's moments need the exact flags")
        moments = tuple(_cpu(name, t, torch.float64, (b, maps)) for name, t in zip(("count", "mean", "variance"), jsd))
        exact = _cpu("exact", exact, torch.uint8, (b,))
    out = torch.empty(len(FINAL_FIELDS), b, maps, dtype=torch.float64)
    out_zero = torch.empty(2, b, maps, dtype=torch.int64)
    args = array("q", (  # nl_head_finalise's arguments in one array (NULL: 0): one ctypes conversion, not 20
        s2.data_ptr(), zeros.data_ptr(), cols, s_att.data_ptr(), k, sums.data_ptr(), n_query.data_ptr(), log_k.data_ptr(),
        *[0 if t is None else t.data_ptr() for t in moments], exact.data_ptr() if jsd is not None else 0, b, heads,
        int(heads_out), int(objects), _CONVENTIONS[convention], _ZERO_RULES[zero], out.data_ptr(), out_zero.data_ptr(),
    ))  # fmt: skip
    rc = lib.nl_head_finalise_packed(args.buffer_info()[0])
    if rc != 0:
        raise ValueError(f"head_finalise: s2 has {cols} columns, the heads' outputs need {2 + heads}")
    return out, out_zero
