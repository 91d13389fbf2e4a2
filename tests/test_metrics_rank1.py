"""The rank-1 fit's two methods (metrics/rank1.py through decomposition.logit_rank1): the one-pass Gram matrix
and the streamed block subspace iteration, each against numpy.linalg.svd of the full float64 centred logits
(share to 1e-9, profile to 1e-7), with masks, chunking, a zero map (and maps zero only to rounding), and gain_only
forming its own gains."""
import math

import numpy as np
import pytest
import torch

from nlanalysis.metrics.decomposition import gain_only, logit_rank1
from nlanalysis.metrics.query_dependence import row_chunks
from nlanalysis.metrics.rank1 import GRAM_MAX_KEYS, top_profile


def _logits(rng, n_q, n_k, spectrum):
    """Logits whose centred part has singular values ``spectrum`` (random orthonormal factors) plus row offsets."""
    r = len(spectrum)
    u = np.linalg.qr(rng.normal(size=(n_q, r)))[0]
    v = np.linalg.qr(rng.normal(size=(n_k, r)) - 0)[0]
    v -= v.mean(axis=0)  # centred columns on the key side keep the rows centred
    return u @ np.diag(spectrum) @ v.T + rng.normal(size=(n_q, 1)) * 3


def _svd(logits):
    c = logits - logits.mean(axis=1, keepdims=True)
    _, s, vt = np.linalg.svd(c)
    return s[0] ** 2 / (s**2).sum(), vt[0], c


@pytest.mark.parametrize("method", ["gram", "subspace"])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_both_methods_match_the_svd(method, chunk):
    rng = np.random.default_rng(7)
    spectra = [[9.0, 1.0, 0.5, 0.2], [3.0, 2.7, 2.0, 1.0, 0.5, 0.3], [5.0, 4.9, 4.0, 0.1]]  # dominant, close, very close
    logits = np.stack([_logits(rng, 23, 37, s) + 0.05 * rng.normal(size=(23, 37)) for s in spectra])
    fit = logit_rank1(row_chunks(torch.tensor(logits), chunk), 23, 37, method=method, max_iter=500)
    assert bool(fit.converged.all())
    for b in range(3):
        share, v, c = _svd(logits[b])
        assert float(fit.share[b]) == pytest.approx(share, abs=1e-9)
        assert abs(float(fit.profile[b].numpy() @ v)) == pytest.approx(1.0, abs=1e-7)
        np.testing.assert_allclose(fit.gains[b].numpy(), c @ fit.profile[b].numpy(), atol=1e-9)
        assert fit.gains[b].sum() >= 0
    assert (fit.iterations == 2) if method == "gram" else (fit.iterations > 2)


def test_subspace_needs_few_passes_on_a_dominant_map():
    rng = np.random.default_rng(8)
    logits = torch.tensor(_logits(rng, 40, 30, [10.0, 0.5, 0.3, 0.2, 0.1, 0.05]) + 0.01 * rng.normal(size=(40, 30)))
    fit = logit_rank1(logits, 40, 30, method="subspace", gains=False)
    assert fit.gains is None and fit.iterations <= 6
    assert float(fit.share) == pytest.approx(_svd(logits.numpy())[0], abs=1e-12)


@pytest.mark.parametrize("method", ["gram", "subspace"])
def test_masks_zero_maps_and_batches(method):
    rng = np.random.default_rng(9)
    logits = torch.tensor(np.stack([_logits(rng, 12, 10, [4.0, 2.0, 1.0]) for _ in range(3)])).reshape(3, 1, 12, 10)
    logits[2] = 1.5  # every row constant: L = 0
    key_mask = torch.ones(3, 1, 10, dtype=torch.bool)
    key_mask[0, 0, [2, 7]] = False
    query_mask = torch.ones(3, 1, 12, dtype=torch.bool)
    query_mask[1, 0, :4] = False
    fit = logit_rank1(row_chunks(logits, 5), 12, 10, key_mask=key_mask, query_mask=query_mask, method=method, max_iter=300)
    for b in range(2):
        sub = logits[b, 0][query_mask[b, 0]][:, key_mask[b, 0]].numpy()
        share, v, _ = _svd(sub)
        assert float(fit.share[b, 0]) == pytest.approx(share, abs=1e-9)
        assert abs(float(fit.profile[b, 0][key_mask[b, 0]].numpy() @ v)) == pytest.approx(1.0, abs=1e-7)
        assert torch.all(fit.profile[b, 0][~key_mask[b, 0]] == 0)
    assert math.isnan(float(fit.share[2, 0])) and torch.all(fit.gains[2] == 0)


def test_gain_only_forms_the_gains_itself_and_auto_picks_by_keys():
    rng = np.random.default_rng(10)
    logits = torch.tensor(_logits(rng, 15, 11, [3.0, 1.0, 0.4]))
    with_gains = gain_only(row_chunks(logits, 4), logit_rank1(logits, 15, 11))
    without = gain_only(row_chunks(logits, 4), logit_rank1(logits, 15, 11, gains=False), n_query=15)
    for a, b in zip(with_gains, without):
        assert float(a) == pytest.approx(float(b), abs=1e-12)
    with pytest.raises(ValueError, match="n_query"):
        gain_only(logits, logit_rank1(logits, 15, 11, gains=False))
    with pytest.raises(ValueError, match="method"):
        logit_rank1(logits, 15, 11, method="lanczos")

    def stream(k):
        from nlanalysis.metrics.query_dependence import Stream

        return lambda: Stream(torch.zeros(1, 2, k, dtype=torch.float64), 2, k)

    assert top_profile(stream(GRAM_MAX_KEYS)).method == "gram"
    assert top_profile(stream(GRAM_MAX_KEYS + 1)).method == "subspace"


@pytest.mark.parametrize("method", ["gram", "subspace"])
def test_centred_logits_zero_to_rounding_read_nan(method):
    """Flat rows (``log(1/K)`` repeated: their float64 mean rounds, so the centred logits are ~1e-16, not 0) have no key
    profile: NaN for every key count, as for exact zeros; a shared map with a profile, or flat rows with a real (if small)
    one, keep the SVD's share."""
    from nlanalysis.metrics.rank1 import centred

    rng = np.random.default_rng(11)
    # log of float32 1/K in float64, as log_rows reads float32 maps: the row mean rounds for K = 7, 48, 1000, not 32
    flat = [torch.log(torch.full((20, k), 1 / k, dtype=torch.float32).double()) for k in (48, 32, 7, 1000)]
    left = [float(centred(f[None], torch.ones(1, 20, dtype=torch.bool), torch.ones(1, f.shape[1], dtype=torch.bool)).abs().max())
            for f in flat]  # fmt: skip
    assert left[1] == 0 and min(left[0], left[2], left[3]) > 0  # the rounding the rule is for
    for f in flat:
        assert math.isnan(float(logit_rank1(f, *f.shape, method=method, max_iter=300).share))
    shared = np.tile(rng.normal(size=(1, 30)), (20, 1))  # one profile, every row: rank 1 exactly
    small = np.full((20, 30), math.log(1 / 30)) + 1e-9 * _logits(rng, 20, 30, [3.0, 1.0, 0.5])  # flat, plus a 1e-9 map
    for f in (shared, small):
        got = float(logit_rank1(torch.tensor(f), *f.shape, method=method, max_iter=300).share)
        assert got == pytest.approx(_svd(f)[0], abs=1e-6)


@pytest.mark.parametrize("kernels", ["eager", "native"])
def test_uniform_maps_read_nan_through_the_suite(kernels):
    """``measure_block(query_dependence="all")``: a uniform shared map (GC-like) and per-query softmax maps whose logits are
    flat along every row (keys all alike) give ``logit_rank1`` NaN with and without padding (32 or 48 valid keys), eager
    and with the native map kernel; ``gain_only_tv`` 0 (the rebuilt maps are the uniform maps themselves)."""
    from nlanalysis import kernels as native
    from nlanalysis.blocks.attention import PairwiseAttention, SharedAttention
    from nlanalysis.measure.blocks import measure_block

    if kernels == "native" and not native.available():
        pytest.skip("the native kernels do not build here")
    h, w = 6, 8
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, h, w, generator=g)
    valid = torch.ones(2, h, w, dtype=torch.bool)
    valid[1, 4:] = False
    key = torch.randn(2, 4, 1, generator=g).expand(2, 4, h * w).contiguous()  # every key the same: flat logit rows
    maps = [SharedAttention(torch.full((2, h * w), 1 / (h * w)), (h, w)),
            PairwiseAttention("embedded_gaussian", torch.randn(2, h * w, 4, generator=g), key, (h, w), (h, w), scale=0.7)]
    for att in maps:
        for v in (None, valid):
            st = measure_block(att, x, x, valid=v, query_dependence="all", kernels=kernels, jsd_pairs=0)
            assert st.logit_rank1.isnan().all(), (type(att).__name__, v is not None, st.logit_rank1)
            assert torch.allclose(st.gain_only_tv, torch.zeros_like(st.gain_only_tv), atol=1e-12)
