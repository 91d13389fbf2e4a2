"""The AlexHex7/Non-local_pytorch adapter against stand-ins of that repository's blocks.

The stand-ins below are written from the behaviour of the upstream files (``lib/non_local_*.py``
of master, same math in the 0.3.1 and 0.4.1 folders, and the pre-split ``lib/non_local.py``):
same class names, attribute names and module paths (``__module__``), because the adapter tells
the embedded-Gaussian and dot-product files apart by the defining module. Weights are
re-initialised to non-zero values (upstream zeroes the last layer of ``W``), so a wrong map can't
hide behind a zero output transform.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nlanalysis.adapters import UnsupportedBlockError, attention, attention_maps, get_adapter, list_blocks
from nlanalysis.adapters.alexhex7 import AlexHex7Adapter, infer_mode

SPLIT_VARIANTS = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
SOFTMAX_MODES = ("embedded_gaussian", "gaussian")


def upstream_classes(variant: str, module_path: str | None = None) -> dict[str, type[nn.Module]]:
    """Stand-ins for one AlexHex7 file: ``{class name: class}``.

    Args:
        variant: one of :data:`SPLIT_VARIANTS` (the four ``lib/non_local_<variant>.py`` files) or
            ``"combined"`` (the pre-split ``lib/non_local.py``: all of theta/phi/concat_project,
            a ``mode`` argument and attribute; its forward dispatch is written here as its author
            meant it, ``self.mode``, since upstream's bare ``mode`` raises NameError).
        module_path: ``__module__`` of the classes (default ``lib.non_local_<variant>``).
    """
    combined = variant == "combined"
    module_path = module_path or ("lib.non_local" if combined else f"lib.non_local_{variant}")

    class _NonLocalBlockND(nn.Module):
        def __init__(self, in_channels, inter_channels=None, dimension=3, sub_sample=True, bn_layer=True, **kw):
            super().__init__()
            assert dimension in (1, 2, 3)
            self.dimension = dimension
            self.sub_sample = sub_sample
            self.in_channels = in_channels
            self.inter_channels = inter_channels if inter_channels is not None else max(in_channels // 2, 1)
            c, ci = in_channels, self.inter_channels
            conv, pool, bn = {
                1: (nn.Conv1d, nn.MaxPool1d(kernel_size=2), nn.BatchNorm1d),
                2: (nn.Conv2d, nn.MaxPool2d(kernel_size=(2, 2)), nn.BatchNorm2d),
                3: (nn.Conv3d, nn.MaxPool3d(kernel_size=(1, 2, 2)), nn.BatchNorm3d),
            }[dimension]
            self.g = conv(c, ci, kernel_size=1, stride=1, padding=0)
            if bn_layer:
                self.W = nn.Sequential(conv(ci, c, kernel_size=1, stride=1, padding=0), bn(c))
                last = self.W[1]
            else:
                self.W = conv(ci, c, kernel_size=1, stride=1, padding=0)
                last = self.W
            nn.init.constant_(last.weight, 0)
            nn.init.constant_(last.bias, 0)
            if combined:
                self.mode = kw.get("mode", "embedded_gaussian")
            if combined or variant != "gaussian":
                self.theta = conv(c, ci, kernel_size=1, stride=1, padding=0)
                self.phi = conv(c, ci, kernel_size=1, stride=1, padding=0)
            if combined or variant == "concatenation":
                # upstream uses Conv2d here whatever the dimension
                self.concat_project = nn.Sequential(nn.Conv2d(ci * 2, 1, 1, 1, 0, bias=False), nn.ReLU())
            if sub_sample:
                self.g = nn.Sequential(self.g, pool)
                self.phi = nn.Sequential(self.phi, pool) if hasattr(self, "phi") else pool

        def forward(self, x, return_nl_map=False):
            mode = self.mode if combined else variant
            b, ci = x.size(0), self.inter_channels
            g_x = self.g(x).view(b, ci, -1).permute(0, 2, 1)
            if mode == "gaussian":
                theta_x = x.view(b, self.in_channels, -1).permute(0, 2, 1)
                phi_x = (self.phi(x) if self.sub_sample else x).view(b, self.in_channels, -1)
                f = torch.matmul(theta_x, phi_x)
            elif mode == "concatenation":
                theta_x = self.theta(x).view(b, ci, -1, 1)
                phi_x = self.phi(x).view(b, ci, 1, -1)
                n, n_k = theta_x.size(2), phi_x.size(3)
                cat = torch.cat([theta_x.repeat(1, 1, 1, n_k), phi_x.repeat(1, 1, n, 1)], dim=1)
                f = self.concat_project(cat).view(b, n, n_k)
            else:
                theta_x = self.theta(x).view(b, ci, -1).permute(0, 2, 1)
                phi_x = self.phi(x).view(b, ci, -1)
                f = torch.matmul(theta_x, phi_x)
            f_div_c = F.softmax(f, dim=-1) if mode in SOFTMAX_MODES else f / f.size(-1)
            y = torch.matmul(f_div_c, g_x).permute(0, 2, 1).contiguous()
            y = y.view(b, ci, *x.size()[2:])
            z = self.W(y) + x
            return (z, f_div_c) if return_nl_map else z

    def subclass(name: str, dimension: int) -> type[nn.Module]:
        def __init__(self, in_channels, inter_channels=None, sub_sample=True, bn_layer=True, **kw):
            _NonLocalBlockND.__init__(self, in_channels, inter_channels, dimension, sub_sample, bn_layer, **kw)

        return type(name, (_NonLocalBlockND,), {"__init__": __init__})

    classes = {"_NonLocalBlockND": _NonLocalBlockND}
    for dim in (1, 2, 3):
        classes[f"NONLocalBlock{dim}D"] = subclass(f"NONLocalBlock{dim}D", dim)
    for name, cls in classes.items():
        cls.__module__ = module_path
        cls.__qualname__ = name
    return classes


def randomise(block: nn.Module, seed: int = 0) -> nn.Module:
    """Normal(0, 0.2) weights and BN statistics, eval mode: no zero output transform."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for m in block.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return block.eval()


def make_block(variant: str, sub_sample: bool = True, bn_layer: bool = True, channels: int = 8, **kw) -> nn.Module:
    cls = upstream_classes(variant)["NONLocalBlock2D"]
    return randomise(cls(channels, sub_sample=sub_sample, bn_layer=bn_layer, **kw))


def rebuild(block: nn.Module, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``x + W(A g(x))`` from the adapter's maps ``A`` ``[B, N, N_k]``."""
    b, _, h, w = x.shape
    g_x = block.g(x).flatten(2).transpose(1, 2)  # [B, N_k, C']
    y = (maps @ g_x).transpose(1, 2).reshape(b, block.inter_channels, h, w)
    return x + block.W(y)


# (variant, constructor kwargs): the four split files and the working modes of the pre-split file
CASES = [(v, {}) for v in SPLIT_VARIANTS] + [
    ("combined", {"mode": "embedded_gaussian"}),
    ("combined", {"mode": "dot_product"}),
    ("combined", {"mode": "concatenation"}),
]
# (bn_layer, grid): W with and without BN, on non-square grids, odd sides (floored by the pool)
LAYOUTS = [(True, (7, 10)), (False, (9, 5))]


@pytest.mark.parametrize("bn_layer,shape", LAYOUTS, ids=["bn-7x10", "nobn-9x5"])
@pytest.mark.parametrize("sub_sample", [True, False], ids=["sub", "nosub"])
@pytest.mark.parametrize("variant,kw", CASES, ids=[f"{v}-{k.get('mode', '')}".rstrip("-") for v, k in CASES])
def test_maps_reproduce_block_output(variant, kw, sub_sample, bn_layer, shape):
    block = make_block(variant, sub_sample=sub_sample, bn_layer=bn_layer, **kw)
    x = torch.randn(2, 8, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z, own_map = block(x, return_nl_map=True)
        maps = attention_maps(block, x)
        att = attention(block, x)
    h, w = shape
    key_shape = (h // 2, w // 2) if sub_sample else (h, w)
    assert att.query_shape == (h, w) and att.key_shape == key_shape
    assert maps.shape == (2, h * w, key_shape[0] * key_shape[1])
    torch.testing.assert_close(maps, own_map, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rebuild(block, x, maps), z, rtol=1e-5, atol=1e-5)
    assert (z - x).abs().max() > 1e-2  # the output transform is not zero: the check can fail


@pytest.mark.parametrize("variant", SPLIT_VARIANTS)
def test_row_normalisation(variant):
    block = make_block(variant)
    x = torch.randn(2, 8, 7, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        att = attention(block, x)
        maps = att.full()
    sums = maps.sum(-1)
    if variant in SOFTMAX_MODES:
        assert att.distribution
        torch.testing.assert_close(sums, torch.ones_like(sums))
    else:
        assert not att.distribution
        assert not torch.allclose(sums, torch.ones_like(sums))
        if variant == "concatenation":
            assert (maps >= 0).all()
        else:
            assert (maps < 0).any()  # dot product: signed weights


def test_embedded_gaussian_is_not_scaled():
    # mmcv divides by sqrt(C'); AlexHex7 does not. Large inter_channels makes the difference large.
    block = make_block("embedded_gaussian", sub_sample=False, channels=32)
    x = torch.randn(1, 32, 5, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        att = attention(block, x)
        logits = block.theta(x).flatten(2).transpose(1, 2) @ block.phi(x).flatten(2)
    assert att.scale == 1.0
    torch.testing.assert_close(att.full(), logits.softmax(-1))
    assert not torch.allclose(att.full(), (logits / 16**0.5).softmax(-1), atol=1e-3)


def test_mode_inference_sources():
    assert infer_mode(make_block("gaussian", sub_sample=False)) == ("gaussian", "structure")
    assert infer_mode(make_block("gaussian")) == ("gaussian", "structure")
    assert infer_mode(make_block("concatenation")) == ("concatenation", "structure")
    assert infer_mode(make_block("embedded_gaussian")) == ("embedded_gaussian", "file name")
    assert infer_mode(make_block("dot_product")) == ("dot_product", "file name")
    assert infer_mode(make_block("combined", mode="dot_product")) == ("dot_product", "mode attribute")
    declared = make_block("embedded_gaussian")
    declared.mode = "dot_product"  # a user's declaration wins over the file name
    assert infer_mode(declared) == ("dot_product", "mode attribute")


def test_user_subclass_in_own_module_uses_base_file():
    base = upstream_classes("dot_product")["NONLocalBlock2D"]
    sub = type("MyNonLocal", (base,), {"__module__": "myproject.models"})
    block = randomise(sub(8))
    assert infer_mode(block) == ("dot_product", "file name")
    x = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(rebuild(block, x, attention_maps(block, x)), block(x), rtol=1e-5, atol=1e-5)


def test_list_blocks_finds_blocks_in_a_model():
    nl2d = upstream_classes("embedded_gaussian")["NONLocalBlock2D"]

    class Network(nn.Module):  # lib/network.py layout (master): attributes nl_1, nl_2
        def __init__(self):
            super().__init__()
            self.conv_1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
            self.nl_1 = nl2d(in_channels=8)
            self.conv_2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
            self.nl_2 = nl2d(in_channels=16)

        def forward(self, x):
            return self.nl_2(self.conv_2(self.nl_1(self.conv_1(x))))

    model = Network()
    blocks = list_blocks(model)
    assert [(b.name, b.family) for b in blocks] == [("nl_1", "alexhex7"), ("nl_2", "alexhex7")]
    assert [b.name for b in list_blocks(model, include="nl_2")] == ["nl_2"]

    # 0.4.1 layout: blocks inside one Sequential
    seq = nn.Sequential(nn.Conv2d(1, 8, 3), nl2d(8), nn.Conv2d(8, 16, 3), nl2d(16))
    assert [b.name for b in list_blocks(seq)] == ["1", "3"]


def test_describe():
    info = get_adapter(make_block("dot_product", bn_layer=False)).describe(make_block("dot_product", bn_layer=False))
    assert info["family"] == "alexhex7"
    assert info["mode"] == "dot_product" and info["mode_source"] == "file name"
    assert info["module"] == "lib.non_local_dot_product"
    assert (info["in_channels"], info["inter_channels"], info["dimension"]) == (8, 4, 2)
    assert info["sub_sample"] is True and info["bn_layer"] is False

    anonymous = randomise(upstream_classes("dot_product", "mynets.blocks")["NONLocalBlock2D"](8))
    info = AlexHex7Adapter().describe(anonymous)
    assert info["mode"] is None and "dot-product" in info["problem"]


@pytest.mark.parametrize("dim,shape", [(3, (2, 8, 3, 6, 6)), (1, (2, 8, 12))])
def test_1d_3d_blocks_are_unsupported(dim, shape):
    block = upstream_classes("embedded_gaussian")[f"NONLocalBlock{dim}D"](8)
    adapter = get_adapter(block)
    assert adapter.family == "alexhex7"
    with pytest.raises(UnsupportedBlockError, match=f"dimension={dim}.*only 2-D"):
        adapter.attention(block, torch.randn(*shape))
    # through the registry the 4-D input check fires first
    with pytest.raises((UnsupportedBlockError, ValueError)):
        attention_maps(block, torch.randn(*shape))


def test_ambiguous_variant_raises_with_hint():
    block = randomise(upstream_classes("embedded_gaussian", "mynets.blocks")["NONLocalBlock2D"](8))
    x = torch.randn(1, 8, 6, 6)
    with pytest.raises(UnsupportedBlockError, match=r"embedded Gaussian or the dot-product.*mynets\.blocks.*block\.mode"):
        attention_maps(block, x)
    block.mode = "embedded_gaussian"  # the documented way out
    with torch.no_grad():
        torch.testing.assert_close(rebuild(block, x, attention_maps(block, x)), block(x), rtol=1e-5, atol=1e-5)


def test_contradictions_and_bad_modes_raise():
    x = torch.randn(1, 8, 6, 6)
    block = make_block("embedded_gaussian")
    block.mode = "softmax"
    with pytest.raises(UnsupportedBlockError, match="mode='softmax'"):
        attention_maps(block, x)

    # a file named gaussian but with theta: not the upstream gaussian block
    odd = randomise(upstream_classes("embedded_gaussian", "lib.non_local_gaussian")["NONLocalBlock2D"](8))
    with pytest.raises(UnsupportedBlockError, match="'gaussian' variant, but the block has theta"):
        attention_maps(odd, x)
    odd.mode = "embedded_gaussian"  # declared after checking its forward: wins over the file name
    with torch.no_grad():
        torch.testing.assert_close(rebuild(odd, x, attention_maps(odd, x)), odd(x), rtol=1e-5, atol=1e-5)
    # structure (no theta: gaussian) against a file that names another variant
    no_theta = randomise(upstream_classes("gaussian", "lib.non_local_dot_product")["NONLocalBlock2D"](8))
    with pytest.raises(UnsupportedBlockError, match="structure says 'gaussian'.*'dot_product' variant"):
        attention_maps(no_theta, x)

    # a subclass whose own file names another variant than its base's file
    base = upstream_classes("embedded_gaussian")["NONLocalBlock2D"]
    mixed = randomise(type("Mixed", (base,), {"__module__": "myproject.non_local_dot_product"})(8))
    with pytest.raises(UnsupportedBlockError, match="name several variants"):
        attention_maps(mixed, x)
    mixed.mode = "embedded_gaussian"
    assert infer_mode(mixed) == ("embedded_gaussian", "mode attribute")

    # the pre-split file's gaussian mode with sub_sample pools a C' projection: upstream bug
    broken = make_block("combined", mode="gaussian", sub_sample=True)
    with pytest.raises(UnsupportedBlockError, match="phi must only pool"):
        attention_maps(broken, x)
    fine = make_block("combined", mode="gaussian", sub_sample=False)
    with torch.no_grad():
        torch.testing.assert_close(rebuild(fine, x, attention_maps(fine, x)), fine(x), rtol=1e-5, atol=1e-5)

    concat = make_block("concatenation")
    concat.concat_project = nn.Sequential(nn.Conv2d(8, 1, 1, bias=True), nn.ReLU())
    with pytest.raises(UnsupportedBlockError, match="concat_project"):
        attention_maps(concat, x)


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match="expected 8 input channels"):
        attention_maps(make_block("gaussian"), torch.randn(1, 6, 5, 5))


def test_context_term_and_block_input():
    block = make_block("concatenation")
    adapter = get_adapter(block)
    x = torch.randn(2, 8, 7, 10)
    with torch.no_grad():
        z, nl_map = block(x, return_nl_map=True)
        expected = block.W(((nl_map @ block.g(x).flatten(2).transpose(1, 2)).transpose(1, 2)).reshape(2, 4, 7, 10))
        torch.testing.assert_close(adapter.context_term(block, x, z), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(adapter.context_term(block, x, (z, nl_map)), expected, rtol=1e-5, atol=1e-5)
    assert adapter.block_input((x,), {"return_nl_map": True}) is x
    assert adapter.block_input((), {"x": x, "return_nl_map": True}) is x
