"""An NL block's feature statistics read in its [B, C, H, W] layout (kernels.feature_stats, no [B, N, C] copies,
z - x not formed) agree with a naive NumPy formula, with the row kernel (kernels.token_stats) and with the eager
path of measure_block, and refuse NaN / inf as the sum they replace did."""
import numpy as np
import pytest
import torch

from helpers import randomize_
from nlanalysis import kernels
from nlanalysis.adapters import get_adapter
from nlanalysis.blocks import NonLocal2d
from nlanalysis.capture import Capture
from nlanalysis.measure import measure_block

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")


def _naive(v: torch.Tensor, valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """||sum of unit vectors||^2 and zero counts per image, token by token in float64."""
    rows = v.flatten(2).transpose(1, 2).double().numpy()
    s2, zeros = [], []
    for b in range(rows.shape[0]):
        r = rows[b][valid[b].numpy()]
        norm = np.sqrt((r * r).sum(1))
        zeros.append(int((norm == 0).sum()))
        s2.append(float(((r[norm > 0] / norm[norm > 0, None]).sum(0) ** 2).sum()))
    return np.array(s2), np.array(zeros)


def _features(b: int = 2, c: int = 24, h: int = 11, w: int = 13) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, z and a mask over 143 tokens (two blocks of 64 and a tail), with zero vectors in x and in z - x."""
    torch.manual_seed(3)
    x, z = torch.randn(b, c, h, w), torch.randn(b, c, h, w) * 3
    x[0, :, 2, 3] = 0
    z[1, :, h // 2, 1] = x[1, :, h // 2, 1]  # z - x all zero
    z[0, :, h - 1, w - 1] = x[0, :, h - 1, w - 1]  # ... in the tail block
    valid = torch.rand(b, h * w) > 0.25
    valid[:, [2 * w + 3, h // 2 * w + 1, h * w - 1]] = True
    return x, z, valid


@pytest.mark.parametrize("masked", [False, True])
def test_feature_stats_match_naive_and_token_stats(masked: bool) -> None:
    x, z, valid = _features()
    qm = valid if masked else None
    every = valid if masked else torch.ones_like(valid)
    s2, zeros = kernels.feature_stats(x, z, qm, residual=True)
    s2c, zeros_c = kernels.feature_stats(x, z - x, qm)  # the context itself
    assert torch.equal(s2, s2c) and torch.equal(zeros, zeros_c)  # z - x in float32, as torch forms it
    for col, v in enumerate((x, z - x)):
        want_s2, want_zeros = _naive(v, every)
        np.testing.assert_allclose(s2[:, col].numpy(), want_s2, rtol=1e-12)
        assert zeros[:, col].tolist() == want_zeros.tolist()
    assert zeros.sum() == 3 if not masked else zeros.sum() > 0
    rows = (t.flatten(2).transpose(1, 2) for t in (x, z - x))  # the [B, N, C] copies the kernel avoids
    old_s2, old_zeros = kernels.token_stats(*rows, None, None, qm)
    torch.testing.assert_close(s2, old_s2, rtol=1e-5, atol=0)  # float32 norms there
    assert torch.equal(zeros, old_zeros)


def test_feature_stats_layouts_and_threads() -> None:
    x, z, valid = _features(b=3, c=9, h=7, w=10)  # 70 tokens: a block of 64 and a tail
    want = kernels.feature_stats(x, z, valid, residual=True)
    last = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):  # per-block sums added in block order: the same bits on any thread count
            torch.set_num_threads(threads)
            got = kernels.feature_stats(x, z, valid, residual=True)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    finally:
        torch.set_num_threads(last)
    views = [(x.contiguous(memory_format=torch.channels_last), z),  # tokens strided: copied
             (x, z.transpose(2, 3).contiguous().transpose(2, 3)),
             (torch.cat([x, x])[3:], torch.cat([z, z], 1)[:, 9:]),  # read in place at their strides
             (x.flatten(2)[..., None], z.flatten(2)[..., None]), (x.flatten(2)[:, :, None], z.flatten(2)[:, :, None])]  # fmt: skip
    for xv, zv in views:
        assert torch.equal(xv.reshape(x.shape), x) and torch.equal(zv.reshape(z.shape), z)
        got = kernels.feature_stats(xv, zv, valid, residual=True)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    want_s2, _ = _naive(z - x, valid)
    np.testing.assert_allclose(want[0][:, 1].numpy(), want_s2, rtol=1e-12)


@pytest.mark.parametrize("where", ["x nan", "z inf", "overflow", "padding"])
def test_feature_stats_refuse_non_finite(where: str) -> None:
    x, z, valid = _features()
    i = 5 * 13 + 4  # a token of image 1
    if where == "x nan":
        x[1, 3, 5, 4] = float("nan")
    elif where == "z inf":
        z[1, 0, 5, 4] = float("inf")
    elif where == "overflow":  # both finite, z - x is not
        x[1, 0, 5, 4], z[1, 0, 5, 4] = -3e38, 3e38
    else:  # a padding token: not counted, but the sum it replaces saw it
        valid[1, i] = False
        x[1, 0, 5, 4] = float("nan")
    assert kernels.feature_stats(x, z, valid, residual=True) is None
    x[1, :, 5, 4], z[1, :, 5, 4] = 1.0, 2.0
    assert kernels.feature_stats(x, z, valid, residual=True) is not None


@pytest.mark.parametrize("sub_sample", [False, True])
def test_measure_block_reads_the_output_as_the_context(sub_sample: bool) -> None:
    block = randomize_(NonLocal2d(8, mode="embedded_gaussian", sub_sample=sub_sample), std=0.4).eval()
    x = torch.randn(2, 8, 9, 10)
    valid = torch.ones(2, 9, 10, dtype=torch.bool)
    valid[1, :, 7:] = False
    with torch.no_grad():
        att, z = block.attention(x), block(x)
        stats = {}
        for name, kernel, ctx, out in (("eager", "eager", z - x, None), ("context", "native", z - x, None),
                                       ("output", "native", None, z), ("eager output", "eager", None, z)):  # fmt: skip
            stats[name] = measure_block(att, x, ctx, output=out, valid=valid, kernels=kernel, jsd_pairs=0)
    for name in ("input", "output", "input_zero", "output_zero"):
        ref = getattr(stats["eager"], name).double()
        assert torch.equal(getattr(stats["eager output"], name).double(), ref), name
        assert torch.equal(getattr(stats["output"], name), getattr(stats["context"], name)), name
        torch.testing.assert_close(getattr(stats["output"], name).double(), ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="not both or neither"):
        measure_block(att, x, z - x, output=z, kernels="native")
    with pytest.raises(ValueError, match="shapes disagree"):
        measure_block(att, x, None, output=z[:, :, :5], kernels="native")


def test_capture_forms_the_context_only_where_it_is_kept() -> None:
    block = randomize_(NonLocal2d(8, mode="embedded_gaussian"), std=0.4).eval()
    adapter = get_adapter(block)
    assert adapter.residual()
    term = type(adapter).context_term
    try:
        type(adapter).context_term = lambda self, m, x, z: z - x
        assert not adapter.residual()  # an override: the capture asks for the context
    finally:
        type(adapter).context_term = term
    formed = []
    adapter.context_term = lambda m, x, z: formed.append(1) or term(adapter, m, x, z)  # counts the calls
    x = torch.randn(1, 8, 6, 7)
    try:
        with torch.no_grad():
            with Capture(block, jsd_pairs=0, query_dependence="off") as cap:
                block(x)
            assert formed == []
            with Capture(block, jsd_pairs=0, query_dependence="off", keep_tensors=True) as kept:
                z = block(x)
            assert formed == [1]
    finally:
        del adapter.context_term
    assert torch.equal(kept.records[0].context, z - x)
    for name in ("input", "output", "input_zero", "output_zero"):
        assert torch.equal(getattr(cap.records[0].stats, name), getattr(kept.records[0].stats, name)), name
