"""The random-projection control's temperature matcher (one for NL blocks and ViT heads) against an
independent float64 computation: softmax rows with scipy, entropy with scipy.stats.entropy, tau by a
naive bisection to 1e-10 on the full maps; and the NL control built on it."""
import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from helpers import randomize_
from nlanalysis.blocks import NonLocal2d
from nlanalysis.measure import key_mask, measure_block
from nlanalysis.measure.controls import MATCH_TOLERANCE, logit_entropy, match_temperature, random_projection_attention


def _naive_entropy(logits, tau, keys=None):
    """Mean over rows of the normalised entropy of softmax(tau * logits) over the keys ``keys`` (float64)."""
    logits = np.asarray(logits, dtype=np.float64)
    if keys is not None:
        logits = logits[:, np.asarray(keys, dtype=bool)]
    rows = softmax(tau * logits, axis=1)
    return float(np.mean(entropy(rows, axis=1)) / math.log(max(logits.shape[1], 2)))


def _naive_tau(logits, target, keys=None):
    """tau with the naive entropy equal to ``target``: bisection on log tau in [-12, 12] to 1e-10."""
    lo, hi = -12.0, 12.0
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _naive_entropy(logits, math.exp(mid), keys) > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def _logits(maps=3, rows=20, keys=30, seed=0, scale=2.0):
    return torch.randn(maps, rows, keys, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def test_temperature_matching_hits_the_target_entropy():
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    control = random_projection_attention(x, (6, 6), 8, torch.Generator().manual_seed(0))
    logits = torch.matmul(control.query, control.key)  # [1, 36, 36]: every row
    for target in (0.3, 0.8, 0.97):
        tau, ok = match_temperature(logits, torch.tensor([target], dtype=torch.float64))
        assert bool(ok[0])
        control.scale = float(tau[0])
        rows = control.full()[0].numpy()  # the matched maps, as measure_block will read them
        assert np.mean([entropy(r) for r in rows]) / math.log(36) == pytest.approx(target, abs=1e-6)
        assert float(tau[0]) == pytest.approx(_naive_tau(logits[0], target), rel=1e-6)


def test_mean_entropy_and_its_slope_equal_scipy():
    logits = _logits()
    keys = torch.ones(30, dtype=torch.bool)
    keys[[2, 11, 29]] = False
    log_tau = torch.tensor([-1.0, 0.0, 0.7], dtype=torch.float64)
    h, slope = logit_entropy(logits, ~keys, log_tau, math.log(27))
    for m in range(3):
        tau = math.exp(float(log_tau[m]))
        assert float(h[m]) == pytest.approx(_naive_entropy(logits[m], tau, keys), abs=1e-12)
        eps = 1e-6  # d/d log tau by central differences
        numeric = (_naive_entropy(logits[m], tau * math.exp(eps), keys) - _naive_entropy(logits[m], tau * math.exp(-eps), keys)) / (2 * eps)
        assert float(slope[m]) == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("shared_mask", [True, False])
def test_matched_tau_equals_a_naive_bisection_with_masked_keys(shared_mask):
    logits = _logits(seed=1)
    target = torch.tensor([0.25, 0.6, 0.9], dtype=torch.float64)
    mask = torch.rand(3, 30, generator=torch.Generator().manual_seed(2)) > 0.3
    mask = mask[:1].expand(3, -1) if shared_mask else mask
    tau, ok = match_temperature(logits, target, mask[0] if shared_mask else mask)
    assert ok.all()
    for m in range(3):
        assert float(tau[m]) == pytest.approx(_naive_tau(logits[m], float(target[m]), mask[m]), rel=1e-6)
        assert _naive_entropy(logits[m], float(tau[m]), mask[m]) == pytest.approx(float(target[m]), abs=1e-6)


def test_unreachable_or_undefined_targets_get_nan():
    logits = _logits(maps=4, keys=10, seed=3)
    logits[:, :, 8] = logits[:, :, 9] = logits.amax(-1) + 0.5  # every row: two keys tie at the maximum
    floor = _naive_entropy(logits[0], math.exp(12.0))  # the sharpest any tau makes map 0
    assert floor == pytest.approx(math.log(2) / math.log(10), abs=1e-9)  # the two tied keys
    target = torch.tensor([floor - 5 * MATCH_TOLERANCE, 1.2, math.nan, 0.6], dtype=torch.float64)
    tau, ok = match_temperature(logits, target)
    assert ok.tolist() == [False, False, False, True]
    assert tau[:3].isnan().all() and float(tau[3]) == pytest.approx(_naive_tau(logits[3], 0.6), rel=1e-6)


def test_batched_matching_equals_one_map_at_a_time():
    logits = _logits(maps=6, seed=4).float()  # float32, as the controls run
    target = torch.tensor([0.1, 0.3, 1.5, 0.55, 0.8, 0.99], dtype=torch.float64)
    mask = torch.rand(6, 30, generator=torch.Generator().manual_seed(5)) > 0.2
    batched = match_temperature(logits, target, mask)
    for m in range(6):
        alone = match_temperature(logits[m : m + 1], target[m : m + 1], mask[m : m + 1])
        assert bool(alone.ok[0]) == bool(batched.ok[m])
        torch.testing.assert_close(alone.tau[0], batched.tau[m], rtol=1e-12, atol=0.0, equal_nan=True)
    assert batched.ok.tolist() == [True, True, False, True, True, True]


def test_random_control_is_reproducible_and_only_when_asked():
    block = randomize_(NonLocal2d(8, mode="embedded_gaussian", sub_sample=True), std=0.5).eval()
    x = torch.randn(2, 8, 8, 10)
    with torch.no_grad():
        z = block(x)
        kw = dict(controls=True, jsd_pairs=64)
        a = measure_block(block.attention(x), x, z - x, generator=torch.Generator().manual_seed(5), **kw)
        b = measure_block(block.attention(x), x, z - x, generator=torch.Generator().manual_seed(5), **kw)
        plain = measure_block(block.attention(x), x, z - x, jsd_pairs=0)
    assert torch.equal(a.ctrl_att, b.ctrl_att) and torch.isfinite(a.ctrl_att).all()
    assert torch.isfinite(a.ctrl_temperature).all()
    assert math.isnan(plain.ctrl_att[0])


def test_nl_control_maps_have_the_blocks_entropy_on_valid_queries_and_keys():
    """Rebuilt from the same draw (with jsd_pairs=0 the control's generator draws the projections first) and
    ctrl_temperature, the control's full maps (80 queries <= 256: every valid row is matched) have the block's
    entropy over the valid queries and keys, and ctrl_att is their mean pairwise cosine distance."""
    from naive import mean_cos_dist_all_pairs

    block = randomize_(NonLocal2d(8, mode="embedded_gaussian", sub_sample=True), std=0.5).eval()
    x = torch.randn(2, 8, 8, 10)
    valid = torch.ones(2, 8, 10, dtype=torch.bool)
    valid[1, :, 6:] = False
    with torch.no_grad():
        stats = measure_block(block.attention(x), x, block(x) - x, valid=valid, controls=True, jsd_pairs=0,
                              generator=torch.Generator().manual_seed(3))  # fmt: skip
        control = random_projection_attention(x, (4, 5), 4, torch.Generator().manual_seed(3))
    keys = key_mask(valid, (4, 5)).flatten(1)
    for i in range(2):
        logits = torch.matmul(control.query[i], control.key[i]).double().numpy()[valid[i].flatten().numpy()]
        tau = float(stats.ctrl_temperature[i])
        assert _naive_entropy(logits, tau, keys[i]) == pytest.approx(float(stats.att_entropy[i]), abs=1e-5)
        rows = softmax(tau * logits[:, keys[i].numpy()], axis=1)
        assert float(stats.ctrl_att[i]) == pytest.approx(mean_cos_dist_all_pairs(rows), abs=1e-5)
