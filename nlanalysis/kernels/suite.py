"""The buffers of the cheap query-dependence suite's sums in the native row pass (``suite.c``).

A :class:`SuiteSums` holds the float64 sums that :func:`nlanalysis.kernels.row_stats` adds to when it is
given ``suite=sums.call_args(start)``, chunk after chunk of one site's queries (``start``: the chunk's
first query, for the query positions). :mod:`nlanalysis.measure.native_suite` turns them into columns.
"""
from __future__ import annotations

import ctypes
from array import array
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _check_cpu, _lib, _ptr

__all__ = ["SuiteSums", "log_positive"]


class _Args(ctypes.Structure):
    """``nl_suite`` of ``suite.c``."""

    _fields_ = [("unary", ctypes.c_void_p), ("unary_from_logits", ctypes.c_int64), ("qpos", ctypes.c_void_p), ("kpos", ctypes.c_void_p), ("reach_y", ctypes.c_double),
                ("reach_x", ctypes.c_double), ("sp0", ctypes.c_int64), ("eps", ctypes.c_double), ("p_k", ctypes.c_void_p),
                ("sums", ctypes.c_void_p), ("pair_s", ctypes.c_void_p), ("pair_sums", ctypes.c_void_p), ("keep", ctypes.c_void_p),
                ("prev", ctypes.c_void_p), ("keep_n", ctypes.c_int64), ("prev_maps", ctypes.c_int64), ("cross_from", ctypes.c_int64),
                ("cross", ctypes.c_void_p), ("keep_n2", ctypes.c_void_p), ("prev_n2", ctypes.c_void_p), ("pair_exp", ctypes.c_void_p)]  # fmt: skip


def _f64(name: str, t: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    """``t`` as a contiguous float64 CPU tensor of ``shape`` (ValueError otherwise)."""
    if t is None:
        return None
    if t.dtype == torch.float64 and t.is_contiguous() and not t.requires_grad and t.is_cpu and t.shape == shape:
        return t  # e.g. the cached cell centres, every layer: no detach, to and contiguous to dispatch
    if t.device.type != "cpu" or tuple(t.shape) != shape:
        raise ValueError(f"suite: {name} must be a CPU tensor {shape}, got {tuple(t.shape)} on {t.device}")
    return t.detach().to(torch.float64).contiguous()


class SuiteSums:
    """The suite's sums of one site (``M`` maps of ``K`` keys per image, the first ``H`` of them with logits).

    Args:
        batch, heads, maps, n_key: ``B``, ``H``, ``M`` (``H`` or ``H + 1`` with a head mean), ``K``.
        spatial_from: the first spatial key among the ``K`` (``Ks = K - spatial_from`` keys on the grid).
        unary: ``[B, H, K]`` the DNL unary term ``mu_q . k_j`` in the units of the logits (the kernel applies the
            scale), ``"logits"``: the kernel's first call computes it as the mean of the valid queries' logits rows
            (that call must hold every query of the site: :meth:`call_args` checks), or ``None``: no DNL split.
        query_pos, key_pos: ``[N_query, 2]`` / ``[Ks, 2]`` cell centres in pixels, or ``None``: no distances.
        reach: ``(y, x)`` the 3x3 neighbourhood's half-size in pixels (1.5 key cells).
        spatial: the NMI, distances and local masses (``False``: the DNL split only).
        eps: the NMI's eps.
        keep: ``[B, M, N_query, K]`` float32, filled with every valid query's rows (masked keys 0) for the next
            site's ``cross_site_cos`` (other rows are left as they were), or ``None``.
        keep_norms: ``[B, M, N_query]`` float64 (with ``keep``), filled with those rows' squared norms (float64 sums of
            the float32 squares; other entries left as they were), or ``None``: a zeroed tensor is made.
        previous: ``[B, M', N_query, K]`` float32 the previous site's ``keep`` (needs ``keep``): every map compared
            with the same map there when ``M' == M``, else the last (the head mean) with the last; or ``None``.
        previous_norms: ``[B, M', N_query]`` float64 the previous site's ``keep_norms`` (then its rows' norms are read,
            not formed again), or ``None``.

    Attributes (float64, zero until the passes add to them):
        p_k: ``[B, M, Ks]`` sum over counted queries of the NMI's renormalised rows ``(a + eps) / T``.
        sums: ``[5, B, M]`` sums of the row entropies of those (nats), ``sum_k a_k dist``, ``sum_k a_k near``,
            the valid keys near the query, and the queries counted.
        pair_s: ``[B, H, K]`` sum of the pairwise-only rows as unit vectors; pair_sums: ``[2, B, H]`` the sum of
            ``scale^2 sum_k (x_k - mean x)^2`` over valid keys (``x``: the pairwise logits), and the rows;
            pair_exp: ``[B, H]`` how many of those rows the kernel formed with an exp per key (the rest as a product of
            the row's softmax numerators and one vector per image and head, where that drops nothing above 1.9e-13 of
            the row's largest entry; ``suite_pair`` of ``suite.c``).
        cross: ``[2, B, M]`` with ``previous``: the sum of the cosines of a valid query's rows here and there
            (both non-zero), and their number.
    """

    def __init__(self, batch: int, heads: int, maps: int, n_key: int, *, spatial_from: int = 0, unary: Tensor | str | None = None,
                 query_pos: Tensor | None = None, key_pos: Tensor | None = None, reach: tuple[float, float] = (0.0, 0.0),
                 spatial: bool = True, eps: float = 1e-8, keep: Tensor | None = None, previous: Tensor | None = None,
                 keep_norms: Tensor | None = None, previous_norms: Tensor | None = None) -> None:  # fmt: skip
        if maps not in (heads, heads + 1) or not 0 <= spatial_from <= n_key:
            raise ValueError(f"suite: maps must be heads or heads + 1 and 0 <= spatial_from <= n_key, got {maps}, {heads}, {spatial_from}")
        if (query_pos is None) != (key_pos is None):
            raise ValueError("suite: give both query and key positions, or neither")
        n_sp = n_key - spatial_from
        self.batch, self.heads, self.maps, self.n_key, self.spatial_from = batch, heads, maps, n_key, spatial_from
        self.from_logits = isinstance(unary, str)
        if self.from_logits and unary != "logits":
            raise ValueError(f"suite: unary must be a tensor, 'logits' or None, got {unary!r}")
        self.unary = torch.zeros(batch, heads, n_key, dtype=torch.float64) if self.from_logits else _f64("unary", unary, (batch, heads, n_key))
        self.query_pos = _f64("query_pos", query_pos, (query_pos.shape[0], 2)) if query_pos is not None else None
        self.key_pos = _f64("key_pos", key_pos, (n_sp, 2))
        self.reach, self.eps, self.spatial = (float(reach[0]), float(reach[1])), float(eps), spatial
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.p_k, self.sums = (zeros(batch, maps, n_sp), zeros(5, batch, maps)) if spatial else (None, None)
        self.pair_s, self.pair_sums = (zeros(batch, heads, n_key), zeros(2, batch, heads)) if self.unary is not None else (None, None)
        self.pair_exp = zeros(batch, heads) if self.unary is not None else None
        self.keep, self.previous, self.cross = self._rows(keep, previous)
        self.keep_norms, self.previous_norms = self._norms(keep_norms, previous_norms)
        self._args: _Args | None = None

    def _norms(self, keep_norms: Tensor | None, previous_norms: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """The kept rows' squared norms (``keep_norms``, or a new zeroed tensor) and the previous site's, checked."""
        if self.keep is None:
            if keep_norms is not None or previous_norms is not None:
                raise ValueError("suite: keep_norms and previous_norms need keep")
            return None, None
        if keep_norms is None:
            keep_norms = torch.zeros(self.keep.shape[:3], dtype=torch.float64)
        if previous_norms is not None and self.previous is None:
            raise ValueError("suite: previous_norms needs previous")
        if previous_norms is not None and _overlap(keep_norms, previous_norms):
            raise ValueError("suite: keep_norms and previous_norms share memory (the kernel writes one while it reads the other)")
        for name, t, rows in (("keep_norms", keep_norms, self.keep), ("previous_norms", previous_norms, self.previous)):
            ok = t is None or (t.dtype == torch.float64 and t.device.type == "cpu" and t.is_contiguous() and t.shape == rows.shape[:3])
            if not ok:
                raise ValueError(f"suite: {name} must be a contiguous float64 CPU tensor {tuple(rows.shape[:3])}, got {t.dtype} {tuple(t.shape)}")
        return keep_norms, previous_norms

    def _rows(self, keep: Tensor | None, previous: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``keep`` and ``previous`` checked (float32 CPU, contiguous, the same queries and keys), and the cross sums."""
        if keep is None and previous is None:
            return None, None, None
        shape = (self.batch, self.maps, keep.shape[2] if keep is not None else -1, self.n_key)
        for name, t, maps in (("keep", keep, self.maps), ("previous", previous, None)):
            if t is None and name == "previous":
                continue
            ok = t is not None and t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() and t.dim() == 4
            if not ok or (t.shape[0], t.shape[2], t.shape[3]) != (shape[0], shape[2], shape[3]) or t.shape[1] not in (maps or t.shape[1], self.maps):
                raise ValueError(f"suite: {name} must be a contiguous float32 CPU tensor {shape}, got "
                                 f"{None if t is None else (t.dtype, tuple(t.shape))}")  # fmt: skip
        if keep is not None and previous is not None and _overlap(keep, previous):
            raise ValueError("suite: keep and previous share memory (the kernel writes one while it reads the other)")
        return keep, previous, torch.zeros(2, self.batch, self.maps, dtype=torch.float64)

    def call_args(self, start: int, stop: int) -> int:
        """The address of the kernel's ``nl_suite`` for queries ``start:stop`` of the site (valid until the next call)."""
        if self.from_logits and (start != 0 or self._args is not None):
            raise ValueError(f"suite: the unary term from the logits needs every query in one call, got a call for {start}:{stop}")
        qpos = None
        if self.query_pos is not None:
            if not 0 <= start <= stop <= self.query_pos.shape[0]:
                raise ValueError(f"suite: queries {start}:{stop} outside the {self.query_pos.shape[0]} positions")
            qpos = self.query_pos.data_ptr() + start * 2 * 8
        ptr = lambda t: t.data_ptr() if t is not None else None  # noqa: E731
        keep, n = None, 0
        if self.keep is not None:
            n = self.keep.shape[2]
            if not 0 <= start <= stop <= n:
                raise ValueError(f"suite: queries {start}:{stop} outside the {n} kept rows")
            keep = self.keep.data_ptr() + start * self.n_key * 4
        prev, prev_maps = None, 0
        if self.previous is not None:
            prev, prev_maps = self.previous.data_ptr() + start * self.n_key * 4, self.previous.shape[1]
        at = lambda t: t.data_ptr() + start * 8 if t is not None else None  # noqa: E731  (query start of [B, M, N_query] float64)
        self._args = _Args(ptr(self.unary), int(self.from_logits), qpos, ptr(self.key_pos), self.reach[0], self.reach[1], self.spatial_from,
                           self.eps, ptr(self.p_k), ptr(self.sums), ptr(self.pair_s), ptr(self.pair_sums), keep, prev, n, prev_maps,
                           0 if prev_maps == self.maps else self.maps - 1, ptr(self.cross), at(self.keep_norms),
                           at(self.previous_norms), ptr(self.pair_exp))  # fmt: skip
        return ctypes.addressof(self._args)

    def columns(self, key_mask: Tensor | None, scale: float, rows: int, at: Sequence[int]) -> Tensor:
        """The suite's columns from these sums in one native call (``nl_suite_columns`` of ``finalise.c``), as
        :func:`nlanalysis.measure.native_suite.suite_columns` defines them.

        Args:
            key_mask: ``[B, K]`` the valid keys (any dtype, 1/0), or ``None`` (all).
            scale: the logits' softmax scale.
            rows, at: the output's rows, and the row of each of ``qk_nmi``, ``att_distance_px``, ``att_local``,
                ``att_local_uniform``, ``unary_var_share``, ``att_pairwise_only`` and ``cross_site_cos`` (written
                where the sums compared with a previous site; ``-1``: not wanted).

        Returns:
            ``[rows, B, M]`` float64: NaN but at those rows (and NaN there where a count is zero).
        """
        b, m = self.batch, self.maps
        if len(at) != 7 or not all(-1 <= i < rows for i in at) or min(at[:6]) < 0:
            raise ValueError(f"suite: at must give 7 rows in [0, {rows}) (the last may be -1), got {tuple(at)}")
        km = None
        if key_mask is not None:
            if key_mask.device.type != "cpu" or key_mask.numel() != b * self.n_key:
                raise ValueError(f"suite: key_mask must be a CPU tensor of [{b}, {self.n_key}], got {tuple(key_mask.shape)}")
            km = key_mask.reshape(b, self.n_key)
            km = km if km.dtype == torch.float64 and km.is_contiguous() else km.to(torch.float64).contiguous()
        out = torch.empty(rows, b, m, dtype=torch.float64)
        ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
        cross = self.cross if self.previous is not None and at[6] >= 0 else None
        cross_from = 0 if self.previous is None or self.previous.shape[1] == m else m - 1
        args = array("q", (  # one ctypes argument, not 24
            ptr(self.sums), ptr(self.p_k), int(self.query_pos is not None), ptr(km), ptr(self.unary), ptr(self.pair_sums),
            ptr(self.pair_s), ptr(cross), cross_from, b, self.heads, m, self.n_key, self.spatial_from, out.data_ptr(), rows, *at,
        ))  # fmt: skip
        _lib().nl_suite_columns(args.buffer_info()[0], float(scale))
        return out


@torch.no_grad()
def log_positive(x: Tensor) -> Tensor:
    """The suite's float32 ``log(max(x, 1e-37))`` (``log_positive`` of ``row_stats.c``, a polynomial, no libm call) of
    every element of ``x`` (float32 CPU), run under the kernels' floating-point mode: for tests."""
    _check_cpu("x", x)
    x = x.contiguous()
    out = torch.empty_like(x)
    _lib().nl_log_positive(_ptr(x), x.numel(), _ptr(out))
    return out


def _overlap(a: Tensor, b: Tensor) -> bool:
    """Whether two contiguous CPU tensors' bytes overlap."""
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()
