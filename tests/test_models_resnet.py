"""``nlanalysis.models``: names mirror checkpoints, truncation, caffe style, arch round trip."""
from __future__ import annotations

import pytest
import torch
import torchvision

from nlanalysis.models import BlockSpec, ResNetArch, build_model


def test_matches_torchvision_resnet50_without_blocks():
    torch.manual_seed(0)
    ref = torchvision.models.resnet50().eval()
    model = build_model(ResNetArch((3, 4, 6, 3)), truncate=False)
    model.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 96)
    trunk = torch.nn.Sequential(*list(ref.children())[:-2])
    with torch.no_grad():
        torch.testing.assert_close(model(x), trunk(x))


def test_names_truncation_and_standalone():
    arch = ResNetArch(
        (2, 2, 3, 2),
        [BlockSpec("layer3.2", "NonLocal2d", 1024, "standalone"), BlockSpec("layer2.1.se", "ContextBlock", 512, options={"ratio": 0.25})],
        prefix="module.backbone.",
    )
    model = build_model(arch)
    names = dict(model.named_modules())
    assert "module.backbone.layer3.2" in names and "module.backbone.layer2.1.se" in names
    assert "module.backbone.layer3.3" not in names and "module.backbone.layer4" not in names
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1024, 4, 4)
    assert ResNetArch.from_dict(arch.to_dict()) == arch
    assert arch.entries(3) == 4 and arch.depth is None


def test_caffe_style_strides_conv1():
    model = build_model(ResNetArch((1, 1), style="caffe"), truncate=False)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="unknown type"):
        BlockSpec("layer1.0.x", "Attention", 256)
    with pytest.raises(ValueError, match="do not apply"):
        BlockSpec("layer1.0.x", "ContextBlock", 256, options={"mode": "gaussian"})
    with pytest.raises(ValueError, match="outside"):
        ResNetArch((1, 1), [BlockSpec("layer3.0.x", "ContextBlock", 256, options={"ratio": 0.25})])
