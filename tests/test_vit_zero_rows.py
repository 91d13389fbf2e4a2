"""ViT rows that are all zero on the patch keys (a head that puts all its mass on the class token: the patch weights
underflow in float32) are left out of that map's ``qk_nmi``, ``att_distance_px``, ``att_local`` and
``att_local_uniform``, each map counting its own queries, as ``att_entropy`` and the NL blocks leave them out: the
cheap suite eager (:class:`~nlanalysis.measure.head_suite.HeadSuite`), native (the kernel's sums) and the general
suite (:func:`~nlanalysis.measure.query_dep.query_dependence`), against numpy float64 on the float32 maps."""
import numpy as np
import pytest
import torch

from nlanalysis import kernels
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.blocks.tokens import TokenLayout
from nlanalysis.measure import head_suite
from nlanalysis.measure.heads import measure_heads
from nlanalysis.measure.query_dep import head_maps, query_dependence

GRID, CELL, EPS = (4, 5), 8.0, 1e-8
SPATIAL = ("qk_nmi", "att_distance_px", "att_local", "att_local_uniform")
ZERO = [(0, 0, 0), (0, 0, 7), (1, 0, 3)]  # (image, head, patch query) whose patch row underflows


def _attention():
    """Two images, two heads; head 0 sends queries of ZERO to the class token with a logit gap of 400 (``exp(-400)``:
    0 in float32); every other row keeps its mass on the patches (gaps of a few units)."""
    lay = TokenLayout(grid=GRID, n_cls=1, patch_size=(8, 8))
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 2, lay.n_tokens, 4, generator=g), torch.randn(2, 2, lay.n_tokens, 4, generator=g)
    q[..., 0], k[:, :, 0] = 0.0, torch.tensor([100.0, 0.0, 0.0, 0.0])
    for b, h, i in ZERO:
        q[b, h, 1 + i, 0] = 4.0
    valid = torch.ones(2, *GRID, dtype=torch.bool)
    valid[1, -1] = False  # image 1: its last row of patches is padding
    return HeadAttention(q, k, 1.0, lay, "patch"), valid


def _centres():
    yy, xx = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
    return np.stack([(yy.ravel() + 0.5) * CELL, (xx.ravel() + 0.5) * CELL], 1)


def _expected(att, valid):
    """``{column: [B, heads + 1]}`` from the float32 softmax over every token: the patch keys, masked keys 0, the head
    mean of those rows; per map the valid queries whose row has a normal float32 weight, renormalised in float64."""
    probs = torch.softmax(att.logits(slice(None)), -1)[..., 1:]  # [B, H, n, n] float32 (patch queries, patch keys)
    b, heads, n, _ = probs.shape
    km = valid.reshape(b, n).numpy()
    rows = probs.double().numpy() * km[:, None, None, :]
    rows = np.concatenate([rows, rows.mean(1, keepdims=True)], 1)
    live32 = (probs * valid.reshape(b, 1, 1, n)).amax(-1).numpy() >= np.finfo(np.float32).tiny
    live = np.concatenate([live32, live32.any(1, keepdims=True)], 1)  # the mean's row is zero only where every head's is
    pos = _centres()
    d = pos[:, None, :] - pos[None, :, :]
    dist, near = np.hypot(d[..., 0], d[..., 1]), (np.abs(d) <= 1.5 * CELL).all(-1)
    out = {name: np.zeros((b, heads + 1)) for name in SPATIAL}
    for i in range(b):
        keys = np.flatnonzero(km[i])
        for m in range(heads + 1):
            counted = np.flatnonzero(km[i] & live[i, m])
            a = rows[i, m][np.ix_(counted, keys)]
            a = a / a.sum(1, keepdims=True)
            y = (a + EPS) / (a + EPS).sum(1, keepdims=True)
            p_k = y.mean(0)
            h_k, h_row = -(p_k * np.log(p_k)).sum(), -(y * np.log(y)).sum(1).mean()
            out["qk_nmi"][i, m] = (h_k - h_row) / np.sqrt(np.log(len(counted)) * h_k)
            out["att_distance_px"][i, m] = (a * dist[np.ix_(counted, keys)]).sum(1).mean()
            out["att_local"][i, m] = (a * near[np.ix_(counted, keys)]).sum(1).mean()
            out["att_local_uniform"][i, m] = near[np.ix_(counted, keys)].mean()
    return out, live


@pytest.mark.parametrize("kernel", ["eager", pytest.param("native", marks=pytest.mark.skipif(
    not kernels.available(), reason="the native kernels do not build here"))])  # fmt: skip
def test_zero_patch_rows_are_left_out_per_map(monkeypatch, kernel):
    att, valid = _attention()
    want, live = _expected(att, valid)
    assert sorted(zip(*np.nonzero(~live & valid.reshape(2, 1, -1).numpy()))) == [(b, h, i) for b, h, i in ZERO]
    calls = []
    real = head_suite.suite_columns
    monkeypatch.setattr(head_suite, "suite_columns", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(2, att.layout.n_tokens, 8, generator=torch.Generator().manual_seed(1))
    st = measure_heads(att, x, x, valid=valid, kernels=kernel, query_dependence="cheap", stride=(CELL, CELL), jsd_pairs=0)
    assert len(calls) == (kernel == "native")  # the kernel's sums gave the columns
    for name in SPATIAL:
        np.testing.assert_allclose(getattr(st, name).numpy(), want[name], rtol=1e-5, atol=1e-7, err_msg=name)
    # att_entropy leaves the same rows out: its share of zero rows is theirs
    np.testing.assert_allclose(st.att_zero_rows[:, :2].numpy(), [[2 / 20, 0], [1 / 15, 0]], rtol=1e-9, atol=1e-12)


def test_general_suite_leaves_them_out_too():
    att, valid = _attention()
    want, _ = _expected(att, valid)
    qm = valid.reshape(2, -1)
    got = query_dependence(head_maps(att, qm, qm, (CELL, CELL)), "cheap")
    for name in SPATIAL:
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-5, atol=1e-7, err_msg=name)
