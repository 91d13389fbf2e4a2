"""ViTCapture / analyze_vit: the right tensors reach the statistics, tables have the promised shape."""
import gc

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from helpers import randomize_
from nlanalysis.adapters.vit import TimmViTAdapter
from nlanalysis.vit import HEAD_MEAN, TokenLayout, ViTCapture, analyze_vit, format_layer_table, layer_table
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.measure.heads import gram_matrices, measure_heads

timm_vit = pytest.importorskip("timm.models.vision_transformer")
FIELDS = ("input", "output", "att", "att_jsd", "att_entropy", "att_max", "att_prefix_mass")


def _timm(**kw):
    args = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0, qkv_bias=True, init_values=0.5)
    args.update(kw)
    return randomize_(timm_vit.VisionTransformer(**args), std=0.2).eval()


def test_capture_measures_block_input_and_layer_scaled_branch():
    model = _timm(reg_tokens=2, no_embed_class=True)
    x = torch.randn(2, 3, 28, 28)
    seen = []
    hooks = [blk.register_forward_hook(lambda m, a, o: seen.append(a[0])) for blk in model.blocks]
    with torch.no_grad(), ViTCapture(model, jsd_pairs=10_000) as cap:
        model(x)
    for h in hooks:
        h.remove()
    assert [r.name for r in cap.records] == ["blocks.0.attn", "blocks.1.attn"]
    for rec, blk, tokens in zip(cap.records, model.blocks, seen):
        assert rec.input_space == "block" and rec.layout == TokenLayout((4, 4), 1, 2, (7, 7))
        with torch.no_grad():  # by hand: residual stream in, ls1(attn(norm1(x))) out
            normed = blk.norm1(tokens)
            branch = blk.ls1(blk.attn(normed))
            qkv = blk.attn.qkv(normed).reshape(2, 19, 3, 4, 8).permute(2, 0, 3, 1, 4)
            o = TimmViTAdapter().head_values(blk.attn, normed)
        att = HeadAttention(qkv[0], qkv[1], 8**-0.5, rec.layout)
        gram = gram_matrices(blk.attn.proj.weight, 4, blk.ls1.gamma)
        want = measure_heads(att, tokens, branch, proj_in=o, gram=gram, jsd_pairs=10_000)
        for name in FIELDS:
            assert torch.allclose(getattr(rec.stats, name), getattr(want, name), atol=1e-5, equal_nan=True), name
    assert not any(blk.attn._forward_hooks or blk.attn.qkv._forward_hooks for blk in model.blocks)  # removed


def test_taps_and_recompute_agree_and_fused_or_not_changes_nothing():
    model = _timm()
    x = torch.randn(2, 3, 28, 28)
    frames = []
    for fused, recompute in ((True, False), (True, True), (False, False)):
        for blk in model.blocks:
            blk.attn.fused_attn = fused
        frames.append(analyze_vit(model, x, recompute=recompute, jsd_pairs=10_000))
    for other in frames[1:]:
        for name in FIELDS:
            assert np.allclose(frames[0][name], other[name], atol=1e-5, equal_nan=True), name


def test_frame_rows_columns_keys_and_valid_mask():
    model = _timm()
    x = torch.randn(3, 3, 28, 28)
    frame = analyze_vit(model, x, image_ids=["a", "b", "c"], batch_size=2)
    assert len(frame) == 3 * 2 * (4 + 1)  # images x layers x (heads + head mean)
    assert sorted(frame["head"].unique()) == [HEAD_MEAN, 0, 1, 2, 3]
    assert set(frame["image"]) == {"a", "b", "c"} and (frame["keys"] == "patch").all()
    assert (frame["n_query"] == 16).all() and (frame["n_key"] == 16).all()
    assert (frame["input_space"] == "block").all() and (frame["convention"] == "1-cos").all()
    everything = analyze_vit(model, x, keys="all")
    assert (everything["n_key"] == 17).all() and (everything["keys"] == "all").all()
    valid = torch.ones(3, 28, 28, dtype=torch.bool)
    valid[:, :, 21:] = False  # the right column of patches is padding
    masked = analyze_vit(model, x, valid=valid)
    assert (masked["n_query"] == 12).all() and (masked["n_key"] == 12).all()
    per_head_input = frame.groupby(["image", "layer"])["input"].nunique()
    assert (per_head_input == 1).all()  # input is the same for every head of a layer


def test_layer_table_has_t_intervals_over_images():
    model = _timm()
    frame = analyze_vit(model, torch.randn(4, 3, 28, 28))
    table = layer_table(frame)
    assert list(table["layer"]) == [0, 1] and (table["n_images"] == 4).all()
    for layer in (0, 1):
        values = frame[(frame["layer"] == layer) & (frame["head"] == HEAD_MEAN)]["att"].to_numpy()
        mean, sem = values.mean(), scipy_stats.sem(values, ddof=1)  # independent of nlanalysis.metrics
        low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
        row = table[table["layer"] == layer].iloc[0]
        assert row["att"] == pytest.approx(mean, rel=1e-12) and row["att_low"] == pytest.approx(low, rel=1e-9)
        assert row["att_high"] == pytest.approx(high, rel=1e-9) and row["att_low"] < row["att"] < row["att_high"]
    averaged = layer_table(frame, head="avg")
    per_head = frame[frame["head"] != HEAD_MEAN].groupby("layer")["att"].mean()
    assert np.allclose(averaged["att"], per_head)
    text = format_layer_table(table, ["att", "att_entropy"])
    assert text.splitlines()[0].split() == ["layer", "att", "att_entropy"] and "[" in text


def test_query_maps_hooks_removed_and_memory_flat():
    model = _timm()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad(), ViTCapture(model, queries=[(3, 3), (27, 14)], keep_attention=True) as cap:
        model(x)
    rec = cap.records[0]
    assert rec.queries.maps.shape == (2, 2, 5, 4, 4) and rec.queries.feature_yx.tolist() == [[0, 0], [3, 2]]
    assert torch.allclose(rec.queries.maps[:, 0, :4].flatten(-2), rec.attention.full()[:, :, 0], atol=1e-6)
    assert torch.allclose(rec.queries.maps[:, 1, 4], rec.queries.maps[:, 1, :4].mean(1))  # the head mean
    assert rec.queries.image_yx.tolist() == [[3.0, 3.0], [27.0, 14.0]]
    assert not model._forward_hooks and not model._forward_pre_hooks
    with pytest.raises(ValueError, match="outside"):
        with torch.no_grad(), ViTCapture(model, queries=[(40, 3)]):
            model(x)
    # streaming: nothing is kept, memory does not grow with the number of forwards
    count = []
    with torch.no_grad(), ViTCapture(model, keep_records=False, on_record=lambda r: count.append(r.layer)) as cap:
        for _ in range(2):
            model(x)
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(8):
            model(x)
        assert not any(cap._seen.values())  # nothing held between forwards
        gc.collect()
        after = len(gc.get_objects())
    assert not cap.records and len(count) == 2 * 10 and after - before < 100


def test_torchvision_and_hugging_face_models_run_end_to_end():
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    model = tv.VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64).eval()
    frame = analyze_vit(randomize_(model, std=0.2), torch.randn(2, 3, 28, 28))
    assert len(frame) == 2 * 2 * 5 and (frame["family"] == "torch-mha").all() and (frame["input_space"] == "block").all()
    assert frame[["input", "output", "att", "att_entropy"]].notna().all().all()
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=4, image_size=16)
    hf = randomize_(transformers.Dinov2Model(cfg), std=0.2).eval()
    frame = analyze_vit(hf, torch.randn(2, 3, 16, 16))
    assert len(frame) == 2 * 2 * 5 and (frame["family"] == "hf-vit").all() and (frame["input_space"] == "block").all()
    assert frame[["input", "output", "att", "att_jsd"]].notna().all().all()


def test_no_vit_attention_is_a_clear_error():
    with pytest.raises(ValueError, match="no supported ViT self-attention"):
        ViTCapture(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="keys"):
        ViTCapture(_timm(), keys="cls")


def test_head_intervals_are_cut_to_each_statistics_range():
    """att values near 0: the t-interval's low end (negative, checked with scipy) is cut at 0, the range of a
    cosine distance; the high end and the mean are scipy's."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    from nlanalysis.analyze_vit import image_intervals

    values = np.array([0.0, 0.0, 0.3])
    frame = pd.DataFrame({"layer": 0, "head": 1, "image": range(3), "att": values})
    row = image_intervals(frame, ["layer", "head"], ["att"]).iloc[0]
    low, high = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
    assert low < 0 and row["att_low"] == 0.0
    assert row["att_high"] == pytest.approx(high) and row["att"] == pytest.approx(0.1)
