"""The native finalisation of a ViT layer's statistics (nlanalysis.kernels.head_finalise) against the
PyTorch path of nlanalysis.measure.heads._head_stats (distance_from_sum, row_results, _jsd): the same
numbers, NaN in the same places, the same dtypes, on inputs that reach every rule, and on a real
captured layer."""
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from helpers import randomize_
from nlanalysis import kernels
from nlanalysis.blocks.tokens import TokenLayout
from nlanalysis.measure import heads as heads_module
from nlanalysis.measure.heads import _head_stats, heads_batch

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"no native kernels here: {kernels.why_unavailable()}")
FLOATS = ("input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows",
          "att_own_object", "own_object_share", "att_prefix_mass")  # fmt: skip
EXACT = ("input_zero", "output_zero", "n_query", "n_key", "convention", "zero_rule", "keys")


def _batch(n_query: list[int], heads: int, exact: list[bool], objects: bool, jsd: bool, seed: int):
    """A HeadsBatch whose images have ``n_query`` valid patch queries (a 3 x 4 grid), with JSD pairs
    (their ``exact`` flags set as given) or none, and object labels or none."""
    b, layout = len(n_query), TokenLayout((3, 4), 1, 1)
    valid = torch.zeros(b, 12, dtype=torch.bool)
    for i, n in enumerate(n_query):
        valid[i, :n] = True
    labels = torch.randint(0, 3, (b, 3, 4), generator=torch.Generator().manual_seed(seed)) if objects else None
    batch = heads_batch(layout, "patch", b, valid.view(b, 3, 4), jsd_pairs=8 if jsd else 0, objects=labels)
    if batch.plan is not None:
        batch.plan = dataclasses.replace(batch.plan, exact=torch.tensor(exact))
    return batch


def _inputs(batch, heads: int, heads_out: bool, zero: str, k: int, g: torch.Generator):
    """Token sums, rows sums and JSD moments consistent with the batch's counts (sums over no row are 0),
    with zero vectors, all-zero rows, distances clamped at 0, and JSD counts 0, 1 and many."""
    b, maps = batch.size, heads + 1
    nq = batch.n_query.double()
    u = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    cols = 2 + heads if heads_out else 2
    zeros = (u(b, cols) * (nq[:, None] + 1)).floor().long().clamp(max=batch.n_query[:, None])
    zeros[:, 0] = torch.where(u(b) < 0.3, batch.n_query, zeros[:, 0])  # every input vector zero, sometimes
    zero_rows = (u(b, maps) * (nq[:, None] + 1)).floor().clamp(max=nq[:, None])
    zero_rows[:, -1] = torch.where(u(b) < 0.3, nq, zero_rows[:, -1])  # every row of the head mean zero

    def counted(z):  # vectors that count under the zero rule
        return nq[:, None] - z if zero == "exclude" else nq[:, None].expand_as(z)

    s2 = counted(zeros.double()) ** 2 * (u(b, cols) * 1.3)  # > n^2 at times: the distance clamps at 0
    s2[:, 0] = torch.where(u(b) < 0.3, -1e-6, s2[:, 0])  # below 0 (round-off): clamped
    target = counted(zero_rows) ** 2 * (0.05 + u(b, maps) * 1.2)
    rows = torch.randn(b, maps, k, generator=g, dtype=torch.float64)
    s_att = rows * (target / rows.square().sum(-1)).sqrt()[..., None]
    nz = nq[:, None] - zero_rows
    count = (u(b, maps) * 8).floor().clamp(min=0) * (u(b, maps) < 0.6) + (u(b, maps) < 0.2)  # 0, 1 or more
    sums = torch.stack([
        nz * u(b, maps) * batch.log_k, nz * u(b, maps), nz, zero_rows, nq[:, None] * u(b, maps) * 0.1,
        *(lambda c: (c * u(b, maps), c * u(b, maps), c))((nz * u(b, maps)).floor()),
    ])  # fmt: skip
    jsd = (count, torch.where(count > 0, u(b, maps), 0.0), torch.where(count > 1, u(b, maps) * 0.01, 0.0))
    return s2, zeros, s_att, sums, jsd


def _assert_same(native, eager):
    for name in FLOATS:
        a, e = getattr(native, name), getattr(eager, name)
        assert a.dtype == e.dtype and a.shape == e.shape, (name, a.dtype, e.dtype, a.shape, e.shape)
        assert torch.equal(a.isnan(), e.isnan()), (name, a, e)
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-15, equal_nan=True, msg=name)
    for name in EXACT:
        a, e = getattr(native, name), getattr(eager, name)
        if isinstance(e, torch.Tensor):
            assert a.dtype == e.dtype and torch.equal(a, e), (name, a, e)
        else:
            assert a == e, (name, a, e)
    for field in dataclasses.fields(native):  # the rest (query-dependence suite, controls): as the torch path left them
        a, e = getattr(native, field.name), getattr(eager, field.name)
        if field.name not in FLOATS + EXACT:
            assert (a is None) == (e is None), field.name
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True, msg=field.name)


CASES = [  # n_query per image, heads, exact flags
    ([5], 1, [True]),
    ([9], 6, [False]),
    ([0, 1, 2], 6, [False, True, True]),
    ([12, 3, 1], 1, [False, False, True]),
]


@pytest.mark.parametrize("n_query, heads, exact", CASES)
@pytest.mark.parametrize("jsd", [True, False])
@pytest.mark.parametrize("objects", [True, False])
@pytest.mark.parametrize("heads_out", [True, False])
@pytest.mark.parametrize("convention", ["1-cos", "(1-cos)/2"])
@pytest.mark.parametrize("zero", ["exclude", "orthogonal"])
def test_native_finalisation_equals_the_torch_path(n_query, heads, exact, jsd, objects, heads_out, convention, zero):
    seed = hash((tuple(n_query), heads, jsd, objects, heads_out, convention, zero)) % 2**31
    g = torch.Generator().manual_seed(seed)
    batch = _batch(n_query, heads, exact, objects, jsd, seed)
    att = SimpleNamespace(batch_size=len(n_query), num_heads=heads, keys="patch")
    cos = dict(convention=convention, zero=zero)
    for trial in range(3):
        s2, zeros, s_att, sums, moments = _inputs(batch, heads, heads_out, zero, 12, g)
        args = (att, batch, s2, zeros, s_att, sums, moments if jsd else None, heads_out, cos)
        native, eager = _head_stats(*args, native=True), _head_stats(*args, native=False)
        _assert_same(native, eager)
        assert native.n_query.data_ptr() != batch.n_query.data_ptr()  # each layer its own tensors
        assert native.n_key.data_ptr() != batch.n_key.data_ptr()
    # the cases reach the rules: NaN and defined values side by side where the inputs allow both
    if 0 in n_query:
        assert native.att[n_query.index(0)].isnan().all() and native.att_prefix_mass[n_query.index(0)].isnan().all()
    if not heads_out:
        assert native.output[:, :-1].isnan().all() and (native.output_zero[:, :-1] == 0).all()
    if not objects:
        assert native.att_own_object.isnan().all()


def test_float32_token_sums_and_a_pair_values_jsd_are_taken_as_the_torch_path_takes_them(monkeypatch):
    """Eager token sums arrive in float32 (converted, as the reference converts them); JSD pair values
    (not per-image moments) go to the reference path."""
    g = torch.Generator().manual_seed(3)
    batch = _batch([7, 4], 3, [False, True], True, True, 3)
    att = SimpleNamespace(batch_size=2, num_heads=3, keys="all")
    s2, zeros, s_att, sums, moments = _inputs(batch, 3, True, "exclude", 9, g)
    cos = dict(convention="1-cos", zero="exclude")
    args = (att, batch, s2.float(), zeros, s_att, sums, moments, True, cos)
    _assert_same(_head_stats(*args, native=True), _head_stats(*args, native=False))
    calls = []
    monkeypatch.setattr(heads_module, "_native_head_stats", lambda *a: calls.append(1))
    pairs = torch.rand(batch.plan.pair_image.numel(), 4, dtype=torch.float64)  # one value per pair, as eager rows give them
    _assert_same(_head_stats(*args[:6], pairs, *args[7:], native=True), _head_stats(*args[:6], pairs, *args[7:], native=False))
    assert not calls
    _head_stats(*args, native=True)
    assert calls


def test_non_finite_sums_give_what_the_torch_path_gives():
    """NaN, +inf and -inf token sums and a NaN row sum (never from finite tokens and maps): NaN stays NaN
    through the clamps (-ffast-math may not keep it in a compare-and-select), +inf clamps to distance 0."""
    g = torch.Generator().manual_seed(8)
    batch = _batch([6, 9, 4], 2, [False, True, False], False, True, 8)
    att = SimpleNamespace(batch_size=3, num_heads=2, keys="patch")
    s2, zeros, s_att, sums, moments = _inputs(batch, 2, True, "exclude", 12, g)
    zeros.zero_()
    sums[2] += sums[3]  # no zero row either: every distance is defined but for the non-finite sums
    sums[3] = 0.0
    s2[:, 1:] = torch.tensor([[math.nan, math.inf, -math.inf], [-math.inf, math.nan, 5.0], [math.inf, 2.0, math.nan]])
    s_att[1, 0, 3] = math.nan
    s_att[2, 2, 0] = math.inf
    for zero in ("exclude", "orthogonal"):
        args = (att, batch, s2, zeros, s_att, sums, moments, True, dict(convention="(1-cos)/2", zero=zero))
        native = _head_stats(*args, native=True)
        _assert_same(native, _head_stats(*args, native=False))
        assert native.output.isnan().sum() == 3 and native.att.isnan().sum() == 1


def test_zero_rule_raise_raises_as_the_torch_path_and_otherwise_equals_exclude():
    g = torch.Generator().manual_seed(4)
    batch = _batch([6, 5], 2, [False, False], False, True, 4)
    att = SimpleNamespace(batch_size=2, num_heads=2, keys="patch")
    s2, zeros, s_att, sums, moments = _inputs(batch, 2, True, "exclude", 12, g)
    zeros[0, 0] = 2
    cos = dict(convention="1-cos", zero="raise")
    messages = []
    for native in (True, False):
        with pytest.raises(ValueError, match="all-zero vector") as err:
            _head_stats(att, batch, s2, zeros, s_att, sums, moments, True, cos, native=native)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    zeros.zero_()
    sums[2] += sums[3]
    sums[3] = 0.0
    args = (att, batch, s2, zeros, s_att, sums, moments, True, cos)
    native = _head_stats(*args, native=True)
    _assert_same(native, _head_stats(*args, native=False))
    assert native.zero_rule == "raise"
    for bad in (dict(convention="cos", zero="exclude"), dict(convention="1-cos", zero="drop")):
        with pytest.raises(ValueError, match="unknown"):
            _head_stats(att, batch, s2, zeros, s_att, sums, moments, True, bad, native=True)


def test_head_finalise_refuses_inconsistent_inputs():
    g = torch.Generator().manual_seed(5)
    batch = _batch([6], 2, [True], False, True, 5)
    s2, zeros, s_att, sums, moments = _inputs(batch, 2, True, "exclude", 12, g)
    ok = dict(heads_out=True, objects=False)
    args = (s2, zeros, s_att, sums, batch.n_query_f, batch.log_k)
    out, out_zero = kernels.head_finalise(*args, moments, batch.plan.exact, **ok)
    assert out.shape == (11, 1, 3) and out.dtype == torch.float64 and out_zero.shape == (2, 1, 3) and out_zero.dtype == torch.int64
    with pytest.raises(ValueError, match="s2 must be"):
        kernels.head_finalise(s2[:, :2], *args[1:], **ok)
    with pytest.raises(ValueError, match="sums must be"):
        kernels.head_finalise(*args[:3], sums[:7], *args[4:], **ok)
    with pytest.raises(ValueError, match="exact flags"):
        kernels.head_finalise(*args, moments, **ok)
    with pytest.raises(ValueError, match="count must be"):
        kernels.head_finalise(*args, (moments[0][:, :2], *moments[1:]), batch.plan.exact, **ok)
    with pytest.raises(ValueError, match="convention"):
        kernels.head_finalise(*args, **ok, zero="raise")
    with pytest.raises(ValueError, match="CPU"):
        kernels.head_finalise(*args[:3], sums.to("meta"), *args[4:], **ok)


timm_vit = pytest.importorskip("timm.models.vision_transformer")


@pytest.mark.parametrize("jsd_pairs", [10_000, 8, 0])
def test_a_captured_layer_records_the_same_stats_with_and_without_the_native_finalisation(monkeypatch, jsd_pairs):
    from nlanalysis.vit import ViTCapture

    args = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0, qkv_bias=True, init_values=0.5)
    model = randomize_(timm_vit.VisionTransformer(**args, reg_tokens=2), std=0.2).eval()
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(6))
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1, :, 3:] = False
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(7))
    pixels = lambda cells: cells.repeat_interleave(7, 1).repeat_interleave(7, 2)  # noqa: E731
    head_stats, native_calls = heads_module._head_stats, []
    spy = heads_module._native_head_stats
    monkeypatch.setattr(heads_module, "_native_head_stats", lambda *a: native_calls.append(1) or spy(*a))
    records = {}
    for native in (True, False):
        if not native:
            monkeypatch.setattr(heads_module, "_head_stats", lambda *a: head_stats(*a[:9], native=False))
        with torch.no_grad(), ViTCapture(model, jsd_pairs=jsd_pairs) as cap:
            cap.set_valid(pixels(valid))  # the masks are per input pixel: each 7x7 patch takes its cell's value
            cap.set_objects(pixels(labels))
            model(x)
        records[native] = cap.records
    assert len(native_calls) == 2  # both layers took the native path in the first capture, none in the second
    for a, e in zip(records[True], records[False], strict=True):
        _assert_same(a.stats, e.stats)
        assert not a.stats.att_entropy.isnan().any() and (a.stats.att_jsd.isnan().all() == (jsd_pairs == 0))
