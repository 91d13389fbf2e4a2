"""Per-head ViT statistics agree, head by head, with the NL pipeline's measure_block on the same maps."""
import math

import pytest
import torch

from nlanalysis.measure import measure_block
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.measure.heads import gram_matrices, measure_heads
from nlanalysis.blocks.tokens import TokenLayout

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


def _reference(layout, att, x, o, w, gamma, branch, valid, h, objects=None):
    """measure_block on one head (h < H) or the head mean (h == H)."""
    if h == H:
        lazy, context = att.mean(), branch
    else:
        lazy = att.head(h)
        context = gamma * (o[..., h * D : (h + 1) * D] @ w[:, h * D : (h + 1) * D].T)  # head h's share, no bias
    return measure_block(
        lazy, _grid(x, layout), _grid(context, layout), valid=valid, objects=objects, chunk_size=5, jsd_pairs=10_000
    )


@pytest.mark.parametrize("kernels", ["eager", "native"])
@pytest.mark.parametrize("keys", ["patch", "all"])
@pytest.mark.parametrize("masked", [False, True])
def test_every_head_and_the_mean_match_measure_block(keys, masked, kernels):
    """Both implementations (eager, and the native kernels where they build) against measure_block."""
    _skip_without_native(kernels)
    if keys == "all" and masked:
        return _check_all_keys_masked(kernels)
    layout, q, k, x, o, w, gamma, branch = _case()
    att = HeadAttention(q, k, 0.4, layout, keys)
    valid = None
    if masked:
        valid = torch.ones(B, *layout.grid, dtype=torch.bool)
        valid[0, -1, :] = False
        valid[1, :, -2:] = False
    objects = torch.tensor([[[0, 1, 1, 2], [0, 1, 2, 2], [3, 3, 0, 2]], [[5, 5, 5, 5], [0, 0, 7, 7], [0, 5, 7, 0]]])
    stats = measure_heads(
        att, x, branch, proj_in=o, gram=gram_matrices(w, H, gamma), valid=valid, chunk_size=5, jsd_pairs=10_000,
        kernels=kernels, objects=objects if keys == "patch" else None,
    )
    for h in range(H + 1):
        ref = _reference(layout, att, x, o, w, gamma, branch, valid, h, objects if keys == "patch" else None)
        for name in (*FIELDS, "att_own_object", "own_object_share") if keys == "patch" else FIELDS:
            got, want = getattr(stats, name)[:, h].double(), getattr(ref, name)[:, 0].double()
            assert torch.allclose(got, want, atol=2e-6, rtol=1e-5), (name, h, got, want)
        assert torch.equal(stats.n_query, ref.n_query) and torch.equal(stats.n_key, ref.n_key)
        assert stats.att_jsd_stderr[:, h].eq(0).all()  # every pair used: exact


def _skip_without_native(kernels):
    """kernels="native" without the native kernels runs eager (with a warning): that case would repeat "eager"."""
    from nlanalysis import kernels as native

    if kernels == "native" and not native.available():
        pytest.skip(f"no native kernels here: {native.why_unavailable()}")


def _check_all_keys_masked(kernels):
    """measure_block cannot put a patch mask on a (1, N) key list: check against the unmasked rows
    with masked columns removed by hand (keys = prefix + valid patches)."""
    layout, q, k, x, o, w, gamma, branch = _case()
    valid = torch.ones(B, *layout.grid, dtype=torch.bool)
    valid[:, 0, :2] = False
    stats = measure_heads(HeadAttention(q, k, 0.4, layout, "all"), x, branch, valid=valid, jsd_pairs=10_000, kernels=kernels)
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


def _zero_row_case():
    """Queries whose every patch weight underflows to 0 (all their mass on the class token): zero rows."""
    layout, q, k, x, o, w, gamma, branch = _case(grid=(4, 4))
    k[..., 0] = 0.0
    k[:, :, 0, 0] = 1.0  # feature 0 of the keys: 1 on the class token only
    q[0, :2, 3:6] = 0.0  # queries 0-2 of image 0, heads 0-1: logit 1e3 on the class token, 0 elsewhere
    q[0, :2, 3:6, 0] = 1e3
    return layout, q, k, x, o, w, gamma, branch


@pytest.mark.parametrize("keys", ["patch", "all"])
@pytest.mark.parametrize("masked", [False, True])
def test_native_kernels_equal_eager(keys, masked):
    """kernels="native" (the native kernels of nlanalysis.kernels) against the eager path, zero rows included."""
    from nlanalysis.vit import kernels

    if not kernels.available():
        pytest.skip(f"no native kernels here: {kernels.why_unavailable()}")
    layout, q, k, x, o, w, gamma, branch = _zero_row_case()
    valid = None
    if masked:
        valid = torch.ones(B, *layout.grid, dtype=torch.bool)
        valid[0, 0, 3] = valid[1, 2:, :] = False
    kw = dict(proj_in=o, gram=gram_matrices(w, H, gamma), valid=valid, jsd_pairs=10_000)
    eager = measure_heads(HeadAttention(q, k, 0.4, layout, keys), x, branch, kernels="eager", **kw)
    native = measure_heads(HeadAttention(q, k, 0.4, layout, keys), x, branch, kernels="native", chunk_size=5, **kw)
    if keys == "patch":
        assert eager.att_zero_rows[0, :2].gt(0).all()  # the case has zero rows
    for name in (*FIELDS, "att_prefix_mass", "att_jsd_stderr"):
        a, b_ = getattr(eager, name).double(), getattr(native, name).double()
        assert torch.allclose(a, b_, atol=1e-5, equal_nan=True), (name, a, b_)
    # a share of rows: exactly 0 where no row is zero (the native finalise read 3e-17 there)
    none = eager.att_zero_rows == 0
    assert none.any() and torch.equal(native.att_zero_rows[none], eager.att_zero_rows[none])


def test_native_kernels_refuse_bad_buffers():
    from nlanalysis.vit import kernels

    if not kernels.available():
        pytest.skip(f"no native kernels here: {kernels.why_unavailable()}")
    logits = torch.randn(1, 2, 4, 5)
    with pytest.raises(ValueError, match="float32 on the CPU"):
        kernels.row_stats(logits.double(), None, None, 1, 1)
    sel = torch.tensor([[0, -1, 5, -1]])
    rows = (sel, torch.empty(2, 3, 4), torch.empty(2, 3), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="past the table"):
        kernels.row_stats(logits, None, None, 1, 1, rows)
    with pytest.raises(ValueError, match="table must be"):
        kernels.row_stats(logits, None, None, 1, 1, (sel.clamp(max=1), torch.empty(2, 3, 5), *rows[2:]))
    table, ent, ok = torch.zeros(2, 3, 4), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="row indices"):  # would read past the table
        kernels.pair_jsd(table, ent, ok, torch.tensor([0, 2]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="image must be"):
        kernels.pair_jsd(table, ent, ok, torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([0, 3]), 2)
    pairs = (torch.tensor([0, 1]), torch.tensor([1, 1]))
    for where in range(4):  # a pointer into another device's memory never reaches C
        args = [ent, ok, *pairs, torch.tensor([0, 1])]
        args[[0, 1, 2, 4][where]] = args[[0, 1, 2, 4][where]].to("meta")
        with pytest.raises(ValueError, match="must be on the CPU"):
            kernels.pair_jsd(table, *args, 2)


def test_native_kernels_leave_the_floating_point_mode_alone():
    """The kernels flush denormals while they run; loading and running them must not do so for the process
    (a library linked with -ffast-math by GCC < 13 would, on load, for every later float op)."""
    from nlanalysis.vit import kernels

    if not kernels.available():
        pytest.skip(f"no native kernels here: {kernels.why_unavailable()}")
    layout, q, k, x, o, w, gamma, branch = _zero_row_case()
    measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, proj_in=o, gram=gram_matrices(w, H, gamma), kernels="native")
    tiny = torch.tensor([1e-310], dtype=torch.float64) * 1.0
    assert tiny.item() > 0 and float("1e-310") > 0 and (torch.tensor([1e-40]) * 1.0).item() > 0


def test_native_kernels_work_in_and_out_of_inference_mode():
    """Their scratch buffers outlive the call: one made under inference_mode must serve a later plain call."""
    from nlanalysis.vit import kernels

    if not kernels.available():  # kernels="auto" would run eager twice
        pytest.skip(f"no native kernels here: {kernels.why_unavailable()}")
    kernels.clear_workspace()
    layout, q, k, x, o, w, gamma, branch = _case(grid=(4, 4))
    kw = dict(proj_in=o, gram=gram_matrices(w, H, gamma), jsd_pairs=10_000)
    with torch.inference_mode():
        first = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, kernels="native", **kw)
    second = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, kernels="native", **kw)
    assert torch.equal(first.att, second.att) and torch.equal(first.att_jsd, second.att_jsd)


def test_without_a_compiler_the_statistics_fall_back_to_eager(tmp_path, monkeypatch):
    """No C compiler: kernels="auto" quietly runs eager, "native" warns once (saying why), and the numbers are
    those the native kernels give where a compiler is found (float32 rounding), exactly eager's."""
    import warnings

    from nlanalysis import kernels

    if not kernels.available():  # the reference below is the native kernels' result: they must build here
        pytest.skip(f"no native kernels here to compare the fallback with: {kernels.why_unavailable()}")
    layout, q, k, x, o, w, gamma, branch = _case(grid=(4, 4))
    kw = dict(proj_in=o, gram=gram_matrices(w, H, gamma), jsd_pairs=10_000)
    native = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, kernels="native", **kw)
    monkeypatch.setattr(kernels, "_LIB", [])
    monkeypatch.setattr(kernels, "_ERROR", [])
    monkeypatch.setattr(kernels, "_WARNED", [])
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("NLANALYSIS_CACHE", str(tmp_path))
    assert not kernels.available() and "no-such-compiler-here" in kernels.why_unavailable()
    eager = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, kernels="eager", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, **kw)  # auto: no warning
    with pytest.warns(UserWarning, match="native statistics kernels unavailable.*no-such-compiler-here"):
        loud = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, kernels="native", **kw)
    for name in FIELDS:
        want = getattr(native, name).double()
        for got in (quiet, loud):
            assert torch.allclose(getattr(got, name).double(), want, atol=1e-5, equal_nan=True), name
            assert torch.equal(getattr(got, name), getattr(eager, name)), name  # the fallback is the eager path
    with pytest.raises(kernels.KernelUnavailable, match="no-such-compiler-here"):
        kernels.row_stats(torch.zeros(1, 1, 2, 3), None, None, 1, 1)


def test_a_compiler_refusing_flags_gets_the_next_flag_set(tmp_path, monkeypatch):
    """A compiler without -mprefer-vector-width/-fopenmp (clang on macOS, GCC on ARM): a serial build, same numbers."""
    import shutil

    from nlanalysis.vit import kernels

    real = shutil.which("cc") or shutil.which("gcc")
    if real is None:
        pytest.skip("no C compiler here")
    fake = tmp_path / "picky-cc"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do case "$a" in -mprefer-vector-width=*|-fopenmp) echo "unknown flag $a" >&2; exit 1;; esac; done\nexec {real} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(kernels, "_LIB", [])
    monkeypatch.setattr(kernels, "_ERROR", [])
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("NLANALYSIS_CACHE", str(tmp_path / "cache"))
    assert kernels.available(), kernels.why_unavailable()
    built = list((tmp_path / "cache" / "kernels").iterdir())
    assert [p.suffix for p in built] == [".so"]  # three flag sets refused, the serial one built (nothing half-written left)
    layout, q, k, x, o, w, gamma, branch = _zero_row_case()
    kw = dict(proj_in=o, gram=gram_matrices(w, H, gamma), jsd_pairs=10_000)
    eager = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, kernels="eager", **kw)
    serial = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, kernels="native", **kw)
    for name in FIELDS:
        assert torch.allclose(getattr(eager, name).double(), getattr(serial, name).double(), atol=1e-5, equal_nan=True), name


def test_native_softmax_is_float32_accurate_over_the_whole_range():
    """The kernels' own exp (Cody-Waite reduction, degree-6 polynomial) against a float64 softmax, for weights
    from 1 down to 1e-37: relative error within a few float32 ulps (torch's float32 softmax: ~2.4e-7)."""
    from nlanalysis.vit import kernels

    if not kernels.available():
        pytest.skip(f"no native kernels here: {kernels.why_unavailable()}")
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(1, 1, 16, 2049, generator=g) * -100  # e^0 .. e^-100 (below ~e^-87: flushed to 0)
    logits[..., 0] = 0.0
    rows = (torch.arange(16)[None], torch.empty(16, 2, 2049), torch.empty(16, 2), torch.zeros(16, 2, dtype=torch.uint8))
    kernels.row_stats(logits, None, None, 0, 0, rows)
    want = torch.softmax(logits.double(), -1)[0, 0]
    got = rows[1][:, 0].double()  # head 0's rows, renormalised over every key (= the softmax)
    normal = want > 1e-37
    assert ((got - want).abs() / want)[normal].max() < 1e-6
    assert got[want < 1e-39].eq(0).all()  # below float32's normal range: flushed, never denormal


@pytest.mark.parametrize("kernels", ["eager", "native"])
@pytest.mark.parametrize("gap", [20.0, 23.0, 26.0, 45.0, 60.0, 80.0])
def test_rows_with_almost_all_weight_on_the_class_token(kernels, gap):
    """Queries whose patch weights are ~e^-gap (1e-9 .. 1e-35, all normal floats; the native pass takes a row's
    norm from its own sum of squares above a largest weight of 1e-10, ~e^-23, and rescaled below): their renormalised rows
    still count, in both implementations, against a float64 computation (squares of such weights underflow
    in float32: norms must not be taken of the raw weights)."""
    _skip_without_native(kernels)
    layout = TokenLayout((4, 4), 1, 0)
    n = layout.n_tokens
    g = torch.Generator().manual_seed(0)
    k = torch.eye(n).expand(1, 2, n, n).clone()  # logit of query i on key j: q_i[j]
    q = torch.randn(1, 2, n, n, generator=g)
    q[:, 0, 1:4, 0] = gap  # head 0, patch queries 0-2: class-token logit ~gap above every patch logit
    x = torch.randn(1, n, 8, generator=g)
    stats = measure_heads(HeadAttention(q, k, 1.0, layout), x, x, jsd_pairs=0, kernels=kernels)
    p = torch.softmax(q[0].double(), -1)[:, 1:, 1:]  # [heads, patch queries, patch keys], float64
    r = p / p.sum(-1, keepdim=True)
    rows = torch.cat([r, (p.mean(0) / p.mean(0).sum(-1, keepdim=True))[None]])  # heads, then the head mean
    unit = rows / rows.norm(dim=-1, keepdim=True)
    att = 1 - unit.sum(1).square().sum(-1) / 16**2
    entropy = -(rows * rows.log()).sum(-1).mean(-1) / math.log(16)
    assert torch.allclose(stats.att[0], att, atol=1e-5), (stats.att, att)
    assert torch.allclose(stats.att_entropy[0], entropy, atol=1e-5), (stats.att_entropy, entropy)
    assert torch.allclose(stats.att_max[0], rows.amax(-1).mean(-1), atol=1e-5)
    assert stats.att_zero_rows[0].eq(0).all()


def test_an_unwritable_cache_builds_in_a_temporary_folder(tmp_path, monkeypatch):
    from nlanalysis.vit import kernels

    if not kernels.available():
        pytest.skip(f"no native kernels here: {kernels.why_unavailable()}")
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setattr(kernels, "_LIB", [])
    monkeypatch.setattr(kernels, "_ERROR", [])
    monkeypatch.setenv("NLANALYSIS_CACHE", str(tmp_path / "not-a-folder"))  # its "kernels" folder cannot be made
    assert kernels.available(), kernels.why_unavailable()
    assert kernels.row_stats(torch.zeros(1, 1, 2, 3), None, None, 1, 1)[1][2].eq(2).all()  # two non-zero rows, head and mean


def test_inputs_that_require_grad_or_are_float64_are_measured_like_eager():
    """Statistics never build a graph (and never leave one on the kernels' reused buffers); float64 maps run
    eager under kernels="auto" instead of failing."""
    layout, q, k, x, o, w, gamma, branch = _case(grid=(4, 4))
    kw = dict(proj_in=o, gram=gram_matrices(w, H, gamma), jsd_pairs=10_000)
    want = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, kernels="eager", **kw)
    graded = measure_heads(HeadAttention(q.requires_grad_(), k.requires_grad_(), 0.4, layout), x.requires_grad_(), branch, **kw)
    plain = measure_heads(HeadAttention(q.detach(), k.detach(), 0.4, layout), x.detach(), branch, **kw)  # grad mode on
    wide = measure_heads(HeadAttention(q.detach().double(), k.detach().double(), 0.4, layout), x.detach().double(), branch.double(), **kw)
    for name in FIELDS:
        for got in (graded, plain, wide):
            assert torch.allclose(getattr(got, name).double(), getattr(want, name).double(), atol=1e-5), name
    assert not graded.att.requires_grad


def test_kernel_wrappers_refuse_inconsistent_inputs():
    from nlanalysis.vit import kernels
    from nlanalysis.measure.heads import heads_batch

    if not kernels.available():
        pytest.skip(f"no native kernels here: {kernels.why_unavailable()}")
    x = torch.randn(3, 16, 8)
    with pytest.raises(ValueError, match="branch must have x's shape"):  # C would read past branch
        kernels.token_stats(x, x[:1], None, None, None)
    with pytest.raises(ValueError, match="heads_in must be"):
        kernels.token_stats(x, x, torch.randn(3, 16, 4), torch.eye(3).expand(2, 3, 3), None)
    with pytest.raises(ValueError, match="prefix must be"):
        kernels.row_stats(torch.randn(1, 1, 2, 3), None, None, 5, 5)
    with pytest.raises(ValueError, match="on the CPU"):
        kernels.row_stats(torch.randn(1, 1, 2, 3), torch.ones(1, 2, device="meta"), None, 1, 1)
    layout, q, k, x, o, w, gamma, branch = _case(grid=(4, 4))
    with pytest.raises(ValueError, match="on meta"):  # masks and pairs made for another device
        measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, batch=heads_batch(layout, "patch", B, device="meta"))


@pytest.mark.parametrize("kernels", ["eager", "native"])
def test_branch_scale_is_the_layer_scale_applied_to_the_branch(kernels):
    _skip_without_native(kernels)
    layout, q, k, x, o, w, gamma, branch = _case()
    raw = branch / gamma  # the attention module's own output, before LayerScale
    kw = dict(proj_in=o, gram=gram_matrices(w, H, gamma), jsd_pairs=0, kernels=kernels)
    scaled = measure_heads(HeadAttention(q, k, 0.4, layout), x, branch, **kw)
    given = measure_heads(HeadAttention(q, k, 0.4, layout), x, raw, branch_scale=gamma, **kw)
    unscaled = measure_heads(HeadAttention(q, k, 0.4, layout), x, raw, **kw)
    assert torch.allclose(given.output, scaled.output, atol=1e-6)
    assert not torch.allclose(unscaled.output[:, H], scaled.output[:, H], atol=1e-4)  # the scale matters here
