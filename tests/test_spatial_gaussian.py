"""The locality control block: maps by spatial distance only (reports/controls/PLAN.md, session 15)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nlanalysis.blocks import NonLocal2d, SpatialGaussian2d
from nlanalysis.capture import Capture
from nlanalysis.models import BlockSpec
from nlanalysis.models.resnet import build_block


def _naive_maps(h: int, w: int, sigma: float) -> np.ndarray:
    """``[N, N]`` softmax over keys of ``-||c_i - c_j||^2 / (2 sigma^2)``, float64 loops."""
    cells = [(y, x) for y in range(h) for x in range(w)]
    out = np.zeros((len(cells), len(cells)))
    for i, (yi, xi) in enumerate(cells):
        logits = np.array([-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * sigma**2) for yj, xj in cells])
        e = np.exp(logits - logits.max())
        out[i] = e / e.sum()
    return out


def _block(sigma: float = 1.3) -> SpatialGaussian2d:
    torch.manual_seed(0)
    block = SpatialGaussian2d(8, sigma=sigma).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block


def test_maps_are_the_softmax_of_squared_distances():
    block = _block()
    x = torch.randn(2, 8, 4, 5)
    maps = block.attention(x).full().double().numpy()
    expected = _naive_maps(4, 5, 1.3)
    assert np.allclose(maps[0], expected, atol=1e-6) and np.allclose(maps[1], expected, atol=1e-6)
    assert np.allclose(block.attention(x * 3).full().double().numpy()[0], expected, atol=1e-6)  # not the features'
    wide = SpatialGaussian2d(8, sigma=0.5).attention(torch.randn(1, 8, 32, 32)).full()[0].double().numpy()
    ref = _naive_maps(32, 32, 0.5)  # a larger grid: centred coordinates keep float32's cancellation small
    big = ref > 1e-3
    assert np.max(np.abs(wide - ref)[big] / ref[big]) < 1e-5


def test_forward_is_x_plus_the_output_transform_of_the_local_mean_of_g():
    block = _block()
    x = torch.randn(2, 8, 4, 5)
    with torch.no_grad():
        out = block(x)
        g = block.g(x).flatten(2).double()  # [B, C', N]
        y = torch.einsum("ij,bcj->bci", torch.from_numpy(_naive_maps(4, 5, 1.3)), g).float().reshape(2, -1, 4, 5)
        expected = x + block.conv_out(y)
    assert torch.allclose(out, expected, atol=1e-5)


def test_loads_an_nl_blocks_weights_and_builds_from_its_spec():
    nl = NonLocal2d(16, mode="embedded_gaussian", zeros_init=False)
    block = SpatialGaussian2d(16, sigma=2.5)
    block.load_state_dict(nl.state_dict())  # strict: the same g, theta, phi, conv_out
    assert torch.equal(block.g.conv.weight, nl.g.conv.weight)
    built = build_block(BlockSpec("layer1.1", "SpatialGaussian2d", 16, "standalone", {"sigma": 2.5}))
    assert isinstance(built, SpatialGaussian2d) and built.sigma == 2.5
    with pytest.raises(ValueError, match="sigma must be > 0"):
        SpatialGaussian2d(16, sigma=0.0)


def test_captured_maps_are_query_dependent_and_measured_in_the_blocks_own_pass():
    block = _block(sigma=1.0)
    x = torch.randn(2, 8, 6, 7)
    with torch.no_grad():
        bare = block(x)
        with Capture(block, jsd_pairs=0, query_dependence="off") as cap:
            out = block(x)
        with Capture(block, jsd_pairs=0, query_dependence="off", share_softmax=False) as ref:
            block(x)
    assert torch.allclose(out, bare, atol=1e-5) and cap.served == 1 and ref.served == 0
    record = cap.records[0]
    assert record.info["mode"] == "spatial_gaussian" and record.info["sigma"] == 1.0
    att = record.stats.att.double()
    assert torch.allclose(att, ref.records[0].stats.att.double(), atol=1e-6)
    # mean 1 - cos over all ordered pairs of query rows (i = j included), by hand
    maps = _naive_maps(6, 7, 1.0)
    unit = maps / np.linalg.norm(maps, axis=1, keepdims=True)
    naive = 1 - (unit @ unit.T).mean()
    assert math.isclose(float(att[0]), naive, abs_tol=1e-6) and naive > 0.5
