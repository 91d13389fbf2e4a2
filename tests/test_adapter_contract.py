"""One contract for every registered adapter family (as timm's tests run every registered model).

Each family in :func:`nlanalysis.adapters.list_adapters` has small examples below: a module of that
family with random, non-zero weights, an input, and -- written here from the family's own forward,
not from the adapter -- how the module's output follows from its attention maps. Every example must:

(a) rebuild the module's own output from the adapter's recomputed maps (NL/GC: ``z = x + W_z(A g(x))``
    or the GC fusion; ViT: ``proj(concat_h A_h v_h)``), to float32 rounding, and not from wrong maps;
(b) give rows that sum to 1 where the family's maps are a softmax;
(c) have its capture's ``att`` statistic equal the mean of the full ``N x N`` matrix of scipy cosine
    distances between the maps' rows (all ordered pairs, i = j included; per head and for the head mean).

A family registered without an example fails here: a new family comes with one.
Per-family details (every mode, layouts, error messages) stay in the per-family test files.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from helpers import randomize_
from naive import mean_cos_dist_all_pairs
from nlanalysis.adapters import get_adapter, list_adapters
from nlanalysis.blocks import ContextBlock, NonLocal2d
from nlanalysis.blocks.position_attention import PositionAttention2d
from nlanalysis.capture import Capture
from nlanalysis.schema import VIT

B = 2


@dataclass
class Example:
    """A module of one family, its input, and its output rebuilt from maps ``[B, M, N_query, N_key]``.

    Attributes:
        module: the block / attention module (random non-zero weights, eval mode).
        x: its input, ``[B, C, H, W]`` (NL/GC) or tokens ``[B, N, C]`` (ViT: class token first).
        rebuild: ``(module, x, maps) -> output``, the family's forward with its maps given.
        softmax: whether every map row is a distribution over keys.
        call: how the module is called on ``x``; returns its output tensor.
    """

    module: nn.Module
    x: Tensor
    rebuild: Callable[[nn.Module, Tensor, Tensor], Tensor]
    softmax: bool
    call: Callable[[nn.Module, Tensor], Tensor] = lambda module, x: module(x)


def _input(c: int = 8, seed: int = 0) -> Tensor:
    return torch.randn(B, c, 6, 7, generator=torch.Generator().manual_seed(seed))


def _tokens(c: int = 24, seed: int = 0) -> Tensor:
    return torch.randn(B, 1 + 9, c, generator=torch.Generator().manual_seed(seed))  # class token + 3 x 3 patches


# -- how each family's output follows from its maps (from the original forwards) ---------------------------


def _nl(conv_out: str, after: Callable[[nn.Module, Tensor], Tensor] = lambda m, y: y):
    """``x + after(conv_out(A g(x)))``: mmcv / ours ``conv_out``, AlexHex7 ``W``, timm ``norm(z(.))``; ``g``
    includes the key pooling of ``sub_sample``."""

    def rebuild(block: nn.Module, x: Tensor, maps: Tensor) -> Tensor:
        b, _, h, w = x.shape
        g = block.g(x).flatten(2).transpose(1, 2)  # [B, N_key, C']
        y = (maps[:, 0] @ g).transpose(1, 2).reshape(b, -1, h, w)
        return x + after(block, getattr(block, conv_out)(y))

    return rebuild


def _gc(block: nn.Module, x: Tensor, maps: Tensor) -> Tensor:
    """mmcv ContextBlock: ``context = sum_j a_j x_j``; ``x * sigmoid(mul(context)) + add(context)``."""
    context = torch.einsum("bcn,bn->bc", x.flatten(2), maps[:, 0, 0])[..., None, None]
    return x * torch.sigmoid(block.channel_mul_conv(context)) + block.channel_add_conv(context)


def _pam(block: nn.Module, x: Tensor, maps: Tensor) -> Tensor:
    """DANet PAM: ``x + gamma * (A v)`` with ``v = value_conv(x)``."""
    v = block.value_conv(x).flatten(2)  # [B, C, N_key]
    return x + block.gamma * (v @ maps[:, 0].transpose(1, 2)).reshape(x.shape)


def _heads(values: Callable[[nn.Module, Tensor], Tensor], out: Callable[[nn.Module], nn.Linear]):
    """ViT attention: ``out(concat_h A_h v_h)`` with ``v`` ``[B, heads, N, d]`` from the module's own weights."""

    def rebuild(module: nn.Module, x: Tensor, maps: Tensor) -> Tensor:
        return out(module)((maps @ values(module, x)).transpose(1, 2).flatten(2))

    return rebuild


def _split(v: Tensor, heads: int) -> Tensor:
    return v.reshape(*v.shape[:2], heads, -1).transpose(1, 2)


def _timm_values(m: nn.Module, x: Tensor) -> Tensor:
    return m.qkv(x).reshape(*x.shape[:2], 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)[2]


def _mha_values(m: nn.MultiheadAttention, x: Tensor) -> Tensor:
    e = m.embed_dim
    return _split(F.linear(x, m.in_proj_weight[2 * e :], m.in_proj_bias[2 * e :]), m.num_heads)


def _hf_values(m: nn.Module, x: Tensor) -> Tensor:
    v = m.v_proj if hasattr(m, "v_proj") else m.attention.value  # transformers >= 5 / 4.x
    return _split(v(x), m.config.num_attention_heads if hasattr(m, "config") else m.attention.num_attention_heads)


def _hf_out(m: nn.Module) -> nn.Linear:
    return m.o_proj if hasattr(m, "o_proj") else m.output.dense


# -- the examples ---------------------------------------------------------------------------------------------


def _eval(module: nn.Module) -> nn.Module:
    return randomize_(module).eval()


def _mmcv():
    return pytest.importorskip("mmcv.cnn", reason="mmcv-lite (dev extra) gives mmcv's blocks")


def _alexhex7(variant: str) -> nn.Module:
    from test_adapters_alexhex7 import upstream_classes

    return upstream_classes(variant)["NONLocalBlock2D"](8, sub_sample=True, bn_layer=True)


def _danet_pam(channels: int) -> nn.Module:
    from test_adapters_danet import PAM_Module

    return PAM_Module(channels)


def _timm_layers():
    return pytest.importorskip("timm.layers", reason="timm (dev extra) is not installed")


def _hf_attention() -> nn.Module:
    transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is not installed")
    config = transformers.Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=3, intermediate_size=48,
                                       patch_size=4, image_size=12)  # fmt: skip
    return transformers.Dinov2Model(config).encoder.layer[0].attention


EXAMPLES: dict[str, dict[str, Callable[[], Example]]] = {
    "nlanalysis": {
        "nl-embedded-subsample": lambda: Example(_eval(NonLocal2d(8, sub_sample=True)), _input(), _nl("conv_out"), True),
        "nl-dot-product": lambda: Example(_eval(NonLocal2d(8, mode="dot_product")), _input(), _nl("conv_out"), False),
        "gc": lambda: Example(_eval(ContextBlock(8, 0.5, fusion_types=("channel_add", "channel_mul"))), _input(), _gc, True),
    },
    "mmcv": {
        "nl-gaussian-subsample": lambda: Example(
            _eval(_mmcv().NonLocal2d(8, mode="gaussian", sub_sample=True, norm_cfg={"type": "BN"})), _input(),
            _nl("conv_out"), True,
        ),  # fmt: skip
        "nl-concatenation": lambda: Example(
            _eval(_mmcv().NonLocal2d(8, mode="concatenation")), _input(), _nl("conv_out"), False
        ),
        "gc": lambda: Example(
            _eval(_mmcv().ContextBlock(8, 0.5, fusion_types=("channel_add", "channel_mul"))), _input(), _gc, True
        ),
    },
    "alexhex7": {
        "embedded-gaussian": lambda: Example(_eval(_alexhex7("embedded_gaussian")), _input(), _nl("W"), True),
        "dot-product": lambda: Example(_eval(_alexhex7("dot_product")), _input(), _nl("W"), False),
    },
    "danet": {
        "ours": lambda: Example(_eval(PositionAttention2d(16)), _input(16), _pam, True),
        "pam-module": lambda: Example(_eval(_danet_pam(16)), _input(16), _pam, True),
    },
    "timm": {
        "nonlocalattn": lambda: Example(
            _eval(_timm_layers().NonLocalAttn(16)), _input(16), _nl("z", lambda m, y: m.norm(y)), True
        ),
    },
    "timm-vit": {
        "attention-qk-norm": lambda: Example(
            _eval(_timm_layers().Attention(24, num_heads=3, qkv_bias=True, qk_norm=True, norm_layer=nn.LayerNorm)), _tokens(),
            _heads(_timm_values, lambda m: m.proj), True,
        ),  # fmt: skip
    },
    "torch-mha": {
        "batch-first": lambda: Example(
            _eval(nn.MultiheadAttention(24, 3, batch_first=True)), _tokens(), _heads(_mha_values, lambda m: m.out_proj),
            True, lambda m, x: m(x, x, x, need_weights=False)[0],
        ),  # fmt: skip
    },
    "hf-vit": {
        "dinov2": lambda: Example(
            _eval(_hf_attention()), _tokens(), _heads(_hf_values, _hf_out), True, lambda m, x: m(x)[0]
        ),
    },
}


def _cases():
    for family in list_adapters():
        names = EXAMPLES.get(family) or {None: None}
        for name in names:
            yield pytest.param(family, name, id=f"{family}-{name}")


def _example(family: str, name: str | None) -> Example:
    if name is None:
        pytest.fail(
            f"adapter family {family!r} is registered but has no example in tests/test_adapter_contract.py EXAMPLES: "
            "add a small module of that family and how its output follows from its maps"
        )
    return EXAMPLES[family][name]()


class _Site(nn.Module):
    """A one-block model, so the captures hook the block as they would inside a network."""

    def __init__(self, example: Example) -> None:
        super().__init__()
        self.block = example.module
        self.call = example.call

    def forward(self, x: Tensor) -> Tensor:
        return self.call(self.block, x)


def _maps(example: Example) -> Tensor:
    """The adapter's maps ``[B, M, N_query, N_key]``: one map per NL/GC block; per head over all tokens for ViTs."""
    adapter = get_adapter(example.module)
    if adapter.site == VIT:
        n = example.x.shape[1]
        return adapter.head_attention(example.module, example.x, keys="all").token_rows(range(n))
    return adapter.attention(example.module, example.x).full()[:, None]


def _naive_att(rows: Tensor) -> float:
    """scipy's cosine distances over all ordered pairs of rows ``[N_query, N_key]``, i = j included; all-zero rows
    (a ReLU map's) have no direction and are left out, the capture's default ``zero="exclude"``."""
    rows = rows[(rows != 0).any(-1)]
    return mean_cos_dist_all_pairs(rows.numpy())


@pytest.mark.parametrize("family,name", list(_cases()))
def test_maps_rebuild_the_output(family, name):
    example = _example(family, name)
    assert get_adapter(example.module).family == family
    with torch.no_grad():
        maps = _maps(example)
        out = example.call(example.module, example.x)
        rebuilt = example.rebuild(example.module, example.x, maps)
        wrong = example.rebuild(example.module, example.x, maps.roll(1, dims=-1))  # each row's weights on other keys
    torch.testing.assert_close(rebuilt, out, rtol=1e-4, atol=1e-5)
    assert (wrong - out).abs().max() > 1e-3  # the output depends on the maps: the check above can fail
    if example.softmax:
        assert maps.min() >= 0
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))


@pytest.mark.parametrize("family,name", list(_cases()))
def test_captured_att_is_the_mean_pairwise_cosine_distance(family, name):
    example = _example(family, name)
    site = _Site(example)
    token = get_adapter(example.module).site == VIT
    with torch.no_grad(), Capture(site, jsd_pairs=0) as cap:  # one capture: the kind comes from the adapter
        site(example.x)
        maps = _maps(example).double()
    (record,) = cap.records
    if token:  # patch queries over patch keys (the default keys="patch"), every head then the head mean
        patch = maps[:, :, 1:, 1:]
        maps = torch.cat([patch, patch.mean(1, keepdim=True)], 1)
    got = record.stats.att.double()  # [B, maps]: an NL block's one map, or every head then the head mean
    want = torch.tensor([[_naive_att(m) for m in per_image] for per_image in maps], dtype=torch.float64)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
