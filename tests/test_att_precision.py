"""``att`` of maps whose rows are nearly identical (a freshly initialised NL block's: a shared key profile,
query-dependent only at 1e-4 in the logits) is float64-exact for the float32 maps measured: no float32 norm,
unit-row scale or unit-row sum leaves a ~1e-7 floor under values of ~1e-8.

The reference is computed in float64 from exactly the float32 maps the path measured (the native kernel's own softmax,
read back by running it again on a copy of the logits it was given; the model's softmax handed to the eager path), so
the statistics' arithmetic is tested, not the maps' rounding. The head mean's reference is the float64 mean of those
maps: the paths' float32 mean maps differ from it per weight by float32 rounding, which moves att by ~1e-13."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nlanalysis import kernels
from nlanalysis.blocks import NonLocal2d
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.blocks.tokens import TokenLayout
from nlanalysis.capture import Capture
from nlanalysis.measure.heads import measure_heads

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")

ATT_TOL = 1e-11  # absolute: the values are ~1e-8, the float32 floor was ~1e-7


def _att(rows: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos, i = j included) of the rows ``[n, K]`` (float64, every row
    normalised on its own): 1 - ||sum_i r_i / ||r_i|| ||^2 / n^2."""
    unit = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    total = unit.sum(0)
    return 1.0 - float(total @ total) / rows.shape[0] ** 2


def _near_identical_vit(grid: tuple[int, int], heads: int = 3, d: int = 8, seed: int = 0):
    """A ViT layer whose queries share one vector per head up to 1e-4 noise: maps = softmax of a shared key
    profile (logits spread over ~+-4) plus 1e-4-scale query-dependent logits."""
    g = torch.Generator().manual_seed(seed)
    layout = TokenLayout(grid, 1, 0)
    n = layout.n_tokens
    k = torch.randn(1, heads, n, d, generator=g)
    q = torch.randn(1, heads, 1, d, generator=g) * 1.5 + 1e-4 * torch.randn(1, heads, n, d, generator=g)
    x = torch.randn(1, n, 12, generator=g)
    return layout, q, k, x


def _row_maps(monkeypatch) -> list[torch.Tensor]:
    """Spy on :func:`nlanalysis.kernels.row_stats`: each call's softmax of its query rows over every key
    ``[B, M, rows, N]`` (its own ``probs`` where it writes them; else the kernel run again on a copy of its logits)."""
    real, maps = kernels.row_stats, []

    def spy(logits, km, qm, first, prefix, rows=None, **kw):
        copy = None if kw.get("probs") is not None else logits.clone()
        out = real(logits, km, qm, first, prefix, rows, **kw)
        pre = kw.get("pre", 0)
        if copy is None:
            maps.append(kw["probs"][:, :, pre:].clone())
        else:
            probs = torch.empty_like(copy)
            real(copy, None, None, first, prefix, scale=kw.get("scale", 1.0), probs=probs, pre=pre, mean=False)
            maps.append(probs[:, :, pre:])
        return out

    monkeypatch.setattr(kernels, "row_stats", spy)
    return maps


@needs_kernels
def test_vit_head_rows_native_att_is_float64_exact(monkeypatch) -> None:
    """The native head row pass (every head and the head mean) on 32 x 32 patches (1,024 keys)."""
    layout, q, k, x = _near_identical_vit((32, 32))
    maps = _row_maps(monkeypatch)
    stats = measure_heads(HeadAttention(q, k, 0.5, layout), x, x, jsd_pairs=0, kernels="native", chunk_size=300)
    assert len(maps) == 4  # 1,024 queries in chunks of 300
    probs = torch.cat(maps, 2)[0, :, :, layout.n_prefix :].double().numpy()  # [heads, queries, patch keys]
    want = [_att(probs[h]) for h in range(probs.shape[0])] + [_att(probs.mean(0))]
    assert 1e-10 < min(want) and max(want) < 1e-6  # near-identical rows: att ~1e-8
    got = stats.att[0].tolist()
    assert np.allclose(got, want, rtol=0, atol=ATT_TOL), (got, want)


def test_vit_head_rows_eager_att_is_float64_exact() -> None:
    """The eager head row pass (the model's own float32 softmax handed to it), heads and head mean."""
    layout, q, k, x = _near_identical_vit((32, 32))
    probs = torch.softmax((q * 0.5) @ k.transpose(-2, -1), -1)  # [1, heads, N, N] float32, as the model holds it
    att = HeadAttention(q, k, 0.5, layout, probs=probs)
    stats = measure_heads(att, x, x, jsd_pairs=0, kernels="eager", chunk_size=300)
    rows = probs[0, :, layout.n_prefix :, layout.n_prefix :].double().numpy()
    want = [_att(rows[h]) for h in range(rows.shape[0])] + [_att(rows.mean(0))]
    assert 1e-10 < min(want) and max(want) < 1e-6
    got = stats.att[0].tolist()
    assert np.allclose(got, want, rtol=0, atol=ATT_TOL), (got, want)


def _near_identical_block(grid: tuple[int, int], seed: int = 0) -> tuple[NonLocal2d, torch.Tensor]:
    """An embedded-Gaussian NonLocal2d(16) whose theta reads channels 0-7 (all but constant over the image: 1e-4
    noise) and phi channels 8-15 (random): a shared key profile, query-dependent at ~1e-4 in the logits."""
    g = torch.Generator().manual_seed(seed)
    block = NonLocal2d(16, mode="embedded_gaussian", zeros_init=False).eval()
    with torch.no_grad():
        block.theta.conv.weight.zero_()
        block.theta.conv.weight[:, :8] = torch.randn(8, 8, 1, 1, generator=g)
        block.phi.conv.weight.zero_()
        block.phi.conv.weight[:, 8:] = torch.randn(8, 8, 1, 1, generator=g)
        block.g.conv.weight.normal_(0, 0.3, generator=g)
        block.conv_out.conv.weight.normal_(0, 0.3, generator=g)
    x = torch.randn(2, 16, *grid, generator=g)
    x[:, :8] = torch.randn(1, 8, 1, 1, generator=g) * 0.7 + 1e-4 * torch.randn(2, 8, *grid, generator=g)
    return block, x


@needs_kernels
def test_nl_block_in_pass_att_is_float64_exact(monkeypatch) -> None:
    """A captured embedded-Gaussian NonLocal2d measured in its own attention pass (the native in-pass softmax),
    32 x 40 positions (1,280 queries and keys), two images."""
    block, x = _near_identical_block((32, 40))
    maps = _row_maps(monkeypatch)
    with torch.no_grad(), Capture(block, jsd_pairs=0, query_dependence="off", kernels="native") as cap:
        block(x)
    assert cap.served == 1  # measured in its own pass
    probs = torch.cat(maps, 2)[:, 0].double().numpy()  # [B, N, N_k]
    want = [_att(probs[i]) for i in range(probs.shape[0])]
    assert 1e-10 < min(want) and max(want) < 1e-6
    got = cap.records[0].stats.att[:, 0].tolist()
    assert np.allclose(got, want, rtol=0, atol=ATT_TOL), (got, want)
