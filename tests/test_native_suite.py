"""The cheap query-dependence suite from the native row pass (nlanalysis/measure/native_suite.py) against the eager
suite (``kernels="eager"``, itself checked against naive float64 maps in test_query_dependence_pipeline.py), column by
column: NL blocks measured beside the block and in its own pass (this project's and mmcv's), ViT heads with the mean.

Tolerance: the kernel's softmax (its own ``exp``) and torch's agree to float32 rounding (~1e-7 relative per weight);
every sum on both sides is float64, so the columns agree to ~1e-8 relative: ``rtol=1e-6, atol=1e-7`` (distances in
pixels: ``atol=1e-5``). The kernel's sums alone are checked against float64 loops over its own rows in
test_kernels_suite.py."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_
from nlanalysis import kernels
from nlanalysis.blocks import NonLocal2d
from nlanalysis.blocks.attention import PairwiseAttention
from nlanalysis.capture import Capture
from nlanalysis.measure import measure_block
from nlanalysis.measure.query_dep import CHEAP, CROSS_SITE

try:
    import mmcv.cnn.bricks.non_local as mmcv_nl
except ImportError:  # optional
    mmcv_nl = None

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")
SUITE = tuple(c for c in CHEAP if c != CROSS_SITE)


def _same(got, want, columns=SUITE) -> None:
    for name in columns:
        a, b = getattr(got, name).double(), getattr(want, name).double()
        assert a.shape == b.shape, name
        assert torch.equal(a.isnan(), b.isnan()), (name, a, b)
        atol = 1e-5 if name == "att_distance_px" else 1e-7
        assert torch.allclose(a.nan_to_num(0), b.nan_to_num(0), rtol=1e-6, atol=atol), (name, a, b)


def _valid() -> torch.Tensor:
    valid = torch.ones(3, 6, 8, dtype=torch.bool)
    valid[1, :, 5:] = False  # padded keys and queries
    valid[2, 4:, :] = False
    return valid


@pytest.mark.parametrize("mode", ["gaussian", "embedded_gaussian", "dot_product", "concatenation"])
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_measure_block_native_suite_matches_eager(mode, sub_sample, padded):
    block = randomize_(NonLocal2d(8, mode=mode, sub_sample=sub_sample), std=0.4).eval()
    x = torch.randn(3, 8, 6, 8)
    valid = _valid() if padded else None
    with torch.no_grad():
        att, context = block.attention(x), block(x) - x
        found = {k: measure_block(att, x, context, valid=valid, kernels=k, query_dependence="cheap", stride=(16.0, 12.0), jsd_pairs=0)
                 for k in ("eager", "native")}  # fmt: skip
    _same(found["native"], found["eager"])
    softmax = mode in ("gaussian", "embedded_gaussian")
    for name in ("qk_nmi", "att_distance_px", "att_local", "att_local_uniform"):
        assert torch.isfinite(getattr(found["native"], name)).all() == (mode != "dot_product"), name
    assert torch.isfinite(found["native"].unary_var_share).all() == (mode != "concatenation")
    if softmax:  # the map statistics are not moved by the suite
        plain = measure_block(att, x, context, valid=valid, kernels="native", jsd_pairs=0)
        assert torch.equal(plain.att, found["native"].att)


def test_a_valid_all_zero_row_leaves_the_suite_to_the_eager_pass():
    """A query whose weight all lies on a padded key has an all-zero row: the eager suite leaves it out of every mean,
    the kernel's sums would count it, so the native path hands the suite to the eager pass."""
    q = torch.zeros(1, 4, 2)
    q[0, 0] = torch.tensor([400.0, 0.0])  # query 0 looks at key 3 only
    k = torch.zeros(1, 2, 4)
    k[0, :, 3] = torch.tensor([1.0, 0.0])
    k[0, 1, :3] = torch.tensor([0.1, -0.2, 0.3])
    q[0, 1:, 1] = torch.tensor([1.0, 2.0, -1.0])
    att = PairwiseAttention("embedded_gaussian", q, k, (2, 2), (2, 2), scale=1.0)
    valid = torch.tensor([[[True, True], [True, False]]])  # key 3 (and query 3) padded
    x = torch.randn(1, 3, 2, 2)
    found = {kk: measure_block(att, x, x, valid=valid, kernels=kk, query_dependence="cheap", stride=(8.0, 8.0), jsd_pairs=0)
             for kk in ("eager", "native")}  # fmt: skip
    assert float(found["native"].att_zero_rows[0, 0]) > 0
    _same(found["native"], found["eager"])


def _mmcv(mode: str, sub_sample: bool):
    torch.manual_seed(1)
    block = mmcv_nl.NonLocal2d(16, mode=mode, sub_sample=sub_sample, zeros_init=False).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block


FAMILIES = ["ours", pytest.param("mmcv", marks=pytest.mark.skipif(mmcv_nl is None, reason="mmcv is not installed"))]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["gaussian", "embedded_gaussian", "dot_product"])
@pytest.mark.parametrize("sub_sample", [False, True])
def test_in_pass_cheap_suite_matches_the_eager_recompute(family, mode, sub_sample):
    """Softmax maps keep their one attention pass with the cheap suite on; other maps (and object labels) recompute."""
    if family == "ours":
        torch.manual_seed(1)
        block = randomize_(NonLocal2d(16, mode=mode, sub_sample=sub_sample), std=0.3).eval()
    else:
        block = _mmcv(mode, sub_sample)
    x = torch.randn(2, 16, 9, 11)
    valid = torch.ones(2, 9, 11, dtype=torch.bool)
    valid[0, -3:, :] = False
    found = {}
    for share, kern in ((True, "auto"), (False, "eager")):
        with torch.no_grad(), Capture(block, share_softmax=share, jsd_pairs=0, query_dependence="cheap", kernels=kern) as cap:
            cap.set_valid(valid)
            bare = block(x)
        found[share] = cap
    softmax = mode != "dot_product"
    assert found[True].served == int(softmax) and found[False].served == 0
    with torch.no_grad():
        assert torch.allclose(bare, block(x), atol=1e-6)
    _same(found[True].records[0].stats, found[False].records[0].stats)
    with torch.no_grad(), Capture(block, jsd_pairs=0, query_dependence="cheap") as cap:
        cap.set_valid(valid)
        cap.set_objects(torch.ones(2, 9, 11, dtype=torch.long))
        block(x)
    assert cap.served == 0  # the suite's object context is eager: the recompute path


def test_vit_heads_native_suite_matches_eager():
    """Every head and the head mean of a padded ViT batch, keys "all" (spatial keys after the class token)."""
    from nlanalysis import analyze
    from test_query_dependence_pipeline import _vit, _vit_input

    model = _vit(depth=2)
    x, valid = _vit_input()
    frames = {k: analyze(model, x, valid=valid, keys="all", query_dependence="cheap", kernels=k) for k in ("native", "eager")}
    a, b = frames["native"], frames["eager"]
    for name in CHEAP:
        va, vb = torch.tensor(a[name].to_numpy()), torch.tensor(b[name].to_numpy())
        assert torch.equal(va.isnan(), vb.isnan()), name
        assert torch.allclose(va.nan_to_num(0), vb.nan_to_num(0), rtol=1e-6, atol=1e-5 if name == "att_distance_px" else 1e-7), name
