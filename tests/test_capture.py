"""Capture: hooks that record, never leak, and place query points correctly."""
import gc
import warnings

import pytest
import torch

from helpers import NLGCNet as _Net, randomize_
from nlanalysis.capture import Capture, capture, valid_cells


@pytest.fixture
def net():
    return randomize_(_Net()).eval()


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_records_and_hooks_are_removed(net):
    x = torch.randn(2, 3, 32, 40)
    with capture(net) as cap:
        assert _hook_count(net) > 0
        net(x)
        net(x)
    assert _hook_count(net) == 0
    assert [(r.name, r.call) for r in cap.records] == [("nl", 0), ("gc", 0), ("nl", 1), ("gc", 1)]
    rec = cap.records[0]
    assert rec.family == "nlanalysis" and rec.info["mode"] == "embedded_gaussian"
    assert rec.query_shape == (8, 10) and rec.key_shape == (4, 5) and rec.input_size == (32, 40)
    assert rec.stats.input.shape == (2, 1) and rec.x is None  # [B, maps]: one map


def test_hooks_removed_when_forward_raises(net):
    with pytest.raises(ValueError, match="NaN"):
        with Capture(net):
            net(torch.full((1, 3, 16, 16), float("nan")))
    assert _hook_count(net) == 0


def test_kept_tensors_match_independent_hooks(net):
    seen = {}
    handle = net.nl.register_forward_hook(lambda m, a, o: seen.update(x=a[0].clone(), z=o.clone()))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), Capture(net, "nl", keep_tensors=True) as cap:
        net(x)
    handle.remove()
    (rec,) = cap.records
    torch.testing.assert_close(rec.x, seen["x"])
    torch.testing.assert_close(rec.z, seen["z"])
    torch.testing.assert_close(rec.context, seen["z"] - seen["x"])
    assert not rec.x.requires_grad


def test_query_points_in_image_and_feature_space(net):
    x = torch.randn(1, 3, 32, 40)  # query grid 8 x 10, stride 4
    with torch.no_grad(), Capture(net, "nl", queries=[(0, 0), (13.5, 39.9), (31, 21)], stats=False) as cap:
        net(x)
        full = net.nl.attention_maps(net.stem(x))
    q = cap.records[0].queries
    assert q.feature_yx.tolist() == [[0, 0], [3, 9], [7, 5]]
    assert q.maps.shape == (1, 3, 4, 5)
    for k, (r, c) in enumerate(q.feature_yx.tolist()):
        torch.testing.assert_close(q.maps[0, k].flatten(), full[0, r * 10 + c])
    with torch.no_grad(), Capture(net, "nl", queries=[(7, 9)], query_space="feature", stats=False) as cap:
        net(x)
    assert cap.records[0].queries.image_yx.tolist() == [[30.0, 38.0]]


def test_query_outside_the_map_is_an_error(net):
    x = torch.randn(1, 3, 32, 40)
    with pytest.raises(ValueError, match=r"outside the 32x40 input image"):
        with Capture(net, "nl", queries=[(32, 0)]):
            net(x)
    with pytest.raises(ValueError, match=r"outside the 8x10 query grid"):
        with Capture(net, "nl", queries=[(0, 10)], query_space="feature"):
            net(x)


def test_no_block_found_is_an_error(net):
    with pytest.raises(ValueError, match="no supported NL/GC block matching"):
        Capture(net, "backbone.*")


def test_valid_cells_uses_cell_centres():
    valid = torch.zeros(1, 32, 40, dtype=torch.bool)
    valid[:, :18, :30] = True  # cells of 4 px: rows 0..3 have centres < 18, row 4 centre 18 (invalid)
    cells = valid_cells(valid, (8, 10))
    assert cells[0].sum(1).tolist() == [7, 7, 7, 7, 0, 0, 0, 0]


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch aliases warns
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_memory_stays_flat_over_100_forwards(net):
    """The bug attention tools are known for: memory that grows across a data-set loop."""
    seen = []
    x = torch.randn(2, 3, 32, 32, requires_grad=True)  # a graph exists: records must not hold it

    def loop(n):
        for _ in range(n):
            with Capture(net, queries=[(5, 5)], keep_records=False, on_record=lambda r: seen.append(r.stats.att[0].item())):
                net(x).sum().backward()

    loop(5)
    before = _live_tensors()
    loop(100)
    after = _live_tensors()
    assert len(seen) == 2 * 105
    assert after - before <= 2, f"{after - before} tensors leaked over 100 forwards"
    assert _hook_count(net) == 0
