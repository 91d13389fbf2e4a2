"""The query-dependence suite's cosine distances (``att_gain_only``, ``att_pairwise_only``, ``att_abs``,
``att_norm_weighted``) follow the run's ``convention`` as ``att`` does: under ``"(1-cos)/2"`` each is half its
``"1-cos"`` value, and both equal numpy float64 on the full maps built from ``q`` and ``k`` (SVD for the gain-only
maps), for NL blocks and ViT heads, eager and native."""
import numpy as np
import pytest
import torch

from naive import mean_cos_dist_all_pairs
from nlanalysis import kernels
from nlanalysis.blocks.attention import PairwiseAttention
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.blocks.tokens import TokenLayout
from nlanalysis.measure import head_suite, native_suite
from nlanalysis.measure.blocks import measure_block
from nlanalysis.measure.heads import measure_heads
from nlanalysis.metrics.query_dependence import signed_map_stats

CONVENTIONS = ("1-cos", "(1-cos)/2")
native = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _gain_only(logits):
    """``att_gain_only`` ("1-cos"): the maps ``softmax(g_i v)`` of the top singular pair of the row-centred logits."""
    u, s, vt = np.linalg.svd(logits - logits.mean(axis=1, keepdims=True), full_matrices=False)
    return mean_cos_dist_all_pairs(_softmax(np.outer(u[:, 0] * s[0], vt[0])))


def _pairwise(q, k, scale, softmax):
    """``att_pairwise_only`` ("1-cos"): the maps of ``scale (q_i - mu_q).(k_j - mu_k)`` (their softmax, or themselves)."""
    pair = scale * (q - q.mean(0)) @ (k - k.mean(0)).T
    return mean_cos_dist_all_pairs(_softmax(pair) if softmax else pair)


def _signed(a):
    """``att_abs`` and ``att_norm_weighted`` ("1-cos"): the second over ordered pairs ``i != j``, weights ``||a_i|| ||a_j||``."""
    off = ~np.eye(len(a), dtype=bool)
    norms = np.linalg.norm(a, axis=1)
    return mean_cos_dist_all_pairs(np.abs(a)), 1 - (a @ a.T)[off].sum() / np.outer(norms, norms)[off].sum()


def _nl_reference(mode, q, k, scale):
    """The columns ("1-cos") of one image's NL map from ``q`` ``[N, C]`` and ``k`` ``[N_k, C]``."""
    logits = q @ k.T
    if mode == "dot_product":
        att_abs, weighted = _signed(logits / len(k))
        return dict(att_pairwise_only=_pairwise(q, k, 1 / len(k), False), att_abs=att_abs, att_norm_weighted=weighted)
    return dict(att_gain_only=_gain_only(scale * logits), att_pairwise_only=_pairwise(q, k, scale, True))


def _spy(monkeypatch, module):
    """Count the calls of ``module.suite_columns`` (the native columns)."""
    calls, real = [], module.suite_columns
    monkeypatch.setattr(module, "suite_columns", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("mode, kernel, level", [
    ("embedded_gaussian", "eager", "all"),
    pytest.param("embedded_gaussian", "native", "cheap", marks=native),
    ("dot_product", "eager", "all"),
])  # fmt: skip
def test_nl_suite_distances_follow_the_convention(monkeypatch, mode, kernel, level):
    g = torch.Generator().manual_seed(3)
    b, c, h, w = 2, 5, 6, 8
    x, ctx = torch.randn(b, c, h, w, generator=g), torch.randn(b, c, h, w, generator=g)
    q, k = torch.randn(b, h * w, c, generator=g), torch.randn(b, c, h * w, generator=g)
    att = PairwiseAttention(mode, q, k, (h, w), (h, w), scale=0.5)
    calls = _spy(monkeypatch, native_suite)
    found = {conv: measure_block(att, x, ctx, convention=conv, kernels=kernel, query_dependence=level, stride=(4.0, 4.0),
                                 jsd_pairs=0) for conv in CONVENTIONS}  # fmt: skip
    assert len(calls) == (2 if kernel == "native" else 0)  # the native pass gave the columns, once per convention
    qd, kd = q.double().numpy(), k.double().numpy().transpose(0, 2, 1)
    want = [_nl_reference(mode, qd[i], kd[i], 0.5) for i in range(b)]
    assert torch.allclose(found["(1-cos)/2"].att, found["1-cos"].att / 2, rtol=1e-12)
    for name in [n for n in want[0] if level == "all" or n != "att_gain_only"]:
        one, half = getattr(found["1-cos"], name)[:, 0], getattr(found["(1-cos)/2"], name)[:, 0]
        ref = np.array([r[name] for r in want])
        np.testing.assert_allclose(one.numpy(), ref, rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(half.numpy(), ref / 2, rtol=1e-5, atol=1e-7, err_msg=name)
        torch.testing.assert_close(half, one / 2, rtol=1e-12, atol=0.0, msg=name)


def _vit(g):
    lay = TokenLayout(grid=(4, 5), n_cls=1, patch_size=(8, 8))
    n = lay.n_tokens
    att = HeadAttention(torch.randn(2, 2, n, 4, generator=g) * 2, torch.randn(2, 2, n, 4, generator=g), 0.5, lay)
    return att, torch.randn(2, n, 8, generator=g)


def _vit_reference(att):
    """``att_gain_only`` of every head and the head mean (``log`` of the mean map), ``att_pairwise_only`` of every head
    ("1-cos"), ``[B, heads + 1]``: patch queries, patch keys; the head mean is that of the heads' rows of the softmax over
    every token, on the patch keys."""
    p = att.layout.n_prefix
    q, k = att.query.double().numpy()[:, :, p:], att.key.double().numpy()
    b, heads = q.shape[:2]
    gain, pair = np.zeros((b, heads + 1)), np.full((b, heads + 1), np.nan)
    for i in range(b):
        logits = [att.scale * q[i, h] @ k[i, h].T for h in range(heads)]  # [n_patch, N] over every token
        for h in range(heads):
            gain[i, h] = _gain_only(logits[h][:, p:])
            pair[i, h] = _pairwise(q[i, h], k[i, h, p:], att.scale, True)
        gain[i, heads] = _gain_only(np.log(np.mean([_softmax(lg)[:, p:] for lg in logits], axis=0)))
    return dict(att_gain_only=gain, att_pairwise_only=pair)


@pytest.mark.parametrize("kernel", ["eager", pytest.param("native", marks=native)])
def test_vit_suite_distances_follow_the_convention(monkeypatch, kernel):
    att, x = _vit(torch.Generator().manual_seed(5))
    calls = _spy(monkeypatch, head_suite)
    found = {conv: measure_heads(att, x, x, convention=conv, kernels=kernel, query_dependence="all", stride=(8.0, 8.0), jsd_pairs=0)
             for conv in CONVENTIONS}  # fmt: skip
    assert len(calls) == (2 if kernel == "native" else 0)  # att_pairwise_only from the kernel's sums
    want = _vit_reference(att)
    assert torch.allclose(found["(1-cos)/2"].att, found["1-cos"].att / 2, rtol=1e-12)
    for name, ref in want.items():
        one, half = getattr(found["1-cos"], name), getattr(found["(1-cos)/2"], name)
        np.testing.assert_allclose(one.numpy(), ref, rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(half.numpy(), ref / 2, rtol=1e-5, atol=1e-7, err_msg=name)
        torch.testing.assert_close(half, one / 2, rtol=1e-12, atol=0.0, equal_nan=True, msg=name)


def test_signed_stats_convention_and_zero_rule():
    """The metric itself: ``att_abs`` follows ``zero`` and ``convention``, ``att_norm_weighted`` the convention (its zero
    rows weigh 0); an unknown convention raises."""
    rows = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [-1.0, 1.0, 3.0], [2.0, 0.5, -0.5]])
    kept = rows[[0, 2, 3]]
    att_abs, weighted = _signed(kept)
    for conv, f in (("1-cos", 1.0), ("(1-cos)/2", 0.5)):
        got_abs, got_w = signed_map_stats(torch.tensor(rows), 4, 3, convention=conv)
        np.testing.assert_allclose([float(got_abs), float(got_w)], [att_abs * f, weighted * f], rtol=1e-12)
        # "orthogonal": the zero row has cosine 0 with every row (itself included) and counts in N
        u = np.abs(kept) / np.linalg.norm(kept, axis=1, keepdims=True)
        orth = 1 - (u.sum(0) @ u.sum(0)) / 16
        got = signed_map_stats(torch.tensor(rows), 4, 3, convention=conv, zero="orthogonal")[0]
        np.testing.assert_allclose(float(got), orth * f, rtol=1e-12)
    with pytest.raises(ValueError, match="all-zero"):
        signed_map_stats(torch.tensor(rows), 4, 3, zero="raise")
    with pytest.raises(ValueError, match="convention"):
        signed_map_stats(torch.tensor(rows), 4, 3, convention="cos")
