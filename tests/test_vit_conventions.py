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


# -- the position table, resized as each source resizes it -------------------------------------------
def test_timm_checkpoints_resize_their_table_as_timm_does():
    """timm's own model at another input size (``dynamic_img_size``: ``resample_abs_pos_embed``, antialiased)."""
    original = _timm(img_size=98, dynamic_img_size=True)  # a 7 x 7 table, run on 4 x 4 patches
    x = torch.randn(2, 3, 56, 56)
    loaded = load_vit(original.state_dict(), img_size=56)
    assert loaded.vit_spec.pos_antialias and loaded.vit_spec.pos_offset is None
    torch.testing.assert_close(_features(loaded, x), _features(original, x))
    plain = load_vit(original.state_dict(), img_size=56, pos_antialias=False)
    assert not torch.allclose(_features(plain, x), _features(original, x), atol=1e-3)


def _hf_model(kind: str):
    transformers = pytest.importorskip("transformers")
    kw = dict(hidden_size=192, num_hidden_layers=1, num_attention_heads=3, intermediate_size=192, patch_size=14, image_size=98)
    if kind == "vit":
        return transformers.ViTModel(transformers.ViTConfig(**kw), add_pooling_layer=False)
    if kind == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    if not hasattr(transformers, "Dinov2WithRegistersModel"):
        pytest.skip("this transformers has no Dinov2WithRegistersModel")
    return transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(num_register_tokens=2, **kw))


@pytest.mark.parametrize(("kind", "antialias"), [("vit", False), ("dinov2", False), ("dinov2-reg", True)])
def test_hugging_face_checkpoints_resize_their_table_as_transformers_does(kind, antialias, tmp_path):
    hf = randomize_(_hf_model(kind), std=0.1).eval()
    hf.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 56, 56)  # 4 x 4 patches from a 7 x 7 table
    with torch.no_grad():
        want = hf(pixel_values=x, **({"interpolate_pos_encoding": True} if kind == "vit" else {})).last_hidden_state
    loaded = load_vit(tmp_path, img_size=56)
    assert loaded.vit_spec.pos_antialias is antialias
    torch.testing.assert_close(_features(loaded, x), want, rtol=1e-4, atol=1e-5)
    other = load_vit(tmp_path, img_size=56, pos_antialias=not antialias)
    assert not torch.allclose(_features(other, x), want, atol=1e-3)


def _bicubic_reference(grid, out: tuple[int, int], scale: tuple[float, float]):
    """PyTorch's bicubic (``align_corners=False``, cubic a = -0.75, border indices clamped), written out in numpy with
    an explicit ``scale_factor``: output pixel i samples the input at (i + 0.5) / scale - 0.5."""
    import numpy as np

    def weights(t):
        a = -0.75
        near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731  |d| <= 1
        far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731  1 < |d| < 2
        return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])

    def along(arr, axis, n_out, s):
        n = arr.shape[axis]
        rows = []
        for i in range(n_out):
            src = (i + 0.5) / s - 0.5
            f = int(np.floor(src))
            idx = np.clip(np.arange(f - 1, f + 3), 0, n - 1)
            rows.append(np.tensordot(weights(src - f), np.take(arr, idx, axis=axis), axes=([0], [axis])))
        return np.moveaxis(np.stack(rows), 0, axis)

    return along(along(grid, 0, out[0], scale[0]), 1, out[1], scale[1])


def test_dinov2_repository_checkpoints_without_registers_resize_with_its_offset():
    """The DINOv2 repository (``interpolate_pos_encoding``, ``interpolate_offset=0.1``, no antialias): ``scale_factor =
    (w0 + 0.1) / M``; told apart from timm by its 2-D ``mask_token``."""
    import numpy as np

    original = _timm(img_size=98)  # 7 x 7
    repo = {**original.state_dict(), "mask_token": torch.zeros(1, 384)}
    loaded = load_vit(repo, img_size=56)
    assert loaded.vit_spec.pos_offset == 0.1 and not loaded.vit_spec.pos_antialias
    table = original.pos_embed[0, 1:].detach().double().reshape(7, 7, 384).numpy()
    want = _bicubic_reference(table, (4, 4), (4.1 / 7, 4.1 / 7)).reshape(16, 384)
    got = loaded.pos_embed[0, 1:].detach().double().numpy()
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.abs(load_vit(original.state_dict(), img_size=56, pos_antialias=False).pos_embed[0, 1:].detach().numpy() - want).max() > 1e-2
    torch.testing.assert_close(loaded.pos_embed[0, :1], original.pos_embed[0, :1])  # the class entry is not resized
    registers = {**repo, "register_tokens": torch.randn(1, 2, 384)}  # its models with registers: antialias, no offset
    spec = load_vit(registers, img_size=56).vit_spec
    assert spec.pos_antialias and spec.pos_offset is None and spec.n_reg == 2


def test_a_table_resampled_to_another_grid_is_said_and_recorded(tmp_path):
    import warnings

    from nlanalysis.extract import load_analysis

    original = _timm(img_size=98)  # 7 x 7
    torch.save(original.state_dict(), tmp_path / "vit.pth")
    with pytest.warns(UserWarning, match=r"vit\.pth: position table stored for a 7 x 7 patch grid, resampled to 4 x 4 for 56 x 56"):
        analysis = load_analysis(tmp_path / "vit.pth", options={"vit_size": 56})
    notes = analysis.describe()["checkpoint"]["notes"]  # run.json's checkpoint.notes
    assert any("7 x 7 patch grid, resampled to 4 x 4" in n and "with antialias" in n for n in notes)
    assert any(n.startswith("heads: 6 assumed head_dim 64") for n in notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stored grid: nothing resampled, nothing said
        same = load_analysis(tmp_path / "vit.pth", options={"vit_size": 98, "vit_heads": 6})
    assert not any("resampled" in n or n.startswith("heads:") for n in same.describe()["checkpoint"]["notes"])


# -- where the final norm sits ---------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(global_pool="avg", fc_norm=True),  # MAE fine-tuned: class token, fc_norm after the pool
                                dict(class_token=False, global_pool="avg", fc_norm=False),  # timm *_gap_*: norm, no class token
                                dict(class_token=False, global_pool="avg", fc_norm=True),  # no class token, fc_norm
                                dict(class_token=False, reg_tokens=2, no_embed_class=True, global_pool="avg", fc_norm=False)])
def test_average_pooled_vits_load_whichever_final_norm_they_have(kw, tmp_path):
    original = _timm(**kw)
    torch.save(original.state_dict(), tmp_path / "vit.pth")
    loaded = load_vit(tmp_path / "vit.pth", img_size=28)
    assert loaded.vit_spec.final_norm == ("fc_norm" if kw["fc_norm"] else None)
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(_features(loaded, x), _features(original, x))
    with torch.no_grad():  # the pooled features: the final norm in its place
        torch.testing.assert_close(loaded(x), original(x))


# -- what is refused, and how ----------------------------------------------------------------------
def test_an_activation_other_than_exact_gelu_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=1, num_attention_heads=3, intermediate_size=192,
                                    patch_size=14, image_size=28, hidden_act="quick_gelu")  # fmt: skip
    hf = randomize_(transformers.ViTModel(config, add_pooling_layer=False), std=0.1).eval()
    hf.save_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / "model.safetensors"):
        with pytest.raises(CheckpointError, match=r"config\.json: hidden_act 'quick_gelu': the rebuilt ViT uses exact GELU"):
            load_vit(source, img_size=28)
    x = torch.randn(1, 3, 28, 28)  # why: the rebuild (exact GELU) is another function than quick_gelu's model
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state
    rebuilt = load_vit(hf.state_dict(), img_size=28, num_heads=3, norm_eps=config.layer_norm_eps)
    assert not torch.allclose(_features(rebuilt, x), want, atol=1e-3)


def test_a_hugging_face_distilled_deit_is_refused_by_name(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.DeiTConfig(hidden_size=192, num_hidden_layers=1, num_attention_heads=3, intermediate_size=192,
                                     patch_size=14, image_size=28)  # fmt: skip
    deit = transformers.DeiTModel(config, add_pooling_layer=False).eval()
    assert "embeddings.distillation_token" in deit.state_dict()  # the original has the second token
    deit.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: a distilled DeiT \(embeddings\.distillation_token: a distillation token"):
        load_vit(tmp_path, img_size=28)


def test_an_unknown_layout_shows_its_whole_sample_of_keys(tmp_path):
    """A MoCo v3 training file (two encoders under module.base_encoder / module.momentum_encoder): the message keeps the
    keys it found (it was cut at 200 characters, in the middle of the first key)."""
    sd = _timm().state_dict()
    state = {f"module.{enc}.{k}": v for enc in ("base_encoder", "momentum_encoder") for k, v in sd.items()}
    torch.save({"state_dict": state}, tmp_path / "mocov3.pth")
    with pytest.raises(CheckpointError) as info:
        load_vit(tmp_path / "mocov3.pth", img_size=28)
    message = str(info.value)
    first = sorted(k.removeprefix("module.") for k in state)[0]
    assert message.startswith(str(tmp_path / "mocov3.pth")) and f"found {first}" in message and message.endswith(", ...")


# -- torchvision's layout ----------------------------------------------------------------------------
@pytest.mark.parametrize("legacy_mlp_names", [False, True])
def test_torchvision_vision_transformers_load_and_reproduce_its_tokens(legacy_mlp_names, tmp_path):
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    from nlanalysis.checkpoints.vit.models import vit_checkpoint_layout

    torch.manual_seed(0)
    original = randomize_(tv.VisionTransformer(image_size=28, patch_size=14, num_layers=2, num_heads=6, hidden_dim=384,
                                               mlp_dim=512), std=0.1).eval()  # fmt: skip
    sd = original.state_dict()
    if legacy_mlp_names:  # torchvision < 0.14: mlp.linear_1 / mlp.linear_2
        sd = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in sd.items()}
    torch.save(sd, tmp_path / "vit_b_16_like.pth")
    assert vit_checkpoint_layout(tmp_path / "vit_b_16_like.pth") == "torchvision"  # extract --ckpt reads it as a ViT
    loaded = load_vit(tmp_path / "vit_b_16_like.pth", img_size=28)
    assert loaded.vit_spec.num_heads == 6 and loaded.vit_source.endswith("(torchvision layout)")
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():  # torchvision's own forward, up to the class-token pick: every token after encoder.ln
        tokens = original._process_input(x)
        want = original.encoder(torch.cat([original.class_token.expand(2, -1, -1), tokens], 1))
    torch.testing.assert_close(_features(loaded, x), want, rtol=1e-4, atol=1e-5)
    wrong = load_vit(tmp_path / "vit_b_16_like.pth", img_size=28, num_heads=3)
    assert not torch.allclose(_features(wrong, x), want, atol=1e-3)


# -- the input normalisation a state dict does not state -----------------------------------------------
def test_input_normalisation_is_the_callers_the_checkpoints_or_imagenets_said_so(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image
    from torchvision.transforms.functional import normalize

    from nlanalysis.cli import main
    from nlanalysis.extract import load_analysis

    torch.save(_timm().state_dict(), tmp_path / "augreg_like.pth")  # timm augreg ViTs are trained on (x - 0.5) / 0.5
    photo = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    assumed = load_analysis(tmp_path / "augreg_like.pth", options={"vit_size": 28})
    assert assumed.mean == (0.485, 0.456, 0.406) and assumed.describe()["preprocess"]["norm_from"].startswith("ImageNet mean/std assumed")
    assert any("--vit-mean" in n for n in assumed.describe()["checkpoint"]["notes"])
    given = load_analysis(tmp_path / "augreg_like.pth", options={"vit_size": 28, "vit_mean": [0.5] * 3, "vit_std": [0.5] * 3})
    raw = load_analysis(tmp_path / "augreg_like.pth", options={"vit_size": 28, "vit_mean": [0.0] * 3, "vit_std": [1.0] * 3})
    torch.testing.assert_close(given.prepare(photo).tensor, normalize(raw.prepare(photo).tensor, [0.5] * 3, [0.5] * 3))
    assert given.describe()["preprocess"]["norm_from"].startswith("caller")

    Image.fromarray(photo).save(tmp_path / "a.png")
    run = ["extract", "--ckpt", str(tmp_path / "augreg_like.pth"), "--vit-size", "28", "--images", str(tmp_path / "a.png"),
           "--jsd-pairs", "0", "--quiet"]  # fmt: skip
    assert main([*run, "--out", str(tmp_path / "run"), "--vit-mean", "0.5", "0.5", "0.5", "--vit-std", "0.5", "0.5", "0.5"]) == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["settings"]["preprocess"]["mean"] == [0.5] * 3 and info["preprocess"]["std"] == [0.5] * 3
    assert main([*run, "--out", str(tmp_path / "bad"), "--vit-mean", "0.5", "0.5", "0.5"]) == 2
    assert "--vit-mean and --vit-std go together" in capsys.readouterr().err


def test_runs_recorded_before_these_conventions_resume_where_the_numbers_are_the_same(tmp_path):
    """The settings a resume compares keep the words earlier runs wrote: ``heads_from`` as ``"assumed head_dim 64"`` or
    ``"checkpoint"`` (a head count given by the caller was recorded so), and the resize convention only where the
    table is resampled (at the stored grid nothing is resized: earlier runs recorded ``false``)."""
    from dataclasses import asdict

    from nlanalysis.extract.analysis_vit import _settings_spec
    from nlanalysis.extract.store import check_same_settings

    torch.save(_timm().state_dict(), tmp_path / "s.pth")
    with pytest.warns(UserWarning, match="assumed head_dim 64"):
        guessed = load_vit(tmp_path / "s.pth", img_size=28).vit_spec
    given = load_vit(tmp_path / "s.pth", img_size=28, num_heads=6).vit_spec
    assert guessed.pos_antialias and given.heads_from.startswith("caller")  # timm's convention, the caller's count
    earlier = {**asdict(guessed), "heads_from": "assumed head_dim 64", "pos_antialias": False}  # as runs recorded it
    for key in ("pos_offset", "final_norm"):  # fields added later: absent from earlier records
        earlier.pop(key)
    check_same_settings({"spec": earlier}, {"spec": _settings_spec(guessed, 28)}, "run")
    check_same_settings({"spec": {**earlier, "heads_from": "checkpoint"}}, {"spec": _settings_spec(given, 28)}, "run")
    with pytest.raises(ValueError, match="pos_antialias: false vs true"):  # resampled (2 x 2 -> 4 x 4): numbers differ
        check_same_settings({"spec": earlier}, {"spec": _settings_spec(guessed, 56)}, "run")
