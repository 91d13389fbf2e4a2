"""The controls in the form of each block (nlanalysis.measure.control_forms) against independent float64
computations: per-query softmax temperatures by a naive bisection with scipy's entropy, the concatenation
control rebuilt in numpy with its shift found by sorting all N x N_k pair sums, the signed control as
q.k/N_k in numpy, and each one's att as a loop-free scipy pdist over the full maps."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.special import softmax
from scipy.stats import entropy

from nlanalysis import schema
from nlanalysis.blocks import ContextBlock, NonLocal2d
from nlanalysis.blocks.attention import PairwiseAttention
from nlanalysis.measure import key_mask, measure_block
from nlanalysis.measure.block_controls import random_control
from nlanalysis.measure.control_forms import (
    FORM_COLUMNS, FORMS, RELU_CONCAT, SIGNED_DOT, SOFTMAX_PER_QUERY, block_form_controls, child_generator, concat_terms,
    form_control_maps, per_query_temperature, positive_share, row_entropies,
)  # fmt: skip
from nlanalysis.measure.controls import draw_projections
from nlanalysis.measure.stats import CONTROLS


def _block(mode, sub_sample=False, seed=0, channels=16):
    torch.manual_seed(seed)
    block = NonLocal2d(channels, mode=mode, sub_sample=sub_sample, zeros_init=False, std=0.3)
    with torch.no_grad():
        block.conv_out.conv.weight.normal_(0, 0.1)
    return block.eval().requires_grad_(False)


def _input(b=2, c=16, h=8, w=8, seed=1):
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)).relu()
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[-1, :, 6:] = False  # the last image: two padded columns
    return x, valid


def _naive_entropy(row):
    return float(entropy(row) / math.log(max(len(row), 2)))


def _naive_row_tau(logits, target):
    """Temperature bringing softmax(tau * logits) (float64, scipy) to normalised entropy ``target``: bisection in log tau."""
    lo, hi = -12.0, 12.0
    while hi - lo > 1e-11:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _naive_entropy(softmax(math.exp(mid) * logits)) > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def _att(rows):
    """Mean pairwise 1 - cos over all ordered pairs (i = j included) of non-zero rows, float64."""
    rows = rows[np.abs(rows).max(1) > 0]
    n = rows.shape[0]
    return float(pdist(rows, "cosine").sum() * 2 / (n * n))


def _valid_rows(maps, qmask, kmask):
    """A ``[N_q, N_k]`` map restricted to valid queries and keys, float64 numpy."""
    return maps.double().numpy()[qmask.numpy()][:, kmask.numpy()]


# -- softmax, matched per query ---------------------------------------------------------------------


def test_per_query_temperatures_equal_a_naive_bisection_row_by_row():
    g = torch.Generator().manual_seed(3)
    query, key = torch.randn(2, 7, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    target = torch.rand(2, 7, generator=g, dtype=torch.float64) * 0.8 + 0.1
    target[1, 4] = math.nan  # a row not matched keeps tau = 1
    keys = torch.ones(11, dtype=torch.bool)
    keys[[0, 5]] = False
    tau, gap = per_query_temperature(query, key, target, keys, chunk=3)
    for m in range(2):
        for i in range(7):
            logits = (query[m, i] @ key[m]).numpy()[keys.numpy()]
            if m == 1 and i == 4:
                assert float(tau[m, i]) == 1.0 and math.isnan(gap[m, i])
                continue
            assert float(tau[m, i]) == pytest.approx(_naive_row_tau(logits, float(target[m, i])), rel=1e-6)
            assert _naive_entropy(softmax(float(tau[m, i]) * logits)) == pytest.approx(float(target[m, i]), abs=1e-7)
            assert float(gap[m, i]) < 1e-6


@pytest.mark.parametrize("mode, sub_sample", [("embedded_gaussian", False), ("embedded_gaussian", True), ("gaussian", False)])
def test_every_control_row_has_its_trained_rows_entropy(mode, sub_sample):
    block = _block(mode, sub_sample)
    x, valid = _input()
    att = block.attention(x)
    for i in range(2):
        qmask, kmask = valid[i].flatten(), key_mask(valid[i : i + 1], att.key_shape)[0].flatten()
        maps, gap = form_control_maps(SOFTMAX_PER_QUERY, att.image(i), x[i : i + 1], qmask, kmask, qmask, torch.Generator().manual_seed(5))
        control = _valid_rows(maps.full()[0].detach(), qmask, kmask)
        trained = _valid_rows(att.image(i).full()[0].detach(), qmask, kmask)
        h_control = np.array([_naive_entropy(r / r.sum()) for r in control])
        h_trained = np.array([_naive_entropy(r / r.sum()) for r in trained])
        assert np.abs(h_control - h_trained).max() < 1e-4, "each row at its own target, not only the mean"
        assert gap == pytest.approx(np.abs(h_control - h_trained).mean(), abs=1e-5)
        assert h_trained.std() > 0.01  # the targets differ from row to row


def _one_image_control(mode, seed, jsd_pairs=0):
    """An NL block's form control on one (padded) image, and the control's random queries ``[N, d]`` and keys
    ``[d, N]`` rebuilt in float64 from the same draw (the child of the seeded generator)."""
    x, valid = _input(b=1)
    att = _block(mode).attention(x)
    parent = torch.Generator().manual_seed(seed)
    found = block_form_controls(att, x, valid, None, None, jsd_pairs=jsd_pairs, generator=parent)
    w = draw_projections(1, att.query.shape[-1], x.shape[1], child_generator(parent))[0].double()
    feats = x[0].double().flatten(1)  # [C, N]
    return att, valid, found, (w[0] @ feats).T.numpy(), (w[1] @ feats).numpy()


def test_per_query_control_statistics_equal_the_naive_maps():
    """ctrl_form_att of the block's per-query control against maps rebuilt in float64: the same draw
    (child generator -> W_q, W_k), tau per row by bisection, rows by scipy's softmax, att by pdist."""
    att, valid, found, q, k = _one_image_control("embedded_gaussian", seed=11)
    assert found["ctrl_form"] == SOFTMAX_PER_QUERY
    v = valid[0].flatten().numpy()
    trained = att.full()[0].detach().double().numpy()[v][:, v]
    rows = []
    for i in np.flatnonzero(v):
        logits = (q[i] @ k)[v]
        target = _naive_entropy(trained[len(rows)] / trained[len(rows)].sum())
        rows.append(softmax(_naive_row_tau(logits, target) * logits))
    assert float(found["ctrl_form_att"][0]) == pytest.approx(_att(np.array(rows)), abs=2e-5)
    assert float(found["ctrl_form_gap"][0]) < 1e-5


# -- concatenation: ReLU(a_i + b_j) / N_k -------------------------------------------------------------


def _naive_concat(a, b, a_t, b_t):
    """The relu-concat shift in numpy: the share of positive a_i + b_j + c equal to the trained one, c halfway
    between the two sums where the share steps, found among all N x N_k pair sums (sorted)."""
    positive = int(((a_t[:, None] + b_t[None, :]) > 0).sum())
    sums = np.sort((a[:, None] + b[None, :]).ravel())[::-1]  # descending
    if positive == 0:
        return a, b, -sums[0]
    below = sums[positive] if positive < sums.size else sums[-1] - 1.0
    return a, b, -(sums[positive - 1] + below) / 2


@pytest.mark.parametrize("sub_sample", [False, True])
def test_concatenation_control_equals_its_naive_construction(sub_sample):
    block = _block("concatenation", sub_sample, seed=2)
    x, valid = _input()
    att = block.attention(x)
    for i in range(2):
        qmask, kmask = valid[i].flatten(), key_mask(valid[i : i + 1], att.key_shape)[0].flatten()
        gen = torch.Generator().manual_seed(7)
        maps, gap = form_control_maps(RELU_CONCAT, att.image(i), x[i : i + 1], qmask, kmask, qmask, gen)
        uv = draw_projections(1, 1, x.shape[1], torch.Generator().manual_seed(7))[0, :, 0].double().numpy()  # u, v
        feats = x[i].double().numpy().reshape(x.shape[1], -1)
        keys = torch.nn.functional.max_pool2d(x[i : i + 1], 2)[0].double().numpy().reshape(x.shape[1], -1) if sub_sample else feats
        a_t = att.query[i, :, 0].detach().double().numpy()[qmask.numpy()]
        b_t = att.key[i, 0].detach().double().numpy()[kmask.numpy()]
        a, b, c = _naive_concat((uv[0] @ feats)[qmask.numpy()], (uv[1] @ keys)[kmask.numpy()], a_t, b_t)
        naive = np.maximum(a[:, None] + b[None, :] + c, 0) / att.n_key
        control = _valid_rows(maps.full()[0], qmask, kmask)
        assert np.abs(control - naive).max() < 1e-6 * max(1.0, np.abs(naive).max())
        assert (control > 0).mean() == pytest.approx(((a_t[:, None] + b_t[None, :]) > 0).mean(), abs=1.5 / control.size)
        assert gap < 1.5 / control.size


def test_concatenation_control_zero_rows_are_those_the_form_implies():
    """A row of ReLU(a_i + b_j) is all zero exactly when a_i + max_j b_j <= 0; measure_block counts those."""
    x, valid = _input(b=1)
    g = torch.Generator().manual_seed(4)
    a_t, b_t = torch.randn(1, 64, 1, generator=g) - 1.0, torch.randn(1, 1, 64, generator=g) * 0.5  # trained terms: some rows all zero
    att = PairwiseAttention("concatenation", a_t, b_t, (8, 8), (8, 8))
    qmask, kmask = valid[0].flatten(), valid[0].flatten()
    maps, _ = form_control_maps(RELU_CONCAT, att, x, qmask, kmask, qmask, torch.Generator().manual_seed(0))
    a, b = maps.query[0, :, 0].double()[qmask], maps.key[0, 0].double()[kmask]
    implied = (a + b.max() <= 0).double().mean()
    stats = measure_block(maps, x, x, valid=valid, jsd_pairs=0)
    assert float(stats.att_zero_rows[0, 0]) == pytest.approx(float(implied), abs=1e-12)
    trained = measure_block(att, x, x, valid=valid, jsd_pairs=0)
    assert 0 < float(trained.att_zero_rows[0, 0]) < 1, "the case has trained zero rows"
    assert 0 < float(implied) < 1, "and the control has zero rows too, from its own query terms"


def test_positive_share_and_its_shift_against_brute_force():
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(40, generator=g, dtype=torch.float64), torch.randn(25, generator=g, dtype=torch.float64) - 0.5
    assert positive_share(a, b) == pytest.approx(float(((a[:, None] + b[None, :]) > 0).double().mean()), abs=0)
    a_rand, b_rand = torch.randn(40, generator=g) * 3, torch.randn(25, generator=g)
    a2, b2 = concat_terms(a_rand, b_rand, a, b)
    assert torch.equal(a2, a_rand.double()) and float((b2 - b_rand.double()).std()) < 1e-6  # one shift, nothing else
    assert positive_share(a2, b2) == pytest.approx(positive_share(a, b), abs=1.0 / 1000)


# -- dot product: signed ---------------------------------------------------------------------------------


def test_signed_control_is_signed_and_equals_q_dot_k_over_n():
    att, valid, found, q, k = _one_image_control("dot_product", seed=2, jsd_pairs=16)
    assert found["ctrl_form"] == SIGNED_DOT
    naive = q @ k / att.n_key
    v = valid[0].flatten().numpy()
    maps = naive[v][:, v]
    assert maps.min() < 0 < maps.max(), "a signed map"
    assert float(found["ctrl_form_att"][0]) == pytest.approx(_att(maps), abs=1e-5)
    assert all(math.isnan(float(found[c][0])) for c in ("ctrl_form_att_jsd", "ctrl_form_att_own_object", "ctrl_form_gap"))


# -- the wiring ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["embedded_gaussian", "concatenation"])
def test_the_mean_entropy_control_does_not_move_and_the_shared_generator_is_not_drawn(mode):
    """measure_block(controls=True) gives the ctrl_* of the mean-entropy control alone, and leaves the capture's
    generator where that control alone leaves it (later JSD pairs and controls do not move)."""
    block = _block(mode)
    x, valid = _input()
    att = block.attention(x)
    with_forms, alone = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    stats = measure_block(att, x, x, valid=valid, controls=True, jsd_pairs=32, generator=with_forms, kernels="eager")
    base = measure_block(att, x, x, valid=valid, jsd_pairs=32, generator=alone, kernels="eager")
    row_ok = torch.ones(2, att.n_query, dtype=torch.bool) & valid.flatten(1)
    ctrl = random_control(att, x, x, valid, None, base.att_entropy[:, 0], row_ok, 32, alone,
                           dict(convention="1-cos", zero="exclude"), "eager")  # fmt: skip
    for name in CONTROLS:
        torch.testing.assert_close(getattr(stats, name)[:, 0], ctrl[name], equal_nan=True, rtol=0, atol=0)
    assert torch.equal(with_forms.get_state(), alone.get_state())
    assert stats.ctrl_form == (SOFTMAX_PER_QUERY if mode != "concatenation" else RELU_CONCAT)
    assert all(getattr(stats, c).shape == (2, 1) for c in FORM_COLUMNS)


def test_form_controls_are_deterministic_and_absent_for_shared_maps():
    block = _block("embedded_gaussian")
    x, valid = _input()
    att = block.attention(x)
    one = block_form_controls(att, x, valid, None, None, jsd_pairs=16, generator=torch.Generator().manual_seed(1))
    two = block_form_controls(att, x, valid, None, None, jsd_pairs=16, generator=torch.Generator().manual_seed(1))
    other = block_form_controls(att, x, valid, None, None, jsd_pairs=16, generator=torch.Generator().manual_seed(2))
    for c in FORM_COLUMNS:
        torch.testing.assert_close(one[c], two[c], equal_nan=True, rtol=0, atol=0)
    assert not torch.equal(one["ctrl_form_att"], other["ctrl_form_att"])
    gc = ContextBlock(16, 0.25)
    stats = measure_block(gc.attention(x), x, x, controls=True)
    assert stats.ctrl_form is None and stats.ctrl_form_att is None  # one map for every query: no control, no column


def test_schema_places_the_form_columns_after_ctrl_temperature():
    names = [c.name for c in schema.REGISTRY]
    at = names.index("ctrl_temperature")
    assert names[at + 1 : at + 6] == ["ctrl_form", *FORM_COLUMNS]
    assert all(schema.column(n).role == "control" and schema.column(n).sites == schema.BOTH for n in names[at + 1 : at + 6])
    for form in FORMS:
        assert f"`{form}`" in schema.column("ctrl_form").meaning


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="disagree"):
        per_query_temperature(torch.randn(1, 4, 3), torch.randn(1, 3, 5), torch.rand(1, 5))
    signed = _block("dot_product").attention(_input()[0])
    with pytest.raises(ValueError, match="non-negative"):
        row_entropies(signed)
