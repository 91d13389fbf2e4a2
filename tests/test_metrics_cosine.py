"""Mean pairwise cosine distance against scipy's pdist, computed independently in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from nlanalysis.metrics import CosineAccumulator, mean_pairwise_cosine_distance

TOL = 1e-10


def ref_all_pairs(v: np.ndarray) -> float:
    """Mean over all N^2 ordered pairs, i = j (distance 0) included."""
    return float(squareform(pdist(np.asarray(v, dtype=np.float64), "cosine")).mean())


def ref_no_self(v: np.ndarray) -> float:
    """Mean over the N(N-1) ordered pairs with i != j."""
    return float(pdist(np.asarray(v, dtype=np.float64), "cosine").mean())


def ref_orthogonal(v: np.ndarray, include_self: bool) -> float:
    """Zero vectors have distance 1 to every vector, themselves included."""
    v = np.asarray(v, dtype=np.float64)
    nz = np.any(v != 0, axis=1)
    n = len(v)
    full = np.ones((n, n))
    idx = np.flatnonzero(nz)
    full[np.ix_(idx, idx)] = squareform(pdist(v[nz], "cosine"))
    if include_self:
        return float(full.mean())
    return float(full[~np.eye(n, dtype=bool)].mean())


def ref(v: np.ndarray, include_self: bool) -> float:
    return ref_all_pairs(v) if include_self else ref_no_self(v)


@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (50, 16), (200, 64), (33, 1)])
@pytest.mark.parametrize("include_self", [True, False])
def test_gaussian_matches_pdist(shape: tuple[int, int], include_self: bool) -> None:
    rng = np.random.default_rng(sum(shape))
    v = rng.standard_normal(shape)
    got = mean_pairwise_cosine_distance(torch.from_numpy(v), include_self=include_self)
    assert got.dtype == torch.float64 and got.shape == ()
    assert abs(float(got) - ref(v, include_self)) < TOL


def test_correlated_nonnegative_features() -> None:
    rng = np.random.default_rng(1)
    v = np.maximum(rng.standard_normal((300, 32)) + 2.0 * rng.standard_normal(32), 0) + 1e-3
    for include_self in (True, False):
        got = mean_pairwise_cosine_distance(torch.from_numpy(v), include_self=include_self)
        assert abs(float(got) - ref(v, include_self)) < TOL


def test_nearly_identical_vectors() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal(64)
    v = base + 1e-3 * rng.standard_normal((40, 64))
    expected = ref_all_pairs(v)
    assert 1e-7 < expected < 1e-5  # the regime this test is about
    got = float(mean_pairwise_cosine_distance(torch.from_numpy(v)))
    assert abs(got - expected) < 1e-9
    got = float(mean_pairwise_cosine_distance(torch.from_numpy(v), include_self=False))
    assert abs(got - ref_no_self(v)) < 1e-9


def test_constant_and_parallel_vectors_are_distance_zero() -> None:
    v = torch.tensor([[1.0, -2.0, 3.0]]).repeat(10, 1) * torch.linspace(0.1, 10, 10)[:, None]
    for include_self in (True, False):
        assert abs(float(mean_pairwise_cosine_distance(v, include_self=include_self))) < 1e-12


def test_one_hot_vectors() -> None:
    idx = np.array([0, 1, 2, 3, 1, 1, 4, 0])
    v = np.eye(6)[idx]
    n = len(idx)
    same = sum(int(a == b) for a in idx for b in idx)  # ordered pairs with cos 1
    assert abs(float(mean_pairwise_cosine_distance(torch.from_numpy(v))) - (1 - same / n**2)) < TOL
    assert abs(float(mean_pairwise_cosine_distance(torch.from_numpy(v))) - ref_all_pairs(v)) < TOL
    got = float(mean_pairwise_cosine_distance(torch.from_numpy(v), include_self=False))
    assert abs(got - (1 - (same - n) / (n * (n - 1)))) < TOL


def test_distinct_one_hots_hand_value() -> None:
    n = 9
    v = torch.eye(n)
    assert abs(float(mean_pairwise_cosine_distance(v)) - (1 - 1 / n)) < TOL
    assert abs(float(mean_pairwise_cosine_distance(v, include_self=False)) - 1.0) < TOL


def test_mixed_sign_antipodal() -> None:
    a = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    v = torch.cat([a, -a])
    assert abs(float(mean_pairwise_cosine_distance(v)) - 1.0) < TOL  # (0 + 2 + 2 + 0) / 4
    assert abs(float(mean_pairwise_cosine_distance(v, include_self=False)) - 2.0) < TOL
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 8)) * rng.choice([-1.0, 1.0], size=(40, 1))
    assert abs(float(mean_pairwise_cosine_distance(torch.from_numpy(w))) - ref_all_pairs(w)) < TOL


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e20, 1e-20])
def test_extreme_magnitudes_float32(scale: float) -> None:
    rng = np.random.default_rng(4)
    v32 = (rng.standard_normal((60, 24)) * scale).astype(np.float32)
    assert np.isfinite(v32).all() and (v32 != 0).all()
    for include_self in (True, False):
        got = float(mean_pairwise_cosine_distance(torch.from_numpy(v32), include_self=include_self))
        assert abs(got - ref(v32.astype(np.float64), include_self)) < TOL


def test_extreme_magnitudes_mixed_float32() -> None:
    rng = np.random.default_rng(5)
    scales = rng.choice([1e30, 1e-30, 1.0, 1e15], size=(80, 1))
    v32 = (rng.standard_normal((80, 12)) * scales).astype(np.float32)
    got = float(mean_pairwise_cosine_distance(torch.from_numpy(v32)))
    assert abs(got - ref_all_pairs(v32.astype(np.float64))) < TOL


@pytest.mark.parametrize("scale", [1e200, 1e150, 1e-160, 1e-200, 1e-310])
def test_extreme_magnitudes_float64(scale: float) -> None:
    rng = np.random.default_rng(6)
    base = rng.standard_normal((30, 10))
    v = base * scale  # squares overflow to inf / underflow to 0 in float64
    got = float(mean_pairwise_cosine_distance(torch.from_numpy(v)))
    # 1e-310 is subnormal: components keep only ~9 significant digits.
    tol = 1e-6 if scale < 1e-300 else TOL
    assert abs(got - ref_all_pairs(base)) < tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes(dtype: torch.dtype) -> None:
    v = torch.randn(50, 20, generator=torch.Generator().manual_seed(7)).to(dtype)
    expected = ref_all_pairs(v.to(torch.float64).numpy())
    assert abs(float(mean_pairwise_cosine_distance(v)) - expected) < TOL


def test_batched_shapes() -> None:
    rng = np.random.default_rng(8)
    v = rng.standard_normal((3, 4, 25, 6))
    got = mean_pairwise_cosine_distance(torch.from_numpy(v))
    assert got.shape == (3, 4) and got.dtype == torch.float64
    got_ns = mean_pairwise_cosine_distance(torch.from_numpy(v), include_self=False)
    for a in range(3):
        for b in range(4):
            assert abs(float(got[a, b]) - ref_all_pairs(v[a, b])) < TOL
            assert abs(float(got_ns[a, b]) - ref_no_self(v[a, b])) < TOL


def test_mask() -> None:
    rng = np.random.default_rng(9)
    v = rng.standard_normal((5, 30, 7))
    mask = rng.random((5, 30)) < 0.6
    mask[:, :2] = True
    vt = torch.from_numpy(v.copy())
    vt[~torch.from_numpy(mask)] = float("nan")  # masked-out rows may hold garbage
    for include_self in (True, False):
        got = mean_pairwise_cosine_distance(vt, mask=torch.from_numpy(mask), include_self=include_self, chunk_size=4)
        for b in range(5):
            assert abs(float(got[b]) - ref(v[b][mask[b]], include_self)) < TOL


def test_masked_out_zero_rows_are_not_counted() -> None:
    v = torch.randn(2, 6, 3, dtype=torch.float64)
    v[0, 1] = 0.0
    v[1, 4] = float("inf")
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = False
    acc = CosineAccumulator(3, batch_shape=(2,))
    acc.update(v, mask)
    assert acc.n_zero.tolist() == [0, 0] and acc.n_total.tolist() == [5, 5]
    got = acc.result(zero="raise")
    for b in range(2):
        assert abs(float(got[b]) - ref_all_pairs(v[b][mask[b]].numpy())) < TOL
    v[0, 2] = 0.0  # a used zero row is counted
    acc = CosineAccumulator(3, batch_shape=(2,))
    acc.update(v, mask)
    assert acc.n_zero.tolist() == [1, 0]


def test_streaming_chunks_match_pdist() -> None:
    rng = np.random.default_rng(10)
    v = rng.standard_normal((2, 103, 9))
    acc = CosineAccumulator(9, batch_shape=(2,))
    for start, stop in [(0, 1), (1, 40), (40, 41), (41, 41), (41, 103)]:
        acc.update(torch.from_numpy(v[:, start:stop]).float())
    assert acc.n_total.tolist() == [103, 103] and acc.n_zero.tolist() == [0, 0]
    expected = [ref_all_pairs(v[b].astype(np.float32)) for b in range(2)]
    assert np.allclose(acc.result().numpy(), expected, atol=TOL, rtol=0)
    for chunk in (1, 7, 1000, None):
        got = mean_pairwise_cosine_distance(torch.from_numpy(v), chunk_size=chunk)
        assert np.allclose(got.numpy(), [ref_all_pairs(v[b]) for b in range(2)], atol=TOL, rtol=0)


def test_merge_equals_union() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((20, 5)), rng.standard_normal((13, 5))
    acc_a, acc_b = CosineAccumulator(5), CosineAccumulator(5)
    acc_a.update(torch.from_numpy(a))
    acc_b.update(torch.from_numpy(b))
    got = float(acc_a.merge(acc_b).result(include_self=False))
    assert abs(got - ref_no_self(np.concatenate([a, b]))) < TOL


def _with_zeros() -> np.ndarray:
    rng = np.random.default_rng(12)
    v = rng.standard_normal((25, 6))
    v[[3, 10, 11]] = 0.0
    return v


@pytest.mark.parametrize("include_self", [True, False])
def test_zero_rule_exclude(include_self: bool) -> None:
    v = _with_zeros()
    nz = np.any(v != 0, axis=1)
    acc = CosineAccumulator(6)
    acc.update(torch.from_numpy(v))
    assert int(acc.n_zero) == 3 and int(acc.n_total) == 25
    got = float(acc.result(include_self=include_self, zero="exclude"))
    assert abs(got - ref(v[nz], include_self)) < TOL


@pytest.mark.parametrize("include_self", [True, False])
def test_zero_rule_orthogonal(include_self: bool) -> None:
    v = _with_zeros()
    got = float(mean_pairwise_cosine_distance(torch.from_numpy(v), include_self=include_self, zero="orthogonal"))
    assert abs(got - ref_orthogonal(v, include_self)) < TOL


def test_zero_rule_orthogonal_hand_values() -> None:
    # one unit vector and one zero vector: pairs (a,a)=0, (a,0)=1, (0,a)=1, (0,0)=1
    v = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert abs(float(mean_pairwise_cosine_distance(v, zero="orthogonal")) - 0.75) < TOL
    assert abs(float(mean_pairwise_cosine_distance(v, zero="orthogonal", include_self=False)) - 1.0) < TOL


def test_zero_rule_raise_names_count() -> None:
    with pytest.raises(ValueError, match=r"\b3 all-zero"):
        mean_pairwise_cosine_distance(torch.from_numpy(_with_zeros()), zero="raise")
    v = torch.randn(10, 4)
    ok = float(mean_pairwise_cosine_distance(v, zero="raise"))
    assert abs(ok - ref_all_pairs(v.double().numpy())) < TOL


def test_tiny_nonzero_is_not_zero() -> None:
    v = torch.tensor([[1e-45, 0.0], [0.0, 1.0]], dtype=torch.float32)  # smallest float32 subnormal
    assert bool(v[0, 0] != 0)
    assert abs(float(mean_pairwise_cosine_distance(v, zero="raise")) - 0.5) < TOL


def test_too_few_vectors_give_nan() -> None:
    zeros = torch.zeros(4, 3)
    assert torch.isnan(mean_pairwise_cosine_distance(zeros))
    one = torch.tensor([[1.0, 2.0]])
    assert torch.isnan(mean_pairwise_cosine_distance(one, include_self=False))
    assert abs(float(mean_pairwise_cosine_distance(one))) < 1e-15
    assert torch.isnan(mean_pairwise_cosine_distance(torch.zeros(0, 3)))
    batched = torch.stack([torch.randn(5, 3), torch.zeros(5, 3)])
    out = mean_pairwise_cosine_distance(batched)
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_raises(bad: float) -> None:
    v = torch.randn(6, 4)
    v[2, 1] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        mean_pairwise_cosine_distance(v)


def test_shape_errors() -> None:
    acc = CosineAccumulator(4, batch_shape=(2,))
    with pytest.raises(ValueError, match="shape"):
        acc.update(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="shape"):
        acc.update(torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match="shape"):
        acc.update(torch.randn(5, 4))
    with pytest.raises(ValueError, match="mask"):
        acc.update(torch.randn(2, 5, 4), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        mean_pairwise_cosine_distance(torch.randn(5))
    with pytest.raises(ValueError, match="convention"):
        mean_pairwise_cosine_distance(torch.randn(5, 2), convention="cos")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero rule"):
        mean_pairwise_cosine_distance(torch.randn(5, 2), zero="skip")  # type: ignore[arg-type]


@pytest.mark.parametrize("include_self", [True, False])
def test_convention_halves(include_self: bool) -> None:
    rng = np.random.default_rng(13)
    v = rng.standard_normal((40, 10))
    got = float(
        mean_pairwise_cosine_distance(torch.from_numpy(v), include_self=include_self, convention="(1-cos)/2")
    )
    assert abs(got - ref(v, include_self) / 2) < TOL
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert abs(float(mean_pairwise_cosine_distance(a, include_self=False, convention="(1-cos)/2")) - 1.0) < TOL


def test_result_stays_in_range() -> None:
    g = torch.Generator().manual_seed(14)
    for _ in range(20):
        v = torch.randn(int(torch.randint(2, 30, (1,), generator=g)), 3, generator=g)
        for include_self in (True, False):
            d = float(mean_pairwise_cosine_distance(v, include_self=include_self))
            assert 0.0 <= d <= 2.0
