"""The query-dependence statistics (metrics/query_dependence.py, metrics/decomposition.py) against
float64 loops and numpy on small full maps: chunking must not matter, masks must be honoured."""

import math

import numpy as np
import pytest
import torch

from nlanalysis.metrics.decomposition import dnl_split, gain_only, log_rows, logit_rank1
from nlanalysis.metrics.query_dependence import (
    attention_distance,
    cross_site_similarity,
    query_key_nmi,
    row_chunks,
    signed_map_stats,
    spatial_stats,
)

CHUNKS = [1, 3, 1000]


def naive_att(rows: np.ndarray) -> float:
    """GCNet att, include_self: mean over all ordered pairs of 1 - cos, by a double loop."""
    n = len(rows)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += 1 - rows[i] @ rows[j] / (np.linalg.norm(rows[i]) * np.linalg.norm(rows[j]))
    return total / (n * n)


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def low_rank_logits(rng, n_q=7, n_k=9, noise=0.3):
    g = rng.uniform(0.5, 4.0, n_q)
    v = rng.normal(size=n_k)
    return np.outer(g, v) + noise * rng.normal(size=(n_q, n_k)) + rng.normal(size=(n_q, 1)) * 5


@pytest.mark.parametrize("chunk", CHUNKS)
def test_logit_rank1_matches_svd_of_centred_logits(chunk):
    rng = np.random.default_rng(0)
    logits = np.stack([low_rank_logits(rng), low_rank_logits(rng, noise=2.0)])  # [2, 7, 9]
    fit = logit_rank1(row_chunks(torch.tensor(logits), chunk), 7, 9, tol=1e-13)
    for b in range(2):
        centred = logits[b] - logits[b].mean(axis=1, keepdims=True)
        u, s, vt = np.linalg.svd(centred)
        assert float(fit.share[b]) == pytest.approx(s[0] ** 2 / (s**2).sum(), abs=1e-9)
        v = fit.profile[b].numpy()
        assert abs(v @ vt[0]) == pytest.approx(1.0, abs=1e-8)
        np.testing.assert_allclose(fit.gains[b].numpy(), centred @ v, atol=1e-10)
        assert fit.gains[b].sum() >= 0
    assert bool(fit.converged.all()) and fit.iterations < 100


def test_logit_rank1_honours_masks_and_needs_a_reusable_source():
    rng = np.random.default_rng(1)
    logits = torch.tensor(np.stack([low_rank_logits(rng, 6, 8, 1.0), low_rank_logits(rng, 6, 8, 1.0)]))
    key_mask = torch.ones(2, 8, dtype=torch.bool)
    key_mask[0, [1, 5]] = False
    query_mask = torch.ones(2, 6, dtype=torch.bool)
    query_mask[1, 2] = False
    logits_masked = logits.clone()
    logits_masked[0, :, [1, 5]] = math.nan  # masked entries may hold anything
    logits_masked[1, 2] = math.inf
    fit = logit_rank1(row_chunks(logits_masked, 4), 6, 8, key_mask=key_mask, query_mask=query_mask, tol=1e-13)
    for b in range(2):
        sub = logits[b][query_mask[b]][:, key_mask[b]].numpy()
        ref = logit_rank1(torch.tensor(sub), *sub.shape, tol=1e-13)
        assert float(fit.share[b]) == pytest.approx(float(ref.share), abs=1e-10)
        assert torch.all(fit.profile[b][~key_mask[b]] == 0) and torch.all(fit.gains[b][~query_mask[b]] == 0)
    logits_masked[0, 0, 0] = math.nan  # but not valid ones
    with pytest.raises(ValueError, match="NaN/inf"):
        logit_rank1(logits_masked, 6, 8, key_mask=key_mask, query_mask=query_mask)
    with pytest.raises(TypeError, match="several times"):
        logit_rank1(iter(row_chunks(logits)()), 6, 8)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_gain_only_reproduces_a_shared_map_with_per_query_temperature(chunk):
    rng = np.random.default_rng(2)
    g, v = rng.uniform(0.2, 6.0, 10), rng.normal(size=12)
    logits = np.outer(g, v) + rng.normal(size=(10, 1))  # exactly rank 1 after centring
    maps = softmax_np(logits)
    source = row_chunks(torch.tensor(logits), chunk)
    fit = logit_rank1(source, 10, 12)
    assert float(fit.share) == pytest.approx(1.0, abs=1e-12)
    att_gain, tv = gain_only(source, fit)
    assert float(tv) < 1e-10
    assert float(att_gain) == pytest.approx(naive_att(maps), abs=1e-10)
    # the same from probabilities through log_rows
    fit_p = logit_rank1(log_rows(row_chunks(torch.tensor(maps), chunk)), 10, 12)
    assert float(fit_p.share) == pytest.approx(1.0, abs=1e-10)


def test_gain_only_tv_is_the_naive_total_variation_on_a_general_map():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(8, 11)) * 2
    fit = logit_rank1(torch.tensor(logits), 8, 11, tol=1e-12)
    att_gain, tv = gain_only(row_chunks(torch.tensor(logits), 3), fit)
    centred = logits - logits.mean(axis=1, keepdims=True)
    u, s, vt = np.linalg.svd(centred)
    p_hat = softmax_np(np.outer(s[0] * u[:, 0], vt[0]))  # sign of (u, v) together: same product
    assert float(tv) == pytest.approx(np.mean(0.5 * np.abs(softmax_np(logits) - p_hat).sum(axis=1)), abs=1e-9)
    assert float(att_gain) == pytest.approx(naive_att(p_hat), abs=1e-9)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_dnl_split_matches_the_per_entry_formula(chunk):
    rng = np.random.default_rng(4)
    q, k, scale = rng.normal(size=(2, 7, 3)) + 1.0, rng.normal(size=(2, 9, 3)) - 0.5, 0.7
    key_mask = np.ones((2, 9), dtype=bool)
    key_mask[1, [0, 4]] = False
    query_mask = np.ones((2, 7), dtype=bool)
    query_mask[0, 6] = False
    out = dnl_split(torch.tensor(q), torch.tensor(k), scale, key_mask=torch.tensor(key_mask),
                    query_mask=torch.tensor(query_mask), chunk_size=chunk)  # fmt: skip
    for b in range(2):
        qv, kv = q[b][query_mask[b]], k[b][key_mask[b]]
        mu_q, mu_k = qv.mean(axis=0), kv.mean(axis=0)
        pair = np.array([[scale * (qi - mu_q) @ (kj - mu_k) for kj in kv] for qi in qv])
        unary = np.array([scale * mu_q @ kj for kj in kv])
        query_only = np.array([scale * (qi - mu_q) @ mu_k for qi in qv])
        np.testing.assert_allclose(pair + unary[None] + query_only[:, None], scale * qv @ kv.T, atol=1e-12)
        u_var, p_var = unary.var(), np.mean([row.var() for row in pair])
        assert float(out.unary_var[b]) == pytest.approx(u_var, rel=1e-12)
        assert float(out.pairwise_var[b]) == pytest.approx(p_var, rel=1e-12)
        assert float(out.unary_var_share[b]) == pytest.approx(u_var / (u_var + p_var), rel=1e-12)
        assert float(out.att_pairwise_only[b]) == pytest.approx(naive_att(softmax_np(pair)), abs=1e-12)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_signed_maps_against_double_loops(chunk):
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(9, 6))
    rows[2] = -3 * rows[0]  # a sign flip of the same map
    att_abs, weighted = signed_map_stats(row_chunks(torch.tensor(rows), chunk), 9, 6)
    num = den = 0.0
    for i in range(9):
        for j in range(9):
            if i != j:
                num += rows[i] @ rows[j]
                den += np.linalg.norm(rows[i]) * np.linalg.norm(rows[j])
    assert float(weighted) == pytest.approx(1 - num / den, abs=1e-12)
    assert float(att_abs) == pytest.approx(naive_att(np.abs(rows)), abs=1e-12)
    flip = torch.tensor(np.stack([rows[0], -2 * rows[0], 0.5 * rows[0]]))
    att_abs, weighted = signed_map_stats(flip, 3, 6)
    assert float(att_abs) == pytest.approx(0.0, abs=1e-12)
    # ordered pairs: dot products 2 * (-2 + 0.5 - 1), norm products 2 * (2 + 0.5 + 1), in units of ||r||^2
    assert float(weighted) == pytest.approx(1 + 5 / 7, abs=1e-12)


def test_signed_maps_honour_masks():
    rng = np.random.default_rng(6)
    rows = rng.normal(size=(2, 5, 7))
    key_mask = torch.ones(2, 7, dtype=torch.bool)
    key_mask[1, [2, 3]] = False
    query_mask = torch.ones(2, 5, dtype=torch.bool)
    query_mask[0, 0] = False
    got = signed_map_stats(torch.tensor(rows), 5, 7, key_mask=key_mask, query_mask=query_mask)
    for b in range(2):
        sub = torch.tensor(rows[b])[query_mask[b]][:, key_mask[b]]
        want = signed_map_stats(sub, *sub.shape)
        for g, w in zip(got, want, strict=True):
            assert float(g[b]) == pytest.approx(float(w), abs=1e-12)


def naive_nmi(maps: np.ndarray, eps: float) -> float:
    """I(q;k) / sqrt(H(q) H(k)) from the joint table P(q, k) = A'[q, k] / Q, by loops."""
    a = maps + eps
    a = a / a.sum(axis=1, keepdims=True)
    n_q, n_k = a.shape
    joint = a / n_q
    p_q, p_k = joint.sum(axis=1), joint.sum(axis=0)
    mi = sum(joint[i, j] * math.log(joint[i, j] / (p_q[i] * p_k[j]))
             for i in range(n_q) for j in range(n_k) if joint[i, j] > 0)  # fmt: skip
    h_q = -sum(p * math.log(p) for p in p_q)
    h_k = -sum(p * math.log(p) for p in p_k if p > 0)
    return mi / math.sqrt(h_q * h_k)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_nmi_against_the_joint_table(chunk):
    rng = np.random.default_rng(7)
    maps = softmax_np(rng.normal(size=(8, 10)) * 2)
    maps[3, 4:] = 0.0  # zeros in a row: eps matters
    maps[3] /= maps[3].sum()
    for eps in (0.0, 1e-8, 1e-2):
        got = query_key_nmi(row_chunks(torch.tensor(maps), chunk), 8, 10, eps=eps)
        assert float(got) == pytest.approx(naive_nmi(maps, eps), abs=1e-12)
    same = np.tile(maps[0], (6, 1))
    assert float(query_key_nmi(torch.tensor(same), 6, 10)) == pytest.approx(0.0, abs=1e-12)
    perm = np.eye(7)[rng.permutation(7)]
    assert float(query_key_nmi(torch.tensor(perm), 7, 7, eps=0.0)) == pytest.approx(1.0, abs=1e-12)
    assert float(query_key_nmi(torch.tensor(perm), 7, 7)) == pytest.approx(1.0, abs=1e-5)


def test_nmi_honours_masks():
    rng = np.random.default_rng(8)
    maps = softmax_np(rng.normal(size=(2, 6, 9)))
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[0, [0, 8]] = False
    query_mask = torch.ones(2, 6, dtype=torch.bool)
    query_mask[1, [1, 2]] = False
    got = query_key_nmi(torch.tensor(maps), 6, 9, key_mask=key_mask, query_mask=query_mask)
    for b in range(2):
        sub = maps[b][query_mask[b].numpy()][:, key_mask[b].numpy()]
        assert float(got[b]) == pytest.approx(naive_nmi(sub, 1e-8), abs=1e-12)  # + eps, then renormalised, as Park et al.


@pytest.mark.parametrize("chunk", CHUNKS)
def test_attention_distance_and_local_mass_against_loops(chunk):
    rng = np.random.default_rng(9)
    h, w, stride = 3, 5, 16  # a non-square grid
    cells = [(r, c) for r in range(h) for c in range(w)]
    pos = torch.tensor([((r + 0.5) * stride, (c + 0.5) * stride) for r, c in cells], dtype=torch.float64)
    maps = softmax_np(rng.normal(size=(2, h * w, h * w)) * 2)
    key_mask = torch.ones(2, h * w, dtype=torch.bool)
    key_mask[1, 7] = False
    query_mask = torch.ones(2, h * w, dtype=torch.bool)
    query_mask[0, [0, 14]] = False
    dist, local = attention_distance(row_chunks(torch.tensor(maps), chunk), pos, pos, stride,
                                     key_mask=key_mask, query_mask=query_mask)  # fmt: skip
    for b in range(2):
        d_sum = l_sum = 0.0
        queries = [i for i in range(h * w) if query_mask[b, i]]
        for i in queries:
            for j in range(h * w):
                if key_mask[b, j]:
                    (ri, ci), (rj, cj) = cells[i], cells[j]
                    d_sum += maps[b, i, j] * stride * math.hypot(ri - rj, ci - cj)
                    l_sum += maps[b, i, j] * (abs(ri - rj) <= 1 and abs(ci - cj) <= 1)
        assert float(dist[b]) == pytest.approx(d_sum / len(queries), abs=1e-10)
        assert float(local[b]) == pytest.approx(l_sum / len(queries), abs=1e-12)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_one_pass_gives_the_separate_statistics(chunk):
    """``spatial_stats`` (the suite's one pass) against the separate calls it replaces: NMI, distance and local
    mass of the maps, and the local mass of the uniform map over the valid keys, walked as maps."""
    rng = np.random.default_rng(10)
    h, w, stride = 4, 3, (16.0, 8.0)
    n_key = 2 * h * w  # a key grid other than the query grid: the cells twice, the second set shifted
    qpos = torch.tensor([((r + 0.5) * stride[0], (c + 0.5) * stride[1]) for r in range(h) for c in range(w)])
    kpos = torch.cat([qpos, qpos + 3.0])
    maps = torch.tensor(softmax_np(rng.normal(size=(2, 2, h * w, n_key)) * 3))
    key_mask = torch.tensor(rng.random((2, 2, n_key)) > 0.2)
    query_mask = torch.tensor(rng.random((2, 2, h * w)) > 0.2)
    masks = dict(key_mask=key_mask, query_mask=query_mask)
    got = spatial_stats(row_chunks(maps, chunk), h * w, n_key, (qpos, kpos, stride), **masks)
    uniform = (key_mask.double() / key_mask.sum(-1, keepdim=True))[..., None, :].expand(2, 2, h * w, n_key)
    want = {"qk_nmi": query_key_nmi(maps, h * w, n_key, **masks)}
    want["att_distance_px"], want["att_local"] = attention_distance(maps, qpos, kpos, stride, **masks)
    want["att_local_uniform"] = attention_distance(uniform, qpos, kpos, stride, **masks)[1]
    assert set(got) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-12, msg=name)
    assert set(spatial_stats(maps, h * w, n_key, None, **masks)) == {"qk_nmi"}  # positions unknown: NMI only


@pytest.mark.parametrize("chunk", CHUNKS)
def test_cross_site_similarity_against_loops(chunk):
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(2, 6, 8)), rng.normal(size=(2, 6, 8))
    b[0, 1] = 0.0  # a zero row at one site: that query is left out
    key_mask = torch.ones(2, 8, dtype=torch.bool)
    key_mask[1, 3] = False
    got = cross_site_similarity(row_chunks(torch.tensor(a), chunk), row_chunks(torch.tensor(b), chunk), 6, 8,
                                key_mask=key_mask)  # fmt: skip
    for n in range(2):
        keys = key_mask[n].numpy()
        cos = [a[n, i, keys] @ b[n, i, keys] / (np.linalg.norm(a[n, i, keys]) * np.linalg.norm(b[n, i, keys]))
               for i in range(6) if np.any(b[n, i, keys])]  # fmt: skip
        assert float(got[n]) == pytest.approx(np.mean(cos), abs=1e-12)
    with pytest.raises(ValueError, match="chunks differ"):
        cross_site_similarity(row_chunks(torch.tensor(a), 2), row_chunks(torch.tensor(b), 3), 6, 8)


def test_a_source_that_misses_queries_is_refused():
    maps = torch.rand(5, 4)
    with pytest.raises(ValueError, match="held 3 queries"):
        query_key_nmi(lambda: iter([(0, maps[:3])]), 5, 4)


def test_two_batch_dims_give_the_per_map_values():
    rng = np.random.default_rng(11)
    logits = torch.tensor(rng.normal(size=(2, 3, 6, 7)) * 2)  # [images, heads, N_query, N_key]
    maps = torch.softmax(logits, dim=-1)
    nmi = query_key_nmi(row_chunks(maps, 4), 6, 7)
    fit = logit_rank1(row_chunks(logits, 4), 6, 7, tol=1e-12)
    assert nmi.shape == fit.share.shape == (2, 3) and fit.gains.shape == (2, 3, 6)
    for i in range(2):
        for h in range(3):
            assert float(nmi[i, h]) == pytest.approx(naive_nmi(maps[i, h].numpy(), 1e-8), abs=1e-12)
            centred = logits[i, h].numpy() - logits[i, h].numpy().mean(axis=1, keepdims=True)
            s = np.linalg.svd(centred, compute_uv=False)
            assert float(fit.share[i, h]) == pytest.approx(s[0] ** 2 / (s**2).sum(), abs=1e-9)
