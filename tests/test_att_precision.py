"""``att`` and ``att_jsd`` of maps whose rows are nearly identical (a freshly initialised NL block's: a shared
key profile, query-dependent only at 1e-4 in the logits) are float64-exact for the float32 maps measured: no float32
norm, unit-row scale, unit-row sum or entropy difference leaves a ~1e-7 floor under values of ~1e-8.

The reference is computed in float64 from exactly the float32 maps the path measured (the native kernel's own softmax,
read back by running it again on a copy of the logits it was given; the model's softmax handed to the eager path), so
the statistics' arithmetic is tested, not the maps' rounding. The head mean's reference is the float64 mean of those
maps: the paths' float32 mean maps differ from it per weight by float32 rounding, which moves att by ~1e-13."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nlanalysis import kernels
from nlanalysis.blocks import NonLocal2d
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.blocks.tokens import TokenLayout
from nlanalysis.capture import Capture
from nlanalysis.measure.heads import measure_heads
from nlanalysis.measure.jsd_pairs import _exact_below, _pair_jsd

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")

ATT_TOL = 1e-11  # absolute: the values are ~1e-8, the float32 floor was ~1e-7
JSD_TOL = 1e-11  # absolute (bits): the values are ~1e-8, the float32 entropy difference was ~1e-6 off


def _att(rows: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos, i = j included) of the rows ``[n, K]`` (float64, every row
    normalised on its own): 1 - ||sum_i r_i / ||r_i|| ||^2 / n^2."""
    unit = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    total = unit.sum(0)
    return 1.0 - float(total @ total) / rows.shape[0] ** 2


def _phi_jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JSD (bits) of rows ``p``, ``q`` ``[..., K]`` (float64, renormalised here) as a sum of non-negative terms
    ``m phi(r)``, ``m = (p + q) / 2``, ``r = (p - q) / (p + q)``, ``phi(r) = ((1 + r) log(1 + r) + (1 - r) log(1 - r)) / 2``:
    no cancellation between keys (the float64 log1p form cancels only ``r`` against ``r^2`` within a key)."""
    p, q = np.broadcast_arrays(p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True))
    m = (p + q) / 2
    r = np.divide(p - q, p + q, out=np.zeros_like(p), where=m > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = 0.5 * (np.where(r > -1, (1 + r) * np.log1p(r), 0.0) + np.where(r < 1, (1 - r) * np.log1p(-r), 0.0))
    return (m * phi).sum(-1) / np.log(2.0)


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


@pytest.mark.parametrize("kernel", ["eager", pytest.param("native", marks=needs_kernels)])
def test_vit_jsd_is_float64_exact(kernel: str, monkeypatch) -> None:
    """Every ordered pair of queries (10 x 12 patches): the mean JSD per head and of the head mean."""
    layout, q, k, x = _near_identical_vit((10, 12), seed=1)
    kw = dict(jsd_pairs=120**2, chunk_size=50)
    if kernel == "native":
        maps = _row_maps(monkeypatch)
        stats = measure_heads(HeadAttention(q, k, 0.5, layout), x, x, kernels="native", **kw)
        probs = torch.cat(maps, 2)[0]  # the patch queries' rows
    else:
        probs = torch.softmax((q * 0.5) @ k.transpose(-2, -1), -1)
        stats = measure_heads(HeadAttention(q, k, 0.5, layout, probs=probs), x, x, kernels="eager", **kw)
        probs = probs[0, :, layout.n_prefix :]
    rows = probs[..., layout.n_prefix :].double().numpy()  # [heads, queries, patch keys]
    rows = np.concatenate([rows, rows.mean(0, keepdims=True)])
    want = [float(_phi_jsd(r[:, None, :], r[None, :, :]).mean()) for r in rows]
    assert 1e-10 < min(want) and max(want) < 1e-7
    got = stats.att_jsd[0].tolist()
    assert (stats.att_jsd_stderr[0] == 0).all()  # every pair
    assert np.allclose(got, want, rtol=0, atol=JSD_TOL), (got, want)


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


@needs_kernels
def test_nl_table_jsd_is_float64_exact() -> None:
    """An NL block's JSD pairs (kernels.table_jsd: rows renormalised and summed in float64) on near-identical rows."""
    block, x = _near_identical_block((32, 40), seed=2)
    with torch.no_grad():
        rows = block.attention(x).full()[0, :64].contiguous()  # float32 maps
    a, b = torch.arange(64).repeat_interleave(64), torch.arange(64).repeat(64)
    got = kernels.table_jsd(rows, a, b).numpy()
    r = rows.double().numpy()
    want = _phi_jsd(r[a.numpy()], r[b.numpy()])
    assert 1e-10 < want.mean() < 1e-7
    assert np.abs(got - want).max() < JSD_TOL, np.abs(got - want).max()


@pytest.mark.parametrize("kernel", ["eager", pytest.param("native", marks=needs_kernels)])
@pytest.mark.parametrize("spread, noise", [(2.0, 1e-4), (2.0, 1e-2), (2.0, 1.0), (8.0, 4.0), (30.0, 30.0)])
def test_pair_jsd_is_float_accurate_in_every_regime(kernel: str, spread: float, noise: float) -> None:
    """A ViT layer's pair JSD (kernels.pair_jsd; the eager _pair_jsd) against float64, from near-identical rows to rows
    on disjoint keys (zeros included). The pairs below the cut (summed exactly: both forms of the native per-key terms
    and the switch between them) within float rounding; the others (the fast entropy form, ~1e-6 bits off) within 1e-4
    relative -- the cut's promise (``_exact_below``: 0.038 bits at K = 250)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 250, generator=g) * spread + noise * torch.randn(40, 3, 250, generator=g)
    table = torch.softmax(logits, -1)
    table[::3, :, ::4] = 0.0  # some keys without weight in some rows
    table = (table / table.sum(-1, keepdim=True)).float()  # renormalised rows, as the row pass hands them out
    table[5, 1] = 0.0  # an all-zero row: undefined
    ok = (table.sum(-1) > 0).to(torch.uint8)
    a, b = torch.arange(40).repeat_interleave(40), torch.arange(40).repeat(40)
    ent = -torch.special.xlogy(table.double(), table.double()).sum(-1).float()  # the rows' entropies (nats)
    if kernel == "native":
        got = kernels.pair_jsd(table, ent, ok, a, b).double().numpy()
    else:
        got = _pair_jsd(table, ent.masked_fill(ok == 0, math.nan), a, b).numpy()
    t = table.double().numpy()
    with np.errstate(invalid="ignore"):
        want = _phi_jsd(t[a.numpy()], t[b.numpy()])
    undefined = ~(ok[a] & ok[b]).bool().numpy()
    assert np.isnan(got[undefined]).all() and not np.isnan(got[~undefined]).any()
    got, want = got[~undefined], want[~undefined]
    exact = want < _exact_below(250) / 2  # surely below the cut: the fast form is ~1e-6 bits off
    assert exact.any() and (~exact).any()  # both kinds of pairs in every regime (i = j pairs are 0)
    tol = np.where(exact, 1e-6 * want + 1e-13, 1e-4 * want)
    err = np.abs(got - want)
    assert (err <= tol).all(), (err[exact].max(initial=0), (err / want)[~exact].max(initial=0))


@needs_kernels
@pytest.mark.parametrize("sink", [0.0, 16.0])
def test_native_row_entropies_with_a_class_token_sink(sink: float, monkeypatch) -> None:
    """The row pass's entropies of the rows it hands the pair JSD (its fast form's H(p), H(q)) are within ~1e-6 nats of
    the float64 entropy of those rows, heads and head mean, also where the class token takes all but ~1e-12 of the
    mass (patch logits ~30 below it: the float sums of p log p over patch keys lost ~1e-5), and the layer's JSD
    is within 1e-4 relative of float64 over the rows measured."""
    g = torch.Generator().manual_seed(4)
    layout = TokenLayout((14, 14), 1, 0)
    n, heads, d = layout.n_tokens, 3, 16
    k = torch.randn(1, heads, n, d, generator=g)
    q = torch.randn(1, heads, 1, d, generator=g) * 1.5 + 0.3 * torch.randn(1, heads, n, d, generator=g)
    k[:, :, 0] = q[:, :, 0] / q[:, :, 0].norm(dim=-1, keepdim=True) * sink  # the class token's key along the queries
    x = torch.randn(1, n, 12, generator=g)
    seen, real = [], kernels.pair_jsd
    monkeypatch.setattr(kernels, "pair_jsd", lambda *args: seen.append([t.clone() for t in args[:5]]) or real(*args))
    stats = measure_heads(HeadAttention(q, k, 0.5, layout), x, x, kernels="native", jsd_pairs=2048)
    table, ent, ok, a, b = seen[0]
    if sink:
        probs = torch.softmax(((q * 0.5) @ k.transpose(-2, -1)).double(), -1)
        assert probs[0, :, 1:, 0].min() > 1 - 1e-11  # the class token takes all but ~1e-12 of every patch query's mass
    t = table.double()
    h = -torch.special.xlogy(t, t).sum(-1)
    assert ok.all() and (ent.double() - h).abs().max() < 1.5e-6, (ent.double() - h).abs().max()
    tn = t.numpy()
    want = _phi_jsd(tn[a.numpy()], tn[b.numpy()]).mean(0)
    assert np.allclose(stats.att_jsd[0].numpy(), want, rtol=1e-4, atol=1e-12), (stats.att_jsd[0], want)


@needs_kernels
def test_native_cut_is_exact_below() -> None:
    """The native kernel sums a pair again exactly below row_stats.c's JSD_EXACT_BELOW, the cut _exact_below gives
    (the eager path's): rows' entropies given 1e-4 nats off (0.4% of the cut) show just above it, not just below."""
    k = 196
    cut = _exact_below(k)
    g = torch.Generator().manual_seed(5)
    p, s = (torch.softmax(torch.randn(k, generator=g, dtype=torch.float64) * 2, -1) for _ in range(2))
    rows = []
    for target in (0.97 * cut, 1.03 * cut):  # q = (1 - t) p + t s with the JSD(p, q) wanted (bisection on t)
        lo, hi = 0.0, 1.0
        for _ in range(60):
            t = (lo + hi) / 2
            lo, hi = (t, hi) if _phi_jsd(p.numpy(), ((1 - t) * p + t * s).numpy()) < target else (lo, t)
        rows += [p, (1 - t) * p + t * s]
    table = torch.stack(rows)[:, None].float()  # [4, 1, K]
    ent = (-torch.special.xlogy(table.double(), table.double()).sum(-1) - 1e-4).float()  # each 1e-4 nats too low
    ok = torch.ones(4, 1, dtype=torch.uint8)
    got = kernels.pair_jsd(table, ent, ok, torch.tensor([0, 2]), torch.tensor([1, 3]))[:, 0].double().numpy()
    t = table.double().numpy()
    want = _phi_jsd(t[[0, 2], 0], t[[1, 3], 0])
    assert abs(got[0] - want[0]) < 1e-9  # below the cut: summed again, the entropies not read
    assert abs(got[1] - want[1] - 1e-4 / math.log(2)) < 5e-6  # above it: the fast form, with the entropies given
