"""nlanalysis.metrics.locality_control: distance-only maps matched in attention distance, against naive float64 loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nlanalysis.metrics.locality_control import LOCALITY_COLUMNS, LocalityGrid, locality_control
from nlanalysis.metrics.object_context import object_context
from nlanalysis.metrics.query_dependence import row_chunks


def _centres(grid: tuple[int, int], cell: float) -> np.ndarray:
    return np.array([((i + 0.5) * cell, (j + 0.5) * cell) for i in range(grid[0]) for j in range(grid[1])])


def _naive_maps(qgrid, qcell, kgrid, kcell, kvalid, sigma) -> np.ndarray:
    """Row q: exp(-d^2 / 2 sigma^2) over the valid keys, divided by its sum; loops over queries and keys."""
    qp, kp = _centres(qgrid, qcell), _centres(kgrid, kcell)
    out = np.zeros((len(qp), len(kp)))
    for q in range(len(qp)):
        for k in range(len(kp)):
            if kvalid[k]:
                out[q, k] = math.exp(-((qp[q] - kp[k]) ** 2).sum() / (2 * sigma**2))
        out[q] /= out[q].sum()
    return out


def _naive_distance(qgrid, qcell, kgrid, kcell, qvalid, kvalid, sigma) -> float:
    qp, kp = _centres(qgrid, qcell), _centres(kgrid, kcell)
    maps = _naive_maps(qgrid, qcell, kgrid, kcell, kvalid, sigma)
    total = [sum(maps[q, k] * math.dist(qp[q], kp[k]) for k in range(len(kp))) for q in range(len(qp)) if qvalid[q]]
    return sum(total) / len(total)


def _masks():
    """A 6 x 8 query grid (8 px cells) whose last row and last column are padding, keys on its 2x2-pooled 3 x 4 grid whose
    last column is padding."""
    qv = torch.zeros(6, 8, dtype=torch.bool)
    qv[:5, :7] = True
    kv = torch.zeros(3, 4, dtype=torch.bool)
    kv[:, :3] = True
    return qv, kv


@pytest.mark.parametrize("sigma", [2.0, 9.0, 40.0])
def test_mean_distance_and_label_mass_are_the_naive_ones_with_padding_and_pooled_keys(sigma):
    qv, kv = _masks()
    grid = LocalityGrid.of((6, 8), (8.0, 8.0), (3, 4), (16.0, 16.0), qv, kv)
    want = _naive_distance((6, 8), 8.0, (3, 4), 16.0, qv.flatten().numpy(), kv.flatten().numpy(), sigma)
    assert grid.mean_distance(sigma) == pytest.approx(want, rel=1e-12)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(0)), 4).double()
    mass = grid.label_mass(sigma, onehot).numpy()
    naive = _naive_maps((6, 8), 8.0, (3, 4), 16.0, kv.flatten().numpy(), sigma) @ onehot.numpy()
    valid = qv.flatten().numpy()
    np.testing.assert_allclose(mass[valid], naive[valid], rtol=1e-12, atol=1e-300)
    assert not mass[~valid].any()  # padding queries: no row


def test_sigma_hits_the_target_spread_maps_get_the_uniform_limit_and_unreachable_targets_are_nan():
    qv, kv = _masks()
    grid = LocalityGrid.of((6, 8), (8.0, 8.0), (3, 4), (16.0, 16.0), qv, kv)
    sigma = grid.match_sigma(17.5)
    assert _naive_distance((6, 8), 8.0, (3, 4), 16.0, qv.flatten().numpy(), kv.flatten().numpy(), sigma) == pytest.approx(17.5, rel=1e-9)
    uniform = _naive_distance((6, 8), 8.0, (3, 4), 16.0, qv.flatten().numpy(), kv.flatten().numpy(), 1e9)
    nearest = _naive_distance((6, 8), 8.0, (3, 4), 16.0, qv.flatten().numpy(), kv.flatten().numpy(), 1.0)  # ~ its nearest key
    assert grid.uniform_distance() == pytest.approx(uniform, rel=1e-9)
    for spread in (uniform * 1.001, uniform, uniform * (1 - 1e-7)):  # as spread as the uniform map, or ~so: its limit
        assert grid.match_sigma(spread) == math.inf, spread
    for unreachable in (nearest * 0.9, 0.0, math.nan, math.inf):
        assert math.isnan(grid.match_sigma(unreachable)), unreachable


def test_a_valid_region_that_is_not_a_rectangle_is_refused():
    qv = torch.ones(4, 4, dtype=torch.bool)
    qv[0, 0] = False  # an L shape
    with pytest.raises(ValueError, match="valid queries are not a rectangle"):
        LocalityGrid.of((4, 4), (8.0, 8.0), (4, 4), (8.0, 8.0), qv, None)
    with pytest.raises(ValueError, match=r"valid keys must be a \(4, 4\) mask"):
        LocalityGrid.of((4, 4), (8.0, 8.0), (4, 4), (8.0, 8.0), None, torch.ones(3, 4, dtype=torch.bool))


def test_the_control_reads_the_lifts_of_the_naive_maps():
    """Two objects of one category and one of another on a 7 x 9 grid: the control's lifts are the object context of
    the naive maps at the matched sigma; a local map reads an own-object lift above 1 and a same-category lift below 1."""
    labels = torch.zeros(7, 9, dtype=torch.int64)
    labels[1:3, 1:3], labels[4:6, 6:9], labels[1:3, 6:8] = 1, 2, 3
    cats = torch.tensor([-1, 5, 5, 7])
    grid = LocalityGrid.of((7, 9), (8.0, 8.0), (7, 9), (8.0, 8.0))
    lab = labels.flatten()
    got = locality_control(12.0, grid, lab, lab, cats, 4)
    assert set(got) == set(LOCALITY_COLUMNS)
    maps = torch.from_numpy(_naive_maps((7, 9), 8.0, (7, 9), 8.0, np.ones(63, bool), got["ctrl_local_sigma_px"]))[None]
    want = object_context(row_chunks(maps, 64), lab[None], lab[None], cats[None], 4)
    for name in ("own_object_lift", "own_object_lift_objects", "same_category_lift"):
        assert got[f"ctrl_local_{name}"] == pytest.approx(float(want[name][0]), rel=1e-9), name
    assert got["ctrl_local_own_object_lift"] > 1 and got["ctrl_local_same_category_lift"] < 1
    spread = locality_control(1e6, grid, lab, lab, cats, 4)  # beyond any local map: the uniform map, every lift 1
    assert spread["ctrl_local_sigma_px"] == math.inf
    assert all(spread[f"ctrl_local_{n}"] == pytest.approx(1.0, rel=1e-12) for n in ("own_object_lift", "own_object_lift_objects", "same_category_lift"))
    assert all(math.isnan(v) for v in locality_control(math.nan, grid, lab, lab, cats, 4).values())


def test_several_maps_at_once_are_each_map_alone():
    """locality_controls batches the object context of a site's maps (a ViT layer's heads): the same numbers as one call
    per map, NaN and uniform-limit targets included."""
    from nlanalysis.metrics.locality_control import locality_controls

    labels = torch.zeros(7, 9, dtype=torch.int64)
    labels[1:3, 1:3], labels[4:6, 6:9], labels[1:3, 6:8] = 1, 2, 3
    cats, lab = torch.tensor([-1, 5, 5, 7]), labels.flatten()
    grid = LocalityGrid.of((7, 9), (8.0, 8.0), (7, 9), (8.0, 8.0))
    targets = [9.0, math.nan, 15.0, 1e6, 0.0, 22.0]
    many = locality_controls(targets, grid, lab, lab, cats, 4)
    for t, got in zip(targets, many, strict=True):
        want = locality_control(t, grid, lab, lab, cats, 4)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12, nan_ok=True), (t, k)
    assert math.isnan(many[1]["ctrl_local_sigma_px"]) and many[3]["ctrl_local_sigma_px"] == math.inf
