"""NL blocks' softmax maps through the native row kernel agree with the eager path (itself checked
against scipy and loops in test_measure.py), field by field, with the same JSD pairs."""
import math

import pytest
import torch

from helpers import randomize_
from nlanalysis import kernels
from nlanalysis.blocks import NonLocal2d
from nlanalysis.blocks.attention import PairwiseAttention
from nlanalysis.measure import measure_block
from nlanalysis.measure.stats import CONTROLS

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the native kernels do not build here (no C compiler)")

FIELDS = ("input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows", "input_zero",
          "output_zero", "att_own_object", "own_object_share", "n_query", "n_key")  # fmt: skip


def _both(att, x, context, **kw):
    """measure_block with each implementation, each from a fresh generator seeded alike."""
    out = {}
    for k in ("eager", "native"):
        out[k] = measure_block(att, x, context, generator=torch.Generator().manual_seed(5), kernels=k, **kw)
    return out["eager"], out["native"]


def _same(eager, native, fields=FIELDS, atol=1e-6):
    for name in fields:
        want, got = getattr(eager, name), getattr(native, name)
        assert got.shape == want.shape, name
        assert torch.allclose(got.double(), want.double(), atol=atol, rtol=0, equal_nan=True), (name, got, want)


@pytest.mark.parametrize("mode", ["gaussian", "embedded_gaussian"])
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("jsd_pairs", [40, 10_000])  # sampled pairs; every pair (exact)
def test_native_rows_match_eager(mode, sub_sample, jsd_pairs):
    block = randomize_(NonLocal2d(8, mode=mode, sub_sample=sub_sample), std=0.4).eval()
    x = torch.randn(3, 8, 6, 8)
    valid = torch.ones(3, 6, 8, dtype=torch.bool)
    valid[1, :, 5:] = False
    valid[2, 4:, :] = False
    objects = torch.zeros(3, 6, 8, dtype=torch.long)
    objects[:, :4, :4] = 9
    objects[:, 2:, 5:] = 4
    with torch.no_grad():
        att, context = block.attention(x), block(x) - x
        assert att.n_key != att.n_query or not sub_sample
        eager, native = _both(att, x, context, valid=valid, objects=objects, jsd_pairs=jsd_pairs, chunk_size=7)
    _same(eager, native)
    assert native.att.shape == (3, 1) and (native.att_jsd_stderr == 0).all() == (jsd_pairs == 10_000)
    assert not torch.isnan(native.att_jsd).any() and not torch.isnan(native.att_own_object).any()


def test_native_controls_match_eager():
    block = randomize_(NonLocal2d(8, mode="embedded_gaussian", sub_sample=True), std=0.4).eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        eager, native = _both(block.attention(x), x, block(x) - x, controls=True, jsd_pairs=64)
    _same(eager, native)
    _same(eager, native, ("ctrl_att", "ctrl_att_jsd"))
    # the temperature is matched to att_entropy: its float32 rounding moves tau by a few 1e-7 relative
    assert torch.allclose(native.ctrl_temperature, eager.ctrl_temperature, rtol=1e-5, atol=0)
    assert all(not torch.isnan(getattr(native, c)).any() for c in CONTROLS if c != "ctrl_att_own_object")


def test_all_zero_rows_draw_the_eager_pairs():
    """A valid query whose every valid key weighs 0 (all its weight on a padded key): the kernel counts it
    as a zero row, and the JSD pairs are drawn over the other rows, as the eager path draws them."""
    n, c = 12, 12
    key = torch.eye(c)[None]  # key j = e_j
    query = torch.randn(1, n, c) * 0.3
    query[0, 1] = 0.0
    query[0, 1, 0] = 1000.0  # query 1 puts all its weight on key 0 ...
    valid = torch.ones(1, 3, 4, dtype=torch.bool)
    valid[0, 0, 0] = False  # ... which is padding
    att = PairwiseAttention("embedded_gaussian", query, key, (3, 4), (3, 4))
    x = torch.randn(1, 5, 3, 4)
    eager, native = _both(att, x, x.flip(1), valid=valid, jsd_pairs=30)
    assert native.att_zero_rows[0, 0].item() == pytest.approx(1 / 11)
    _same(eager, native)


def test_signed_and_concatenation_maps_stay_eager():
    """dot_product / concatenation maps are no softmax: kernels="native" gives the eager numbers exactly."""
    for mode in ("dot_product", "concatenation"):
        block = randomize_(NonLocal2d(6, mode=mode), std=0.4).eval()
        x = torch.randn(2, 6, 4, 5)
        with torch.no_grad():
            eager, native = _both(block.attention(x), x, block(x) - x, jsd_pairs=20)
        for name in FIELDS:
            assert torch.equal(getattr(native, name).nan_to_num(-7), getattr(eager, name).nan_to_num(-7)), (mode, name)


def test_unknown_kernels_choice_is_refused():
    block = randomize_(NonLocal2d(6), std=0.4).eval()
    x = torch.randn(1, 6, 4, 4)
    with pytest.raises(ValueError, match="kernels must be one of"):
        measure_block(block.attention(x), x, x, kernels="fast")
    assert math.isnan(measure_block(block.attention(x), x, x, kernels="eager").ctrl_att[0, 0])


def test_per_image_is_the_last_maps_row():
    """per_image(): one row per image, the values of the block's one map, no head column."""
    block = randomize_(NonLocal2d(6), std=0.4).eval()
    x = torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        stats = measure_block(block.attention(x), x, block(x) - x, jsd_pairs=0)
    rows = stats.per_image()
    assert len(rows) == 2 and "head" not in rows[0] and rows[0]["query_independent"] is False
    assert rows[1]["att"] == stats.att[1, 0].item() and rows[1]["input_zero"] == stats.input_zero[1, 0].item()
