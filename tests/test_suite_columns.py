"""The cheap suite's columns in one native call (``SuiteSums.columns``, ``nl_suite_columns`` of finalise.c) against
their NumPy reference (``native_suite._numpy_columns``) and, for ``cross_site_cos``, the plain division of the sums:
on the sums of real kernel passes (masked keys and queries, class tokens, two sites in a row) and on sums made by
hand where a count is zero or one (the reference divides by zero there: NaN or inf, and the native call must agree).

Tolerance: both sides run the same float64 formulas on the same sums; they differ in the order of the sums over keys
and in ``log`` (glibc's against NumPy's, each within an ulp or so), and the NMI's ``I = H(k) - mean H(row)`` cancels
(up to ~1e-12 relative on a trained ViT-S/14): ``rtol=1e-11``."""
from __future__ import annotations

import math

import pytest
import torch

from nlanalysis import kernels
from nlanalysis.kernels import SuiteSums
from nlanalysis.measure.native_suite import NATIVE, _numpy_columns, suite_columns
from nlanalysis.measure.query_dep import COLUMNS, CROSS_SITE, grid_centres

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")


def _agree(got: dict, want: dict) -> None:
    assert set(want) <= set(got)
    for name, b in want.items():
        a = got[name]
        assert a.shape == b.shape and a.dtype == torch.float64, name
        assert torch.equal(a.isnan(), b.isnan()), (name, a, b)
        assert torch.equal(a.isinf(), b.isinf()), (name, a, b)
        ok = a.isfinite()
        assert torch.allclose(a[ok], b[ok], rtol=1e-11, atol=1e-300), (name, a, b)


def _pass(b: int, h: int, grid: int, prefix: int, seed: int, km: torch.Tensor | None, qm: torch.Tensor | None,
          previous: tuple | None = None, keys_all: bool = False) -> tuple[SuiteSums, torch.Tensor, torch.Tensor]:  # fmt: skip
    """A site's SuiteSums after one kernel pass over random logits (every part of the suite on)."""
    gen = torch.Generator().manual_seed(seed)
    nq, n = grid * grid, prefix + grid * grid
    first = 0 if keys_all else prefix
    k = n - first
    logits = torch.randn(b, h, n, n, generator=gen) * 4
    pos = grid_centres((grid, grid), (14.0, 14.0))
    keep = torch.zeros(b, h + 1, nq, k)
    norms = torch.zeros(b, h + 1, nq, dtype=torch.float64)
    rows = {} if previous is None else dict(previous=previous[0], previous_norms=previous[1])
    suite = SuiteSums(b, h, h + 1, k, spatial_from=prefix if keys_all else 0, unary="logits", query_pos=pos, key_pos=pos,
                      reach=(21.0, 21.0), keep=keep, keep_norms=norms, **rows)  # fmt: skip
    kw = None
    if km is not None:
        kw = km.float() if not keys_all else torch.cat([torch.ones(b, prefix), km.float()], 1)
    kernels.row_stats(logits, kw, qm, first, prefix, scale=0.125, probs=logits, pre=prefix, suite=suite)
    return suite, kw, keep, norms


@pytest.mark.parametrize("keys_all", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_columns_match_the_numpy_reference_on_kernel_sums(keys_all, padded):
    b, h, grid = 2, 3, 5
    km = qm = None
    if padded:
        valid = torch.ones(b, grid, grid, dtype=torch.bool)
        valid[1, :, 3:] = False
        km = qm = valid.flatten(1)
    first, _, keep, norms = _pass(b, h, grid, 1, 0, km, qm, keys_all=keys_all)
    second, kw, _, _ = _pass(b, h, grid, 1, 1, km, qm, previous=(keep, norms), keys_all=keys_all)
    for suite in (first, second):
        got = suite_columns(suite, kw, 0.125, cross=True)
        _agree(got, _numpy_columns(suite, kw, 0.125))
        assert list(got) == [*COLUMNS, CROSS_SITE]
        for name in COLUMNS:  # the columns the pass does not give stay NaN, the head mean has no DNL split
            assert got[name].isnan().all() == (name not in NATIVE), name
        assert got["unary_var_share"][:, -1].isnan().all() and not got["unary_var_share"][:, :-1].isnan().any()
    assert suite_columns(first, kw, 0.125, cross=True)[CROSS_SITE].isnan().all()  # no previous site
    want = second.cross[0] / second.cross[1]  # the mean cosine over the queries both sites count
    assert torch.allclose(suite_columns(second, kw, 0.125, cross=True)[CROSS_SITE], want, rtol=1e-14)
    assert CROSS_SITE not in suite_columns(second, kw, 0.125)


def test_cross_site_of_the_head_mean_alone_against_a_site_without_heads():
    b, h, grid = 1, 2, 4
    n, k = grid * grid, grid * grid
    prev = torch.rand(b, 1, n, k)  # a site with one map: only the head mean is compared
    suite = SuiteSums(b, h, h + 1, k, keep=torch.zeros(b, h + 1, n, k), previous=prev)
    suite.cross[0].uniform_(1.0, 2.0)
    suite.cross[1].fill_(3.0)
    got = suite_columns(suite, None, 1.0, cross=True)[CROSS_SITE]
    assert got[:, :h].isnan().all()
    assert torch.allclose(got[:, h], suite.cross[0, :, h] / 3.0, rtol=1e-15)


def _by_hand(n_q: list[float], n_rows: list[float], km: torch.Tensor | None) -> SuiteSums:
    """Sums made by hand for one image of 2 heads + mean over 4 keys: counts as given, the rest random."""
    gen = torch.Generator().manual_seed(3)
    pos = grid_centres((2, 2), (14.0, 14.0))
    s = SuiteSums(1, 2, 3, 4, unary=torch.randn(1, 2, 4, generator=gen, dtype=torch.float64), query_pos=pos, key_pos=pos,
                  reach=(21.0, 21.0))  # fmt: skip
    s.sums.copy_(torch.rand(5, 1, 3, generator=gen, dtype=torch.float64))
    s.p_k.copy_(torch.rand(1, 3, 4, generator=gen, dtype=torch.float64))
    s.sums[4, 0] = torch.tensor(n_q, dtype=torch.float64)
    for m, count in enumerate(n_q):
        if count == 0:  # nothing counted: every sum is 0
            s.sums[:4, 0, m] = 0.0
            s.p_k[0, m] = 0.0
    s.p_k[0, 1, 1:] = 0.0  # one key holds all the mass: H(k) = 0
    s.pair_s.copy_(torch.rand(1, 2, 4, generator=gen, dtype=torch.float64))
    s.pair_sums[0, 0] = torch.rand(2, generator=gen, dtype=torch.float64)
    s.pair_sums[1, 0] = torch.tensor(n_rows, dtype=torch.float64)
    for h, count in enumerate(n_rows):
        if count == 0:
            s.pair_sums[0, 0, h], s.pair_s[0, h] = 0.0, 0.0
    return s


@pytest.mark.parametrize("n_q, n_rows", [([0.0, 3.0, 1.0], [0.0, 2.0]), ([1.0, 1.0, 4.0], [1.0, 0.0]), ([2.0, 0.0, 0.0], [5.0, 5.0])])
@pytest.mark.parametrize("masked", ["none", "some", "all"])
def test_zero_and_single_counts_give_what_the_reference_gives(n_q, n_rows, masked):
    km = {"none": None, "some": torch.tensor([[1.0, 0.0, 1.0, 1.0]]), "all": torch.zeros(1, 4)}[masked]
    s = _by_hand(n_q, n_rows, km)
    want = _numpy_columns(s, km, 0.3)
    _agree(suite_columns(s, km, 0.3), want)
    nmi = want["qk_nmi"][0]
    assert math.isnan(nmi[0]) if n_q[0] == 0 else True  # the reference's own 0 / 0
    assert all(math.isnan(nmi[m]) for m, count in enumerate(n_q) if count < 2)  # no query or one: NaN (one gave +inf)
    assert torch.isnan(want["att_pairwise_only"][0, [i for i, c in enumerate(n_rows) if c == 0]]).all()


def test_bad_rows_are_refused():
    s = SuiteSums(1, 2, 3, 4)
    with pytest.raises(ValueError, match="at must give 7 rows"):
        s.columns(None, 1.0, 3, [0, 1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="key_mask"):
        s.columns(torch.ones(2, 4), 1.0, 7, list(range(7)))


def test_cross_site_of_two_shared_maps_whose_chunks_do_not_divide_the_queries(monkeypatch):
    """Consecutive GC blocks (one shared map each; ``nlanalysis analyze``'s GC example model): the last chunk asked past the
    last query got a full chunk of rows from a shared map and stopped the analysis. Every query's map is the block's one
    map, so the mean cosine over queries is the cosine of the two maps (NumPy, float64)."""
    import numpy as np

    import nlanalysis.measure.cross_site as cross_site
    from nlanalysis.blocks.attention import SharedAttention
    from nlanalysis.measure.cross_site import SiteRows, site_similarity

    grid = (4, 5)
    n = grid[0] * grid[1]
    monkeypatch.setattr(cross_site, "CHUNK_FLOATS", 7 * n)  # chunks of 7 queries: 7, 7, 6
    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, n, generator=gen) for _ in range(2)]
    sites = [SharedAttention(w / w.sum(1, keepdim=True), grid, grid) for w in maps]
    assert sites[0].rows(14, 21).shape == (2, 6, n) and sites[0].rows(20, 27).shape == (2, 0, n)  # cut at N, as slicing
    full = torch.ones(2, n, dtype=torch.bool)
    rows = [SiteRows(0, (grid, grid, 0), 1, lambda s, e, a=a: a.rows(s, e)[:, None], full, full) for a in sites]
    got = site_similarity(rows[0], rows[1])
    a, b = (s.weights.double().numpy() for s in sites)
    want = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(got[:, 0].numpy(), want, rtol=1e-12)
