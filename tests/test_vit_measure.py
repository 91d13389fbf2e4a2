"""Per-head ViT statistics agree, head by head, with the NL pipeline's measure_block on the same maps."""
import math

import pytest
import torch

from nlanalysis.measure import measure_block
from nlanalysis.vit.attention import HeadAttention
from nlanalysis.vit.measure import gram_matrices, measure_heads
from nlanalysis.vit.tokens import TokenLayout

B, H, D, C = 2, 3, 8, 12
FIELDS = ("input", "output", "att", "att_jsd", "att_entropy", "att_max", "att_zero_rows", "input_zero", "output_zero")


def _case(grid=(3, 4), n_cls=1, n_reg=2, seed=0, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    layout = TokenLayout(grid, n_cls, n_reg)
    n = layout.n_tokens
    q = torch.randn(B, H, n, D, generator=g) * sharp
    k = torch.randn(B, H, n, D, generator=g) * sharp
    x = torch.randn(B, n, C, generator=g)
    o = torch.randn(B, n, H * D, generator=g)  # what the output projection sees
    w = torch.randn(C, H * D, generator=g)
    bias = torch.randn(C, generator=g)
    gamma = torch.rand(C, generator=g) + 0.5
    branch = gamma * (o @ w.T + bias)
    return layout, q, k, x, o, w, gamma, branch


def _grid(tokens, layout):
    """[B, N, C] patch tokens -> [B, C, H_g, W_g] as the NL pipeline takes them."""
    return layout.patch_tokens(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, *layout.grid)


def _reference(layout, att, x, o, w, gamma, branch, valid, h):
    """measure_block on one head (h < H) or the head mean (h == H)."""
    if h == H:
        lazy, context = att.mean(), branch
    else:
        lazy = att.head(h)
        context = gamma * (o[..., h * D : (h + 1) * D] @ w[:, h * D : (h + 1) * D].T)  # head h's share, no bias
    return measure_block(lazy, _grid(x, layout), _grid(context, layout), valid=valid, chunk_size=5, jsd_pairs=10_000)


@pytest.mark.parametrize("keys", ["patch", "all"])
@pytest.mark.parametrize("masked", [False, True])
def test_every_head_and_the_mean_match_measure_block(keys, masked):
    if keys == "all" and masked:
        return _check_all_keys_masked()
    layout, q, k, x, o, w, gamma, branch = _case()
    att = HeadAttention(q, k, 0.4, layout, keys)
    valid = None
    if masked:
        valid = torch.ones(B, *layout.grid, dtype=torch.bool)
        valid[0, -1, :] = False
        valid[1, :, -2:] = False
    stats = measure_heads(
        att, x, branch, proj_in=o, gram=gram_matrices(w, H, gamma), valid=valid, chunk_size=5, jsd_pairs=10_000
    )
    for h in range(H + 1):
        ref = _reference(layout, att, x, o, w, gamma, branch, valid, h)
        for name in FIELDS:
            got, want = getattr(stats, name)[:, h].double(), getattr(ref, name).double()
            assert torch.allclose(got, want, atol=2e-6, rtol=1e-5), (name, h, got, want)
        assert torch.equal(stats.n_query, ref.n_query) and torch.equal(stats.n_key, ref.n_key)
        assert stats.att_jsd_stderr[:, h].eq(0).all()  # every pair used: exact


def _check_all_keys_masked():
    """measure_block cannot put a patch mask on a (1, N) key list: check against the unmasked rows
    with masked columns removed by hand (keys = prefix + valid patches)."""
    layout, q, k, x, o, w, gamma, branch = _case()
    valid = torch.ones(B, *layout.grid, dtype=torch.bool)
    valid[:, 0, :2] = False
    stats = measure_heads(HeadAttention(q, k, 0.4, layout, "all"), x, branch, valid=valid, jsd_pairs=10_000)
    probs = (q * 0.4 @ k.transpose(-2, -1)).softmax(-1)[:, :, layout.n_prefix :]  # patch queries, all keys
    keep = torch.cat([torch.ones(layout.n_prefix, dtype=torch.bool), valid[0].flatten()])
    rows = probs[:, :, valid[0].flatten()][..., keep].double()  # valid queries, valid keys
    rows = torch.cat([rows, rows.mean(1, keepdim=True)], 1)
    unit = rows / rows.norm(dim=-1, keepdim=True)
    n = rows.shape[2]
    att = 1 - unit.sum(2).norm(dim=-1) ** 2 / n**2
    p = rows / rows.sum(-1, keepdim=True)
    ent = -(p * p.log()).sum(-1).mean(-1) / math.log(keep.sum())
    assert torch.allclose(stats.att, att, atol=1e-6) and torch.allclose(stats.att_entropy, ent, atol=1e-6)
    assert stats.n_key.tolist() == [int(keep.sum())] * B


def test_prefix_mass_is_the_weight_on_class_and_register_tokens():
    layout, q, k, x, o, w, gamma, branch = _case()
    stats = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, jsd_pairs=0)
    probs = (q[:, :, layout.n_prefix :] * 0.4 @ k.transpose(-2, -1)).softmax(-1)  # patch queries
    mass = probs[..., : layout.n_prefix].sum(-1).mean(-1)  # [B, H]
    assert torch.allclose(stats.att_prefix_mass[:, :H].float(), mass, atol=1e-6)
    assert torch.allclose(stats.att_prefix_mass[:, H].float(), mass.mean(1), atol=1e-6)
    assert torch.isnan(stats.output[:, :H]).all()  # no per-head output without proj_in / gram
    assert torch.isnan(stats.att_jsd).all()  # jsd_pairs=0


def test_chunking_and_precomputed_probs_change_nothing():
    layout, q, k, x, o, w, gamma, branch = _case(grid=(4, 5), sharp=2.0)
    kw = dict(proj_in=o, gram=gram_matrices(w, H, gamma), jsd_pairs=10_000)
    one = measure_heads(HeadAttention(q, k, 0.3, layout), x, branch, chunk_size=1000, **kw)
    many = measure_heads(HeadAttention(q, k, 0.3, layout), x, branch, chunk_size=3, **kw)
    probs = (q * 0.3 @ k.transpose(-2, -1)).softmax(-1)
    given = measure_heads(HeadAttention(q, k, 0.3, layout, probs=probs), x, branch, chunk_size=7, **kw)
    for name in FIELDS:
        a, b_, c = (getattr(s, name).double() for s in (one, many, given))
        assert torch.allclose(a, b_, atol=1e-6) and torch.allclose(a, c, atol=1e-6), name


def test_sampled_jsd_is_within_its_stated_error():
    layout, q, k, x, o, w, gamma, branch = _case(grid=(8, 8), n_reg=0, sharp=1.5)
    att = HeadAttention(q, k, 0.4, layout)
    exact = measure_heads(att, x, branch, jsd_pairs=100_000)
    sampled = measure_heads(att, x, branch, jsd_pairs=600, generator=torch.Generator().manual_seed(1))
    z = (sampled.att_jsd - exact.att_jsd).abs() / sampled.att_jsd_stderr
    assert (sampled.att_jsd_stderr > 0).all() and (z < 4.5).all()


def test_query_independent_maps_give_zero_att_and_jsd():
    layout = TokenLayout((3, 3), 1, 0)
    n = layout.n_tokens
    q = torch.zeros(B, H, n, D)  # every query sees the same logits: identical rows
    k = torch.randn(B, H, n, D)
    x = torch.randn(B, n, C)
    stats = measure_heads(HeadAttention(q, k, 1.0, layout), x, x, jsd_pairs=10_000)
    assert stats.att.abs().max() < 1e-6 and stats.att_jsd.abs().max() < 1e-6
    assert torch.allclose(stats.att_entropy, torch.ones_like(stats.att_entropy), atol=1e-6)  # uniform rows


def test_bad_inputs_are_errors():
    layout, q, k, x, o, w, gamma, branch = _case()
    att = HeadAttention(q, k, 0.4, layout)
    with pytest.raises(ValueError, match="valid mask"):
        measure_heads(att, x, branch, valid=torch.ones(B, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="tokens"):
        measure_heads(att, x[:, 1:], branch)
    with pytest.raises(ValueError, match="keys"):
        HeadAttention(q, k, 0.4, layout, keys="cls")
    assert math.isnan(measure_heads(att, x, branch).output[0, 0])  # per-head output needs proj_in and gram
    with pytest.raises(ValueError, match="chunk_size"):
        measure_heads(att, x, branch, chunk_size=0)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_formulation_equals_the_eager_one(masked):
    """fused=True only reformulates three reductions for torch.compile; run eagerly here (cheap)."""
    from nlanalysis.vit.measure import _chunk_stats

    layout, q, k, x, o, w, gamma, branch = _case(grid=(4, 4))
    km = m = None
    if masked:
        km = torch.ones(B, 1, 1, 16)
        km[0, ..., :4] = 0
        m = km[:, 0] > 0
    sel_b, sel_c = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 15])
    args = (q[:, :, 3:], k, 0.4, None, km, m, sel_b, sel_c, 3, 3)
    for eager, fused in zip(_chunk_stats(*args, False), _chunk_stats(*args, True)):
        assert torch.allclose(eager, fused, atol=1e-6, equal_nan=True)


@pytest.mark.skipif(
    not __import__("os").environ.get("NLANALYSIS_TEST_COMPILE"),
    reason="compiles with torch.compile (~20 s cold): set NLANALYSIS_TEST_COMPILE=1 to run",
)
def test_compiled_kernels_match_eager():
    layout, q, k, x, o, w, gamma, branch = _case(grid=(4, 4))
    kw = dict(proj_in=o, gram=gram_matrices(w, H, gamma), jsd_pairs=10_000)
    eager = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, **kw)
    fused = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, fused=True, **kw)
    for name in FIELDS:
        assert torch.allclose(getattr(eager, name).double(), getattr(fused, name).double(), atol=1e-5), name
