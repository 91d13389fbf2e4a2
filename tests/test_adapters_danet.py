"""DANet's position attention module: the repository's key layout, the adapter, capture inside a model.

``PAM_Module`` below is written here from the DANet paper's equations (Fu et al., arXiv 1809.02983,
Eq. 1-2) with the attribute names of the repository's class (junfu1115/DANet ``encoding/nn/da_att.py``),
independently of :mod:`nlanalysis.blocks.position_attention`: ``s_ji = softmax_i(q_j . k_i)`` and
``E_j = gamma * sum_i s_ji v_i + x_j``.
"""
from __future__ import annotations

import torch
from torch import nn

from helpers import randomize_
from nlanalysis.adapters import get_adapter, list_blocks
from nlanalysis.blocks.position_attention import PositionAttention2d
from nlanalysis.capture import Capture


class PAM_Module(nn.Module):  # noqa: N801  (the repository's class name, which the adapter recognises)
    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.chanel_in = in_dim
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, 1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, 1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        q, k, v = (conv(x).flatten(2) for conv in (self.query_conv, self.key_conv, self.value_conv))
        s = torch.einsum("bcj,bci->bji", q, k).softmax(-1)  # [B, query j, key i]
        return self.gamma * torch.einsum("bji,bci->bcj", s, v).reshape(x.shape) + x


class DANetHead(nn.Module):
    """The part of the repository's ``DANetHead`` that holds the PAM (attribute ``sa``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv5a = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.sa = PAM_Module(channels)

    def forward(self, x):
        return self.sa(self.conv5a(x))


class DANet(nn.Module):
    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.head = DANetHead(channels)

    def forward(self, x):
        return self.head(x)


def test_danet_state_dict_loads_into_position_attention():
    danet = randomize_(DANet(16)).eval()
    state = danet.state_dict()
    pam_keys = sorted(k for k in state if k.startswith("head.sa."))
    assert pam_keys == ["head.sa.gamma", "head.sa.key_conv.bias", "head.sa.key_conv.weight", "head.sa.query_conv.bias",
                        "head.sa.query_conv.weight", "head.sa.value_conv.bias", "head.sa.value_conv.weight"]  # fmt: skip
    ours = PositionAttention2d(16)
    ours.load_state_dict({k.removeprefix("head.sa."): state[k] for k in pam_keys}, strict=True)
    x = torch.randn(2, 16, 5, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = danet.head.sa(x)
        torch.testing.assert_close(ours.eval()(x), want, rtol=1e-5, atol=1e-6)
        assert (want - x).abs().max() > 1e-2  # gamma != 0: the attention term is in the comparison
        maps = ours.attention(x).full()
        q, k = ours.query_conv(x).flatten(2), ours.key_conv(x).flatten(2)
        torch.testing.assert_close(maps, torch.einsum("bcj,bci->bji", q, k).softmax(-1))


def test_new_block_starts_as_identity_with_c_over_8_channels():
    block = PositionAttention2d(64)
    assert block.query_conv.out_channels == block.key_conv.out_channels == 8 and block.gamma.item() == 0.0
    x = torch.randn(1, 64, 4, 4)
    assert torch.equal(block(x), x)


def test_capture_finds_the_repository_module_by_name_and_measures_it():
    danet = randomize_(DANet(16)).eval()
    (found,) = list_blocks(danet)
    assert found.name == "head.sa" and found.family == "danet"
    info = get_adapter(danet.head.sa).describe(danet.head.sa)
    assert info["mode"] == "position_attention" and info["inter_channels"] == 2
    assert info["gamma"] == danet.head.sa.gamma.item()
    x = torch.randn(2, 16, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), Capture(danet, jsd_pairs=0) as cap:
        danet(x)
    (record,) = cap.records
    assert record.name == "head.sa" and record.stats.att.shape == (2, 1)
    assert bool((record.stats.att > 0).all())  # random weights: query-dependent maps
