"""The query-dependence suite reads an NL block's maps once for its per-row statistics, the object context and the
rank-1 fit's Gram matrix (measure/query_dep.suite_pass): counted row formations, the same columns as the separate
functions (each checked elsewhere against naive float64 code), and no maps rebuilt for the object context."""
import math

import numpy as np
import pytest
import torch

from nlanalysis.blocks.attention import PairwiseAttention
from nlanalysis.measure.query_dep import ObjectLabels, block_maps, suite_pass
from nlanalysis.metrics.decomposition import dnl_split, gain_only, logit_rank1
from nlanalysis.metrics.object_context import object_context
from nlanalysis.metrics.query_dependence import row_chunks, signed_map_stats, spatial_stats


class Counting(PairwiseAttention):
    """A pairwise map that counts the query rows it forms."""

    formed = 0

    def _logits(self, index):
        out = super()._logits(index)
        Counting.formed += out.shape[1]
        return out

    def _rows(self, index):
        out = super()._rows(index)
        if self.mode in ("concatenation", "dot_product"):
            Counting.formed += out.shape[1]
        return out


def _att(mode, n=6, m=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, n * m, d, generator=g, dtype=torch.float64)  # float64: chunking changes no rounding
    k = torch.randn(2, d, n * m, generator=g, dtype=torch.float64)
    if mode == "concatenation":
        q, k = q[..., :1], k[:, :1]
    return Counting(mode, q, k, (n, m), (n, m), scale=0.7)


def _labels(n_query, seed=1):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, 3, (2, n_query), generator=g)
    keys = lab.clone()
    keys[0, :3] = -1
    return ObjectLabels(lab, keys, 3)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product", "concatenation"])
@pytest.mark.parametrize("level", ["cheap", "all"])
def test_one_pass_feeds_every_per_row_statistic(mode, level):
    att = _att(mode)
    n = att.n_query
    qm = torch.ones(2, n, dtype=torch.bool)
    qm[1, -4:] = False
    km = torch.ones(2, n, dtype=torch.bool)
    km[1, -4:] = False
    site = block_maps(att, qm, km, (8.0, 8.0), chunk_size=7)
    labels = _labels(n)
    Counting.formed = 0
    cols, masses = suite_pass(site, level, labels)
    passes = 1 + (level == "all" and att.distribution)  # + the gain-only maps (needs the fitted profile)
    assert Counting.formed == n * passes  # each query row (of both images at once) formed once a pass
    # the same values as the separate functions, each tested against naive float64 code
    maps = att.full().detach().double()
    masks = dict(key_mask=km, query_mask=qm)
    if att.nonnegative:
        where = (site.query_pos, site.key_pos, site.key_cell)
        normed = torch.where(km[:, None, :], maps, 0.0)
        normed = normed / normed.sum(-1, keepdim=True).clamp_min(1e-300)
        # rows all zero on the valid keys (concatenation: ReLU) are left out of the spatial columns, whatever the mask
        counted = qm & (normed.amax(-1) > 0)
        want = spatial_stats(normed, n, n, where, key_mask=km, query_mask=counted)
        for name, value in want.items():
            np.testing.assert_allclose(cols[name][:, 0], value, rtol=1e-12, atol=1e-14, err_msg=name)
        ref = object_context(row_chunks(maps), labels.queries, labels.keys, None, 3)
        from nlanalysis.metrics.object_context import context_from_mass

        got = context_from_mass(*masses[0])
        for name, value in ref.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-14, equal_nan=True, err_msg=name)
    else:
        assert masses == [None]
        att_abs, weighted = signed_map_stats(maps, n, n, **masks)
        np.testing.assert_allclose(cols["att_abs"][:, 0], att_abs, rtol=1e-12)
        np.testing.assert_allclose(cols["att_norm_weighted"][:, 0], weighted, rtol=1e-12)
    if level == "all":
        score = att.logits(0, n).double() if att.distribution else maps
        fit = logit_rank1(score, n, n, **masks)
        np.testing.assert_allclose(cols["logit_rank1"][:, 0], fit.share, rtol=1e-12)
        if att.distribution:
            att_gain, tv = gain_only(score, fit, **masks)
            np.testing.assert_allclose(cols["att_gain_only"][:, 0], att_gain, rtol=1e-10)
            np.testing.assert_allclose(cols["gain_only_tv"][:, 0], tv, rtol=1e-10)
    else:
        assert math.isnan(float(cols["logit_rank1"][0, 0]))
    if mode != "concatenation":
        split = dnl_split(att.query, att.key.transpose(1, 2), att.scale if att.distribution else 1 / n, softmax=att.distribution, **masks)
        np.testing.assert_allclose(cols["unary_var_share"][:, 0], split.unary_var_share, rtol=1e-12)


def test_object_context_of_an_nl_capture_rebuilds_no_maps(tmp_path, monkeypatch):
    from extract_inputs import tiny_checkpoint

    import nlanalysis.extract.object_sites as sites
    from nlanalysis.extract import load_analysis

    analysis = load_analysis(tiny_checkpoint(tmp_path / "tiny.pth"))
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(1, 64, 64, dtype=torch.int64)
    labels[:, 10:40, 5:30] = 4
    labels[:, 40:, 30:] = 9

    def run():
        analysis.set_query_dependence("cheap")
        with analysis.capture(queries=None, seed=0, jsd_pairs=16, chunk_size=None, controls=False) as cap:
            cap.set_objects(labels)
            analysis.model(images)
        return analysis.frame(cap.records, 1)

    folded = run()
    calls = []
    real = sites.rebuild_block_attention
    monkeypatch.setattr(sites, "rebuild_block_attention", lambda *a: calls.append(1) or real(*a))
    assert run()["own_object_lift"].notna().all() and not calls  # the suite's pass gave the label mass
    monkeypatch.setattr(sites, "OBJECT_MASS", "not_there")  # the fallback: maps rebuilt from the kept input
    rebuilt = run()
    assert calls
    cols = [c for c in folded if c.startswith(("own_object", "other_", "background_"))]
    np.testing.assert_allclose(folded[cols].to_numpy(float), rebuilt[cols].to_numpy(float), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product", "concatenation"])
def test_the_eager_map_statistics_share_the_suite_pass(mode):
    """measure_block with the suite on (eager rows): one pass for the map statistics and the suite, the same
    map statistics as with the suite off, and the suite's columns as measured beside a separate pass."""
    from nlanalysis.measure import measure_block

    att = _att(mode)
    x = torch.randn(2, 3, *att.query_shape, generator=torch.Generator().manual_seed(5))
    valid = torch.ones(2, *att.query_shape, dtype=torch.bool)
    valid[1, :, -2:] = False
    objects = torch.zeros(2, *att.query_shape, dtype=torch.int64)
    objects[:, 1:4, 1:3] = 7
    common = dict(valid=valid, objects=objects, jsd_pairs=0, kernels="eager", chunk_size=7)
    off = measure_block(att, x, x, **common)
    Counting.formed = 0
    on = measure_block(att, x, x, query_dependence="cheap", **common)
    assert Counting.formed == att.n_query  # one pass (the DNL split works on q and k)
    for name in ("att", "att_entropy", "att_max", "att_zero_rows", "att_own_object", "own_object_share", "input", "output"):
        np.testing.assert_array_equal(getattr(on, name), getattr(off, name), err_msg=name)
    # the suite's columns against the suite run on its own (rows counted by the map statistics' pass)
    from nlanalysis.measure.blocks import block_masks

    masks = block_masks(valid, objects, 2, att.query_shape, att.key_shape, x.device)
    counted = (att.full().abs().amax(-1) > 0) & masks.qmask
    alone, _ = suite_pass(block_maps(att, counted, masks.kmask, None, 7), "cheap")
    for name, value in alone.items():
        np.testing.assert_allclose(getattr(on, name), value, rtol=1e-12, equal_nan=True, err_msg=name)
    assert (getattr(on, "object_mass") is None) == (mode == "dot_product")
