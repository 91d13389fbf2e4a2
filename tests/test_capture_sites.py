"""One Capture for every attention site: the site kind comes from the adapter, a hybrid model asks to choose.

The records of ``nlanalysis.capture(model)`` are checked against those of the kind-specific captures
(``BlockCapture``, ``ViTCapture``) and against maps and statistics computed here, not against themselves.
"""
import pytest
import torch

import nlanalysis
from helpers import NLGCNet as _Net, randomize_
from nlanalysis.adapters import list_adapters, list_blocks
from nlanalysis.blocks import NonLocal2d
from nlanalysis.capture import BlockCapture, Capture
from nlanalysis.capture.heads import HeadSite, ViTCapture
from nlanalysis.schema import NL, VIT
from nlanalysis.vit import TokenLayout

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def _timm():
    model = timm_vit.VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0,
                                       qkv_bias=True, init_values=0.5)  # fmt: skip
    return randomize_(model, std=0.2).eval()


class _Hybrid(torch.nn.Module):  # a CNN stage with an NL block, then a transformer over its cells
    def __init__(self):
        super().__init__()
        self.nl = NonLocal2d(8)
        self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        t = self.nl(x).flatten(2).transpose(1, 2)
        t = torch.cat([t.mean(1, keepdim=True), t], 1)  # a class token + 3x3 cells
        return self.mha(t, t, t, need_weights=False)[0]


def test_every_adapter_names_a_site_kind():
    from nlanalysis.adapters.registry import _ADAPTERS

    assert set(list_adapters()) == set(_ADAPTERS)
    kinds = {family: adapter.site for family, adapter in _ADAPTERS.items()}
    assert set(kinds.values()) == {NL, VIT}
    assert kinds["nlanalysis"] == NL and kinds["timm-vit"] == kinds["torch-mha"] == kinds["hf-vit"] == VIT


def test_one_capture_measures_a_vit_as_vit_capture_does():
    model = _timm()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad(), nlanalysis.capture(model, jsd_pairs=10_000, queries=[(3, 3)]) as cap:
        model(x)
    with torch.no_grad(), ViTCapture(model, jsd_pairs=10_000, queries=[(3, 3)]) as vit_cap:
        model(x)
    assert isinstance(cap.site, HeadSite) and cap.kind == VIT and cap.shared_calls == vit_cap.shared_calls
    assert [(r.name, r.layer, r.site) for r in cap.records] == [("blocks.0.attn", 0, VIT), ("blocks.1.attn", 1, VIT)]
    for rec, want in zip(cap.records, vit_cap.records):
        for name in ("att", "att_jsd", "input", "output"):
            assert torch.equal(getattr(rec.stats, name), getattr(want.stats, name)), name
        assert torch.equal(rec.queries.maps, want.queries.maps)
    # the head maps of the query (3, 3) px -> patch (0, 0), from q and k computed here
    blk = model.blocks[0]
    seen = []
    handle = blk.norm1.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    q, k, _ = blk.attn.qkv(seen[0]).reshape(2, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)
    rows = (q[:, :, 1:2] @ k.transpose(-1, -2) * 8**-0.5).softmax(-1)[:, :, 0, 1:]  # patch 0 over the patch keys
    torch.testing.assert_close(cap.records[0].queries.maps[:, 0, :4].flatten(2), rows, rtol=1e-5, atol=1e-6)


def test_a_hybrid_model_asks_which_kind_and_each_kind_skips_the_other():
    model = _Hybrid().eval()
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(ValueError, match=r"capture: _Hybrid has NL/GC blocks \(nl\) and ViT attention modules \(mha\).*"
                                         r"select it with blocks=\.\.\. or site='nl-blocks' / site='vit-heads'"):  # fmt: skip
        Capture(model)
    for cap in (Capture(model, site=NL), BlockCapture(model), Capture(model, "nl")):
        with torch.no_grad(), cap:
            model(x)
        assert [r.name for r in cap.records] == ["nl"] and cap.records[0].site == NL
    for cap in (Capture(model, site=VIT, layout=TokenLayout((3, 3))), ViTCapture(model, layout=TokenLayout((3, 3)))):
        with torch.no_grad(), cap:
            model(x)
        assert [r.name for r in cap.records] == ["mha"] and cap.records[0].input_space == "attention"
    with pytest.raises(ValueError, match="capture\\(site=...\\) must be 'nl-blocks', 'vit-heads' or None, got 'heads'"):
        Capture(model, site="heads")


def test_no_site_of_the_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="no supported NL/GC block found in VisionTransformer"):
        Capture(_timm(), site=NL)
    with pytest.raises(ValueError, match="no supported NL/GC block found in VisionTransformer"):
        BlockCapture(_timm())
    with pytest.raises(ValueError, match="no supported ViT self-attention module found in NLGCNet"):
        ViTCapture(randomize_(_Net()).eval())


def test_an_option_of_the_other_kind_is_refused_naming_the_accepted_ones():
    with pytest.raises(TypeError, match="keys is no option of NL/GC blocks; they take keep_tensors, chunk_size"):
        Capture(randomize_(_Net()).eval(), keys="all")
    with pytest.raises(TypeError, match="keep_tensors is no option of ViT self-attention modules; they take keys"):
        Capture(_timm(), keep_tensors=True)


def test_site_options_read_as_the_captures():
    net = randomize_(_Net()).eval()
    cap = Capture(net, chunk_size=8)
    assert cap.kind == NL and cap.measure_kwargs["chunk_size"] == 8 and cap.keep_tensors is False
    vit = Capture(_timm(), kernels="eager")
    assert vit.measure_kwargs == dict(chunk_size=None, convention="1-cos", zero="exclude", kernels="eager")
    assert vit.keys == "patch" and vit.shared_calls == 0
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vit.nothing
    assert len(list_blocks(net)) == len(cap.blocks)


def test_capturing_nl_blocks_loads_no_vit_only_module():
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import json, sys, torch, nlanalysis\n"
        "from nlanalysis.blocks import NonLocal2d\n"
        "net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), NonLocal2d(8)).eval()\n"
        "with torch.no_grad(), nlanalysis.capture(net) as cap:\n"
        "    net(torch.randn(1, 3, 6, 6))\n"
        "assert len(cap.records) == 1\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    root = Path(__file__).resolve().parents[1]
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root).stdout)
    assert "nlanalysis.capture.blocks" in loaded
    assert not {"nlanalysis.capture.heads", "nlanalysis.measure.heads", "nlanalysis.capture.shared_softmax"} & set(loaded)


def test_a_forward_that_runs_no_selected_block_is_said_once():
    """As a torch.compile'd model does (its compiled graph runs, not the hooked modules): nothing was measured, and the
    capture says so rather than returning no records in silence."""
    import warnings

    from torch import nn

    from nlanalysis import capture
    from nlanalysis.blocks import NonLocal2d

    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = NonLocal2d(8)

        def forward(self, x, use: bool = False):
            return self.block(x) if use else x

    model, x = Skips().eval(), torch.randn(1, 8, 4, 4)
    with torch.no_grad(), pytest.warns(UserWarning, match="a forward of Skips ran none of its 1 selected blocks") as seen, capture(model) as cap:
        model(x)
        model(x)
    assert len([w for w in seen if "ran none" in str(w.message)]) == 1 and not cap.records
    with torch.no_grad(), warnings.catch_warnings(), capture(model) as cap:
        warnings.simplefilter("error")
        model(x, use=True)
    assert len(cap.records) == 1


def test_a_model_that_is_itself_a_block_is_measured_in_its_first_forward_as_call_0():
    import warnings

    from nlanalysis import capture
    from nlanalysis.blocks import NonLocal2d

    block = NonLocal2d(8).eval()
    with torch.no_grad(), warnings.catch_warnings(), capture(block) as cap:
        warnings.simplefilter("error")  # its record is made before its forward ends: nothing to say
        block(torch.randn(1, 8, 4, 4))
        block(torch.randn(1, 8, 4, 4))
    assert [r.call for r in cap.records] == [0, 1]  # as a block inside a model is counted (it was 1, 2)
