"""Checkpoints in each real layout, built here, loaded through ``load_checkpoint``.

Every test builds a reference network -- torchvision's ResNet-50 with NL/GC blocks of the source
codebase (mmcv's own ``NonLocal2d``/``ContextBlock``, AlexHex7 stand-ins, timm's
``NonLocalAttn``) placed as that codebase places them -- saves it as that codebase saves
checkpoints, loads the file, and checks the rebuilt model's blocks see the same inputs, give the
same outputs and the same attention maps.
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

from nlanalysis.adapters import attention_maps
from nlanalysis.checkpoints import load_checkpoint, save_checkpoint
from nlanalysis.cli import main

mmcv_cnn = pytest.importorskip("mmcv.cnn", reason="mmcv (mmcv-lite) not installed: reference blocks unavailable")

IMAGES = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


class RefBottleneck(Bottleneck):
    """mmdetection's Bottleneck forward (``mmdet/models/backbones/resnet.py``) with plugins.

    ``after_conv3`` plugins run after ``bn3`` before the residual add; the GCNet repository's
    ``after_add`` after the add, before the last ReLU.
    """

    plugins: tuple[tuple[str, str], ...] = ()

    def _run(self, out: torch.Tensor, position: str) -> torch.Tensor:
        for name, pos in self.plugins:
            if pos == position:
                out = getattr(self, name)(out)
        return out

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self._run(self.bn3(self.conv3(out)), "after_conv3")
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self._run(out + identity, "after_add"))


def randomise(module: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Non-zero normal weights (small, so six chained blocks stay finite) and BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module


@pytest.fixture(scope="module")
def resnet50_state():
    """A ResNet-50 whose BN statistics are those of random images, so activations stay O(1)."""
    torch.manual_seed(1)
    net = torchvision.models.resnet50()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        net.train()(torch.randn(2, 3, 64, 96))
    return net.eval().state_dict()


def reference(state, plugins, stages, position="after_conv3", seed=0):
    """ResNet-50 with ``plugins`` (``{attr: factory(channels)}``) in every block of ``stages``."""
    net = torchvision.models.resnet50()
    net.load_state_dict(state)
    for s in stages:
        for i, block in enumerate(getattr(net, f"layer{s}")):
            block.__class__ = RefBottleneck
            block.plugins = ()
            for attr, factory in plugins.items():
                block.add_module(attr, randomise(factory(block.conv3.out_channels), seed=100 * s + i))
                block.plugins += ((attr, position),)
    return net.eval()


def trunk(net, stages):
    """Stem and ``layer1..layer<stages>`` of a torchvision ResNet as one Sequential."""
    layers = [getattr(net, f"layer{s}") for s in range(1, stages + 1)]
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *layers)


def run_with_hooks(model, names, images=IMAGES):
    modules = dict(model.named_modules())
    seen = {}
    hooks = [
        modules[n].register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, (m, a[0].detach(), out.detach())))
        for n in names
    ]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return seen


def assert_same_blocks(ref_net, ref_names, loaded, prefix):
    assert loaded.blocks == [prefix + n for n in ref_names]
    last_stage = max(int(n.split(".")[0][5:]) for n in ref_names)
    ref = run_with_hooks(trunk(ref_net, last_stage), [_seq_name(n) for n in ref_names])
    got = run_with_hooks(loaded.model, loaded.blocks)
    for n, name in zip(ref_names, loaded.blocks):
        rm, rx, rz = ref[_seq_name(n)]
        gm, gx, gz = got[name]
        scale = float(rz.abs().max())  # float error grows with the values through chained blocks
        torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(gz, rz, rtol=1e-4, atol=1e-5 * scale)
        assert rz.isfinite().all() and not torch.allclose(rz, rx)  # the block does something
        with torch.no_grad():
            torch.testing.assert_close(attention_maps(gm, rx), attention_maps(rm, rx), rtol=1e-4, atol=1e-6)


def _seq_name(name: str) -> str:
    """``layer3.5.x`` -> the trunk Sequential's name ``6.5.x``."""
    stage, rest = name.split(".", 1)
    return f"{int(stage[5:]) + 3}.{rest}"


def mmengine_message_hub():
    mmengine_logging = pytest.importorskip("mmengine.logging")
    hub = mmengine_logging.MessageHub.get_instance("nlanalysis-test")
    hub.update_scalar("train/loss", 1.25)
    hub.update_scalar("train/lr", 0.02)
    hub.update_info("iter", 1000)
    return hub.state_dict()


def detector_keys(state):
    """Neck and head keys a Mask R-CNN checkpoint carries besides the backbone."""
    out = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    out["neck.lateral_convs.0.conv.weight"] = torch.randn(256, 256, 1, 1)
    out["rpn_head.rpn_conv.weight"] = torch.randn(256, 256, 3, 3)
    out["roi_head.bbox_head.fc_cls.weight"] = torch.randn(81, 1024)
    return out


MMDET3_CFG = """
model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50'),
        plugins=[dict(cfg=dict(type='NonLocal2d', reduction=4, mode='dot_product', sub_sample=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True)), stages=(False, False, True, False),
            position='after_conv3')]))
test_pipeline = [dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(1000, 600), keep_ratio=True), dict(type='PackDetInputs')]
"""


def test_mmdet3_nonlocal_plugins(tmp_path, resnet50_state):
    def nl(c):
        return mmcv_cnn.NonLocal2d(c, reduction=4, mode="dot_product", sub_sample=True, norm_cfg=dict(type="BN"))

    net = reference(resnet50_state, {"nonlocal_block": nl}, stages=(3,))
    optimizer = torch.optim.SGD(list(net.layer3[0].nonlocal_block.parameters()), lr=0.0, momentum=0.9)
    net.layer3[0].nonlocal_block(torch.randn(1, 1024, 4, 4)).sum().backward()
    optimizer.step()  # real optimizer state (momentum buffers), weights unchanged (lr 0)
    net.zero_grad()
    ckpt = {
        "meta": {
            "cfg": MMDET3_CFG,
            "mmengine_version": "0.10.7",
            "time": "20240101_000000",
            "epoch": 12,
            "iter": 87960,
            "seed": np.int64(42),
            "dataset_meta": {"classes": ("person", "bicycle"), "palette": [(220, 20, 60), (119, 11, 32)]},
            "dtype": np.dtype("float32"),
        },
        "state_dict": detector_keys(net.state_dict()),
        "message_hub": mmengine_message_hub(),
        "optimizer": optimizer.state_dict(),
        "param_schedulers": [{"base_lrs": [0.02], "last_step": 11}],
    }
    path = tmp_path / "mask_rcnn_r50_fpn_nl.pth"
    torch.save(ckpt, path)
    loaded = load_checkpoint(path)
    assert loaded.format == "mmdetection 3.x (mmengine)"
    assert "mmengine.logging.history_buffer.HistoryBuffer" in loaded.placeholders
    assert [b.options["mode"] for b in loaded.arch.blocks] == ["dot_product"] * 6
    assert loaded.preprocess.scale == (1000, 600) and loaded.preprocess.to_rgb
    assert any(k.startswith("backbone.layer4.") for k in loaded.unused_keys)
    assert "roi_head.bbox_head.fc_cls.weight" in loaded.unused_keys
    assert_same_blocks(net, [f"layer3.{i}.nonlocal_block" for i in range(6)], loaded, "backbone.")


MMDET2_CFG = """
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(type='MaskRCNN', backbone=dict(type='ResNet', depth=50, style='pytorch',
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    plugins=[dict(cfg=dict(type='ContextBlock', ratio=1. / 16), stages=(False, True, True, True),
                  position='after_conv3')]))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', img_scale=(1333, 800), flip=False,
    transforms=[dict(type='Resize', keep_ratio=True), dict(type='Normalize', **img_norm_cfg),
                dict(type='Pad', size_divisor=32)])]
data = dict(test=dict(pipeline=test_pipeline))
"""


def test_mmdet2_context_plugins(tmp_path, resnet50_state):
    net = reference(resnet50_state, {"context_block": lambda c: mmcv_cnn.ContextBlock(c, 1.0 / 16)}, stages=(2, 3, 4))
    ckpt = {
        "meta": {"mmdet_version": "2.28.2", "mmcv_version": "1.7.1", "config": MMDET2_CFG, "CLASSES": ("person",),
                 "epoch": 12, "iter": 87960},
        "state_dict": detector_keys(net.state_dict()),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.02, "params": [0]}]},
    }
    path = tmp_path / "mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5.pth"
    torch.save(ckpt, path)
    loaded = load_checkpoint(path)
    assert loaded.format == "mmdetection 2.x (mmcv)"
    assert len(loaded.blocks) == 4 + 6 + 3 and loaded.preprocess.source == "the checkpoint's meta['config']"
    names = [f"layer{s}.{i}.context_block" for s, n in ((2, 4), (3, 6), (4, 3)) for i in range(n)]
    assert_same_blocks(net, names, loaded, "backbone.")


def test_gcnet_repository_after_add(tmp_path, resnet50_state):
    cfg = ("model = dict(type='MaskRCNN', backbone=dict(type='ResNet', depth=50, style='pytorch', "
           "ct=dict(insert_pos='after_add', ratio=1./4, pool='att', fusions=['channel_mul']), "
           "stage_with_ct=(False, False, False, True)))")
    net = reference(
        resnet50_state,
        {"context_block": lambda c: mmcv_cnn.ContextBlock(c, 0.25, fusion_types=("channel_mul",))},
        stages=(4,),
        position="after_add",
    )
    path = tmp_path / "gcnet.pth"
    torch.save({"meta": {"mmdet_version": "0.6.0+abc", "config": cfg}, "state_dict": detector_keys(net.state_dict())}, path)
    loaded = load_checkpoint(path)
    assert loaded.format.startswith("GCNet repository")
    assert {b.position for b in loaded.arch.blocks} == {"after_add"}
    assert_same_blocks(net, [f"layer4.{i}.context_block" for i in range(3)], loaded, "backbone.")


def test_ddp_plain_state_dict_concatenation_inferred(tmp_path, resnet50_state):
    net = reference(resnet50_state, {"nonlocal_block": lambda c: mmcv_cnn.NonLocal2d(c, mode="concatenation")}, stages=(2,))
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "ddp.pth")
    loaded = load_checkpoint(tmp_path / "ddp.pth")
    assert "DDP" in loaded.format and loaded.arch.prefix == "module."
    assert all(b.options["mode"] == "concatenation" for b in loaded.arch.blocks)
    assert "module.fc.weight" in loaded.unused_keys and loaded.preprocess.source == "mmdetection defaults"
    assert_same_blocks(net, [f"layer2.{i}.nonlocal_block" for i in range(4)], loaded, "module.")


def test_alexhex7_standalone_before_last_res4_block(tmp_path, resnet50_state):
    from test_adapters_alexhex7 import upstream_classes

    net = torchvision.models.resnet50()
    net.load_state_dict(resnet50_state)
    block = randomise(upstream_classes("embedded_gaussian")["NONLocalBlock2D"](1024), seed=7)
    net.layer3 = nn.Sequential(*net.layer3[:5], block, net.layer3[5])
    net.eval()
    torch.save(net.state_dict(), tmp_path / "nl_paper.pth")
    loaded = load_checkpoint(tmp_path / "nl_paper.pth", overrides={"nl_mode": "embedded_gaussian"})
    assert loaded.block_layouts == {"layer3.5": "alexhex7"}
    assert loaded.arch.stage_blocks == (3, 4, 6, 3) and loaded.arch.blocks[0].position == "standalone"
    assert_same_blocks(net, ["layer3.5"], loaded, "")


@pytest.mark.parametrize(("mode", "sub_sample"), [("embedded_gaussian", True), ("dot_product", True), ("concatenation", True), ("gaussian", False)])
def test_alexhex7_2018_non_local_py_takes_the_mode_given(tmp_path, capsys, resnet50_state, mode, sub_sample):
    """AlexHex7's ``lib/non_local.py`` of October-November 2018 (``lib/backup/non_local.py`` since) makes ``theta``, ``phi``
    and ``concat_project`` whatever its ``mode``: its keys are those of ``lib/non_local_concatenation.py``. They were read
    as concatenation without a word, and ``--nl-mode`` was refused ("its keys are those of mode concatenation"). The
    mode given wins (the modules it does not use are unused keys); without it the guess warns, naming the file, the
    keys and the modes they allow (gaussian only without sub_sample: with it, that file's gaussian forward pools phi's
    C' channels as if they were x's C)."""
    import warnings

    from test_adapters_alexhex7 import upstream_classes

    net = torchvision.models.resnet50()
    net.load_state_dict(resnet50_state)
    block = randomise(upstream_classes("combined")["NONLocalBlock2D"](1024, mode=mode, sub_sample=sub_sample), seed=7)
    net.layer3 = nn.Sequential(*net.layer3[:5], block, net.layer3[5])
    net.eval()
    modules = {k[len("layer3.5."):].rsplit(".", 1)[0] for k in net.state_dict() if k.startswith("layer3.5.")}
    assert modules == {"g.0" if sub_sample else "g", "theta", "phi.0" if sub_sample else "phi", "W.0", "W.1", "concat_project.0"}
    path = tmp_path / "nl_2018.pth"
    torch.save(net.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the mode is given: nothing to warn of
        loaded = load_checkpoint(path, overrides={"nl_mode": mode})
    assert loaded.arch.blocks[0].options["mode"] == mode and not any("assumed" in n and "mode" in n for n in loaded.notes)
    idle = {"concatenation": [], "gaussian": ["concat_project.0.weight", "phi.bias", "phi.weight", "theta.bias", "theta.weight"]}
    assert sorted(k[len("layer3.5."):] for k in loaded.unused_keys if k.startswith("layer3.5.")) == idle.get(mode, ["concat_project.0.weight"])
    assert_same_blocks(net, ["layer3.5"], loaded, "")
    assert main(["inspect", "--ckpt", str(path), "--nl-mode", mode]) == 0
    assert f"layer3.5: NonLocal2d mode={mode} " in capsys.readouterr().out

    possible = "concatenation, embedded_gaussian, dot_product" + (", gaussian" if not sub_sample else "")
    with pytest.warns(UserWarning) as record:
        guessed = load_checkpoint(path)
    told = [str(w.message) for w in record if "--nl-mode" in str(w.message)]
    assert len(told) == 1 and told[0].startswith(f"{path}: layer3.5: mode concatenation assumed"), told
    keys = ", ".join(sorted(modules))
    assert f"keys ({keys})" in told[0] and f"may be any of {possible}" in told[0] and "lib/non_local.py" in told[0]
    assert told[0].removeprefix(f"{path}: ") in guessed.notes and guessed.arch.blocks[0].options["mode"] == "concatenation"
    if sub_sample:
        with pytest.raises(ValueError, match="layer3.5: its keys allow mode concatenation, embedded_gaussian or dot_product, not gaussian"):
            load_checkpoint(path, overrides={"nl_mode": "gaussian"})


def test_timm_nonlocal_attn_training_checkpoint(tmp_path, resnet50_state):
    timm_layers = pytest.importorskip("timm.layers", reason="timm not installed")
    net = reference(resnet50_state, {"se": lambda c: timm_layers.NonLocalAttn(c)}, stages=(3,))
    ckpt = {"epoch": 99, "arch": "resnet50", "state_dict": net.state_dict(), "version": 2,
            "args": argparse.Namespace(model="resnet50", lr=0.1)}
    torch.save(ckpt, tmp_path / "timm.pth.tar")
    loaded = load_checkpoint(tmp_path / "timm.pth.tar")
    assert loaded.format == "timm training checkpoint" and "argparse.Namespace" in loaded.placeholders
    assert set(loaded.block_layouts.values()) == {"timm"}
    assert_same_blocks(net, [f"layer3.{i}.se" for i in range(6)], loaded, "")


def test_given_use_scale_wins_over_a_layouts_own_logit_factor(tmp_path, resnet50_state):
    """``use_scale=False`` given: timm's ``C**-0.5`` and the GCNet repository's ``sqrt(C')`` go too (they used to win
    over the flag, silently); the blocks then equal their references built without a scale."""
    timm_layers = pytest.importorskip("timm.layers", reason="timm not installed")
    net = reference(resnet50_state, {"se": lambda c: timm_layers.NonLocalAttn(c, use_scale=False)}, stages=(3,))
    torch.save({"arch": "resnet50", "state_dict": net.state_dict()}, tmp_path / "timm.pth.tar")
    loaded = load_checkpoint(tmp_path / "timm.pth.tar", overrides={"use_scale": False})
    assert any("factor" in n and "dropped" in n for n in loaded.notes)
    assert_same_blocks(net, [f"layer3.{i}.se" for i in range(6)], loaded, "")

    net = reference(resnet50_state, {"nonlocal_block": lambda c: mmcv_cnn.NonLocal2d(c, use_scale=False)}, stages=(2,))
    path = tmp_path / "gcnet_nl.pth"
    torch.save({"meta": {"mmdet_version": "1.0.0"}, "state_dict": detector_keys(net.state_dict())}, path)
    assert load_checkpoint(path).format.startswith("GCNet repository")
    loaded = load_checkpoint(path, overrides={"use_scale": False})
    assert_same_blocks(net, [f"layer2.{i}.nonlocal_block" for i in range(4)], loaded, "backbone.")


def test_native_round_trip(tmp_path, resnet50_state):
    net = reference(resnet50_state, {"nonlocal_block": lambda c: mmcv_cnn.NonLocal2d(c, mode="dot_product")}, stages=(3,))
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": detector_keys(net.state_dict())}, path)
    first = load_checkpoint(path, overrides={"nl_mode": "dot_product"})
    native = save_checkpoint(tmp_path / "native.pth", first.model, first.preprocess, meta={"trained": "test", "epochs": 2})
    payload = torch.load(native, weights_only=True)  # plain data only
    assert payload["format"] == "nlanalysis-checkpoint" and payload["meta"]["epochs"] == 2
    again = load_checkpoint(native)
    assert again.format == "nlanalysis native" and again.arch == first.arch and not again.notes
    assert again.unused_keys == [] and again.preprocess == first.preprocess
    assert_same_blocks(net, [f"layer3.{i}.nonlocal_block" for i in range(6)], again, "backbone.")
    with pytest.raises(ValueError, match="not plain data"):
        save_checkpoint(tmp_path / "bad.pth", first.model, meta={"x": object()})
    assert copy.deepcopy(first.arch).to_dict() == first.arch.to_dict()


MMDET20_CFG = """
classes = ('person', 'car')
model = dict(type='MaskRCNN', backbone=dict(type='ResNet', depth=50, style='pytorch',
    plugins=[dict(cfg=dict(type='NonLocal2D', mode='dot_product', use_scale=False), stages=(False, False, True, False),
                  position='after_conv3')]),
    roi_head=dict(bbox_head=dict(type='Shared2FCBBoxHead', num_classes=len(classes))))
"""


def test_mmdet20_nonlocal2D_plugins_and_a_config_entry_that_is_not_literal(tmp_path, resnet50_state):
    """mmdetection 2.0-2.2 named its own NL plugin ``NonLocal2D`` (mmdet/ops/plugin.py: ``nonlocal_block``): its mode is
    the config's, and ``num_classes=len(classes)`` elsewhere in the model costs only that entry (it cost every plugin)."""
    net = reference(resnet50_state, {"nonlocal_block": lambda c: mmcv_cnn.NonLocal2d(c, mode="dot_product", use_scale=False)},
                    stages=(3,))  # fmt: skip
    path = tmp_path / "nl_dot_mmdet20.pth"
    torch.save({"meta": {"mmdet_version": "2.0.0", "config": MMDET20_CFG}, "state_dict": detector_keys(net.state_dict())}, path)
    loaded = load_checkpoint(path)
    assert {b.options["mode"] for b in loaded.arch.blocks} == {"dot_product"}
    assert not [n for n in loaded.notes if "assumed" in n and "nonlocal_block" in n]  # the config said: no "assumed" left
    assert not [n for n in loaded.notes if "NonLocal2D" in n]  # (it was "not an NL/GC block; ignored")
    assert [n for n in loaded.notes if "not literal-like" in n and "num_classes" in n]
    assert_same_blocks(net, [f"layer3.{i}.nonlocal_block" for i in range(6)], loaded, "backbone.")


def test_flags_replace_what_was_assumed(tmp_path, resnet50_state):
    net = reference(resnet50_state, {"nonlocal_block": lambda c: mmcv_cnn.NonLocal2d(c)}, stages=(3,))
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    assumed = [n for n in load_checkpoint(tmp_path / "plain.pth").notes if "layer3.0.nonlocal_block" in n]
    assert any("mode embedded_gaussian assumed" in n for n in assumed) and any("use_scale=True assumed" in n for n in assumed)
    given = load_checkpoint(tmp_path / "plain.pth", overrides={"nl_mode": "dot_product", "use_scale": False}).notes
    assert not [n for n in given if "assumed" in n and "nonlocal_block" in n]
    assert any("layer3.0.nonlocal_block: mode dot_product (given" in n for n in given)


def test_gcnet_format_says_after_add_was_possible_unless_told(tmp_path, resnet50_state):
    net = reference(resnet50_state, {"context_block": lambda c: mmcv_cnn.ContextBlock(c, 0.25)}, stages=(4,))
    path = tmp_path / "gcnet_no_config.pth"
    torch.save({"meta": {"mmdet_version": "0.6.0"}, "state_dict": detector_keys(net.state_dict())}, path)
    notes = load_checkpoint(path).notes
    assert sum("position after_conv3 assumed (the early GCNet repository's ct insert_pos='after_add'" in n for n in notes) == 3
    told = load_checkpoint(path, overrides={"position": "after_conv3"})
    assert not [n for n in told.notes if "after_add" in n] and {b.position for b in told.arch.blocks} == {"after_conv3"}


def test_a_position_that_does_not_carry_the_blocks_channels_is_refused_at_load(tmp_path, resnet50_state):
    from nlanalysis.checkpoints import CheckpointError

    net = reference(resnet50_state, {"context_block": lambda c: mmcv_cnn.ContextBlock(c, 1.0 / 16)}, stages=(3,))
    torch.save(net.state_dict(), tmp_path / "gc.pth")
    with pytest.raises(CheckpointError, match=r"gc\.pth: block 'layer3\.0\.context_block' takes 1024 channels, but after_conv2 "
                                              r"of its bottleneck carries 256: check its position"):  # fmt: skip
        load_checkpoint(tmp_path / "gc.pth", overrides={"position": "after_conv2"})


def test_config_arithmetic_that_fails_is_a_checkpoint_error(tmp_path, resnet50_state):
    from nlanalysis.checkpoints import CheckpointError

    net = reference(resnet50_state, {"nonlocal_block": lambda c: mmcv_cnn.NonLocal2d(c)}, stages=(3,))
    cfg = MMDET20_CFG.replace("type='NonLocal2D', mode='dot_product', use_scale=False", "type='NonLocal2d', reduction=0")
    torch.save({"meta": {"mmdet_version": "2.28.0", "config": cfg}, "state_dict": detector_keys(net.state_dict())}, tmp_path / "r0.pth")
    with pytest.raises(CheckpointError, match=r"r0\.pth: malformed .*ZeroDivisionError"):
        load_checkpoint(tmp_path / "r0.pth")


def test_a_config_with_other_strides_or_dilations_is_refused(tmp_path, resnet50_state):
    """A DC5 backbone (layer4 dilated, stride 1) would be rebuilt at stride 32 and its GC maps measured at half size."""
    from nlanalysis.checkpoints import CheckpointError

    net = reference(resnet50_state, {"context_block": lambda c: mmcv_cnn.ContextBlock(c, 1.0 / 16)}, stages=(2, 3, 4))
    dc5 = MMDET2_CFG.replace("style='pytorch',", "style='pytorch', strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),")
    torch.save({"meta": {"mmdet_version": "2.28.2", "config": dc5}, "state_dict": detector_keys(net.state_dict())}, tmp_path / "dc5.pth")
    with pytest.raises(CheckpointError, match=r"dc5\.pth: the config .* sets the backbone's strides=\(1, 2, 2, 1\): only mmdetection's "
                                              r"default \(1, 2, 2, 2\) is rebuilt \(layer1..layer4 here\)"):  # fmt: skip
        load_checkpoint(tmp_path / "dc5.pth")
    same = MMDET2_CFG.replace("style='pytorch',", "style='pytorch', strides=(1, 2, 2, 2), dilations=[1, 1, 1, 1],")
    torch.save({"meta": {"mmdet_version": "2.28.2", "config": same}, "state_dict": detector_keys(net.state_dict())}, tmp_path / "ok.pth")
    assert len(load_checkpoint(tmp_path / "ok.pth").blocks) == 13


def test_groupnorm_conv_out_takes_num_groups_from_the_config(tmp_path, resnet50_state):
    """num_groups is not in GroupNorm's keys: the config gives it (the loader refused before reading any config)."""
    from nlanalysis.checkpoints import CheckpointError

    net = reference(resnet50_state, {"nonlocal_block": lambda c: mmcv_cnn.NonLocal2d(c, norm_cfg=dict(type="GN", num_groups=32))},
                    stages=(3,))  # fmt: skip
    cfg = MMDET20_CFG.replace("type='NonLocal2D', mode='dot_product', use_scale=False", "type='NonLocal2d', norm_cfg=dict(type='GN', num_groups=32)")
    state = detector_keys(net.state_dict())
    torch.save({"meta": {"mmdet_version": "2.25.0", "config": cfg}, "state_dict": state}, tmp_path / "gn.pth")
    loaded = load_checkpoint(tmp_path / "gn.pth")
    assert {b.options["norm_cfg"]["num_groups"] for b in loaded.arch.blocks} == {32}
    assert_same_blocks(net, [f"layer3.{i}.nonlocal_block" for i in range(6)], loaded, "backbone.")
    torch.save(state, tmp_path / "gn_bare.pth")
    with pytest.raises(CheckpointError, match=r"gn_bare\.pth: layer3\.0\.nonlocal_block: conv_out is GroupNorm-normed and its "
                                              r"num_groups is not in the keys: pass --config"):  # fmt: skip
        load_checkpoint(tmp_path / "gn_bare.pth")
