"""The per-row Newton matcher of the form controls (control_forms.solve_row_temperatures) stops each row once
converged; it must give what the all-rows matcher (controls.solve_log_temperature, every row its own map, all
30 steps until every row is done) gives, to 1e-9, and reach a naive bisection's temperature (scipy entropy)."""
import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from nlanalysis.measure.control_forms import solve_row_temperatures
from nlanalysis.measure.controls import CONVERGED, solve_log_temperature


def _rows(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 13, generator=g, dtype=torch.float64) * torch.rand(40, 1, generator=g, dtype=torch.float64) * 4
    target = torch.rand(40, generator=g, dtype=torch.float64) * 0.9 + 0.05
    target[3] = math.nan  # not matched
    target[5] = 1.2  # above 1: no temperature reaches it
    logits[7] = 0.0  # a flat row: entropy 1 whatever tau
    logits[9, :4] = 5.0  # ties at the maximum: the entropy never falls below log 4 / log n
    target[9] = 0.05
    return logits, target


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_early_stop_gives_the_all_rows_matcher_results(seed, masked):
    logits, target = _rows(seed)
    keys = torch.ones(13, dtype=torch.bool)
    if masked:
        keys[[2, 11]] = False
    x_new, h_new = solve_row_temperatures(logits, target, keys)
    x_old, h_old = solve_log_temperature(logits[:, None], target, keys)
    assert torch.allclose(x_new, x_old, rtol=0, atol=1e-9)
    assert torch.allclose(h_new, h_old, rtol=0, atol=1e-9, equal_nan=True)
    # against a naive float64 bisection where the target is reachable
    for r in (0, 1, 2, 10, 20):
        row = logits[r].numpy()[keys.numpy()]
        h = lambda lt: entropy(softmax(math.exp(lt) * row)) / math.log(len(row))  # noqa: E731
        lo, hi = -12.0, 12.0
        while hi - lo > 1e-12:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if h(mid) > float(target[r]) else (lo, mid)
        assert abs(h(float(x_new[r])) - float(target[r])) <= CONVERGED
        assert float(x_new[r]) == pytest.approx((lo + hi) / 2, abs=1e-5)


def test_float32_rows_and_bad_shapes():
    logits, target = _rows(4)
    x_new, _ = solve_row_temperatures(logits.float(), target)
    x_old, _ = solve_log_temperature(logits.float()[:, None], target)
    assert torch.allclose(x_new, x_old, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="target"):
        solve_row_temperatures(logits, target[:3])
    with pytest.raises(ValueError, match="key_mask"):
        solve_row_temperatures(logits, target, torch.ones(4, dtype=torch.bool))
    assert np.isfinite(x_new.numpy()).all()
