"""ViT adapters recompute each head's map exactly as the library computes it, and its output share."""
import inspect
import math

import pytest
import torch
from torch import nn

from helpers import randomize_
from nlanalysis.adapters import UnsupportedBlockError, get_adapter, list_blocks
from nlanalysis.adapters.vit import HFViTAdapter, MHAAdapter, TimmViTAdapter
from nlanalysis.vit import TokenLayout, layout_of

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def _timm(fused=True, **kw):
    args = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0, qkv_bias=True)
    args.update(kw)
    model = randomize_(timm_vit.VisionTransformer(**args), std=0.2).eval()
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    return model


def _timm_maps(model, x):
    """The softmax timm itself computes (non-fused path), per block: [B, heads, N, N]."""
    seen = []
    hooks = []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, a, o: seen.append(o)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _inputs(model, x):
    seen = []
    hooks = [blk.attn.register_forward_hook(lambda m, a, o: seen.append((a[0], o))) for blk in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 2, "no_embed_class": True}, {"qk_norm": True}, {"class_token": False, "global_pool": "avg"}])
def test_timm_per_head_maps_equal_timm_softmax(kw):
    model = _timm(fused=True, **kw)
    x = torch.randn(2, 3, 28, 28)
    inputs = _inputs(model, x)  # fused forward
    maps = _timm_maps(model, x)
    layout = layout_of(model, (28, 28))
    assert layout.n_reg == kw.get("reg_tokens", 0) and layout.n_cls == (0 if "class_token" in kw else 1)
    adapter = get_adapter(model.blocks[0].attn)
    assert isinstance(adapter, TimmViTAdapter)
    for blk, (tokens, out), full in zip(model.blocks, inputs, maps):
        att = adapter.head_attention(blk.attn, tokens, layout, keys="all")
        assert torch.allclose(att.full(), full[:, :, layout.n_prefix :], atol=1e-6)
        assert torch.allclose(att.token_rows(range(layout.n_tokens)), full, atol=1e-6)
        patch = adapter.head_attention(blk.attn, tokens, layout)  # patch keys: a slice of the same rows
        assert torch.allclose(patch.full(), full[:, :, layout.n_prefix :, layout.n_prefix :], atol=1e-6)
        # the per-head outputs rebuild the module output: proj(concat_h o_h) = sum_h W_h o_h + b
        w, b = adapter.out_weight(blk.attn)
        o = adapter.head_values(blk.attn, tokens)
        assert torch.allclose(o @ w.T + b, out, atol=1e-5)


def test_head_and_mean_views_and_grid_maps():
    model = _timm()
    x = torch.randn(1, 3, 28, 28)
    tokens, _ = _inputs(model, x)[1]
    att = TimmViTAdapter().head_attention(model.blocks[1].attn, tokens)  # layout inferred: 1 + 4x4
    assert att.layout == TokenLayout((4, 4), 1, 0) and att.num_heads == 4
    full = att.full()
    assert torch.allclose(att.head(2).full(), full[:, 2]) and torch.allclose(att.mean().full(), full.mean(1))
    assert torch.allclose(TimmViTAdapter().attention(model.blocks[1].attn, tokens).full(), full.mean(1))
    grid = att.grid_maps(torch.tensor([[1, 2], [3, 0]]))
    assert grid.shape == (1, 4, 2, 4, 4)
    assert torch.allclose(grid[:, :, 0].flatten(-2), full[:, :, 1 * 4 + 2])
    assert (full.sum(-1) < 1).all()  # the class token takes some weight: patch rows sum below 1
    with pytest.raises(IndexError):
        att.head(4)


def test_timm_scale_follows_the_path_the_module_takes():
    model = _timm(fused=False)
    attn = model.blocks[0].attn
    attn.scale = 0.05  # only the non-fused path reads it; SDPA uses head_dim ** -0.5
    x = torch.randn(1, 3, 28, 28)
    tokens, _ = _inputs(model, x)[0]
    maps = _timm_maps(model, x)[0]
    att = TimmViTAdapter().head_attention(attn, tokens, keys="all")
    assert torch.allclose(att.full(), maps[:, :, 1:], atol=1e-6)
    attn.fused_attn = True
    assert TimmViTAdapter().scale(attn) == pytest.approx(8**-0.5)


def test_torchvision_vit_maps_equal_multihead_attention_weights():
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    model = randomize_(
        tv.VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64), std=0.2
    ).eval()
    blocks = list_blocks(model)
    assert [b.family for b in blocks] == ["torch-mha", "torch-mha"]
    layout = layout_of(model, (28, 28))
    assert layout == TokenLayout((4, 4), 1, 0, (7, 7))
    seen = []
    hooks = [b.module.register_forward_hook(lambda m, a, o: seen.append(a[0])) for b in blocks]
    with torch.no_grad():
        model(torch.randn(2, 3, 28, 28))
    for h in hooks:
        h.remove()
    adapter = MHAAdapter()
    for block, tokens in zip(blocks, seen):
        mha = block.module
        with torch.no_grad():
            out, weights = mha(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
        att = adapter.head_attention(mha, tokens, layout, keys="all")
        assert torch.allclose(att.full(), weights[:, :, 1:], atol=1e-6)
        w, b = adapter.out_weight(mha)
        assert torch.allclose(adapter.head_values(mha, tokens) @ w.T + b, out, atol=1e-5)


def test_sequence_first_mha_and_unsupported_calls():
    mha = randomize_(nn.MultiheadAttention(16, 2), std=0.3).eval()  # batch_first=False: [N, B, C]
    tokens = torch.randn(10, 3, 16)
    with torch.no_grad():
        _, weights = mha(tokens, tokens, tokens, average_attn_weights=False)
    att = MHAAdapter().head_attention(mha, tokens, keys="all")  # 1 + 3x3 inferred
    assert torch.allclose(att.full(), weights[:, :, 1:], atol=1e-6)
    adapter = MHAAdapter()
    with pytest.raises(UnsupportedBlockError, match="cross-attention"):
        adapter.check_call(mha, (tokens, tokens + 1, tokens), {})
    with pytest.raises(UnsupportedBlockError, match="attn_mask"):
        adapter.check_call(mha, (tokens, tokens, tokens), {"attn_mask": torch.zeros(10, 10)})
    with pytest.raises(UnsupportedBlockError, match="is_causal"):
        adapter.check_call(mha, (tokens, tokens, tokens), {"is_causal": True})
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, -2:] = True
    for args, name in (((tokens, tokens, tokens, mask), "key_padding_mask"),  # by position, as torch's signature names them
                       ((tokens, tokens, tokens, None, False, torch.zeros(10, 10)), "attn_mask")):  # fmt: skip
        with pytest.raises(UnsupportedBlockError, match=name):
            adapter.check_call(mha, args, {})
    adapter.check_call(mha, (tokens, tokens, tokens, None, False), {})  # no mask: measured
    with pytest.raises(ValueError, match="tokens"):
        adapter.head_attention(mha, torch.randn(3, 10, 8))


def _hf_models():
    transformers = pytest.importorskip("transformers")
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=4, image_size=16)
    yield "dinov2", transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    if hasattr(transformers, "Dinov2WithRegistersModel"):
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=3, **kw)
        yield "dinov2-reg", transformers.Dinov2WithRegistersModel(cfg)
    yield "vit", transformers.ViTModel(transformers.ViTConfig(**kw), add_pooling_layer=False)


def test_hugging_face_maps_equal_output_attentions():
    for name, model in _hf_models():
        model.config._attn_implementation = "eager"
        model = randomize_(model, std=0.2).eval()
        blocks = list_blocks(model)
        assert len(blocks) == 2 and {b.family for b in blocks} == {"hf-vit"}, name
        layout = layout_of(model, (16, 16))
        seen = []
        hooks = [b.module.register_forward_hook(lambda m, a, k, o: seen.append((a, k, o)), with_kwargs=True) for b in blocks]
        with torch.no_grad():
            result = model(pixel_values=torch.randn(2, 3, 16, 16), output_attentions=True)
        for h in hooks:
            h.remove()
        adapter = HFViTAdapter()
        for block, (args, kwargs, out), maps in zip(blocks, seen, result.attentions):
            adapter.check_call(block.module, args, kwargs)
            tokens = adapter.block_input(args, kwargs)
            att = adapter.head_attention(block.module, tokens, layout, keys="all")
            assert torch.allclose(att.full(), maps[:, :, layout.n_prefix :], atol=1e-6), name
            w, b = adapter.out_weight(block.module)
            assert torch.allclose(adapter.head_values(block.module, tokens) @ w.T + b, adapter.output(block.module, out), atol=1e-5)


class _SelfAttention(nn.Module):  # transformers 4.x Dinov2SelfAttention, rebuilt: query/key/value linears
    def __init__(self, dim, heads):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        def split(t):
            return t.reshape(*x.shape[:2], self.num_attention_heads, -1).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size)).softmax(-1)
        return (probs @ v).transpose(1, 2).flatten(2), probs


class _Output(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dense = nn.Linear(dim, dim)


class Dinov2Attention(nn.Module):  # transformers 4.x wrapper: .attention + .output.dense
    def __init__(self, dim=24, heads=3):
        super().__init__()
        self.attention, self.output = _SelfAttention(dim, heads), _Output(dim)

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        context, probs = self.attention(hidden_states)
        return self.output.dense(context), probs


Dinov2Attention.__module__ = "transformers.models.dinov2.modeling_dinov2"  # where 4.x defines it


def test_hugging_face_4x_layout():
    module = randomize_(Dinov2Attention(), std=0.3).eval()
    adapter = get_adapter(module)
    assert isinstance(adapter, HFViTAdapter) and adapter.describe(module)["layout"] == "transformers 4.x"
    tokens = torch.randn(2, 1 + 9, 24)
    with torch.no_grad():
        out, probs = module(tokens)
    att = adapter.head_attention(module, tokens, keys="all")
    assert torch.allclose(att.full(), probs[:, :, 1:], atol=1e-6)
    w, b = adapter.out_weight(module)
    assert torch.allclose(adapter.head_values(module, tokens) @ w.T + b, out, atol=1e-5)
    with pytest.raises(UnsupportedBlockError, match="head_mask"):
        adapter.check_call(module, (tokens,), {"head_mask": torch.ones(3)})
    plain = Dinov2Attention()
    type(plain).__module__ = "my.copy"
    try:
        assert not adapter.matches(plain)  # not from transformers: not claimed
    finally:
        type(plain).__module__ = "transformers.models.dinov2.modeling_dinov2"


def test_nl_adapters_do_not_claim_vit_modules_and_vice_versa():
    model = _timm()
    families = {b.family for b in list_blocks(model)}
    assert families == {"timm-vit"}
    assert not TimmViTAdapter().matches(nn.Linear(3, 3))


def test_timm_causal_attention_given_by_position_is_refused():
    """timm's ``Attention.forward(x, attn_mask=None, is_causal=False)``: ``attn(x, None, True)`` is causal as surely as
    ``attn(x, is_causal=True)`` (it was measured as full attention)."""
    model = _timm(fused=True)
    attn, tokens = model.blocks[0].attn, torch.randn(1, 5, model.embed_dim)
    params = list(inspect.signature(type(attn).forward).parameters)
    if "is_causal" not in params:
        pytest.skip(f"this timm's Attention.forward takes {params[1:]}")
    adapter = TimmViTAdapter()
    args = [tokens] + [None] * (params.index("is_causal") - 2) + [True]
    with pytest.raises(UnsupportedBlockError, match="is_causal=True"):
        adapter.check_call(attn, tuple(args), {})
    adapter.check_call(attn, (tokens, None), {})
