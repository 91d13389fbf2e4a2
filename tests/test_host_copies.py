"""Maps stay where they are formed: ``analyze`` of NL and ViT models and ``extract``'s ViT locality move no
map-sized tensor, nor a site's input, queries or keys, to the host (a CUDA run would pay for each copy; the
statistics reduce on the device, only per-image numbers and per-query vectors come back). Runs on the CPU with
:class:`~host_copies.HostCopies`, which records the copies the code asks for; ``tests/test_cuda_stats.py`` runs the
same paths on a GPU where there is one."""
import pytest
import torch

from helpers import randomize_
from host_copies import HostCopies
from nlanalysis import analyze
from test_cross_site import TwoBlocks

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def _vit():
    """A 16 x 16 grid of 4-pixel patches (N = 256 patch tokens: a map per head is 65536 weights), two layers."""
    model = timm_vit.VisionTransformer(img_size=64, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    return randomize_(model, std=0.1).eval()


def _inputs(h, w):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, h, w, dtype=torch.bool)
    valid[1, :, w * 3 // 4 :] = False
    return x, valid


@pytest.mark.parametrize("options", [{}, {"controls": True}, {"query_dependence": "all"}], ids=["default", "controls", "all"])
def test_analyze_nl_copies_neither_maps_nor_features(monkeypatch, options):
    model = randomize_(TwoBlocks(), std=0.3).eval()
    x, valid = _inputs(10, 12)
    features = 2 * 16 * 10 * 12  # a block's input [B, C, H, W]; its map per image is 120 x 120
    copies = HostCopies(monkeypatch)
    frame = analyze(model, x, valid=valid, **options)
    monkeypatch.undo()
    assert frame["cross_site_cos"].notna().any()
    assert copies.largest()[0] < features, f"a block's input or map went to the host: {copies.largest()}"
    # in all: per-image numbers and the JSD pairs' values (~6,500 with controls) stay below one image's map of a block
    assert copies.total() < 120 * 120, f"a map went to the host in pieces: {copies.copies}"


@pytest.mark.parametrize("options", [{}, {"controls": True}], ids=["default", "controls"])
def test_analyze_vit_copies_neither_maps_nor_queries_and_keys(monkeypatch, options):
    x, valid = _inputs(64, 64)
    qk = 2 * 2 * 257 * 32  # one layer's q (or k), or its tokens [B, tokens, C]; a map per head is 256 x 256
    rows = (2 + 1) * 256  # one image's per-query values of a layer's maps (every head and the head mean)
    model = _vit()
    copies = HostCopies(monkeypatch)
    frame = analyze(model, x, valid=valid, **options)
    monkeypatch.undo()
    assert frame["cross_site_cos"].notna().any()
    if options:  # the controls were built (on the tokens' device) and measured
        assert frame["ctrl_att"].notna().all() and frame["ctrl_form_att"].notna().all()
    assert copies.largest()[0] < qk, f"tokens, queries, keys or maps went to the host: {copies.largest()}"
    # the controls' maps, their per-query temperatures and the trained rows' entropies stay on the device too: only
    # per-image numbers and the JSD pairs' values (~1,700 with controls) come back
    assert copies.largest()[0] < rows, f"per-query values of a layer's maps went to the host: {copies.largest()}"
    assert copies.total() < 4 * rows, f"tokens, queries, keys or maps went to the host in pieces: {copies.copies}"


def test_extract_vit_locality_copies_neither_maps_nor_queries_and_keys(monkeypatch):
    from nlanalysis.extract import ViTAnalysis

    x, valid = _inputs(64, 64)
    analysis = ViTAnalysis(_vit(), size=64)
    copies = HostCopies(monkeypatch)
    with torch.no_grad(), analysis.capture(queries=None, seed=0, jsd_pairs=64, chunk_size=None, controls=False) as cap:
        cap.set_valid(valid)
        analysis.model(x)
    frame = analysis.frame(cap.records, 2, valid)
    monkeypatch.undo()
    assert frame["peak_offsets"].str.len().gt(0).all() and frame["att_local"].notna().all()
    assert copies.largest()[0] < 2 * 2 * 257 * 32, f"queries, keys or maps went to the host: {copies.largest()}"
    assert copies.total() < 2 * 2 * 257 * 32, f"queries, keys or maps went to the host in pieces: {copies.copies}"
