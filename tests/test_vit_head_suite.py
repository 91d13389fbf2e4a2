"""The ViT cheap suite from one pass over each layer's rows (nlanalysis/measure/head_suite.py) against naive float64
computations on the full maps (test_query_dependence_pipeline's formulas: scipy-free loops and numpy), through the
capture's every path: the rows of the pass that answers the model's attention call, the lazy maps (eager kernels), the
previous layer's rows kept or recomputed for ``cross_site_cos``, gradients on or off."""
import numpy as np
import pandas as pd
import pytest
import torch

from nlanalysis import analyze, schema
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.blocks.tokens import TokenLayout
from nlanalysis.measure import head_suite
from nlanalysis.measure.head_suite import HeadSuite
from nlanalysis.measure.query_dep import CHEAP
from test_cross_site import _naive as _naive_cross
from test_query_dependence_pipeline import _check, _dnl, _nmi, _softmax, _spatial, _vit, _vit_input


def _naive_layer(att, valid_cells, keys_kept, grid, stride):
    """Per image: ``{map: {column: value}}`` of every head and the head mean, and the maps ``[M, n, K]`` (valid queries)."""
    p = att.layout.n_prefix
    q = (att.query * att.scale)[:, :, p:].double().numpy()
    k = att.key.double().numpy()
    out, maps = [], []
    for b in range(att.batch_size):
        cells = valid_cells[b]
        kept = keys_kept[b]
        per, rows = {}, []
        for h in range(att.num_heads):
            logits = (q[b, h] @ k[b, h].T)[cells]
            rows.append(_softmax(logits)[:, kept])
            per[h] = dict(zip(("unary_var_share", "att_pairwise_only"), _dnl(q[b, h][cells], k[b, h][kept], 1.0, True)))
        rows.append(np.mean(rows, axis=0))
        for h, a in enumerate(rows):
            e = per.setdefault(h if h < att.num_heads else schema.HEAD_MEAN, {})
            patch = a[:, a.shape[1] - int(cells.sum()) :]
            e["qk_nmi"] = _nmi(patch)
            e["att_distance_px"], e["att_local"], e["att_local_uniform"] = _spatial(patch, grid, stride, np.flatnonzero(cells),
                                                                                     np.flatnonzero(cells))  # fmt: skip
        out.append(per)
        maps.append(rows)
    return out, maps


@pytest.mark.parametrize("keys", ["patch", "all"])
@pytest.mark.parametrize("kernels", ["native", "eager"])
def test_cheap_suite_against_the_full_maps(keys, kernels):
    """Every cheap column of every head and the head mean, and ``cross_site_cos`` against the previous layer,
    on a padded batch: native (the rows of the pass that answers the attention call) and eager (the lazy maps)."""
    model = _vit(depth=3)
    x, valid = _vit_input()
    frame = analyze(model, x, valid=valid, keys=keys, query_dependence="cheap", kernels=kernels)
    from nlanalysis.capture.heads import ViTCapture

    with torch.no_grad(), ViTCapture(model, keys=keys, keep_attention=True, stats=False) as cap:
        model(x)
    previous = None
    for rec in cap.records:
        att = rec.attention
        cells = [valid[b, 8::16, 8::16].flatten().numpy() for b in range(2)]
        kept = [np.concatenate([np.full(att.layout.n_prefix, keys == "all"), c]) for c in cells]
        expected, maps = _naive_layer(att, cells, kept, att.layout.grid, (16, 16))
        for b in range(2):
            for m, e in expected[b].items():
                (row,) = frame[(frame.layer == rec.layer) & (frame["head"] == m) & (frame.image == b)].to_dict("records")
                _check(row, e, rtol=1e-5, atol=1e-6)
                index = m if m != schema.HEAD_MEAN else -1
                want = np.nan if previous is None else _naive_cross(maps[b][index], previous[b][index], np.ones(len(maps[b][index]), bool),
                                                                    np.ones(maps[b][index].shape[1], bool))  # fmt: skip
                np.testing.assert_allclose(row["cross_site_cos"], want, rtol=1e-5, atol=1e-6)
        previous = maps


def test_cross_site_from_recomputed_rows_and_with_gradients(monkeypatch):
    """Layers too big to keep their rows let the next one recompute them (same values to float32 rounding: torch's
    softmax, not the kernel's), and a forward with
    gradients on (answered calls stay differentiable) gives the same columns as one without."""
    model = _vit(depth=3)
    x, valid = _vit_input()
    kept = analyze(model, x, valid=valid, query_dependence="cheap")
    monkeypatch.setattr(head_suite, "ROWS_BYTES", 0)
    recomputed = analyze(model, x, valid=valid, query_dependence="cheap")
    pd.testing.assert_frame_equal(kept, recomputed, rtol=1e-6, atol=1e-8)  # float32 rounding: a few eps (1.2e-7) of the maps
    monkeypatch.undo()
    from nlanalysis.capture.heads import ViTCapture
    from nlanalysis.measure.cross_site import CrossSite, keep_options
    from nlanalysis.schema import VIT

    options = dict(query_dependence="cheap")
    with ViTCapture(model, **options, **keep_options(VIT, options)) as cap:
        cross = CrossSite(cap)
        cap.set_valid(valid)
        model(x.clone().requires_grad_()).sum().backward()
    assert cap.site.shared_calls == 3
    for rec in cap.records:
        row = kept[kept.layer == rec.layer].sort_values(["image", "head"])
        for name in (*CHEAP, "cross_site_cos"):
            got = getattr(rec.stats, name) if name != "cross_site_cos" else cross.column(rec)
            want = np.stack([row[row.image == b][name].to_numpy() for b in range(2)])
            heads = got.shape[1] - 1  # frame order: heads 0.., then the head mean (HEAD_MEAN sorts first: -1)
            np.testing.assert_allclose(np.concatenate([got[:, -1:], got[:, :heads]], 1), want, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_fed_wrong_raises_and_one_query_grid():
    """A suite fed fewer queries than its maps have refuses to give columns; a 1 x 1 grid gives NaN NMI (one query)."""
    layout = TokenLayout((1, 1), 1, 0, (16, 16))
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):  # (seed 0's first draw gave -inf, not NaN: log(1) * H(k) rounds to -0.0 where H(k) ~ -0)
        q, k = torch.randn(1, 2, 2, 4, generator=gen), torch.randn(1, 2, 2, 4, generator=gen)
        att = HeadAttention(q, k, 0.5, layout)
        suite = HeadSuite(att, None, None, (16.0, 16.0))
        with pytest.raises(RuntimeError, match="fed 0 of 1"):
            suite.result()
        values = suite.run().result()
        assert torch.isnan(values["qk_nmi"]).all() and torch.isnan(values["cross_site_cos"]).all()
        assert torch.allclose(values["att_local"], torch.ones(1, 3, dtype=torch.float64))
    from nlanalysis.metrics.query_dependence import query_key_nmi

    rows = torch.softmax(torch.randn(8, 1, 5, generator=gen), -1)  # eight images of one query each
    assert torch.isnan(query_key_nmi(rows, 1, 5)).all()
