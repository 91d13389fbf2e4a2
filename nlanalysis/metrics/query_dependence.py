"""What kind of query dependence: statistics of attention maps streamed over chunks of queries.

The cosine distance (:mod:`.cosine`) says how much the maps of different queries differ; the
statistics here say how. All take a *row source*: the maps ``[*batch, N_query, N_key]`` of one
site, given as chunks of queries ``(start, rows)`` with ``rows`` ``[*batch, n, N_key]`` (a callable
returning a fresh iterable of chunks, a one-shot iterable, or a full tensor, cut by
:func:`row_chunks`), so no ``N x N`` map is ever formed. Masks: ``key_mask`` ``[*batch, N_key]``
and ``query_mask`` ``[*batch, N_query]``, bool, ``True`` = use; masked entries may hold anything.
Results are float64 ``[*batch]``, one value per image (and map). All sums are in float64.

* :func:`signed_map_stats`: ``att_abs`` and ``att_norm_weighted`` for signed (dot-product) maps.
* :func:`query_key_nmi`: normalised query-key mutual information (Park et al., ICLR 2023).
* :func:`attention_distance`: mean attention distance in pixels and the 3x3 local mass.
* :func:`spatial_stats`: the NMI, the distance and the local masses in one pass (the suite's cheap pass).
* :func:`cross_site_similarity`: mean cosine of a query's maps at two sites (DeepViT).

The shared-map decomposition and the DNL split are in :mod:`.decomposition`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from .cosine import Convention, CosineAccumulator, ZeroRule, in_convention

__all__ = [
    "NMISums",
    "DistanceSums",
    "RowSource",
    "SignedSums",
    "attention_distance",
    "cross_site_similarity",
    "normalised_mi",
    "query_key_nmi",
    "row_chunks",
    "signed_map_stats",
    "spatial_stats",
]

Chunks = Iterable[tuple[int, Tensor]]
RowSource = Tensor | Callable[[], Chunks] | Chunks
DEFAULT_CHUNK = 256  # queries per chunk when a full tensor is given


def row_chunks(maps: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Callable[[], Iterator[tuple[int, Tensor]]]:
    """A re-readable row source over a full ``[*batch, N_query, N_key]`` tensor, ``chunk_size`` queries a chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def chunks() -> Iterator[tuple[int, Tensor]]:
        for start in range(0, maps.shape[-2], chunk_size):
            yield start, maps[..., start : start + chunk_size, :]

    return chunks


def reopen(source: RowSource) -> Callable[[], Chunks]:
    """``source`` as a callable giving a fresh pass; raises for a one-shot iterator (several passes needed)."""
    if isinstance(source, Tensor):
        return row_chunks(source)
    if callable(source):
        return source
    if iter(source) is source:
        raise TypeError("this statistic reads the maps several times: pass a tensor or a callable returning chunks")
    return lambda: source


class Stream:
    """One pass over a row source: float64 chunks ``[B, n, N_key]`` (batch flattened) and their query mask.

    ``batch`` (the batch shape) is read from the first chunk on construction; ``key_mask`` is bool
    ``[B, N_key]``. Iterating yields ``(start, x, qm)``; at the end the chunks must have covered
    exactly ``n_query`` queries.
    """

    def __init__(self, source: RowSource, n_query: int, n_key: int, key_mask: Tensor | None = None,
                 query_mask: Tensor | None = None) -> None:  # fmt: skip
        it = iter(reopen(source)() if isinstance(source, Tensor) or callable(source) else source)
        try:
            first = next(it)
        except StopIteration:
            raise ValueError("the row source yielded no chunk") from None
        self._chunks = itertools.chain([first], it)
        rows = first[1]
        self.batch = tuple(rows.shape[:-2])
        self.n_query, self.n_key = int(n_query), int(n_key)
        b, device = math.prod(self.batch), rows.device
        self.key_mask = as_mask(key_mask, (*self.batch, self.n_key), "key_mask", device)
        self.query_mask = as_mask(query_mask, (*self.batch, self.n_query), "query_mask", device)
        self.key_mask, self.query_mask = self.key_mask.reshape(b, -1), self.query_mask.reshape(b, -1)

    @classmethod
    def shaped(cls, batch: tuple[int, ...], n_query: int, n_key: int, device: torch.device, key_mask: Tensor | None = None,
               query_mask: Tensor | None = None) -> Stream:  # fmt: skip
        """A stream of known shape without a source: its masks and :meth:`view` for a pass driven elsewhere
        (chunks pushed to several accumulators at once). Iterating it raises."""
        st = cls.__new__(cls)
        st._chunks = iter(())
        st.batch, st.n_query, st.n_key = tuple(batch), int(n_query), int(n_key)
        b = math.prod(st.batch)
        st.key_mask = as_mask(key_mask, (*st.batch, st.n_key), "key_mask", device).reshape(b, -1)
        st.query_mask = as_mask(query_mask, (*st.batch, st.n_query), "query_mask", device).reshape(b, -1)
        return st

    def view(self, start: int, rows: Tensor) -> tuple[Tensor, Tensor]:
        """A chunk ``[*batch, n, N_key]`` at ``start`` as float64 ``[B, n, N_key]`` and its query mask ``[B, n]``
        (ValueError if it does not fit the maps)."""
        n = rows.shape[-2]
        if tuple(rows.shape) != (*self.batch, n, self.n_key) or start < 0 or start + n > self.n_query:
            raise ValueError(f"chunk at {start} of shape {tuple(rows.shape)} does not fit maps "
                             f"{(*self.batch, self.n_query, self.n_key)}")  # fmt: skip
        return rows.detach().to(torch.float64).reshape(-1, n, self.n_key), self.query_mask[:, start : start + n]

    def __iter__(self) -> Iterator[tuple[int, Tensor, Tensor]]:
        seen = 0
        for start, rows in self._chunks:
            x, qm = self.view(start, rows)
            seen += x.shape[1]
            yield start, x, qm
        if seen != self.n_query:
            raise ValueError(f"the chunks held {seen} queries, expected {self.n_query}")

    def out(self, t: Tensor) -> Tensor:
        """``[B, ...]`` -> ``[*batch, ...]``."""
        return t.reshape((*self.batch, *t.shape[1:]))

    def cosine(self) -> CosineAccumulator:
        """A cosine-distance accumulator over rows of this stream's keys, one statistic per batch element."""
        return CosineAccumulator(self.n_key, (self.key_mask.shape[0],), device=self.key_mask.device)


def as_mask(mask: Tensor | None, shape: tuple[int, ...], name: str, device: torch.device) -> Tensor:
    """``mask`` as bool on ``device`` (all True if None), checked to have ``shape``."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    return mask.to(device=device, dtype=torch.bool)


def valid(x: Tensor, qm: Tensor, km: Tensor) -> Tensor:
    """``x`` ``[B, n, K]`` with masked queries and keys set to 0 (``x`` itself when nothing is masked)."""
    if bool(qm.all()) and bool(km.all()):
        return x
    return torch.where(qm[:, :, None] & km[:, None, :], x, torch.zeros((), dtype=x.dtype, device=x.device))


def signed_map_stats(rows: RowSource, n_query: int, n_key: int, *, key_mask: Tensor | None = None,
                     query_mask: Tensor | None = None, include_self: bool = True, convention: Convention = "1-cos",
                     zero: ZeroRule = "exclude") -> tuple[Tensor, Tensor]:  # fmt: skip
    """``att_abs`` and ``att_norm_weighted`` of signed maps (dot-product NL rows can be negative).

    ``att_abs`` is the mean pairwise cosine distance of the rows' absolute values (``convention`` and
    ``zero``: as :meth:`~.cosine.CosineAccumulator.result`, the run's ``att``'s; ``att_norm_weighted`` is in
    the same ``convention``: halved under ``"(1-cos)/2"``; zero rows weigh 0 in it whatever ``zero`` says). ``att_norm_weighted`` is ``1 - `` the mean cosine similarity over ordered pairs
    ``i != j`` weighted by ``||r_i|| ||r_j||``, exact in linear time:
    ``sum_{i!=j} r_i.r_j / sum_{i!=j} ||r_i|| ||r_j|| = (||sum r||^2 - sum ||r||^2) / ((sum ||r||)^2 - sum ||r||^2)``.
    A map and its sign flip give 2 in the weighted form (pairs ``i != j`` only) and 1 in the paper's plain ``att``
    (whose mean also pairs each row with itself); a map and a multiple of itself give 0 in both; ``att_abs`` reads both
    as 0. NaN with fewer than two non-zero rows.

    Returns:
        ``(att_abs, att_norm_weighted)``, each float64 ``[*batch]``.
    """
    st = Stream(rows, n_query, n_key, key_mask, query_mask)
    acc = SignedSums(st)
    for _, x, qm in st:
        acc.update(x, qm)
    return acc.result(include_self, convention, zero)


class SignedSums:
    """The sums of :func:`signed_map_stats` over the chunks of a :class:`Stream` (``update`` with its views)."""

    def __init__(self, st: Stream) -> None:
        self.st, self.acc = st, st.cosine()
        b, device = st.key_mask.shape[0], st.key_mask.device
        self.s = torch.zeros(b, st.n_key, dtype=torch.float64, device=device)
        self.sum_sq, self.sum_norm = torch.zeros(b, dtype=torch.float64, device=device), torch.zeros(b, dtype=torch.float64, device=device)

    def update(self, x: Tensor, qm: Tensor) -> None:
        x = valid(x, qm, self.st.key_mask)
        self.acc.update(x.abs(), qm)
        norms = torch.linalg.vector_norm(x, dim=-1)  # [B, n]; 0 for masked queries
        self.s += x.sum(dim=1)
        self.sum_sq += (norms * norms).sum(dim=1)
        self.sum_norm += norms.sum(dim=1)

    def result(self, include_self: bool = True, convention: Convention = "1-cos", zero: ZeroRule = "exclude") -> tuple[Tensor, Tensor]:
        """``(att_abs, att_norm_weighted)``, each ``[*batch]``, in ``convention`` (:func:`signed_map_stats`)."""
        att_abs = self.acc.result(include_self=include_self, convention=convention, zero=zero)  # checks both rules
        denom = self.sum_norm * self.sum_norm - self.sum_sq
        mean_cos = ((self.s * self.s).sum(dim=-1) - self.sum_sq) / denom
        weighted = in_convention((1.0 - mean_cos).clamp(0.0, 2.0), convention)
        weighted = torch.where(denom > 0, weighted, torch.full_like(denom, math.nan))
        return self.st.out(att_abs), self.st.out(weighted)


def query_key_nmi(rows: RowSource, n_query: int, n_key: int, *, key_mask: Tensor | None = None,
                  query_mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:  # fmt: skip
    """Normalised mutual information between query and key of attention maps (Park et al., ICLR 2023).

    As ``calculate_nmi`` in their notebook (naver-ai/cl-vs-mim, ``self_attention_analysis.ipynb``):
    each row gets ``eps`` added to every (valid) key and is renormalised to sum 1 (they use 1e-8,
    after dropping the class token, which is the caller's job here); the prior over queries is
    uniform, ``p(q) = 1/Q``; ``p(k) = mean_q A[q, k]``;
    ``I = sum_{q,k} p(q) A[q,k] log(A[q,k] / p(k)) = H(p(k)) - mean_q H(A_q)``;
    ``NMI = I / sqrt(H(q) H(k))`` with ``H(q) = log Q``. Natural logs; Q and the keys are the
    valid ones. 0 when every query has the same map; 1 for a permutation matrix (``eps = 0``).

    Returns:
        float64 ``[*batch]``; NaN with fewer than two queries or if ``H(k) = 0``.
    """
    st = Stream(rows, n_query, n_key, key_mask, query_mask)
    acc = NMISums(st, eps)
    for _, x, qm in st:
        acc.update(x, qm)
    return st.out(acc.result())


def attention_distance(rows: RowSource, query_pos: Tensor, key_pos: Tensor, key_cell: float | tuple[float, float], *,
                       key_mask: Tensor | None = None, query_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Mean attention distance in input pixels and the local mass on the 3x3 key cells around each query.

    Distance (Dosovitskiy et al. 2020, Fig. 7; Raghu et al. 2021): ``sum_k A[q,k] ||pos_q - pos_k||``
    with the weights as given (rows of a softmax sum to 1), averaged over valid queries. Local
    mass: ``sum_k A[q,k]`` over keys whose centre lies within 1.5 key cells of the query's centre
    along both axes (the 3x3 neighbourhood on the key grid, clipped at the border), averaged
    likewise. Any grid shape; query and key grids may differ.

    Args:
        query_pos: ``[N_query, 2]`` query cell centres in input pixels (cell centre x stride), (y, x).
        key_pos: ``[N_key, 2]`` key cell centres likewise.
        key_cell: The key grid's cell size in pixels, one number or (height, width).

    Returns:
        ``(mean_distance_px, local_mass)``, each float64 ``[*batch]``.
    """
    st = Stream(rows, query_pos.shape[0], key_pos.shape[0], key_mask, query_mask)
    acc = DistanceSums(st, query_pos, key_pos, key_cell)
    for start, x, qm in st:
        acc.update(start, x, qm)
    dist, local, _ = acc.result()
    return dist, local


def spatial_stats(rows: RowSource, n_query: int, n_key: int, where: tuple[Tensor, Tensor, float | tuple[float, float]] | None,
                  *, key_mask: Tensor | None = None, query_mask: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
    """:func:`query_key_nmi` and :func:`attention_distance` (with the local mass of a uniform map) in
    one pass over the maps: the same values as the separate calls.

    Args:
        where: ``(query_pos, key_pos, key_cell)`` of :func:`attention_distance`, or ``None`` (positions
            unknown: NMI only).

    Returns:
        ``{"qk_nmi": ...}`` and, with ``where``, ``att_distance_px``, ``att_local`` and ``att_local_uniform``
        (the local mass of the uniform map over the valid keys), each float64 ``[*batch]``.
    """
    st = Stream(rows, n_query, n_key, key_mask, query_mask)
    nmi = NMISums(st)
    dist = DistanceSums(st, *where) if where is not None else None
    for start, x, qm in st:
        nmi.update(x, qm)
        if dist is not None:
            dist.update(start, x, qm)
    out = {"qk_nmi": st.out(nmi.result())}
    if dist is not None:
        out["att_distance_px"], out["att_local"], out["att_local_uniform"] = dist.result()
    return out


class NMISums:
    """The sums of :func:`query_key_nmi` over the chunks of a :class:`Stream`; the queries counted are those of the
    ``qm`` given to :meth:`update` (the stream's view's, or fewer: e.g. without the rows that are all zero)."""

    def __init__(self, st: Stream, eps: float = 1e-8) -> None:
        self.st, self.eps = st, eps
        b, device = st.key_mask.shape[0], st.key_mask.device
        self.p_k = torch.zeros(b, st.n_key, dtype=torch.float64, device=device)
        self.row_entropy = torch.zeros(b, dtype=torch.float64, device=device)
        self.n_q = torch.zeros(b, dtype=torch.float64, device=device)

    def update(self, x: Tensor, qm: Tensor) -> None:
        x = valid(x + self.eps, qm, self.st.key_mask)
        total = x.sum(dim=-1, keepdim=True)
        a = x / torch.where(total == 0, torch.ones_like(total), total)
        self.p_k += a.sum(dim=1)
        self.row_entropy -= torch.special.xlogy(a, a).sum(dim=(1, 2))
        self.n_q += qm.sum(dim=1)

    def result(self) -> Tensor:
        """NMI ``[B]`` (batch flattened)."""
        n_q = self.n_q
        p_k = self.p_k / n_q[:, None]
        h_k = -torch.special.xlogy(p_k, p_k).sum(dim=-1)
        return normalised_mi(h_k, self.row_entropy / n_q, n_q)


def normalised_mi(h_k: Tensor, mean_row_entropy: Tensor, n_q: Tensor) -> Tensor:
    """``I / sqrt(log(n_q) H(k))`` with ``I = H(k) - mean row entropy`` (broadcasting): NaN where it is undefined, one
    query (``log n_q = 0``) or one key (``H(k) = 0``), not the ``+-inf`` of ``x / 0`` (``x / -0.0`` where ``H(k)``
    rounds below 0)."""
    mutual = (h_k - mean_row_entropy).clamp_min(0.0)  # I >= 0 exactly; the clamp removes round-off
    defined = (n_q >= 2) & (h_k > 0)
    return torch.where(defined, mutual / torch.sqrt(torch.log(n_q) * h_k).clamp_min(1e-300), math.nan)


class DistanceSums:
    """The sums of :func:`attention_distance` over the chunks of a :class:`Stream`, and the local mass
    of the uniform map over the valid keys (no maps needed: ``near @ key_mask / n_key`` per query); the
    queries counted are those of the ``qm`` given to :meth:`update`, as :class:`NMISums`."""

    def __init__(self, st: Stream, query_pos: Tensor, key_pos: Tensor, key_cell: float | tuple[float, float]) -> None:
        self.st = st
        device = st.key_mask.device
        self.qp, self.kp = query_pos.to(device, torch.float64), key_pos.to(device, torch.float64)
        self.reach = (1.5 * torch.as_tensor(key_cell, dtype=torch.float64).expand(2)).tolist()
        self.dist = torch.zeros(st.key_mask.shape[0], dtype=torch.float64, device=device)
        self.local, self.uniform, self.n_q = torch.zeros_like(self.dist), torch.zeros_like(self.dist), torch.zeros_like(self.dist)
        self.km = st.key_mask.to(torch.float64)

    def update(self, start: int, x: Tensor, qm: Tensor) -> None:
        chunk = self.qp[start : start + x.shape[1]]
        dy, dx = chunk[:, None, 0] - self.kp[None, :, 0], chunk[:, None, 1] - self.kp[None, :, 1]  # [n, K]
        near = ((dy.abs() <= self.reach[0]) & (dx.abs() <= self.reach[1])).to(torch.float64)
        x = valid(x, qm, self.st.key_mask)
        self.dist += torch.einsum("bnk,nk->b", x, torch.hypot(dy, dx))
        self.local += torch.einsum("bnk,nk->b", x, near)
        self.uniform += torch.einsum("bn,nk,bk->b", qm.to(torch.float64), near, self.km)
        self.n_q += qm.sum(dim=1)

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(distance, local mass, uniform local mass)``, each ``[*batch]``."""
        n_q = self.n_q
        n_k = self.km.sum(dim=-1)
        return self.st.out(self.dist / n_q), self.st.out(self.local / n_q), self.st.out(self.uniform / n_k / n_q)


def cross_site_similarity(rows_a: RowSource, rows_b: RowSource, n_query: int, n_key: int, *,
                          key_mask: Tensor | None = None, query_mask: Tensor | None = None) -> Tensor:  # fmt: skip
    """Mean over queries of the cosine similarity of a query's maps at two sites (DeepViT, arXiv 2103.11886).

    Both sources must have the same query/key grids and be chunked alike (same starts). Queries
    whose row is all zero at either site (on valid keys) are left out of the mean.

    Returns:
        float64 ``[*batch]``; NaN where no query counts.
    """
    sa = Stream(rows_a, n_query, n_key, key_mask, query_mask)
    sb = Stream(rows_b, n_query, n_key, key_mask, query_mask)
    if sa.batch != sb.batch:
        raise ValueError(f"the two sites have batch shapes {sa.batch} and {sb.batch}")
    km = sa.key_mask
    total = torch.zeros(km.shape[0], dtype=torch.float64, device=km.device)
    count = torch.zeros_like(total)
    for (start_a, x, qm), (start_b, y, _) in zip(sa, sb, strict=True):
        if start_a != start_b or x.shape != y.shape:
            raise ValueError(f"chunks differ between sites: start {start_a} {tuple(x.shape)} vs {start_b} {tuple(y.shape)}")
        x, y = valid(x, qm, km), valid(y, qm, km)
        norms = torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(y, dim=-1)
        ok = norms > 0
        total += torch.where(ok, (x * y).sum(dim=-1) / torch.where(ok, norms, 1.0), 0.0).sum(dim=1)
        count += ok.sum(dim=1)
    return sa.out(total / count)
