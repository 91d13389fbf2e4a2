"""Adapters: the map rebuilt from x must reproduce the block's own output z."""
import pytest
import torch
from torch import nn

from helpers import randomize_
from nlanalysis import adapters
from nlanalysis.adapters import UnsupportedBlockError, attention, attention_maps, list_adapters, list_blocks
from nlanalysis.blocks import PAIRWISE_MODES, ContextBlock, NonLocal2d, SimplifiedNonLocal2d

try:
    import mmcv.cnn as mmcv_cnn
except ImportError:  # pragma: no cover - the dev extra installs mmcv-lite
    mmcv_cnn = None

needs_mmcv = pytest.mark.skipif(mmcv_cnn is None, reason="mmcv-lite (dev extra) not installed")


def _nl_factories():
    for mode in PAIRWISE_MODES:
        for sub in (False, True):
            yield pytest.param("nlanalysis", lambda m=mode, s=sub: NonLocal2d(12, mode=m, sub_sample=s), id=f"ours-{mode}-{sub}")
            yield pytest.param(
                "mmcv",
                lambda m=mode, s=sub: mmcv_cnn.NonLocal2d(12, mode=m, sub_sample=s, norm_cfg={"type": "BN"}),
                id=f"mmcv-{mode}-{sub}",
                marks=needs_mmcv,
            )


@pytest.mark.parametrize("family,factory", list(_nl_factories()))
def test_nl_map_reproduces_block_output(family, factory):
    block = randomize_(factory()).eval()
    x = torch.randn(2, 12, 7, 10)
    with torch.no_grad():
        z = block(x)
        att = attention(block, x)
        maps = att.full()
        g = block.g(x)  # [B, C', H_k, W_k]
        y = maps @ g.flatten(2).transpose(1, 2)
        z_rebuilt = x + block.conv_out(y.transpose(1, 2).reshape(2, -1, 7, 10))
    assert adapters.get_adapter(block).family == family
    assert maps.shape == (2, 70, att.n_key) and att.key_shape == ((3, 5) if block.sub_sample else (7, 10))
    assert (z - x).abs().max() > 1e-2
    torch.testing.assert_close(z_rebuilt - x, z - x, rtol=1e-4, atol=1e-5)
    # chunked rows are the same rows
    torch.testing.assert_close(torch.cat([r for _, r in att.chunks(16)], 1), maps)


def _gc_factories():
    yield pytest.param("nlanalysis", lambda: ContextBlock(12, 0.5, fusion_types=("channel_add", "channel_mul")), id="ours-gc")
    yield pytest.param(
        "mmcv", lambda: mmcv_cnn.ContextBlock(12, 0.5, fusion_types=("channel_add", "channel_mul")), id="mmcv-gc", marks=needs_mmcv
    )


@pytest.mark.parametrize("family,factory", list(_gc_factories()))
def test_gc_map_reproduces_block_output(family, factory):
    block = randomize_(factory()).eval()
    x = torch.randn(2, 12, 5, 6)
    with torch.no_grad():
        z = block(x)
        att = attention(block, x)
        context = torch.einsum("bcn,bn->bc", x.flatten(2), att.rows(0, 1)[:, 0])[..., None, None]
        z_rebuilt = x * torch.sigmoid(block.channel_mul_conv(context)) + block.channel_add_conv(context)
    assert adapters.get_adapter(block).family == family
    assert att.query_independent
    torch.testing.assert_close(z_rebuilt, z, rtol=1e-5, atol=1e-6)


def test_snl_is_query_independent_and_adapted():
    block = randomize_(SimplifiedNonLocal2d(4))
    maps = attention_maps(block, torch.randn(1, 4, 3, 3))
    assert maps.shape == (1, 9, 9)
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 9))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer3 = nn.Sequential(nn.Identity(), NonLocal2d(8))
        self.layer4 = nn.Sequential(ContextBlock(8, 0.5), NonLocal2d(8, mode="gaussian"))


def test_list_blocks_with_globs():
    net = _Net()
    assert [b.name for b in list_blocks(net)] == ["layer3.1", "layer4.0", "layer4.1"]
    assert [b.name for b in list_blocks(net, include="layer4.*")] == ["layer4.0", "layer4.1"]
    assert [b.name for b in list_blocks(net, exclude=["layer4.0"])] == ["layer3.1", "layer4.1"]
    assert list_blocks(net, include="nothing*") == []


def test_unsupported_module_lists_families():
    with pytest.raises(UnsupportedBlockError) as err:
        attention_maps(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4))
    for family in list_adapters():
        assert family in str(err.value)


def test_registry_refuses_duplicates():
    class Dup(adapters.BlockAdapter):
        family = "nlanalysis"
        description = "dup"

        def matches(self, module):
            return False

        def attention(self, module, x):
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        adapters.register_adapter(Dup)


def test_bad_features_are_rejected():
    block = NonLocal2d(4)
    x = torch.randn(1, 4, 3, 3)
    x[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attention(block, x)
    with pytest.raises(ValueError, match="4-D"):
        attention(block, torch.randn(4, 3, 3))


@needs_mmcv
def test_mmcv_3d_block_is_refused_clearly():
    block = mmcv_cnn.NonLocal3d(4)
    with pytest.raises(UnsupportedBlockError, match="only 2-D"):
        attention(block, torch.randn(1, 4, 3, 3))
