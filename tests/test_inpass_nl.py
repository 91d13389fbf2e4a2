"""One attention pass per NL block (nlanalysis/capture/inpass_blocks.py): the maps a captured block forms are
the maps measured; outputs equal an uncaptured forward, statistics the recompute path's and a naive float64 count."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlanalysis.blocks.non_local import NonLocal2d
from nlanalysis.capture import Capture
from nlanalysis.kernels import available

try:
    import mmcv.cnn.bricks.non_local as mmcv_nl
except ImportError:  # mmcv is optional: its tests skip, this project's blocks are still tested
    mmcv_nl = None

MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
COLUMNS = ("input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows",
           "att_own_object", "own_object_share", "n_query", "n_key")  # fmt: skip
needs_kernels = pytest.mark.skipif(not available(), reason="native kernels need a C compiler")
needs_mmcv = pytest.mark.skipif(mmcv_nl is None, reason="mmcv is not installed (optional: pip install -e '.[bench]')")
FAMILIES = ["ours", pytest.param("mmcv", marks=needs_mmcv)]


def _block(family: str, mode: str, sub_sample: bool, channels: int = 16) -> nn.Module:
    torch.manual_seed(1)
    cls = NonLocal2d if family == "ours" else mmcv_nl.NonLocal2d
    block = cls(channels, mode=mode, sub_sample=sub_sample, zeros_init=False).eval()
    for p in block.parameters():  # weights large enough for peaked, query-dependent maps
        nn.init.normal_(p, std=0.3)
    return block


def _masks(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[0, -3:, :] = False  # padding at the bottom of image 0
    objects = torch.zeros(b, h, w, dtype=torch.long)
    objects[:, 1:5, 2:7] = 1
    objects[1, 5:, :4] = 2
    return valid, objects


def _run(block: nn.Module, x: torch.Tensor, share: bool, **options) -> tuple[torch.Tensor, Capture]:
    valid, objects = _masks(x.shape[0], x.shape[2], x.shape[3])
    options.setdefault("query_dependence", "off")  # the headline statistics in one pass (the suite: test_native_suite.py)
    with torch.no_grad(), Capture(block, share_softmax=share, seed=5, queries=[(1, 2), (4, 0)], query_space="feature", **options) as cap:
        outs = []
        for scale in (1.0, 0.5):  # two forwards: the JSD pairs keep one generator sequence
            cap.set_valid(valid)  # each forward's own: given again for the second
            cap.set_objects(objects)
            outs.append(block(x * scale))
        out = torch.cat(outs)
    return out, cap


def _stats_equal(a, b) -> None:
    for name in COLUMNS:
        va, vb = getattr(a, name).double(), getattr(b, name).double()
        assert torch.equal(va.isnan(), vb.isnan()), name
        assert torch.allclose(va.nan_to_num(0), vb.nan_to_num(0), rtol=0, atol=1e-6), (name, va, vb)


@needs_kernels
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_in_pass_equals_uncaptured_output_and_recompute_stats(family: str, mode: str, sub_sample: bool) -> None:
    block = _block(family, mode, sub_sample)
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        bare = torch.cat([block(x), block(x * 0.5)])
    out, cap = _run(block, x, share=True, jsd_pairs=200)
    plain, ref = _run(block, x, share=False, jsd_pairs=200)
    assert cap.served == 2 and ref.served == 0
    assert torch.equal(plain, bare)  # share_softmax=False: torch computes every op
    assert torch.allclose(out, bare, rtol=1e-5, atol=1e-6)  # float32 rounding of a chunked softmax
    if mode in ("dot_product", "concatenation"):
        assert torch.equal(out, bare)  # measured before torch multiplies the block's own maps
    assert len(cap.records) == len(ref.records) == 2
    for r_in, r_ref in zip(cap.records, ref.records):
        assert (r_in.query_shape, r_in.key_shape) == (r_ref.query_shape, r_ref.key_shape)
        _stats_equal(r_in.stats, r_ref.stats)
        assert torch.allclose(r_in.queries.maps, r_ref.queries.maps, atol=1e-6)


def _naive(maps: np.ndarray, qmask: np.ndarray, kmask: np.ndarray) -> tuple[float, float, float]:
    """``att`` (mean 1 - cos over all ordered pairs of valid non-zero rows, i = j included), normalised entropy
    and mean largest weight of one image's maps ``[N, N_k]``, float64 loops over the rows."""
    rows = [maps[i] * kmask for i in range(len(maps)) if qmask[i] and np.abs(maps[i] * kmask).max() > 0]
    unit = [r / np.linalg.norm(r) for r in rows]
    total = sum(unit)
    att = 1.0 - float(total @ total) / len(unit) ** 2
    ent, peak = [], []
    for r in rows:
        p = r / r.sum()
        nz = p[p > 0]
        ent.append(-float((nz * np.log(nz)).sum()) / math.log(kmask.sum()))
        peak.append(float(p.max()))
    return att, float(np.mean(ent)), float(np.mean(peak))


@needs_kernels
@pytest.mark.parametrize("family, mode", [pytest.param("mmcv", "embedded_gaussian", marks=needs_mmcv), ("ours", "gaussian"),
                                          ("ours", "concatenation")])  # fmt: skip
def test_in_pass_matches_naive_float64(family: str, mode: str) -> None:
    block = _block(family, mode, sub_sample=False).double()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        maps = block.attention(x).full().numpy() if family == "ours" else None
    block = block.float()
    if maps is None:
        from nlanalysis.blocks.non_local import mmcv_style_attention

        with torch.no_grad():
            maps = mmcv_style_attention(block.double(), x).full().numpy()
        block = block.float()
    _, cap = _run(block, x.float(), share=True, jsd_pairs=0)
    valid, _ = _masks(2, 9, 11)
    stats = cap.records[0].stats
    assert cap.served == 2
    for i in range(2):
        q = valid[i].flatten().numpy()
        att, ent, peak = _naive(maps[i], q, q.astype(np.float64))
        assert stats.att[i, 0] == pytest.approx(att, abs=2e-6)
        assert stats.att_entropy[i, 0] == pytest.approx(ent, abs=2e-6)
        assert stats.att_max[i, 0] == pytest.approx(peak, abs=2e-6)


@needs_mmcv
def test_values_told_from_theta_phi_when_channels_equal_keys() -> None:
    """A dot-product block whose C' equals N_k: ``theta @ phi`` has the maps' shape, but only ``maps @ g`` is measured."""
    block = _block("mmcv", "dot_product", sub_sample=False, channels=40)  # C' = 20 = 4 x 5 keys
    x = torch.randn(2, 40, 4, 5)
    valid, objects = _masks(2, 4, 5)
    found = {}
    for share in (True, False):
        with torch.no_grad(), Capture(block, share_softmax=share, jsd_pairs=50, query_dependence="off") as cap:
            cap.set_valid(valid)
            cap.set_objects(objects)
            block(x)
        found[share] = cap
    assert found[True].served == 1
    _stats_equal(found[True].records[0].stats, found[False].records[0].stats)


@needs_kernels
@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_kept_take_the_recompute_path(family: str) -> None:
    block = _block(family, "embedded_gaussian", sub_sample=False)
    x = torch.randn(1, 16, 6, 7, requires_grad=True)
    with Capture(block, jsd_pairs=0, query_dependence="off") as cap:
        out = block(x)
    out.square().sum().backward()  # the graph is torch's own
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if family == "ours":
        assert cap.served == 0  # the fused call keeps gradients: torch's
    with torch.no_grad(), Capture(block, jsd_pairs=0, share_softmax=False, query_dependence="off") as ref:
        block(x)
    _stats_equal(cap.records[0].stats, ref.records[0].stats)


@needs_kernels
@pytest.mark.parametrize("options", [dict(controls=True), dict(query_dependence="all"), dict(kernels="eager")])
def test_options_that_read_the_maps_again_recompute(options: dict) -> None:
    block = _block("ours", "embedded_gaussian", sub_sample=True)
    x = torch.randn(1, 16, 6, 8)
    with torch.no_grad(), Capture(block, jsd_pairs=20, **{"query_dependence": "off", **options}) as cap:
        out = block(x)
        bare = block(x)
    assert cap.served == 0 and torch.equal(out, bare)
    assert cap.records[0].stats is not None


@needs_mmcv
def test_mmcv_eager_softmax_is_measured_in_pass() -> None:
    block = _block("mmcv", "gaussian", sub_sample=True)
    x = torch.randn(2, 16, 9, 11)
    out, cap = _run(block, x, share=True, jsd_pairs=100, kernels="eager")
    _, ref = _run(block, x, share=False, jsd_pairs=100, kernels="eager")
    assert cap.served == 2
    with torch.no_grad():
        assert torch.equal(out, torch.cat([block(x), block(x * 0.5)]))  # torch's softmax, measured after
    for a, b in zip(cap.records, ref.records):
        _stats_equal(a.stats, b.stats)


class _OwnForward(NonLocal2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 1.0


@needs_kernels
def test_non_finite_input_and_overridden_forward_fall_back() -> None:
    block = _block("ours", "embedded_gaussian", sub_sample=False)
    x = torch.randn(1, 16, 5, 6)
    x[0, :, 2, 3] = math.nan
    with torch.no_grad(), Capture(block, jsd_pairs=0, query_dependence="off") as cap, pytest.raises(ValueError, match="NaN or inf"):
        block(x)  # the block's call is left to torch, and the record refuses the input as before
    assert cap.served == 0
    torch.manual_seed(0)
    own = _OwnForward(16).eval()
    with pytest.warns(UserWarning, match="the model: _OwnForward overrides forward of nlanalysis's block; its maps are computed "
                                         "as that block computes them"):  # fmt: skip
        with torch.no_grad(), Capture(own, jsd_pairs=0, query_dependence="off") as cap:
            own(torch.randn(1, 16, 5, 6))
    assert cap.served == 0 and len(cap.records) == 1


def test_a_multihead_attention_subclass_with_its_own_forward_is_named() -> None:
    """Its maps are recomputed from in_proj as torch's forward makes them; a subclass's forward (a temperature, ...)
    may make others: said, not silently measured as torch's."""
    import warnings

    class Tempered(torch.nn.MultiheadAttention):
        def forward(self, q, k, v, **kw):
            return super().forward(q * 2.0, k, v, **kw)

    model = torch.nn.Sequential(Tempered(8, 2, batch_first=True)).eval()
    with pytest.warns(UserWarning, match="0: Tempered overrides forward of torch-mha's block"):
        Capture(model, jsd_pairs=0, query_dependence="off").__enter__().remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Capture(torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2, batch_first=True)), jsd_pairs=0, query_dependence="off")


def _wrap_torch_like_torchlens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace torch's attention functions with Python wrappers that call them, process-wide, as TorchLens does
    from its first trace on (a mode then receives the wrappers); returns the names of the calls that went through."""
    through: list[str] = []

    def wrapper(original):
        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            through.append(original.__name__)
            return original(*args, **kwargs)

        return wrapped

    for owner, name in ((torch.Tensor, "softmax"), (torch.Tensor, "matmul"), (torch, "softmax"),
                        (torch, "matmul"), (torch, "bmm"), (F, "softmax"), (F, "scaled_dot_product_attention")):  # fmt: skip
        monkeypatch.setattr(owner, name, wrapper(getattr(owner, name)))
    return through


@needs_kernels
@pytest.mark.parametrize("made", ["before", "after"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_torch_functions_wrapped_by_another_tool_are_still_served(family: str, mode: str, made: str, monkeypatch) -> None:
    """The mode receives the wrapper where the block calls a ``Tensor`` method (mmcv's ``.softmax()``), torch's C
    function where it calls ``F`` / ``torch`` functions through the wrapper; ``made="after"``: the sets of functions
    made after the wrapping (nlanalysis imported after TorchLens traced), which hold the wrappers, not torch's."""
    from nlanalysis.capture import inpass_blocks
    from nlanalysis.capture.inpass_mode import Ops

    block = _block(family, mode, sub_sample=True)
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        bare = torch.cat([block(x), block(x * 0.5)])
    _, ref = _run(block, x, share=True, jsd_pairs=100)
    through = _wrap_torch_like_torchlens(monkeypatch)
    if made == "after":
        monkeypatch.setattr(inpass_blocks, "_OPS", {k: Ops(*v.places) for k, v in inpass_blocks._OPS.items()})
    out, cap = _run(block, x, share=True, jsd_pairs=100)
    assert through  # the block's calls went through the wrappers
    assert cap.served == 2
    assert torch.allclose(out, bare, rtol=1e-5, atol=1e-6)
    for a, b in zip(cap.records, ref.records):
        _stats_equal(a.stats, b.stats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_mmcv
@pytest.mark.parametrize("mode", MODES)
def test_cuda_mmcv_in_pass(mode: str) -> None:
    block = _block("mmcv", mode, sub_sample=True).cuda()
    x = torch.randn(2, 16, 9, 11, device="cuda")
    with torch.no_grad(), Capture(block, jsd_pairs=50, seed=1, query_dependence="off") as cap:
        out = block(x)
    with torch.no_grad(), Capture(block, jsd_pairs=50, seed=1, share_softmax=False, query_dependence="off") as ref:
        bare = block(x)
    assert cap.served == 1 and torch.allclose(out, bare, atol=1e-6)
    _stats_equal(cap.records[0].stats, ref.records[0].stats)


@needs_kernels
def test_feature_distances_native_match_naive_float64() -> None:
    """``input`` / ``output`` through the native token pass: mean 1 - cos over ordered pairs of valid non-zero
    vectors (i = j included), counted by float64 loops; all-zero vectors excluded and counted."""
    from nlanalysis.blocks.attention import PairwiseAttention
    from nlanalysis.measure.blocks import measure_block

    torch.manual_seed(3)
    x, ctx = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6)
    x[0, :, 1, 1] = 0
    ctx[1, :, 2, 2] = 0
    valid = torch.rand(2, 5, 6) > 0.3
    att = PairwiseAttention("embedded_gaussian", torch.randn(2, 30, 4), torch.randn(2, 4, 30), (5, 6), (5, 6))
    stats = measure_block(att, x, ctx, valid=valid, jsd_pairs=0, kernels="native")
    for name, t in (("input", x), ("output", ctx)):
        for i in range(2):
            v = t[i].flatten(1).T.double().numpy()[valid[i].flatten().numpy()]
            nz = [r / np.linalg.norm(r) for r in v if np.abs(r).max() > 0]
            mean_cos = sum(float(a @ b) for a in nz for b in nz) / len(nz) ** 2
            assert getattr(stats, name)[i, 0] == pytest.approx(1 - mean_cos, abs=1e-6)
            assert int(getattr(stats, f"{name}_zero")[i, 0]) == len(v) - len(nz)
    ctx[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError):  # refused as before (the eager metric says why)
        measure_block(att, x, ctx, jsd_pairs=0, kernels="native")


@needs_kernels
@needs_mmcv
@pytest.mark.parametrize("mode", ["gaussian", "embedded_gaussian"])
@pytest.mark.parametrize("grid, pairs", [((9, 11), 100), ((4, 5), 512), ((6, 7), 0)])  # sampled; every pair (400 <= 512); none
def test_mmcv_softmax_without_padding_reads_jsd_rows_in_its_maps(mode: str, grid: tuple[int, int], pairs: int) -> None:
    """No key weights: the JSD pairs read their rows in the block's own softmax (no table); the statistics
    equal the eager recompute path's (its own draws from the same seed)."""
    block = _block("mmcv", mode, sub_sample=False)
    x = torch.randn(2, 16, *grid)
    found = {}
    for share, kernels in ((True, "auto"), (False, "eager")):
        with torch.no_grad(), Capture(block, share_softmax=share, seed=3, jsd_pairs=pairs, kernels=kernels, query_dependence="off") as cap:
            out = block(x)
            block(x * 0.5)
        found[share] = (out, cap)
    assert found[True][1].served == 2
    assert torch.allclose(found[True][0], found[False][0], rtol=0, atol=1e-6)
    for a, b in zip(found[True][1].records, found[False][1].records):
        assert torch.isfinite(a.stats.att_jsd).all() == (pairs > 0)
        _stats_equal(a.stats, b.stats)


def test_ops_are_told_by_where_torch_keeps_them(monkeypatch) -> None:
    """``Ops``: torch's function, its C implementation, and a wrapper installed in its place (now) are in the set; a
    function that only shares the name is not, installed or not."""
    from nlanalysis.capture.inpass_mode import Ops

    ops = Ops((torch.Tensor, "softmax"), (F, "softmax"))
    real = torch.Tensor.softmax

    def softmax(*args, **kwargs):  # same name, not installed anywhere
        return real(*args, **kwargs)

    assert real in ops and F.softmax in ops and torch._C.TensorBase.softmax in ops
    assert softmax not in ops and torch.matmul not in ops

    def wrapper(*args, **kwargs):
        return real(*args, **kwargs)

    wrapper.__name__ = "softmax"
    monkeypatch.setattr(torch.Tensor, "softmax", wrapper)
    assert wrapper in ops and softmax not in ops
