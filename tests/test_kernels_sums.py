"""The float64 sums of nlanalysis.kernels.sums against independent computations: the JSD of an NL
block's sampled row pairs (native kernel and the eager fallback of ``_table_jsd``) against scipy's
Jensen-Shannon distance (squared, base 2), including all-zero rows (undefined: NaN), rows with zero
entries, identical and nearly identical rows; the sum of unit vectors (``unit_sum``) against numpy in
float64 and the cosine distance built on it (``measure.stats.cosine_distance``) against scipy's pdist,
in every memory layout, with masks, zero rows and NaN."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from naive import mean_cos_dist_all_pairs
from nlanalysis import kernels
from nlanalysis.measure.jsd_pairs import _jsd_plan, _table_jsd
from nlanalysis.measure.stats import cosine_distance

native = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")


def _rows(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(40, 300, generator=g).mul(2.5).softmax(-1)
    r[0] = 0  # all zero: undefined
    r[1, :150] = 0  # zeros in a row
    r[2] = r[3]  # identical
    r[4] = r[5] * (1 + 1e-5 * torch.rand(300, generator=g))  # nearly identical
    r[6] = 0
    r[6, 7] = 3.0  # one-hot (unnormalised)
    return r


def _scipy(r: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    rows = r.double().numpy()
    out = []
    for i, j in zip(a.tolist(), b.tolist()):
        if rows[i].sum() == 0 or rows[j].sum() == 0:
            out.append(math.nan)
        else:
            out.append(jensenshannon(rows[i], rows[j], base=2) ** 2)
    return np.array(out)


def _pairs(n: int, extra: list[tuple[int, int]], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(n, (200,), generator=g), torch.randint(n, (200,), generator=g)
    fixed = torch.tensor(extra)
    return torch.cat([fixed[:, 0], a]), torch.cat([fixed[:, 1], b])


@native
def test_native_table_jsd_matches_scipy():
    r = _rows()
    a, b = _pairs(r.shape[0], [(0, 1), (1, 0), (2, 3), (4, 5), (6, 7), (6, 6), (1, 1)])
    got = kernels.table_jsd(r, a, b).numpy()
    want = _scipy(r, a, b)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.allclose(got, want, atol=1e-12, rtol=0, equal_nan=True)
    strided = torch.zeros(40, 2, 300)  # rows read in place from a strided table
    strided[:, 1] = r
    assert np.allclose(kernels.table_jsd(strided[:, 1], a, b).numpy(), want, atol=1e-12, equal_nan=True)


@native
def test_native_table_jsd_refuses_bad_input():
    r = _rows()
    with pytest.raises(ValueError, match="row indices"):
        kernels.table_jsd(r, torch.tensor([0]), torch.tensor([40]))
    with pytest.raises(ValueError, match="float32 on the CPU"):
        kernels.table_jsd(r.double(), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[S, K\]"):
        kernels.table_jsd(r[None], torch.tensor([0]), torch.tensor([1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float32: native where it builds; float64: eager
def test_table_jsd_per_image_mean_and_stderr(dtype):
    r = _rows(2)
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, 15:] = False
    plan = _jsd_plan(valid, 20, 2, 64, torch.Generator().manual_seed(3), torch.device("cpu"))
    table = r[: plan.query.numel()].to(dtype)
    jsd, err = _table_jsd(plan, table, 2)
    values = _scipy(table, plan.a, plan.b)
    for i in range(2):
        v = values[(plan.pair_image == i).numpy()]
        v = v[~np.isnan(v)]
        assert jsd[i].item() == pytest.approx(v.mean(), abs=1e-12)
        assert err[i].item() == pytest.approx(v.std(ddof=1) / math.sqrt(v.size), abs=1e-12)


def _features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[3, 60, 20]`` with zero rows, a tiny and a huge row, and a mask with some rows off."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(3, 60, 20, generator=g).relu()
    v[0, :4] = 0
    v[1, 5] = 1e-30
    v[2, 9] = 3e30
    used = torch.rand(3, 60, generator=g) > 0.25
    return v, used


def _layouts(v: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same ``[B, n, D]`` values with rows contiguous, columns contiguous, and neither (a strided view)."""
    wide = torch.zeros(v.shape[0], v.shape[1], 2 * v.shape[2])
    wide[..., ::2] = v
    return {"rows": v.contiguous(), "columns": v.transpose(1, 2).contiguous().transpose(1, 2), "strided": wide[..., ::2]}


@native
@pytest.mark.parametrize("layout", ["rows", "columns", "strided"])
@pytest.mark.parametrize("masked", [False, True])
def test_unit_sum_matches_numpy(layout, masked):
    v, used = _features()
    used = used if masked else None
    s, zero, bad = kernels.unit_sum(_layouts(v)[layout], used)
    x = v.double().numpy()
    for b in range(3):
        keep = np.ones(60, bool) if used is None else used[b].numpy()
        rows = x[b][keep]
        norms = np.linalg.norm(rows, axis=1)
        want = (rows[norms > 0] / norms[norms > 0, None]).sum(0)
        assert np.allclose(s[b].numpy(), want, rtol=1e-12, atol=1e-12)
        assert zero[b].item() == int((norms == 0).sum()) and bad[b].item() == 0


@native
def test_unit_sum_flags_nan_and_inf_rows_it_uses():
    v, _ = _features()
    v[0, 10, 3], v[1, 11, 0] = float("nan"), float("inf")
    _, _, bad = kernels.unit_sum(v)
    assert bad.tolist() == [1, 1, 0]
    used = torch.ones(3, 60, dtype=torch.bool)
    used[0, 10] = used[1, 11] = False  # unused rows may hold anything
    assert kernels.unit_sum(v, used)[2].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"used must be \[3, 60\]"):
        kernels.unit_sum(v, used[:, :5])


@pytest.mark.parametrize("choice", ["auto", "eager"])
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_cosine_distance_matches_pdist(choice, layout):
    v, used = _features(1)
    got = cosine_distance(_layouts(v)[layout], used, kernels=choice)
    x = v.double().numpy()
    for b in range(3):
        rows = x[b][used[b].numpy()]
        rows = rows[np.abs(rows).sum(1) > 0]
        assert got[b].item() == pytest.approx(mean_cos_dist_all_pairs(rows), abs=1e-12)
    half = cosine_distance(_layouts(v)[layout], used, convention="(1-cos)/2", zero="orthogonal", kernels=choice)
    assert half.shape == (3,) and bool((half <= 1).all())
    v[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        cosine_distance(v, None, kernels=choice)


@native
@pytest.mark.parametrize("size", [(1, 257, 6, 64), (2, 1100, 1000)])  # one thread; > 1 M floats: the threaded pass
def test_all_finite_matches_numpy_in_every_layout(size):
    """``all_finite`` against numpy's isfinite on the same values: NaN, +inf, -inf at the first, last and a middle
    element, in contiguous and permuted (transposed, read in place) layouts; finite values whose sum
    overflows float32 (a sum-based test says "not finite") and denormals count as finite."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(*size, generator=g)
    assert kernels.all_finite(base) and kernels.all_finite(base.transpose(1, 2))
    big = torch.full(size, 3e38)
    assert not math.isfinite(float(big.sum())) and kernels.all_finite(big)
    tiny = torch.full(size, 1e-40)  # denormal
    assert kernels.all_finite(tiny)
    flat = base.numel()
    for value in (math.nan, math.inf, -math.inf):
        for where in (0, flat // 2 + 7, flat - 1):
            t = base.clone()
            t.view(-1)[where] = value
            for view in (t, t.transpose(1, 2), t.transpose(0, 1)):
                assert kernels.all_finite(view) == bool(np.isfinite(view.numpy()).all()) == False  # noqa: E712


@native
def test_all_finite_falls_back_on_strided_and_other_dtypes():
    """Not dense float32 on the CPU (a slice with gaps, float64, int): torch's isfinite, the same answer;
    a NaN in the gap of a slice is not seen (it is not an element of the view)."""
    t = torch.randn(10, 20)
    t[:, 1::2] = math.nan
    assert kernels.all_finite(t[:, ::2]) and not kernels.all_finite(t[:, 1::2])
    assert not kernels.all_finite(t.double()) and kernels.all_finite(t[:, ::2].double())
    assert kernels.all_finite(torch.arange(5)) and kernels.all_finite(torch.empty(0, 3))
