"""The float64 JSD of an NL block's sampled row pairs: the native kernel and the eager fallback of
``_table_jsd`` against scipy's Jensen-Shannon distance (squared, base 2), pair by pair, including
all-zero rows (undefined: NaN), rows with zero entries, identical and nearly identical rows."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from nlanalysis import kernels
from nlanalysis.measure.jsd_pairs import _jsd_plan, _table_jsd


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


@pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")
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


@pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")
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
