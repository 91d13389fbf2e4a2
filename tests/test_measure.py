"""Block statistics against naive computations on full maps (scipy pdist, entropy, JSD loops), eager path
(the native kernel's rows are checked against it in test_measure_native.py)."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from helpers import randomize_
from naive import mean_cos_dist_all_pairs
from nlanalysis.blocks import PAIRWISE_MODES, ContextBlock, NonLocal2d
from nlanalysis.measure import key_mask, measure_block


def _stats(block, x, **kw):
    with torch.no_grad():
        z = block(x)
        return measure_block(block.attention(x), x, z - x, kernels="eager", **kw), block.attention_maps(x), z - x


def _vectors(t, b):
    return t[b].flatten(1).T.double().numpy()


@pytest.mark.parametrize("mode", PAIRWISE_MODES)
def test_three_statistics_equal_pdist_on_full_maps(mode):
    block = randomize_(NonLocal2d(8, mode=mode, sub_sample=mode == "concatenation"), std=0.4).eval()
    x = torch.randn(2, 8, 6, 7)
    stats, maps, context = _stats(block, x, chunk_size=5, jsd_pairs=0)
    for b in range(2):
        assert stats.input[b].item() == pytest.approx(mean_cos_dist_all_pairs(_vectors(x, b)), abs=1e-9)
        assert stats.output[b].item() == pytest.approx(mean_cos_dist_all_pairs(_vectors(context, b)), abs=1e-9)
        rows = maps[b].double().numpy()
        nonzero = np.abs(rows).sum(1) > 0
        assert stats.att[b].item() == pytest.approx(mean_cos_dist_all_pairs(rows[nonzero]), abs=1e-7)
        assert stats.att_zero_rows[b].item() == pytest.approx(1 - nonzero.mean())
        if mode == "dot_product":
            assert math.isnan(stats.att_entropy[b]) and math.isnan(stats.att_max[b])
        else:
            p = rows[nonzero] / rows[nonzero].sum(1, keepdims=True)
            ent = np.mean([entropy(r) for r in p]) / math.log(rows.shape[1])
            assert stats.att_entropy[b].item() == pytest.approx(ent, rel=1e-6)
            assert stats.att_max[b].item() == pytest.approx(p.max(1).mean(), rel=1e-6)


def test_jsd_exact_when_pairs_cover_all():
    block = randomize_(NonLocal2d(6, mode="embedded_gaussian")).eval()
    x = torch.randn(1, 6, 3, 4)
    stats, maps, _ = _stats(block, x, jsd_pairs=10_000)
    rows = maps[0].double().numpy()
    naive = np.mean([[jensenshannon(p, q, base=2) ** 2 for q in rows] for p in rows])
    assert stats.att_jsd[0].item() == pytest.approx(naive, abs=1e-9)
    assert stats.att_jsd_stderr[0].item() == 0.0


def test_sampled_jsd_is_within_its_stated_error():
    block = randomize_(NonLocal2d(6, mode="embedded_gaussian"), std=0.6).eval()
    x = torch.randn(1, 6, 8, 8)
    stats, maps, _ = _stats(block, x, jsd_pairs=800, generator=torch.Generator().manual_seed(3))
    rows = maps[0].double().numpy()
    exact = np.mean([[jensenshannon(p, q, base=2) ** 2 for q in rows] for p in rows])
    err = stats.att_jsd_stderr[0].item()
    assert 0 < err < 0.05 * exact + 1e-3
    assert abs(stats.att_jsd[0].item() - exact) < 4 * err


def test_valid_mask_equals_cropping_the_features():
    """Padding positions out of every statistic == computing on the valid sub-map."""
    block = randomize_(NonLocal2d(8, mode="embedded_gaussian"), std=0.4).eval()
    x = torch.randn(1, 8, 6, 8)
    valid = torch.zeros(1, 6, 8, dtype=torch.bool)
    valid[:, :4, :5] = True
    with torch.no_grad():
        z = block(x)
        stats = measure_block(block.attention(x), x, z - x, valid=valid, jsd_pairs=0, kernels="eager")
        maps = block.attention_maps(x)[0]
    idx = valid[0].flatten().nonzero()[:, 0]
    sub = maps[idx][:, idx].double().numpy()
    assert stats.att[0].item() == pytest.approx(mean_cos_dist_all_pairs(sub), abs=1e-9)
    xv = x[0].flatten(1).T[idx].double().numpy()
    assert stats.input[0].item() == pytest.approx(mean_cos_dist_all_pairs(xv), abs=1e-9)
    assert stats.n_query[0].item() == 20 and stats.n_key[0].item() == 20
    p = sub / sub.sum(1, keepdims=True)
    ent = np.mean([entropy(r) for r in p]) / math.log(20)
    assert stats.att_entropy[0].item() == pytest.approx(ent, rel=1e-6)


def test_key_mask_for_subsampled_keys():
    valid = torch.zeros(1, 5, 7, dtype=torch.bool)
    valid[:, :3, :5] = True
    km = key_mask(valid, (2, 3))
    expected = torch.tensor([[[True, True, False], [False, False, False]]])
    assert torch.equal(km, expected)
    with pytest.raises(ValueError, match="cannot map"):
        key_mask(valid, (4, 4))


def test_query_independent_blocks_report_zero_att():
    block = randomize_(ContextBlock(8, 0.5)).eval()
    x = torch.randn(2, 8, 5, 5)
    stats, maps, _ = _stats(block, x)
    assert stats.query_independent
    assert torch.equal(stats.att, torch.zeros(2, 1, dtype=torch.float64))  # [B, maps]: the one map
    p = maps[0, 0].double().numpy()
    assert stats.att_entropy[0].item() == pytest.approx(entropy(p) / math.log(25), rel=1e-6)


def test_zero_context_is_reported_not_hidden():
    block = NonLocal2d(8)  # zeros_init: conv_out is zero, so z - x == 0 everywhere
    stats, _, _ = _stats(block, torch.randn(1, 8, 4, 4))
    assert math.isnan(stats.output[0]) and stats.output_zero[0].item() == 16


@pytest.mark.parametrize("sub_sample", [False, True])
def test_own_object_mass_against_loops(sub_sample):
    block = randomize_(NonLocal2d(6, mode="embedded_gaussian", sub_sample=sub_sample), std=0.5).eval()
    x = torch.randn(1, 6, 6, 8)
    objects = torch.zeros(1, 6, 8, dtype=torch.long)
    objects[0, 0:4, 0:4] = 7  # arbitrary instance ids
    objects[0, 2:6, 5:8] = 3
    with torch.no_grad():
        z = block(x)
        stats = measure_block(block.attention(x), x, z - x, objects=objects, jsd_pairs=0, kernels="eager")
        maps = block.attention_maps(x)[0].double().numpy()
    lab_q = objects[0].flatten().numpy()
    if sub_sample:  # a pooled key belongs to an object only if its 4 cells do
        blocks = objects[0, :6, :8].reshape(3, 2, 4, 2).permute(0, 2, 1, 3).reshape(3, 4, 4)
        lab_k = np.where((blocks == blocks[..., :1]).all(-1), blocks[..., 0], -1).flatten()
    else:
        lab_k = lab_q
    mass, share = [], []
    for i, lab in enumerate(lab_q):
        if lab == 0:
            continue
        mass.append(maps[i, lab_k == lab].sum() / maps[i].sum())
        share.append((lab_k == lab).mean())
    assert stats.att_own_object[0].item() == pytest.approx(np.mean(mass), rel=1e-5)
    assert stats.own_object_share[0].item() == pytest.approx(np.mean(share), rel=1e-9)
    no_objects = measure_block(block.attention(x), x, z - x, jsd_pairs=0, kernels="eager")
    assert math.isnan(no_objects.att_own_object[0])


def test_own_object_mass_for_a_shared_map():
    block = randomize_(ContextBlock(6, 0.5)).eval()
    x = torch.randn(1, 6, 4, 5)
    objects = torch.zeros(1, 4, 5, dtype=torch.long)
    objects[0, :2, :2] = 1
    objects[0, 3, :] = 2
    with torch.no_grad():
        stats = measure_block(block.attention(x), x, block(x) - x, objects=objects)
        p = block.attention_maps(x)[0, 0].double().numpy()
    lab = objects[0].flatten().numpy()
    expected = (4 * p[lab == 1].sum() + 5 * p[lab == 2].sum()) / 9
    assert stats.att_own_object[0].item() == pytest.approx(expected, rel=1e-5)
    assert stats.own_object_share[0].item() == pytest.approx((4 * 4 / 20 + 5 * 5 / 20) / 9)


def test_a_row_whose_image_weights_underflow_is_one_all_zero_row_in_eager_and_native():
    """A valid query whose softmax puts all but ~1e-41 of its mass on a padding key: its weights on the image are float32
    subnormals, which the native kernels flush. Both paths count it as an all-zero row (eager kept it in att and
    entropy, native dropped it there but kept it in its JSD pairs)."""
    from nlanalysis.blocks.attention import PairwiseAttention
    from nlanalysis.kernels import available
    from nlanalysis.measure import measure_block

    if not available():
        pytest.skip("native kernels unavailable (no C compiler)")
    key = torch.eye(4)[None]  # keys e_j: each query's logits are its own entries
    query = torch.tensor([[[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 1.0, 0, 95.0], [0, 0, 0, 0]]])
    att = PairwiseAttention("gaussian", query, key, (1, 4), (1, 4))
    assert 0 < float(torch.softmax(query[0, 2] @ key[0], -1)[:3].max()) < torch.finfo(torch.float32).tiny
    valid = torch.tensor([[[True, True, True, False]]])  # the last cell is padding
    x = torch.randn(1, 3, 1, 4, generator=torch.Generator().manual_seed(0))
    got = {k: measure_block(att, x, x, valid=valid, kernels=k, jsd_pairs=100) for k in ("eager", "native")}
    rows = torch.softmax(query[0, :2] @ key[0], -1)[:, :3].double()  # the two rows that count, on the image
    unit = rows / rows.norm(dim=1, keepdim=True)
    expected = float((1 - unit @ unit.T).sum() / 4)  # over the 2 x 2 ordered pairs of counted rows, each with itself
    for k, stats in got.items():
        assert float(stats.att_zero_rows) == pytest.approx(1 / 3), k
        assert float(stats.att) == pytest.approx(expected, abs=1e-6), k
    for name in ("att", "att_jsd", "att_entropy", "att_max"):
        assert float(getattr(got["eager"], name)) == pytest.approx(float(getattr(got["native"], name)), abs=1e-6), name
