"""One record type, one frame builder, one ``analyze`` for NL blocks and ViT heads.

The frames are checked against rows written out here from the stats tensors and the records'
fields (the column order of each kind as ``metrics.csv`` had it), not against the builder itself.
"""
import math

import pandas as pd
import pytest
import torch
from timm.models import vision_transformer as timm_vit
from torch import nn

import nlanalysis
from helpers import NLGCNet as _Net, randomize_
from nlanalysis.analyze import records_to_frame
from nlanalysis.analyze_vit import analyze_vit
from nlanalysis.analyze_vit import records_to_frame as vit_records_to_frame
from nlanalysis.blocks import NonLocal2d
from nlanalysis.capture import BlockRecord, Capture, SiteRecord
from nlanalysis.capture.heads import LayerRecord, ViTCapture
from nlanalysis.schema import HEAD_MEAN, NL, VIT

NL_STATS = ["input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows", "input_zero",
            "output_zero", "att_own_object", "own_object_share", "ctrl_att", "ctrl_att_jsd", "ctrl_att_own_object", "ctrl_temperature",
            "ctrl_form", "ctrl_form_att", "ctrl_form_att_jsd", "ctrl_form_att_own_object", "ctrl_form_gap"]  # fmt: skip
VIT_STATS = [c for c in NL_STATS if not c.startswith("ctrl_")] + ["att_prefix_mass"]


class _Hybrid(nn.Module):
    """An NL block, then a token sequence through ``nn.MultiheadAttention`` (a supported ViT site)."""

    def __init__(self) -> None:
        super().__init__()
        self.nl = NonLocal2d(3, mode="dot_product")
        self.attn = nn.MultiheadAttention(3, 1, batch_first=True)

    def forward(self, x):
        t = self.nl(x).flatten(2).transpose(1, 2)
        return self.attn(t, t, t)[0]


def _vit():
    model = timm_vit.VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0,
                                       reg_tokens=1, init_values=0.5)  # fmt: skip
    return randomize_(model, std=0.2).eval()


def _value(t, *index):
    """A statistic's value for one row: a tensor's element, a string as it is (``ctrl_form``), NaN where absent."""
    return math.nan if t is None else t if isinstance(t, str) else t[index].item()


def _same(got, want):
    assert list(got) == list(want), "columns and their order"
    for k, w in want.items():
        both_nan = isinstance(w, float) and math.isnan(w) and math.isnan(got[k])
        assert both_nan or got[k] == w, (k, got[k], w)


def test_one_record_type_behind_both_names():
    assert BlockRecord is SiteRecord and LayerRecord is SiteRecord and nlanalysis.SiteRecord is SiteRecord
    rec = SiteRecord("b", "nlanalysis", {}, 0, None, (2, 3), (1, 1))
    assert rec.site == NL and rec.layer is None and rec.layout is None and rec.attention is None


def test_nl_frame_rows_are_the_stats_tensors():
    net = randomize_(_Net()).eval()
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad(), Capture(net, controls=True, query_dependence="off") as cap:  # the headline columns
        net(x)
    frame = records_to_frame(cap.records, ["a", "b"])
    assert len(frame) == 2 * len(cap.records) and "head" not in frame
    rows = frame.to_dict("records")
    i = 0
    for rec in cap.records:
        assert rec.site == NL
        s = rec.stats
        for b, image in enumerate(["a", "b"]):
            want = {"image": image, "block": rec.name, "family": rec.family, "mode": rec.info.get("mode", ""),
                    "height": rec.query_shape[0], "width": rec.query_shape[1],
                    "n_query": _value(s.n_query, b), "n_key": _value(s.n_key, b)}  # fmt: skip
            want.update({k: _value(getattr(s, k), b) for k in NL_STATS})
            want.update(query_independent=s.query_independent, convention=s.convention)
            _same(rows[i], want)
            i += 1


@pytest.mark.parametrize("controls", [False, True])
def test_vit_frame_rows_are_the_stats_tensors(controls):
    model = _vit()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad(), ViTCapture(model, controls=controls, jsd_pairs=8, query_dependence="off") as cap:  # the headline columns
        model(x)
    frame = vit_records_to_frame(cap.records)
    stats = VIT_STATS[:12] + ([c for c in NL_STATS if c.startswith("ctrl_")] if controls else []) + VIT_STATS[12:]
    rows = frame.to_dict("records")
    i = 0
    for rec in cap.records:
        s, heads = rec.stats, rec.stats.num_heads
        assert rec.site == VIT and rec.query_shape == rec.key_shape == rec.layout.grid == (4, 4)
        for b in range(2):
            for h in range(heads + 1):  # every head, then the head mean in the tensors' last column
                want = {"image": b, "layer": rec.layer, "block": rec.name, "family": rec.family,
                        "head": HEAD_MEAN if h == heads else h, "num_heads": heads,
                        "grid_h": 4, "grid_w": 4, "n_prefix": 2,
                        "n_query": _value(s.n_query, b), "n_key": _value(s.n_key, b), "keys": "patch",
                        "input_space": "block"}  # fmt: skip
                for k in stats:
                    t = s.controls[k] if k.startswith("ctrl_") else getattr(s, k)
                    want[k] = _value(t, b, h)
                want["convention"] = s.convention
                _same(rows[i], want)
                i += 1
    assert i == len(rows)


def test_analyze_measures_a_vit_as_analyze_vit_does():
    model = _vit()
    x = torch.randn(3, 3, 28, 28)
    frame = nlanalysis.analyze(model, x, batch_size=2, jsd_pairs=8, keys="all")
    assert frame["keys"].eq("all").all() and set(frame["head"]) == {0, 1, 2, 3, HEAD_MEAN} and len(frame) == 3 * 2 * 5
    want = analyze_vit(model, x, batch_size=2, jsd_pairs=8, keys="all")
    assert frame.equals(want)


def test_analyze_measures_nl_blocks_and_batches_them():
    net = randomize_(_Net()).eval()
    x = torch.randn(3, 3, 32, 40)
    frame = nlanalysis.analyze(net, x, jsd_pairs=0)
    assert list(frame.columns[:6]) == ["image", "block", "family", "mode", "height", "width"]
    assert list(frame["block"]) == ["nl"] * 3 + ["gc"] * 3 and list(frame["image"]) == [0, 1, 2] * 2
    parts = nlanalysis.analyze(net, x, jsd_pairs=0, batch_size=2)  # rows: batch by batch
    assert list(parts["image"]) == [0, 1, 0, 1, 2, 2]
    order = ["block", "image"]  # exact JSD (no sampling): batching changes the numbers by float rounding only
    pd.testing.assert_frame_equal(parts.sort_values(order).reset_index(drop=True),
                                  frame.sort_values(order).reset_index(drop=True), rtol=1e-4, atol=1e-6)  # fmt: skip


def test_analyze_refuses_a_model_with_both_kinds_and_says_how_to_choose():
    model = randomize_(_Hybrid()).eval()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"NL/GC blocks \(nl\).*ViT attention modules \(attn\).*site='nl-blocks'"):
        nlanalysis.analyze(model, x)
    frame = nlanalysis.analyze(model, x, site=NL)
    assert list(frame["block"]) == ["nl"]
    assert list(nlanalysis.analyze(model, x, blocks="nl")["block"]) == ["nl"]
    with pytest.raises(ValueError, match="site=.*'vit-heads' or None, got 'heads'"):
        nlanalysis.analyze(model, x, site="heads")


def test_analyze_vit_never_measures_nl_blocks():
    with pytest.raises(ValueError, match="no supported ViT self-attention module"):
        analyze_vit(randomize_(_Net()).eval(), torch.randn(1, 3, 32, 40))
