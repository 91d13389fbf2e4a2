"""``nlanalysis inspect --ckpt``: report on a good checkpoint, one-line error on a bad one."""
from __future__ import annotations

import torch

from nlanalysis.checkpoints import Preprocess, save_checkpoint
from nlanalysis.cli import main
from nlanalysis.models import BlockSpec, ResNetArch, build_model

ARCH = ResNetArch(
    (1, 1, 2),
    [
        BlockSpec("layer2.0.context_block", "ContextBlock", 512, options={"ratio": 1 / 16}),
        BlockSpec("layer3.1.nonlocal_block", "NonLocal2d", 1024, options={"mode": "dot_product", "sub_sample": True}),
    ],
    prefix="backbone.",
)


def test_inspect_mmdet_checkpoint(tmp_path, capsys):
    sd = build_model(ARCH, truncate=False).state_dict()
    sd["rpn_head.rpn_conv.weight"] = torch.zeros(2, 2, 3, 3)
    cfg = "model = dict(data_preprocessor=dict(mean=[1., 2., 3.], std=[4., 5., 6.], bgr_to_rgb=False))"
    torch.save({"meta": {"mmdet_version": "2.28.2", "config": cfg}, "state_dict": sd}, tmp_path / "m.pth")
    assert main(["inspect", "--ckpt", str(tmp_path / "m.pth"), "--nl-mode", "dot_product"]) == 0
    out = capsys.readouterr().out
    assert "format: mmdetection 2.x (mmcv)" in out
    assert "backbone.layer2.0.context_block: ContextBlock mode=gc C=512, inner=32" in out
    assert "backbone.layer3.1.nonlocal_block: NonLocal2d mode=dot_product C=1024, inner=512" in out
    assert "sub_sample=True" in out
    assert "mean [1.0, 2.0, 3.0], std [4.0, 5.0, 6.0], BGR" in out
    assert "rpn_head.rpn_conv.*  (1 keys)" in out and "missing keys: 0" in out


def test_inspect_native_and_error(tmp_path, capsys):
    save_checkpoint(tmp_path / "n.pth", build_model(ARCH), Preprocess(scale=(640, 480)), meta={"epochs": 1})
    assert main(["inspect", "--ckpt", str(tmp_path / "n.pth")]) == 0
    out = capsys.readouterr().out
    assert "format: nlanalysis native" in out and "(640, 480)" in out and "unused keys: 0" in out
    (tmp_path / "bad.pth").write_text("not a checkpoint")
    assert main(["inspect", "--ckpt", str(tmp_path / "bad.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "bad.pth") in err[0] and err[0].startswith("nlanalysis inspect: error:")
