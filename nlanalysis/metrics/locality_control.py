"""The locality control of the object-context lifts: maps by spatial distance alone, matched in attention distance.

A map that weighs keys by their distance from the query alone reads an own-object lift above 1 and a same-category
lift below 1 (a query's neighbours lie mostly on its own object, other objects farther off;
``reports/controls/PLAN.md``, session 15): a lift read alone does not tell object-specific context from locality.
The control gives each measured map a counterpart that is local and nothing else,

    ``p(k | q) = softmax_k(-||pos_q - pos_k||^2 / (2 sigma^2))`` over the valid keys,

with ``sigma`` (input pixels) set so that its mean attention distance
(:func:`~nlanalysis.metrics.query_dependence.attention_distance`, the suite's ``att_distance_px``) equals the
map's, and the same object-context statistics on it (:func:`~nlanalysis.metrics.object_context.object_context`,
the same query and key labels). A trained lift above its control's says more than locality explains.

The valid queries and the valid keys must each be the product of some rows and some columns of their grid (a
rectangle, as resizing and padding leave): the control's maps are then separable,
``p(k | q) = g_y(k_y | q_y) g_x(k_x | q_x)``, their mean distance a sum over the ``(|dy|, |dx|)`` offsets (``O(H W)``,
not ``O(N^2)``), and each query's mass on each label's keys two small matrix products per label (no ``N x N`` map
is formed). A map as spread as the uniform map or more (its distance at or beyond what the widest Gaussian of
the bracket reaches, within ~1e-5 of the uniform map's) gets the limit ``sigma = inf``, the uniform map (lifts 1,
or NaN where a lift is undefined); NaN where the target is not finite or below the nearest key's distance.

Limits: the control is matched on the mean distance alone, and a Gaussian's tail falls as ``exp(-d^2 / 2 sigma^2)``,
far faster than a trained softmax map's; with a small ``sigma`` and far objects its lifts on them (the
same-category lift) can be ~0, and a ratio trained / control then says nothing (the controls report leaves
ratios over controls below :data:`READABLE` out, and counts them). The control averages over every valid
query, where the suite leaves out queries whose row is all zero (none in the kept result sets).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import brentq
from torch import Tensor

from .object_context import LabelMass, context_from_mass

__all__ = ["LOCALITY_COLUMNS", "LOCALITY_LIFTS", "READABLE", "LocalityGrid", "locality_control", "locality_controls"]

#: the object-context lifts the control reads
LOCALITY_LIFTS = ("own_object_lift", "own_object_lift_objects", "same_category_lift")
#: its ``metrics.csv`` columns (:mod:`nlanalysis.schema`)
LOCALITY_COLUMNS = ("ctrl_local_sigma_px", *(f"ctrl_local_{name}" for name in LOCALITY_LIFTS))
#: the smallest control lift a ratio trained / control is read over (fixed in reports/controls/PLAN.md, session 16, before
#: any set with such controls was read): below it the control's Gaussian tail, not its locality, sets the ratio
READABLE = 1e-3


def _axis(valid: Tensor | None, grid: tuple[int, int], what: str) -> tuple[Tensor, Tensor]:
    """The valid rows and columns of ``grid`` (long indices); ValueError unless the valid cells are exactly their product."""
    if valid is None:
        return torch.arange(grid[0]), torch.arange(grid[1])
    valid = valid.to(torch.bool).cpu()
    if tuple(valid.shape) != tuple(grid):
        raise ValueError(f"the valid {what} must be a {tuple(grid)} mask, got {tuple(valid.shape)}")
    rows, cols = valid.any(1), valid.any(0)
    if not torch.equal(valid, rows[:, None] & cols[None, :]) or not bool(rows.any()):
        raise ValueError(f"the valid {what} are not a rectangle of rows and columns: the locality control needs one")
    return rows.nonzero()[:, 0], cols.nonzero()[:, 0]


@dataclass(frozen=True)
class LocalityGrid:
    """A site's valid queries and keys as rows x columns of their grids, with cell centres in input pixels.

    Build it with :meth:`of`; ``cells``: the query then the key cell ``(h, w)`` in pixels; ``q_rows``/``q_cols``/``k_rows``/
    ``k_cols`` are grid indices, ``qy``/``qx``/``ky``/``kx`` their centres (float64)."""

    query_grid: tuple[int, int]
    key_grid: tuple[int, int]
    cells: tuple[float, ...]
    q_rows: Tensor
    q_cols: Tensor
    k_rows: Tensor
    k_cols: Tensor
    qy: Tensor
    qx: Tensor
    ky: Tensor
    kx: Tensor

    @classmethod
    def of(cls, query_grid: tuple[int, int], query_cell: tuple[float, float], key_grid: tuple[int, int],
           key_cell: tuple[float, float], query_valid: Tensor | None = None, key_valid: Tensor | None = None) -> LocalityGrid:  # fmt: skip
        """From the grids (cell ``i`` of an axis centred at ``(i + 0.5) * cell``, as the suite places them) and the
        ``[H, W]`` valid masks (``None``: all valid); ValueError where a mask is not a rectangle."""
        qr, qc = _axis(query_valid, query_grid, "queries")
        kr, kc = _axis(key_valid, key_grid, "keys")

        def centres(index: Tensor, cell: float) -> Tensor:
            return (index.to(torch.float64) + 0.5) * float(cell)

        return cls(tuple(query_grid), tuple(key_grid), (*map(float, query_cell), *map(float, key_cell)), qr, qc, kr, kc, centres(qr, query_cell[0]), centres(qc, query_cell[1]),
                   centres(kr, key_cell[0]), centres(kc, key_cell[1]))  # fmt: skip

    def weights(self, sigma: float) -> tuple[Tensor, Tensor]:
        """``g_y`` ``[valid query rows, valid key rows]`` and ``g_x`` likewise: each row a softmax over the valid keys' axis."""
        return (torch.softmax(-((self.qy[:, None] - self.ky[None]) ** 2) / (2 * sigma**2), -1),
                torch.softmax(-((self.qx[:, None] - self.kx[None]) ** 2) / (2 * sigma**2), -1))  # fmt: skip

    def mean_distance(self, sigma: float) -> float:
        """The control maps' mean attention distance in pixels (every valid query, rows over the valid keys):
        ``sum_{dy, dx} A(dy) B(dx) hypot(dy, dx) / n_queries``, ``A(dy)`` the summed weight of row offsets ``|dy|``."""
        gy, gx = self.weights(sigma)
        return self._distance(gy, gx)

    def uniform_distance(self) -> float:
        """The mean attention distance of the uniform map over the valid keys (the limit ``sigma -> inf``)."""
        gy = torch.full((len(self.qy), len(self.ky)), 1.0 / len(self.ky), dtype=torch.float64)
        gx = torch.full((len(self.qx), len(self.kx)), 1.0 / len(self.kx), dtype=torch.float64)
        return self._distance(gy, gx)

    @functools.cached_property
    def _offsets(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per axis the distinct ``|q - k|`` offsets and each (query, key) pair's among them; ``hypot`` of every
        (row offset, column offset) pair (the same for every ``sigma``)."""
        (uy, iy), (ux, ix) = (torch.unique((q[:, None] - k[None]).abs().flatten(), return_inverse=True)
                              for q, k in ((self.qy, self.ky), (self.qx, self.kx)))  # fmt: skip
        return iy, ix, len(uy), torch.hypot(uy[:, None], ux[None, :])

    def _distance(self, gy: Tensor, gx: Tensor) -> float:
        iy, ix, ny, dist = self._offsets
        a = torch.zeros(ny, dtype=torch.float64).index_add_(0, iy, gy.flatten())
        b = torch.zeros(dist.shape[1], dtype=torch.float64).index_add_(0, ix, gx.flatten())
        return float(a @ dist @ b) / (len(self.qy) * len(self.qx))

    def match_sigma(self, target: float) -> float:
        """The ``sigma`` (pixels) whose maps' mean attention distance is ``target`` (a root in ``log sigma``); ``inf`` (the
        uniform map) where ``target`` is at or beyond what the widest Gaussian of the bracket reaches (within ~1e-5 of the
        uniform map's distance); NaN where ``target`` is not finite or below the nearest key's distance."""
        if not math.isfinite(target):
            return math.nan
        centres = torch.cat([self.qy, self.qx, self.ky, self.kx])
        span = float(centres.max() - centres.min()) + max(self.cells)
        lo, hi = math.log(min(self.cells) / 100), math.log(span * 100)  # ~nearest key only .. ~uniform
        if target >= self.mean_distance(math.exp(hi)):
            return math.inf
        if target <= self.mean_distance(math.exp(lo)):
            return math.nan
        # the distance rises with sigma (a Gaussian family in d^2): one root in the bracket, found by Brent's method
        return math.exp(brentq(lambda u: self.mean_distance(math.exp(u)) - target, lo, hi, xtol=1e-12, rtol=1e-14))

    def full_weights(self, sigma: float) -> tuple[Tensor, Tensor]:
        """:meth:`weights` on the full grids, ``[H_q, H_k]`` and ``[W_q, W_k]``: 0 off the valid rows and columns
        (``sigma = inf``: the uniform map over the valid keys)."""
        gy, gx = self.weights(sigma)
        (hq, wq), (hk, wk) = self.query_grid, self.key_grid
        fy = torch.zeros(hq, hk, dtype=torch.float64)
        fy[self.q_rows[:, None], self.k_rows[None]] = gy
        fx = torch.zeros(wq, wk, dtype=torch.float64)
        fx[self.q_cols[:, None], self.k_cols[None]] = gx
        return fy, fx

    def label_mass(self, sigma: float, key_onehot: Tensor) -> Tensor:
        """Each query's mass on each label's keys, ``[N_query, L]``: the control map (valid queries' rows
        ``g_y(k_y | q_y) g_x(k_x | q_x)`` on the valid keys, invalid queries' rows 0) times ``key_onehot`` ``[N_key, L]``,
        by separability: ``g_y M_l g_x^T`` per label ``l`` (``M_l`` its keys on the key grid), no ``N x N`` map formed."""
        fy, fx = self.full_weights(sigma)
        (hq, wq), (hk, wk) = self.query_grid, self.key_grid
        m = key_onehot.reshape(hk, wk, -1)
        return torch.einsum("yk,kxl->yxl", fy, torch.einsum("xw,kwl->kxl", fx, m)).reshape(hq * wq, -1)


def locality_controls(targets_px: Sequence[float], grid: LocalityGrid, query_labels: Tensor, key_labels: Tensor,
                      categories: Tensor | None, n_labels: int) -> list[dict[str, float]]:  # fmt: skip
    """The control of each of several maps on one grid with the same labels (a ViT layer's heads and head mean, an NL
    block's one map): per target ``{"ctrl_local_sigma_px": sigma, "ctrl_local_<lift>": ...}`` (:data:`LOCALITY_COLUMNS`),
    NaN where the target (the map's ``att_distance_px``) is not finite or below the nearest key's distance; the
    object context of every reachable control in one batched pass.

    Args:
        query_labels, key_labels: ``[N_query]`` / ``[N_key]`` long, as :func:`~nlanalysis.metrics.object_context.object_context`
            takes them for these maps (``-1``: not counted / not a clean key).
        categories: ``[L]`` long category of each label (-1: none) or ``None``; ``n_labels``: ``L``.
    """
    sigmas = [grid.match_sigma(float(t)) for t in targets_px]
    out = [{"ctrl_local_sigma_px": s, **{f"ctrl_local_{name}": math.nan for name in LOCALITY_LIFTS}} for s in sigmas]
    reached = [i for i, s in enumerate(sigmas) if not math.isnan(s)]
    if not reached:
        return out
    sums = LabelMass(query_labels[None], key_labels[None], n_labels)
    onehot = sums.prepare((1, len(reached)), key_labels.shape[0], torch.device("cpu"))[0]
    sums.add(0, torch.stack([grid.label_mass(sigmas[i], onehot) for i in reached])[None])  # [1, maps, N_query, L]
    found = context_from_mass(*sums.result(), None if categories is None else categories[None])
    for j, i in enumerate(reached):
        out[i].update({f"ctrl_local_{name}": float(found[name][0, j]) for name in LOCALITY_LIFTS})
    return out


def locality_control(target_px: float, grid: LocalityGrid, query_labels: Tensor, key_labels: Tensor,
                     categories: Tensor | None, n_labels: int) -> dict[str, float]:  # fmt: skip
    """:func:`locality_controls` of one map."""
    return locality_controls([target_px], grid, query_labels, key_labels, categories, n_labels)[0]
