"""Bad input to ``load_checkpoint``: each failure is one clear line naming the file."""
from __future__ import annotations

import os

import pytest
import torch

from nlanalysis.checkpoints import CheckpointError, load_checkpoint
from nlanalysis.models import BlockSpec, ResNetArch, build_model

SMALL = ResNetArch((1, 1, 1), [BlockSpec("layer3.0.nonlocal_block", "NonLocal2d", 1024)], prefix="backbone.")


def small_state(arch: ResNetArch = SMALL) -> dict[str, torch.Tensor]:
    """A three-stage, one-block-per-stage backbone's weights: cheap, real key names."""
    torch.manual_seed(0)
    return build_model(arch, truncate=False).state_dict()


def expect_error(path, match: str, named=None, **kw) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, **kw)
    message = str(info.value)
    assert message.startswith(str(named or path)) and "\n" not in message
    return info.value


def test_missing_empty_and_not_a_checkpoint(tmp_path):
    expect_error(tmp_path / "nope.pth", "no such file")
    (tmp_path / "empty.pth").write_bytes(b"")
    expect_error(tmp_path / "empty.pth", "empty file")
    (tmp_path / "notes.txt").write_text("model = resnet50\n")
    expect_error(tmp_path / "notes.txt", "not a PyTorch checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    expect_error(tmp_path / "list.pth", "not a checkpoint: the file holds a list")


def test_truncated_and_corrupt(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": small_state()}, good)
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.pth", "truncated or corrupt")
    corrupt = bytearray(data)
    start = data.index(b"data.pkl") + 40  # inside the pickle record
    corrupt[start : start + 64] = os.urandom(64)
    (tmp_path / "corrupt.pth").write_bytes(bytes(corrupt))
    expect_error(tmp_path / "corrupt.pth", "truncated or corrupt|refused|not a checkpoint|unknown layout")


def test_unknown_layout_names_known_ones_and_closest(tmp_path):
    torch.save({"epoch": 3, "weights_v2": [1, 2]}, tmp_path / "odd.pth")
    err = expect_error(tmp_path / "odd.pth", "unknown layout")
    assert "mmdetection 3.x" in err.reason and "plain or DDP" in err.reason
    torch.save({"backbone.stem.conv.weight": torch.zeros(1), "neck.conv.weight": torch.zeros(1)}, tmp_path / "vit.pth")
    err = expect_error(tmp_path / "vit.pth", "no ResNet backbone")
    assert "Closest match: an mmdetection-style model" in err.reason


def test_no_nl_or_gc_block(tmp_path):
    torch.save(small_state(ResNetArch((1, 1, 1), [])), tmp_path / "r50.pth")
    expect_error(tmp_path / "r50.pth", "no NL/GC block in it")


def test_shape_mismatch_names_key(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "model = dict(backbone=dict(type='ResNet', depth=50, plugins=[dict(cfg=dict(type='NonLocal2d', reduction=4), "
        "stages=(False, False, True), position='after_conv3')]))\n"
    )
    torch.save({"state_dict": small_state()}, tmp_path / "m.pth")
    err = expect_error(tmp_path / "m.pth", "shape mismatch", config=cfg)
    assert "backbone.layer3.0.nonlocal_block" in err.reason and "(256, 1024, 1, 1)" in err.reason


def test_config_declares_blocks_the_checkpoint_lacks(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "_base_ = './base.py'\nmodel = dict(backbone=dict(plugins=[dict(cfg=dict(type='NonLocal2d'), "
        "stages=(False, True, True), position='after_conv3')]))\n"
    )
    (tmp_path / "base.py").write_text("model = dict(backbone=dict(type='ResNet', depth=50, style='caffe'))\n")
    torch.save({"state_dict": small_state()}, tmp_path / "m.pth")
    expect_error(tmp_path / "m.pth", r"stage\(s\) \[2\].*no weights", config=cfg)
    (tmp_path / "orphan.py").write_text("_base_ = 'missing.py'\n")
    expect_error(tmp_path / "m.pth", "_base_ file 'missing.py' not found", named=tmp_path / "orphan.py", config=tmp_path / "orphan.py")


def test_nl_weights_are_never_dropped(tmp_path):
    sd = small_state()
    sd["backbone.layer3.0.nonlocal_block.extra.weight"] = torch.ones(3)
    torch.save(sd, tmp_path / "extra.pth")
    expect_error(tmp_path / "extra.pth", "NL/GC weight.*left unused.*nonlocal_block.extra.weight")
    sd = small_state()
    sd.update({f"neck.refine.{k}": v for k, v in build_model(SMALL).backbone.layer3[0].nonlocal_block.state_dict().items()})
    torch.save(sd, tmp_path / "neck.pth")
    expect_error(tmp_path / "neck.pth", "neck.refine is outside the ResNet stages")


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Sneaky:  # a callable outside torch's block list: becomes an inert placeholder
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    torch.save({"state_dict": small_state(), "meta": {"x": Sneaky()}}, tmp_path / "sneaky.pth")
    loaded = load_checkpoint(tmp_path / "sneaky.pth")  # the weights load; the payload is inert
    assert not marker.exists()
    assert "builtins.exec" in loaded.placeholders and repr(loaded.meta["x"]).startswith("<not loaded:")
    torch.save(Sneaky(), tmp_path / "sneaky2.pth")
    expect_error(tmp_path / "sneaky2.pth", "not a checkpoint")
    torch.save({"state_dict": small_state(), "meta": {"x": Exploit()}}, tmp_path / "evil.pth")
    expect_error(tmp_path / "evil.pth", "safe loader refused it.*posix.system.*--trust-checkpoint")
    assert not marker.exists()


def test_a_weight_of_an_unknown_plugin_inside_the_rebuilt_blocks_is_refused(tmp_path):
    """mmdetection's GeneralizedAttention (or any layer the rebuild does not know) before the last NL block changes
    every feature the block sees: refused by name, not dropped with a note. Weights of bottlenecks after the last
    block are not built and stay fine."""
    sd = small_state()
    sd["backbone.layer1.0.gen_attention_block.query_conv.weight"] = torch.ones(4, 256, 1, 1)
    torch.save(sd, tmp_path / "plugin.pth")
    expect_error(tmp_path / "plugin.pth", r"1 weight\(s\) inside the backbone's rebuilt blocks would be left unused, first "
                 r"\['backbone.layer1.0.gen_attention_block.query_conv.weight'\]: a plugin or layer")  # fmt: skip
    early = ResNetArch((1, 1, 1), [BlockSpec("layer2.0.nonlocal_block", "NonLocal2d", 512)], prefix="backbone.")
    sd = small_state(early)
    sd["backbone.layer3.0.gen_attention_block.query_conv.weight"] = torch.ones(4, 1024, 1, 1)  # after the last block
    torch.save(sd, tmp_path / "later.pth")
    loaded = load_checkpoint(tmp_path / "later.pth")
    assert "backbone.layer3.0.gen_attention_block.query_conv.weight" in loaded.unused_keys


def test_a_position_the_shapes_cannot_tell_is_noted_as_assumed(tmp_path):
    """ResNeXt-64x4d: the bottleneck is as wide as its output, so a block's keys fit after_conv2 and after_conv3."""
    arch = ResNetArch((1, 1), [BlockSpec("layer2.0.context_block", "ContextBlock", 512, "after_conv3", {"ratio": 1 / 16})],
                      groups=64, width_per_group=4, prefix="backbone.")  # fmt: skip
    torch.save({"state_dict": small_state(arch)}, tmp_path / "x101.pth")
    loaded = load_checkpoint(tmp_path / "x101.pth")
    assert loaded.arch.blocks[0].position == "after_conv3"
    assert any("after_conv3 assumed (after_conv2 has the same shapes here" in n for n in loaded.notes)
