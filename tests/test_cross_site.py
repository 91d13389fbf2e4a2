"""``cross_site_cos`` (DeepViT's cross-layer similarity, nlanalysis/measure/cross_site.py) in the pipeline, against a
naive float64 computation on the full maps: loops over queries, numpy norms; NL blocks on one grid and on two grids
(NaN), a padded random-init ViT per head and head mean (keys ``patch`` and ``all``), and ``extract``'s column."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import randomize_
from nlanalysis import analyze, schema
from nlanalysis.adapters import list_blocks
from nlanalysis.blocks.non_local import NonLocal2d
from nlanalysis.capture import Capture
from nlanalysis.measure.cross_site import CrossSite, SiteRows, keep_options, site_similarity
from test_query_dependence_pipeline import _vit, _vit_input


def _naive(a, b, queries, keys):
    """Mean over ``queries`` of cos(a_i, b_i) over ``keys`` (float64 loops); rows all zero at either map left out."""
    sims = []
    for i in np.flatnonzero(queries):
        x, y = a[i][keys].astype(np.float64), b[i][keys].astype(np.float64)
        nx, ny = math.sqrt(float(x @ x)), math.sqrt(float(y @ y))
        if nx > 0 and ny > 0:
            sims.append(float(x @ y) / (nx * ny))
    return np.mean(sims) if sims else np.nan


class TwoBlocks(nn.Module):
    """A stem and two NL blocks on one 10 x 12 grid (the second a dot product: signed maps), then a
    stride-2 conv and a third block on a 5 x 6 grid."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.nl1 = NonLocal2d(16, zeros_init=False)
        self.nl2 = NonLocal2d(16, mode="dot_product", zeros_init=False)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.nl3 = NonLocal2d(16, zeros_init=False)

    def forward(self, x):
        return self.nl3(self.down(self.nl2(self.nl1(self.stem(x)))))


def test_nl_blocks_against_the_full_maps():
    model = randomize_(TwoBlocks(), std=0.3).eval()
    x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 10, 12, dtype=torch.bool)
    valid[0, :, 9:], valid[1, 7:] = False, False
    frame = analyze(model, x, valid=valid, query_dependence="cheap", jsd_pairs=0)
    with torch.no_grad(), Capture(model, keep_tensors=True, stats=False) as cap:
        model(x)
    blocks = {info.name: info for info in list_blocks(model)}
    maps = {}
    for rec in cap.records:
        with torch.no_grad():
            maps[rec.name] = blocks[rec.name].adapter.attention(blocks[rec.name].module, rec.x).full().double().numpy()
    for b in range(2):
        cells = valid[b].flatten().numpy()
        got = frame[frame.image == b].set_index("block")[schema.column("cross_site_cos").name]
        assert math.isnan(got["nl1"]) and math.isnan(got["nl3"])  # the first block; another grid than nl2's
        assert got["nl2"] == pytest.approx(_naive(maps["nl1"][b], maps["nl2"][b], cells, cells), rel=1e-6, abs=1e-9)
        assert -1.0 <= got["nl2"] <= 1.0


@pytest.mark.parametrize("keys", ["patch", "all"])
def test_vit_heads_against_the_full_maps(keys):
    from nlanalysis.capture.heads import ViTCapture

    model = _vit(depth=3)  # the pipeline tests' random-init ViT, one layer more
    x, valid = _vit_input()  # padding: the last two patch columns / rows
    frame = analyze(model, x, valid=valid, keys=keys, query_dependence="cheap", jsd_pairs=0)
    with torch.no_grad(), ViTCapture(model, keys=keys, keep_attention=True, stats=False) as cap:
        model(x)
    per_layer = []
    for rec in cap.records:
        att = rec.attention
        p = att.layout.n_prefix
        logits = (att.query * att.scale).double() @ att.key.double().transpose(-2, -1)
        probs = logits.softmax(-1)[:, :, p:].numpy()  # patch queries, every token as key
        per_layer.append(probs if keys == "all" else probs[..., p:])
    heads = per_layer[0].shape[1]
    for b in range(2):
        cells = valid[b, 8::16, 8::16].flatten().numpy()
        kept = np.concatenate([np.ones(p, bool), cells]) if keys == "all" else cells
        for layer in range(len(per_layer)):
            rows = frame[(frame.image == b) & (frame.layer == layer)].set_index("head")["cross_site_cos"]
            if layer == 0:
                assert rows.isna().all()
                continue
            prev, cur = per_layer[layer - 1][b], per_layer[layer][b]
            for h in range(heads):
                assert rows[h] == pytest.approx(_naive(prev[h], cur[h], cells, kept), rel=1e-5, abs=1e-7)
            mean = _naive(prev.mean(0), cur.mean(0), cells, kept)
            assert rows[schema.HEAD_MEAN] == pytest.approx(mean, rel=1e-5, abs=1e-7)
            assert 0.0 <= rows.min() and rows.max() <= 1.0 + 1e-9


def _site(maps, call=0, grids=("g",)):
    """A :class:`SiteRows` over full maps ``[B, M, N, K]``, every query and key valid."""
    t = torch.as_tensor(maps)
    b, m, n, k = t.shape
    return SiteRows(call, grids, m, lambda s, e: t[:, :, s:e], torch.ones(b, n, dtype=torch.bool), torch.ones(b, k, dtype=torch.bool))


def test_site_similarity_rules():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 3, 5, 7)), rng.random((2, 3, 5, 7))
    got = site_similarity(_site(a), _site(b)).numpy()
    want = [[_naive(a[i, m], b[i, m], np.ones(5, bool), np.ones(7, bool)) for m in range(3)] for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(site_similarity(None, _site(b)).numpy()).all()  # the first site
    assert np.isnan(site_similarity(_site(a, grids=("other",)), _site(b)).numpy()).all()  # another grid
    fewer = site_similarity(_site(a[:, 1:]), _site(b)).numpy()  # other head counts: the head means (last maps) only
    assert np.isnan(fewer[:, :2]).all()
    np.testing.assert_allclose(fewer[:, 2], [_naive(a[i, 2], b[i, 2], np.ones(5, bool), np.ones(7, bool)) for i in range(2)])
    same = site_similarity(_site(a), _site(3.0 * a)).numpy()  # a map and a multiple of it: 1
    np.testing.assert_allclose(same, 1.0, rtol=1e-12)


def test_records_without_what_the_comparison_reads_are_refused():
    model = randomize_(TwoBlocks(), std=0.3).eval()
    assert keep_options(schema.NL, {"query_dependence": "off"}) == {}
    assert keep_options(schema.NL, {"query_dependence": "cheap"}) == {"keep_input": True}  # on the device, no host copy
    assert keep_options(schema.NL, {"keep_tensors": True}) == {}
    assert keep_options(schema.VIT, {"query_dependence": "all", "keep_attention": True}) == {}
    assert keep_options(schema.VIT, {"query_dependence": "all"}) == {}  # the suite compares the layers itself
    assert keep_options(schema.VIT, {"stats": False}) == {"keep_attention": "device"}
    with torch.no_grad(), Capture(model, query_dependence="cheap", jsd_pairs=0) as cap:
        CrossSite(cap)
        with pytest.raises(ValueError, match="keep_input=True"):
            model(torch.randn(1, 3, 10, 12))


def test_extract_writes_the_column(tmp_path):
    """``extract --query-dependence cheap`` on a shipped two-block checkpoint: the column is there, NaN (the blocks
    sit on different grids), and within range."""
    from nlanalysis.cli import main
    from nlanalysis.data.scenes import demo_scenes_path
    from nlanalysis.extract import load_run
    from nlanalysis.train.run import shipped_checkpoints

    ann, images = demo_scenes_path()
    out = tmp_path / "run"
    assert main(["extract", "--ckpt", str(shipped_checkpoints()["embedded_gaussian_x2"]), "--coco-ann", str(ann),
                 "--coco-images", str(images), "--limit", "2", "--out", str(out), "--quiet", "--jsd-pairs", "0",
                 "--query-dependence", "cheap"]) == 0  # fmt: skip
    metrics = load_run(out).metrics
    assert list(metrics.columns) == schema.metrics_columns(schema.NL, query=True)
    assert metrics["cross_site_cos"].isna().all() and metrics["block"].nunique() == 2
