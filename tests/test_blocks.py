"""Blocks: same keys and outputs as mmcv's, attention rows as the NL paper defines them."""
import numpy as np
import pytest
import torch

from helpers import randomize_
from naive import conv1x1, maxpool2, nl_attention
from nlanalysis.blocks import PAIRWISE_MODES, ContextBlock, NonLocal2d, SimplifiedNonLocal2d

mmcv_cnn = pytest.importorskip("mmcv.cnn", reason="mmcv-lite (dev extra) gives the reference blocks")

NORMS = [None, {"type": "BN"}, {"type": "GN", "num_groups": 4}]


@pytest.mark.parametrize("mode", PAIRWISE_MODES)
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("norm_cfg", NORMS, ids=["none", "bn", "gn"])
def test_nonlocal_matches_mmcv_state_dict_and_output(mode, sub_sample, norm_cfg):
    ref = randomize_(mmcv_cnn.NonLocal2d(16, mode=mode, sub_sample=sub_sample, norm_cfg=norm_cfg)).eval()
    ours = NonLocal2d(16, mode=mode, sub_sample=sub_sample, norm_cfg=norm_cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        z_ref, z = ref(x), ours(x)
    # compare the context term so the residual x cannot hide a wrong block
    assert (z_ref - x).abs().max() > 1e-2
    torch.testing.assert_close(z - x, z_ref - x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", PAIRWISE_MODES)
@pytest.mark.parametrize("sub_sample", [False, True])
def test_attention_rows_follow_the_definition(mode, sub_sample):
    block = randomize_(NonLocal2d(8, mode=mode, sub_sample=sub_sample)).eval()
    x = torch.randn(1, 8, 5, 7, dtype=torch.float64)
    block.double()
    with torch.no_grad():
        att = block.attention_maps(x)[0].numpy()

    xv = x[0].numpy()  # [C, H, W]
    q_pos = xv.reshape(8, -1).T
    if mode == "gaussian":
        q, kgrid = q_pos, (maxpool2(xv) if sub_sample else xv)
        k = kgrid.reshape(8, -1).T
    else:
        phi_conv = (block.phi[0] if sub_sample else block.phi).conv
        q = conv1x1(block.theta.conv.weight, block.theta.conv.bias, q_pos)
        phi_full = conv1x1(phi_conv.weight, phi_conv.bias, q_pos).T.reshape(-1, 5, 7)
        k = (maxpool2(phi_full) if sub_sample else phi_full).reshape(phi_full.shape[0], -1).T
    w_concat = block.concat_project.conv.weight.detach().double().numpy().ravel() if mode == "concatenation" else None
    scale = block.inter_channels**-0.5 if mode == "embedded_gaussian" else 1.0
    expected = nl_attention(mode, q, k, scale=scale, w_concat=w_concat)
    n_key = (2 * 3) if sub_sample else 35
    assert att.shape == (35, n_key)
    np.testing.assert_allclose(att, expected, rtol=1e-10, atol=1e-12)
    if mode in ("gaussian", "embedded_gaussian"):
        np.testing.assert_allclose(att.sum(1), 1.0)


@pytest.mark.parametrize("mode", PAIRWISE_MODES)
def test_every_mode_trains(mode):
    """mmcv's concatenation mode divides a ReLU output in place; ours must backpropagate."""
    block = NonLocal2d(8, mode=mode, zeros_init=False, std=0.2)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("pooling_type", ["att", "avg"])
@pytest.mark.parametrize("fusion_types", [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")])
def test_context_block_matches_mmcv(pooling_type, fusion_types):
    ref = randomize_(mmcv_cnn.ContextBlock(16, 1 / 4, pooling_type=pooling_type, fusion_types=fusion_types)).eval()
    ours = ContextBlock(16, 1 / 4, pooling_type=pooling_type, fusion_types=fusion_types).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x) - x, ref(x) - x, rtol=1e-5, atol=1e-6)
    maps = ours.attention_maps(x)
    assert maps.shape == (2, 30, 30)
    torch.testing.assert_close(maps[:, 0], maps[:, 17])  # one map for every query


def test_simplified_nonlocal_against_formula():
    block = randomize_(SimplifiedNonLocal2d(6)).double().eval()
    x = torch.randn(1, 6, 4, 5, dtype=torch.float64)
    v = x[0].reshape(6, -1).T.numpy()  # [N, C]
    logits = conv1x1(block.conv_mask.weight, block.conv_mask.bias, v)[:, 0]
    a = np.exp(logits - logits.max())
    a /= a.sum()
    pooled = (a[:, None] * v).sum(0)
    add = conv1x1(block.conv_value.weight, block.conv_value.bias, pooled[None])[0]
    expected = v + add
    got = block(x)[0].reshape(6, -1).T.detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(block.attention_maps(x)[0, 3].detach().numpy(), a, rtol=1e-10)


def test_bad_inputs_are_named():
    block = NonLocal2d(8)
    with pytest.raises(ValueError, match="4-D"):
        block(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match="8 input channels"):
        block(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="mode must be one of"):
        NonLocal2d(8, mode="softmax")
    with pytest.raises(ValueError, match="pooling_type"):
        ContextBlock(8, 0.25, pooling_type="max")
