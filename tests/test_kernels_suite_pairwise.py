"""The DNL pairwise-only rows of the native pass (``suite_pair`` of ``suite.c``) on both of its paths, against float64.

The kernel forms a row ``softmax_j(scale (l_j - u_j))`` as the row's softmax numerators ``exp(scale (l_j - max l))``
times one vector per image and head ``exp(-scale (u_j - u_min))`` where the row's largest product is at least
``e^-58`` (``L``, its log, at least -58: every dropped entry is then below 1.9e-13 of the row's largest), and with an
exp per key otherwise (counted in ``SuiteSums.pair_exp``). Rows here are built with ``L`` from 0 to -200 (away from
-58 by at least 1): the count must be the rows below -58, and every row equal to float64 to float32 rounding. The
rows' terms are large here (exponents of significant entries to ~75, unary terms ~700): an entry's exponent is
rounded to ~75 x 2^-24 = 4.5e-6 of itself on either path (main's exp per key of ``l - u``: 2.2e-6 seen on these rows),
hence ``rtol=5e-6`` (test_kernels_suite.py holds moderate rows to 2e-6). The count pins the floor between the rows'
nearest ``L`` on either side (about -55 and -63); forming every row as a product (no exp per key) fails the values
too: rows with ``L`` below about -87 lose their entries.
"""
import numpy as np
import pytest
import torch

from nlanalysis import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")

FLOOR = -58.0
DEPTHS = (0.0, 5.0, 20.0, 40.0, 52.0, 62.0, 70.0, 76.0, 80.0, 84.0, 95.0, 130.0, 200.0)  # -L of the built rows, less 1-3


def _rows(seed: int, b: int, h: int, nq: int, first: int, k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits ``[b, h, nq, first + k]``, the unary term ``[b, h, k]`` (float64) and key weights ``[b, k]``: per row,
    a block of keys with a low unary term sits ``depth / scale`` below the row's largest logit (held by a key with a
    high unary term), so the pairwise row lives on keys whose softmax weights are about ``e^-depth``."""
    g = torch.Generator().manual_seed(seed)
    low = k // 3  # keys 0..low-1: unary ~0 (the least: key 0, exactly 0); the rest: unary ~400 / scale
    unary = torch.cat([torch.rand(b, h, low, generator=g, dtype=torch.float64) * 2 / scale,
                       (400 + torch.rand(b, h, k - low, generator=g, dtype=torch.float64)) / scale], -1)  # fmt: skip
    unary[..., 0] = 0.0
    depth = torch.tensor(DEPTHS)[torch.randint(len(DEPTHS), (b, h, nq), generator=g)]
    logits = torch.randn(b, h, nq, first + k, generator=g) * 2 / scale
    top = logits.amax(-1, keepdim=True)
    logits[..., first : first + low] += top - logits[..., first : first + low].amax(-1, keepdim=True) - depth[..., None] / scale
    logits[..., first + low] = top[..., 0] + 1 / scale  # the row's largest logit: a high-unary key
    km = torch.ones(b, k)
    km[-1, 1::7] = 0  # masked keys in the last image, one of them ...
    unary[-1, :, 1] = -1e4  # ... with a unary term far below the valid keys' (not their least: masked)
    return logits, unary, km


def _reference(logits, unary, km, qm, first, scale):
    """pair_s, pair_sums and the rows' log-largest products ``L`` in float64 loops."""
    b, h, nq, _ = logits.shape
    pair_s, pair_sums, lmax = np.zeros(unary.shape), np.zeros((2, b, h)), np.full((b, h, nq), np.nan)
    for i in range(b):
        v = km[i] > 0
        for j in range(h):
            u = unary[i, j]
            for q in range(nq):
                if not qm[i, q]:
                    continue
                row = logits[i, j, q].astype(np.float64)
                x = row[first:] - u
                p = np.exp(scale * (np.where(v, x, -np.inf) - x[v].max()))
                pair_s[i, j] += p / np.linalg.norm(p)
                pair_sums[0, i, j] += scale**2 * ((x[v] - x[v].mean()) ** 2).sum()
                pair_sums[1, i, j] += 1
                lmax[i, j, q] = scale * (x[v].max() - row.max() + u[v].min())
    return pair_s, pair_sums, lmax


@pytest.mark.parametrize("first", [0, 1])  # every key; keys after a class token (its logit may be the row's largest)
def test_pairwise_rows_on_both_paths(first):
    b, h, nq, k, scale = 2, 3, 40, 36, 0.6
    logits, unary, km = _rows(7 + first, b, h, nq, first, k, scale)
    qm = torch.ones(b, nq, dtype=torch.bool)
    qm[0, -5:] = False
    sums = kernels.SuiteSums(b, h, h, k, unary=unary, spatial=False)
    kernels.row_stats(logits.clone(), km, qm, first, first, scale=scale, probs=torch.empty_like(logits), mean=False, suite=sums)
    pair_s, pair_sums, lmax = _reference(logits.numpy(), unary.numpy(), km.numpy(), qm.numpy(), first, scale)
    counted = lmax[~np.isnan(lmax)]
    assert np.abs(counted - FLOOR).min() > 1.0  # no row at the floor: the path of each is certain
    assert ((counted < -100).sum(), (counted > -30).sum()) > (10, 10)  # both paths taken, far from the floor too
    np.testing.assert_array_equal(sums.pair_exp.numpy(), (lmax < FLOOR).sum(-1))  # NaN (padded queries) compares False
    np.testing.assert_allclose(sums.pair_s.numpy(), pair_s, rtol=5e-6, atol=1e-9)
    np.testing.assert_allclose(sums.pair_sums.numpy(), pair_sums, rtol=1e-6)


def test_pairwise_rows_the_same_on_every_thread_count():
    """The per-(image, head) vectors are formed once by all threads (then a barrier): the sums do not depend on how
    many share the pass (float64 sums of the same float32 terms, in another order)."""
    b, h, nq, k, scale = 3, 2, 30, 20, 1.3
    logits, unary, km = _rows(11, b, h, nq, 0, k, scale)
    found, before = [], torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            sums = kernels.SuiteSums(b, h, h, k, unary="logits", spatial=False)
            kernels.row_stats(logits.clone(), km, None, 0, 0, scale=scale, probs=torch.empty_like(logits), mean=False, suite=sums)
            found.append(sums)
    finally:
        torch.set_num_threads(before)
    for name in ("pair_s", "pair_sums", "pair_exp"):
        np.testing.assert_allclose(getattr(found[0], name).numpy(), getattr(found[1], name).numpy(), rtol=1e-13, err_msg=name)
