"""The timm adapter against timm's real ``NonLocalAttn`` (when timm is installed) and a stand-in.

The stand-in is written from the behaviour of ``timm/layers/non_local_attn.py``: 1x1 convs
``t``, ``p``, ``g`` (C -> C'), ``z`` (C' -> C), ``norm`` (BatchNorm2d), ``scale = C ** -0.5``,
output ``norm(z(softmax(t^T p * scale) g)) + x``. Weights are re-initialised to non-zero values
(timm zeroes ``norm``), so a wrong map can't hide behind a zero output transform.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nlanalysis.adapters import UnsupportedBlockError, attention, attention_maps, get_adapter, list_blocks
from nlanalysis.adapters.timm import TimmAdapter

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install timm; it is in the dev extra)")


class NonLocalAttn(nn.Module):
    """Stand-in for ``timm.layers.NonLocalAttn`` (same attributes and forward)."""

    def __init__(self, in_channels: int, use_scale: bool = True, rd_channels: int | None = None) -> None:
        super().__init__()
        rd_channels = rd_channels or max(8, in_channels // 8)
        self.scale = in_channels**-0.5 if use_scale else 1.0
        self.t = nn.Conv2d(in_channels, rd_channels, kernel_size=1, stride=1, bias=True)
        self.p = nn.Conv2d(in_channels, rd_channels, kernel_size=1, stride=1, bias=True)
        self.g = nn.Conv2d(in_channels, rd_channels, kernel_size=1, stride=1, bias=True)
        self.z = nn.Conv2d(rd_channels, in_channels, kernel_size=1, stride=1, bias=True)
        self.norm = nn.BatchNorm2d(in_channels)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x):
        shortcut = x
        t, p, g = self.t(x), self.p(x), self.g(x)
        b, c, h, w = t.size()
        att = torch.bmm(t.view(b, c, -1).permute(0, 2, 1), p.view(b, c, -1)) * self.scale
        att = F.softmax(att, dim=2)
        y = torch.bmm(att, g.view(b, c, -1).permute(0, 2, 1))
        y = y.permute(0, 2, 1).reshape(b, c, h, w)
        return self.norm(self.z(y)) + shortcut


NonLocalAttn.__module__ = "timm.layers.non_local_attn"


def block_class(impl: str) -> type[nn.Module]:
    if impl == "timm":
        from timm.layers import NonLocalAttn as TimmNonLocalAttn

        return TimmNonLocalAttn
    return NonLocalAttn


IMPLS = [pytest.param("timm", marks=needs_timm), "standin"]


def randomise(block: nn.Module, seed: int = 0) -> nn.Module:
    """Normal(0, 0.2) weights and BN statistics, eval mode: no zero output transform."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        block.norm.running_mean.copy_(torch.randn(block.norm.running_mean.shape, generator=gen) * 0.1)
        block.norm.running_var.copy_(torch.rand(block.norm.running_var.shape, generator=gen) + 0.5)
    return block.eval()


def context(block: nn.Module, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``norm(z(A g(x)))`` from the adapter's maps ``A`` ``[B, N, N]``."""
    b, _, h, w = x.shape
    g_x = block.g(x).flatten(2).transpose(1, 2)
    y = (maps @ g_x).transpose(1, 2).reshape(b, -1, h, w)
    return block.norm(block.z(y))


@pytest.mark.parametrize("shape", [(7, 10), (5, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("use_scale", [True, False], ids=["scale", "noscale"])
@pytest.mark.parametrize("impl", IMPLS)
def test_maps_reproduce_block_output(impl, use_scale, shape):
    block = randomise(block_class(impl)(32, use_scale=use_scale))
    x = torch.randn(2, 32, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = block(x)
        att = attention(block, x)
        maps = att.full()
        rebuilt = context(block, x, maps)
    h, w = shape
    assert att.query_shape == att.key_shape == (h, w)
    assert maps.shape == (2, h * w, h * w)
    assert att.scale == (32**-0.5 if use_scale else 1.0)  # in_channels C, not C' = 8
    torch.testing.assert_close(x + rebuilt, out, rtol=1e-5, atol=1e-5)
    # the "output" statistic's context term: out - x (BlockAdapter default) == norm(z(y))
    torch.testing.assert_close(get_adapter(block).context_term(block, x, out), rebuilt, rtol=1e-5, atol=1e-5)
    assert rebuilt.abs().max() > 1e-2  # the output transform is not zero: the check can fail


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_are_softmax_over_keys(impl):
    block = randomise(block_class(impl)(16))
    x = torch.randn(2, 16, 6, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        att = attention(block, x)
        maps = att.full()
        logits = block.t(x).flatten(2).transpose(1, 2) @ block.p(x).flatten(2)
    assert att.distribution and not att.query_independent
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 30))
    torch.testing.assert_close(maps, (logits * 16**-0.5).softmax(-1))


@pytest.mark.parametrize("impl", IMPLS)
def test_list_blocks_and_describe(impl):
    cls = block_class(impl)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), cls(16), nn.Conv2d(16, 32, 3), cls(32))
    blocks = list_blocks(model)
    assert [(b.name, b.family) for b in blocks] == [("2", "timm"), ("4", "timm")]
    info = blocks[1].adapter.describe(blocks[1].module)
    assert info["family"] == "timm" and info["mode"] == "embedded_gaussian"
    assert (info["in_channels"], info["inter_channels"], info["sub_sample"]) == (32, 8, False)
    assert info["scale"] == pytest.approx(32**-0.5)


@needs_timm
def test_real_timm_resnet_with_nl_attention():
    from timm.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [1, 1, 1, 1], block_args=dict(attn_layer="nl")).eval()
    blocks = list_blocks(model)
    assert [b.name for b in blocks] == [f"layer{i}.0.se" for i in range(1, 5)]
    assert {b.family for b in blocks} == {"timm"}
    # BasicBlock does `x += shortcut` and an in-place ReLU on the block's output after the hook
    # ran: a hook must clone what it keeps.
    feats = {}

    def hook(module, args, out):
        feats.update(x=args[0].clone(), out=out.clone(), out_ref=out)

    handle = model.layer3[0].se.register_forward_hook(hook)
    randomise(model.layer3[0].se)
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 128))
        maps = attention_maps(model.layer3[0].se, feats["x"])
        rebuilt = context(model.layer3[0].se, feats["x"], maps)
    handle.remove()
    assert maps.shape == (1, 6 * 8, 6 * 8)
    torch.testing.assert_close(feats["x"] + rebuilt, feats["out"], rtol=1e-5, atol=1e-5)
    assert not torch.equal(feats["out_ref"], feats["out"])  # the kept reference was overwritten


@needs_timm
def test_bat_and_vit_attention_are_not_claimed():
    from timm.layers import Attention, BatNonLocalAttn

    adapter = TimmAdapter()
    # BAT: bilinear row/column transforms, not a per-query map over keys
    assert not adapter.matches(BatNonLocalAttn(16, block_size=2))
    assert not adapter.matches(Attention(16, num_heads=2))


def test_lookalike_with_non_numeric_scale_is_unsupported():
    block = NonLocalAttn(16)
    block.scale = nn.Identity()  # a module named NonLocalAttn, but not timm's
    assert get_adapter(block).family == "timm"
    with pytest.raises(UnsupportedBlockError, match="float 'scale'"):
        attention_maps(block, torch.randn(1, 16, 4, 4))


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match="expected 16 input channels"):
        attention_maps(NonLocalAttn(16), torch.randn(1, 8, 4, 4))
