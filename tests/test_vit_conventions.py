"""What a ViT checkpoint does not say, and each source's conventions: the head count (stated, or guessed
only for widths whose standard models all have 64-wide heads), how each source resizes its position
table, where its final LayerNorm sits, and the layouts it comes in. Each check rebuilds the checkpoint
with :func:`load_vit` and compares it with the original module (timm, Hugging Face, torchvision) built
with random weights."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_
from nlanalysis.checkpoints import CheckpointError
from nlanalysis.checkpoints.vit.models import load_vit

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def _timm(**kw) -> torch.nn.Module:
    args = dict(img_size=28, patch_size=14, embed_dim=384, depth=1, num_heads=6, num_classes=0, mlp_ratio=1.0)
    args.update(kw)
    return randomize_(timm_vit.VisionTransformer(**args), std=0.1).eval()


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)


def test_heads_are_guessed_only_for_widths_whose_standard_models_have_64_wide_heads(tmp_path):
    x = torch.randn(2, 3, 28, 28)
    small = _timm()  # ViT-S width: 6 heads of 64
    torch.save(small.state_dict(), tmp_path / "s.pth")
    loaded = load_vit(tmp_path / "s.pth", img_size=28)
    assert loaded.vit_spec.num_heads == 6 and loaded.vit_spec.heads_from.startswith("assumed head_dim 64 (every standard")
    torch.testing.assert_close(_features(loaded, x), _features(small, x))

    huge_like = _timm(embed_dim=320, num_heads=4)  # 80-wide heads, as ViT-H/14 (1280 = 16 x 80)
    torch.save(huge_like.state_dict(), tmp_path / "h.pth")
    with pytest.raises(CheckpointError) as info:
        load_vit(tmp_path / "h.pth", img_size=28)
    message = str(info.value)
    assert str(tmp_path / "h.pth") in message and "width 320" in message and "num_heads=" in message and "--vit-heads" in message
    stated = load_vit(tmp_path / "h.pth", img_size=28, num_heads=4)
    assert stated.vit_spec.heads_from.startswith("caller")
    torch.testing.assert_close(_features(stated, x), _features(huge_like, x))
    wrong = load_vit(tmp_path / "h.pth", img_size=28, num_heads=5)  # the test can fail: another count, other tokens
    assert not torch.allclose(_features(wrong, x), _features(huge_like, x), atol=1e-3)


def test_a_weights_file_inside_a_hugging_face_folder_reads_the_folder_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=1, num_attention_heads=6, intermediate_size=192,
                                    patch_size=14, image_size=28)  # fmt: skip
    hf = randomize_(transformers.ViTModel(config, add_pooling_layer=False), std=0.1).eval()
    hf.save_pretrained(tmp_path / "hf")
    transformers.ViTImageProcessor().save_pretrained(tmp_path / "hf")  # mean / std 0.5
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state
    loaded = load_vit(tmp_path / "hf" / "model.safetensors", img_size=28)  # 6 heads of 32: config.json, not width / 64
    assert loaded.vit_spec.num_heads == 6 and loaded.vit_spec.heads_from == "checkpoint"
    assert loaded.vit_spec.norm_eps == config.layer_norm_eps and loaded.vit_norm == ((0.5,) * 3, (0.5,) * 3)
    torch.testing.assert_close(_features(loaded, x), want, rtol=1e-4, atol=1e-5)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    guessed = load_vit(alone / "model.safetensors", img_size=28, norm_eps=config.layer_norm_eps)  # no config: 192 / 64
    assert guessed.vit_spec.num_heads == 3 and not torch.allclose(_features(guessed, x), want, atol=1e-3)
