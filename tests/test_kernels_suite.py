"""The suite's sums of the native row pass (``suite.c``) against a naive float64 loop over the same rows.

The reference reads the softmax the kernel wrote (``probs``) and the logits it read, so both sides see the
same float32 rows: what is left is the kernel's float32 transcendentals (its polynomial log of the NMI's rows,
checked against float64 log here, the pairwise softmax's ``exp``, ~1e-7 relative) under float64 sums, hence ``rtol=2e-6``.
"""
import math

import numpy as np
import pytest
import torch

from nlanalysis import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")

EPS = 1e-8


def _naive(logits, probs, km, qm, first, sp0, scale, unary, qpos, kpos, reach, mean):
    """The sums of ``SuiteSums`` by loops: every (image, query, map) row in float64."""
    b, h, nq, n = logits.shape
    k = n - first
    maps = h + int(mean)
    ks = k - sp0
    p_k, sums = np.zeros((b, maps, ks)), np.zeros((5, b, maps))
    pair_s, pair_sums = np.zeros((b, h, k)), np.zeros((2, b, h))
    for i in range(b):
        w = km[i].astype(np.float64) if km is not None else np.ones(k)
        ws = w[sp0:]
        for q in range(nq):
            if qm is not None and not qm[i, q]:
                continue
            rows = [probs[i, j, q, first:].astype(np.float64) * w for j in range(h)]
            if mean:  # the mean of the masked rows, as float32 rows
                rows.append(np.mean(np.stack([r.astype(np.float32) for r in rows]), 0, dtype=np.float64))
            d = np.hypot(qpos[q, 0] - kpos[:, 0], qpos[q, 1] - kpos[:, 1])
            near = (np.abs(qpos[q, 0] - kpos[:, 0]) <= reach[0]) & (np.abs(qpos[q, 1] - kpos[:, 1]) <= reach[1])
            for m, r in enumerate(rows):
                rs = r[sp0:]
                t = rs.sum()
                a = rs / t if t > 0 else np.zeros_like(rs)
                y = a + EPS * ws
                total = y.sum()
                p_k[i, m] += y / total
                sums[0, i, m] += -(y[y > 0] / total * np.log(y[y > 0] / total)).sum()
                sums[1, i, m] += (a * d).sum()
                sums[2, i, m] += (a * near).sum()
                sums[3, i, m] += (ws * near).sum()
                sums[4, i, m] += 1
            for j in range(h):
                x = logits[i, j, q, first:].astype(np.float64) - unary[i, j]
                v = w > 0
                p = np.where(v, np.exp(scale * (x - x[v].max())), 0.0)
                pair_s[i, j] += p / np.linalg.norm(p)
                pair_sums[0, i, j] += scale**2 * ((x[v] - x[v].mean()) ** 2).sum()
                pair_sums[1, i, j] += 1
    return p_k, sums, pair_s, pair_sums


@pytest.mark.parametrize("case", ["vit_all_keys", "vit_patch_keys", "nl_subsampled"])
def test_suite_sums_against_loops(case):
    g = torch.Generator().manual_seed(3)
    if case == "nl_subsampled":  # one map, no head mean, keys a 2x2 pool of a 6 x 8 grid, a padded image
        b, h, nq, n, first, sp0, mean, scale = 2, 1, 48, 12, 0, 0, False, 0.7
        qpos = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij"), -1).reshape(-1, 2) * 4 + 2
        kpos = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij"), -1).reshape(-1, 2) * 8 + 4
        reach = (12.0, 12.0)
    else:  # 3 heads and the mean, a class token (keys "all": spatial keys after it; "patch": the kernel skips it)
        b, h, nq, n, mean, scale = 2, 3, 16, 17, True, 0.5
        first, sp0 = (0, 1) if case == "vit_all_keys" else (1, 0)
        qpos = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(-1, 2) * 14 + 7
        kpos, reach = qpos, (21.0, 21.0)
    k = n - first
    logits = torch.randn(b, h, nq, n, generator=g) * 3
    logits[0, 0, 2] *= 40  # a sharp row: most weights underflow
    km = torch.ones(b, k)
    km[1, -3:] = 0  # padded keys in image 1
    if first == 0 and sp0:
        km[1, 0] = 1  # the class key stays valid
    qm = torch.ones(b, nq, dtype=torch.bool)
    qm[1, -4:] = False
    unary = torch.randn(b, h, k, generator=g, dtype=torch.float64)
    sums = kernels.SuiteSums(b, h, h + int(mean), k, spatial_from=sp0, unary=unary, query_pos=qpos, key_pos=kpos, reach=reach)
    probs = torch.empty_like(logits)
    half = nq // 2  # two calls, as chunks of queries: the sums add up
    for lo, hi in ((0, half), (half, nq)):
        part = torch.empty(b, h, hi - lo, n)
        kernels.row_stats(logits[:, :, lo:hi].contiguous(), km, qm[:, lo:hi], first, first, scale=scale, probs=part, mean=mean,
                          suite=sums, suite_start=lo)  # fmt: skip
        probs[:, :, lo:hi] = part
    want = _naive(logits.numpy(), probs.numpy(), km.numpy(), qm.numpy(), first, sp0, scale, unary.numpy(), qpos.double().numpy(),
                  kpos.double().numpy(), reach, mean)  # fmt: skip
    for name, got, ref in zip(("p_k", "sums", "pair_s", "pair_sums"), (sums.p_k, sums.sums, sums.pair_s, sums.pair_sums), want):
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-6, atol=1e-9, err_msg=name)
    assert sums.sums[4].sum() == qm.sum() * (h + int(mean))


def test_suite_sums_refuse_a_mismatch():
    sums = kernels.SuiteSums(1, 2, 3, 5)
    with pytest.raises(ValueError, match="suite's sums"):
        kernels.row_stats(torch.randn(1, 2, 4, 5), None, None, 0, 0, mean=False, suite=sums)
    with pytest.raises(ValueError, match="both query and key"):
        kernels.SuiteSums(1, 2, 3, 5, query_pos=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="keep_norms must be"):
        kernels.SuiteSums(1, 2, 3, 5, keep=torch.zeros(1, 3, 4, 5), keep_norms=torch.zeros(1, 3, 4))  # float32
    with pytest.raises(ValueError, match="previous_norms needs previous"):
        kernels.SuiteSums(1, 2, 3, 5, keep=torch.zeros(1, 3, 4, 5), previous_norms=torch.zeros(1, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="outside"):
        kernels.SuiteSums(1, 2, 3, 5, query_pos=torch.zeros(4, 2), key_pos=torch.zeros(5, 2)).call_args(2, 6)
    rows, norms = torch.zeros(2, 1, 3, 4, 5), torch.zeros(2, 1, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="keep and previous share memory"):  # the kernel's restrict pointers: no aliasing
        kernels.SuiteSums(1, 2, 3, 5, keep=rows[0], previous=rows[0])
    with pytest.raises(ValueError, match="keep_norms and previous_norms share memory"):
        kernels.SuiteSums(1, 2, 3, 5, keep=rows[0], previous=rows[1], keep_norms=norms[0], previous_norms=norms[0])
    kernels.SuiteSums(1, 2, 3, 5, keep=rows[0], previous=rows[1], keep_norms=norms[0], previous_norms=norms[1])  # apart: taken
    assert math.isfinite(float(sums.sums.sum()))


def test_unary_term_from_the_logits_of_one_call():
    """``unary="logits"``: the kernel forms ``u_j`` as the mean over valid queries of their logits rows (class rows before
    them excluded), then the same sums as with ``u`` given."""
    g = torch.Generator().manual_seed(4)
    b, h, pre, nq, n = 2, 3, 1, 16, 17
    logits = torch.randn(b, h, pre + nq, n, generator=g) * 2
    qm = torch.ones(b, nq, dtype=torch.bool)
    qm[0, :5] = False
    km = torch.ones(b, n - 1)
    km[0, -4:] = 0
    want = (logits[:, :, pre:, 1:].double() * qm[:, None, :, None]).sum(2) / qm.sum(1)[:, None, None]
    found = {}
    for unary in ("logits", want):
        sums = kernels.SuiteSums(b, h, h + 1, n - 1, unary=unary)
        kernels.row_stats(logits.clone(), km, qm, 1, 1, scale=0.6, probs=torch.empty_like(logits), pre=pre, suite=sums)
        found[isinstance(unary, str)] = sums
    np.testing.assert_allclose(found[True].unary.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)
    for name in ("p_k", "sums", "pair_s", "pair_sums"):
        np.testing.assert_allclose(getattr(found[True], name).numpy(), getattr(found[False], name).numpy(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="every query in one call"):
        found[True].call_args(0, nq)


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """``|got - want|`` in units of the float32 spacing at ``want`` (float64)."""
    return np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)


def test_log_polynomial_against_float64_log():
    """The suite's float log (a polynomial, ``log_positive``) is within 1 float32 ulp of float64 ``log`` (0.89 at worst
    over every float from 1e-37 to FLT_MAX, swept once outside the tests): here every float in [0.7, 1.42] (around the
    polynomial's seam at sqrt(2) and where log is near 0), a log-uniform sample of the whole range and the powers of
    2 and their neighbours; 0, negatives and floats below 1e-37 give log(1e-37)."""
    lo, hi = np.array([0.7, 1.42], dtype=np.float32).view(np.int32)
    near_one = np.arange(lo, hi + 1, dtype=np.int32).view(np.float32)
    g = np.random.default_rng(0)
    sample = np.exp(g.uniform(np.log(1e-37), np.log(3.4e38), 1 << 21)).astype(np.float32)
    powers = np.ldexp(np.float32(1.0), np.arange(-122, 128)).astype(np.float32)
    edges = np.concatenate([powers, np.nextafter(powers, np.float32(0)), np.nextafter(powers, np.float32(np.inf)),
                            np.array([1e-37, np.finfo(np.float32).max], dtype=np.float32)])  # fmt: skip
    x = np.concatenate([near_one, sample, edges[edges >= np.float32(1e-37)]])
    got = kernels.log_positive(torch.from_numpy(x)).numpy()
    err = _ulps(got, np.log(x.astype(np.float64)))
    assert err.max() <= 1.0, (x[err.argmax()], got[err.argmax()], err.max())
    assert np.abs(got - np.log(x.astype(np.float64))).max() <= 4e-6  # absolute: half an ulp of log(3e38) = 88.7 is 3.8e-6
    below = np.array([0.0, -0.0, -1.0, -3e38, 1e-38, 1e-40, 1e-45, np.nextafter(np.float32(1e-37), np.float32(0))], dtype=np.float32)
    floor = kernels.log_positive(torch.tensor([1e-37])).item()
    assert floor == pytest.approx(math.log(1e-37), rel=1e-7)
    assert (kernels.log_positive(torch.from_numpy(below)) == floor).all()


@pytest.mark.parametrize("norms", [False, True])  # the previous rows' squared norms formed again, or read (previous_norms)
@pytest.mark.parametrize("prev_maps", [4, 3])  # the same heads; another head count (then the head means only)
def test_rows_kept_and_compared_with_the_previous_site(prev_maps, norms):
    g = torch.Generator().manual_seed(5)
    b, h, nq, n = 2, 3, 12, 12
    qm = torch.ones(b, nq, dtype=torch.bool)
    qm[1, :3] = False
    km = torch.ones(b, n)
    km[1, -2:] = 0
    previous = torch.rand(b, prev_maps, nq, n, generator=g)
    previous[0, -1, 4] = 0  # a zero row there: left out
    keep = torch.full((b, h + 1, nq, n), -1.0)
    keep_norms = torch.full((b, h + 1, nq), -1.0, dtype=torch.float64)
    prev_norms = previous.double().square().sum(-1) if norms else None
    sums = kernels.SuiteSums(b, h, h + 1, n, spatial=False, keep=keep, previous=previous, keep_norms=keep_norms, previous_norms=prev_norms)
    logits = torch.randn(b, h, nq, n, generator=g)
    probs = torch.empty_like(logits)
    for lo, hi in ((0, 5), (5, nq)):
        part = torch.empty(b, h, hi - lo, n)
        kernels.row_stats(logits[:, :, lo:hi].contiguous(), km, qm[:, lo:hi], 0, 0, probs=part, suite=sums, suite_start=lo)
        probs[:, :, lo:hi] = part
    rows = probs.double() * km[:, None, None, :]
    rows = torch.cat([rows, rows.mean(1, keepdim=True)], 1)
    valid = qm[:, None, :, None].expand_as(keep)
    np.testing.assert_allclose(keep[valid].numpy(), rows[valid].numpy(), rtol=1e-6)  # float32 mean of float32 rows
    assert (keep[~valid] == -1).all()  # rows of padded queries are left as they were
    np.testing.assert_allclose(keep_norms[valid[..., 0]].numpy(), keep.double().square().sum(-1)[valid[..., 0]].numpy(), rtol=1e-13)
    assert (keep_norms[~valid[..., 0]] == -1).all()
    first = 0 if prev_maps == h + 1 else h
    for i in range(b):
        for m in range(h + 1):
            total, count = 0.0, 0
            for q in range(nq):
                a, p = rows[i, m, q].numpy(), previous[i, m - (h + 1) + prev_maps, q].double().numpy()
                if m >= first and qm[i, q] and np.linalg.norm(p) > 0:
                    total += a @ p / np.linalg.norm(a) / np.linalg.norm(p)
                    count += 1
            assert sums.cross[0, i, m].item() == pytest.approx(total, rel=1e-6, abs=1e-9)
            assert sums.cross[1, i, m].item() == count
    if norms:  # the norms given are the ones read: four times them halves every cosine
        again = kernels.SuiteSums(b, h, h + 1, n, spatial=False, keep=keep.clone(), previous=previous, previous_norms=prev_norms * 4)
        kernels.row_stats(logits, km, qm, 0, 0, probs=torch.empty_like(logits), suite=again)
        np.testing.assert_allclose(again.cross[0].numpy(), sums.cross[0].numpy() / 2, rtol=1e-12)


def test_kept_norms_chain_from_one_site_to_the_next():
    """A site's ``keep_norms`` read by the next as ``previous_norms`` give the cosines of its rows formed again."""
    g = torch.Generator().manual_seed(6)
    b, h, nq, n = 1, 2, 10, 11
    qm = torch.ones(b, nq, dtype=torch.bool)
    qm[0, 7:] = False
    kept, found = [], {}
    for site in range(2):
        logits = torch.randn(b, h, nq, n, generator=g) * 2
        for with_norms in (False, True):
            prev = kept[0] if site else None
            sums = kernels.SuiteSums(b, h, h + 1, n, spatial=False, keep=torch.zeros(b, h + 1, nq, n), previous=prev and prev[0],
                                     previous_norms=prev[1] if prev and with_norms else None)  # fmt: skip
            kernels.row_stats(logits, None, qm, 0, 0, probs=torch.empty_like(logits), suite=sums)
            found[with_norms] = sums
        kept.append((found[True].keep, found[True].keep_norms))
    np.testing.assert_allclose(found[True].cross.numpy(), found[False].cross.numpy(), rtol=1e-12)
    assert found[True].cross[1].tolist() == [[7.0, 7.0, 7.0]]
