"""JSD, entropy and peak weight against scipy / numpy / mpmath references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy

from nlanalysis.metrics import (
    SampledMean,
    is_distribution_like,
    jensen_shannon,
    mean_pairwise_jsd_exact,
    mean_pairwise_jsd_sampled,
    row_entropy,
    row_max_weight,
    zero_rows,
)
from nlanalysis.metrics.divergence import _sample_pairs

TOL = 1e-12


def sparse_rows(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Non-negative, unnormalised rows with some exact zeros."""
    p = rng.random((n, k)) ** 3
    p[rng.random((n, k)) < 0.3] = 0.0
    p[:, 0] += 1e-3  # no all-zero rows
    return p * rng.uniform(0.1, 10, size=(n, 1))


def ref_pairwise_jsd(p: np.ndarray) -> np.ndarray:
    """Independent vectorised [N, N] JSD matrix in bits (scipy.special.rel_entr)."""
    p = p / p.sum(axis=1, keepdims=True)
    a, b = p[:, None, :], p[None, :, :]
    m = (a + b) / 2
    return 0.5 * (rel_entr(a, m).sum(-1) + rel_entr(b, m).sum(-1)) / math.log(2)


def test_jsd_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    p, q = sparse_rows(rng, 40, 17), sparse_rows(rng, 40, 17)
    got = jensen_shannon(torch.from_numpy(p), torch.from_numpy(q))
    assert got.shape == (40,) and got.dtype == torch.float64
    for r in range(40):
        assert abs(float(got[r]) - jensenshannon(p[r], q[r], base=2) ** 2) < TOL


def test_jsd_other_base_and_broadcast() -> None:
    rng = np.random.default_rng(1)
    p, q = sparse_rows(rng, 6, 9), sparse_rows(rng, 1, 9)[0]
    got = jensen_shannon(torch.from_numpy(p), torch.from_numpy(q), base=math.e)
    for r in range(6):
        assert abs(float(got[r]) - jensenshannon(p[r], q) ** 2) < TOL


def test_jsd_symmetric_identical_disjoint() -> None:
    rng = np.random.default_rng(2)
    p, q = torch.from_numpy(sparse_rows(rng, 10, 8)), torch.from_numpy(sparse_rows(rng, 10, 8))
    assert torch.allclose(jensen_shannon(p, q), jensen_shannon(q, p), atol=TOL, rtol=0)
    assert torch.equal(jensen_shannon(p, p), torch.zeros(10, dtype=torch.float64))
    assert float(jensen_shannon(p, 3 * p).abs().max()) < 1e-15  # same rows after normalisation
    a = torch.tensor([0.2, 0.8, 0.0, 0.0])
    b = torch.tensor([0.0, 0.0, 5.0, 1.0])
    assert abs(float(jensen_shannon(a, b)) - 1.0) < TOL
    assert abs(float(jensen_shannon(a, b, base=math.e)) - math.log(2)) < TOL


def test_jsd_nearly_identical_rows_keep_precision() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    rng = np.random.default_rng(3)
    p = rng.random(30) + 0.1
    q = p * (1 + 1e-6 * rng.standard_normal(30))
    p, q = p / p.sum(), q / q.sum()
    pm = [mpmath.mpf(float(x)) for x in p]
    qm = [mpmath.mpf(float(x)) for x in q]
    sp, sq = sum(pm), sum(qm)
    pm, qm = [x / sp for x in pm], [x / sq for x in qm]
    exact = sum(
        a * mpmath.log(2 * a / (a + b)) / 2 + b * mpmath.log(2 * b / (a + b)) / 2 for a, b in zip(pm, qm)
    ) / mpmath.log(2)
    got = float(jensen_shannon(torch.from_numpy(p), torch.from_numpy(q)))
    assert 1e-14 < float(exact) < 1e-11
    assert abs(got - float(exact)) < 1e-6 * float(exact)


def test_jsd_zero_row_is_nan() -> None:
    p = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    q = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    out = jensen_shannon(p, q)
    assert torch.isnan(out[0]) and torch.isfinite(out[1])


def test_signed_map_raises() -> None:
    p = torch.tensor([[0.5, -0.1, 0.6]])
    with pytest.raises(ValueError, match="signed"):
        jensen_shannon(p, p.abs())
    with pytest.raises(ValueError, match="signed"):
        jensen_shannon(p.abs(), p)
    with pytest.raises(ValueError, match="signed"):
        row_entropy(p)
    with pytest.raises(ValueError, match="signed"):
        mean_pairwise_jsd_exact(p.expand(3, 3))
    with pytest.raises(ValueError, match="NaN/inf"):
        jensen_shannon(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="base"):
        jensen_shannon(p.abs(), p.abs(), base=1.0)
    with pytest.raises(ValueError, match="keys"):
        jensen_shannon(torch.ones(3), torch.ones(4))


def naive_mean(p: np.ndarray, include_self: bool) -> float:
    n = len(p)
    vals = [
        jensenshannon(p[i], p[j], base=2) ** 2 for i in range(n) for j in range(n) if include_self or i != j
    ]
    return float(np.mean(vals))


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_exact_mean_matches_double_loop(include_self: bool, chunk: int) -> None:
    rng = np.random.default_rng(4)
    p = np.stack([sparse_rows(rng, 23, 11), sparse_rows(rng, 23, 11)])
    got = mean_pairwise_jsd_exact(torch.from_numpy(p), include_self=include_self, chunk_size=chunk)
    assert got.shape == (2,)
    for b in range(2):
        assert abs(float(got[b]) - naive_mean(p[b], include_self)) < TOL


@pytest.mark.parametrize("include_self", [True, False])
def test_exact_mean_with_small_j_blocks(include_self: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import nlanalysis.metrics.divergence as div

    monkeypatch.setattr(div, "_BLOCK_ELEMENTS", 100)  # j-blocks of 1-2 rows, not aligned with i-blocks
    rng = np.random.default_rng(11)
    p = sparse_rows(rng, 19, 8)
    got = float(mean_pairwise_jsd_exact(torch.from_numpy(p), include_self=include_self, chunk_size=6))
    assert abs(got - naive_mean(p, include_self)) < TOL


def test_exact_mean_degenerate() -> None:
    assert torch.isnan(mean_pairwise_jsd_exact(torch.ones(1, 4), include_self=False))
    assert float(mean_pairwise_jsd_exact(torch.ones(1, 4))) == 0.0
    p = torch.rand(5, 4)
    p[2] = 0
    assert torch.isnan(mean_pairwise_jsd_exact(p))


def test_sampled_within_four_stderr() -> None:
    rng = np.random.default_rng(5)
    p = sparse_rows(rng, 300, 50) ** 2  # heterogeneous rows so the JSD varies
    pt = torch.from_numpy(p)
    calls: list[int] = []

    def rows(idx: torch.Tensor) -> torch.Tensor:
        calls.append(int(idx.numel()))
        return pt[idx]

    ref = ref_pairwise_jsd(p)
    for include_self in (True, False):
        exact = ref.mean() if include_self else ref[~np.eye(300, dtype=bool)].mean()
        est = mean_pairwise_jsd_sampled(
            rows, 300, num_pairs=4000, include_self=include_self, generator=torch.Generator().manual_seed(0)
        )
        assert isinstance(est, SampledMean) and est.n_pairs == 4000
        assert est.stderr > 0
        assert abs(est.mean - exact) < 4 * est.stderr
        assert est.ci95[0] < est.mean < est.ci95[1]
        assert abs((est.ci95[1] - est.ci95[0]) / 2 - 1.959964 * est.stderr) < 1e-9
        # a mean over 4000 pairs must be far tighter than the spread of single pairs
        assert est.stderr < 0.05 * ref.std()
    assert max(calls) <= 8000


def test_sampled_reproducible_with_generator() -> None:
    pt = torch.rand(100, 10, generator=torch.Generator().manual_seed(1))
    a = mean_pairwise_jsd_sampled(lambda i: pt[i], 100, num_pairs=500, generator=torch.Generator().manual_seed(3))
    b = mean_pairwise_jsd_sampled(lambda i: pt[i], 100, num_pairs=500, generator=torch.Generator().manual_seed(3))
    c = mean_pairwise_jsd_sampled(lambda i: pt[i], 100, num_pairs=500, generator=torch.Generator().manual_seed(4))
    assert a == b and a != c


@pytest.mark.parametrize("include_self", [True, False])
def test_sampled_falls_back_to_exact(include_self: bool) -> None:
    rng = np.random.default_rng(6)
    p = sparse_rows(rng, 20, 7)
    pt = torch.from_numpy(p)
    possible = 400 if include_self else 380
    est = mean_pairwise_jsd_sampled(lambda i: pt[i], 20, num_pairs=possible, include_self=include_self)
    assert est.stderr == 0.0 and est.n_pairs == possible and est.ci95 == (est.mean, est.mean)
    assert abs(est.mean - naive_mean(p, include_self)) < TOL


def test_sampled_edge_cases() -> None:
    est = mean_pairwise_jsd_sampled(lambda i: torch.ones(len(i), 3), 1, include_self=False)
    assert math.isnan(est.mean) and est.n_pairs == 0
    with pytest.raises(ValueError, match="rows"):
        mean_pairwise_jsd_sampled(lambda i: torch.ones(3), 100, num_pairs=10)


def test_pair_sampler_excludes_self_and_is_uniform() -> None:
    from scipy.stats import chisquare

    n, k = 6, 60000
    i, j = _sample_pairs(n, k, include_self=False, generator=torch.Generator().manual_seed(7))
    assert not bool((i == j).any())
    counts = np.bincount((i * n + j).numpy(), minlength=n * n).reshape(n, n)
    assert (np.diag(counts) == 0).all()
    off = counts[~np.eye(n, dtype=bool)]
    assert chisquare(off).pvalue > 1e-3
    i, j = _sample_pairs(n, k, include_self=True, generator=torch.Generator().manual_seed(8))
    assert chisquare(np.bincount((i * n + j).numpy(), minlength=n * n)).pvalue > 1e-3


def test_entropy_matches_scipy() -> None:
    rng = np.random.default_rng(9)
    p = sparse_rows(rng, 30, 13)
    got = row_entropy(torch.from_numpy(p), normalized=False)
    got_n = row_entropy(torch.from_numpy(p))
    for r in range(30):
        assert abs(float(got[r]) - entropy(p[r])) < TOL
        assert abs(float(got_n[r]) - entropy(p[r]) / math.log(13)) < TOL


def test_entropy_uniform_onehot_zero() -> None:
    p = torch.tensor([[2.0, 2.0, 2.0, 2.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = row_entropy(p)
    assert abs(float(out[0]) - 1.0) < TOL and float(out[1]) == 0.0 and torch.isnan(out[2])
    assert torch.isnan(row_entropy(torch.ones(2, 1))).all()


def test_row_max_weight() -> None:
    rng = np.random.default_rng(10)
    p = sparse_rows(rng, 12, 9)
    got = row_max_weight(torch.from_numpy(p)).numpy()
    assert np.allclose(got, p.max(1) / p.sum(1), atol=TOL, rtol=0)
    assert torch.isnan(row_max_weight(torch.zeros(1, 3))).all()
    with pytest.raises(ValueError, match="signed"):
        row_max_weight(torch.tensor([1.0, -1.0]))


def test_zero_rows_and_distribution_like() -> None:
    p = torch.tensor([[0.0, 0.0], [0.0, 1e-9], [1.0, 0.0], [-0.0, 0.0]])
    assert zero_rows(p).tolist() == [True, False, False, True]
    assert zero_rows(p, atol=1e-8).tolist() == [True, True, False, True]
    assert is_distribution_like(p)
    assert not is_distribution_like(torch.tensor([0.5, -1e-12]))
    assert not is_distribution_like(torch.tensor([0.5, float("nan")]))
