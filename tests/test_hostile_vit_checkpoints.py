"""Hostile and careless ViT checkpoints (issue 14): a safetensors header that relabels float bytes as
integers, weights of the wrong shape and NaN/inf weights are refused at load, in one line naming
the file and the tensor; a clean file loads exactly; ``inspect`` warns about NaN/inf instead and
``extract`` stops before any image."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from nlanalysis.checkpoints import CheckpointError
from nlanalysis.checkpoints.vit.models import load_vit
from nlanalysis.cli import main

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("timm")

BROKEN = "the checkpoint is broken (diverged training or a damaged file) and every analysis of it would fail"


def hf_state(prefix: str = "") -> dict[str, torch.Tensor]:
    """A tiny Hugging Face Dinov2 state dict (2 layers, width 32, 2 heads, 14-pixel patches)."""
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                       patch_size=14, image_size=28)  # fmt: skip
    torch.manual_seed(0)
    return {prefix + k: v.detach().clone().contiguous() for k, v in transformers.Dinov2Model(config).state_dict().items()}


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    safetensors_torch.save_file(state, str(path))
    return path


def qkv(state: dict[str, torch.Tensor], layer: int, kind: str) -> list[str]:
    """Names of layer ``layer``'s query, key and value ``kind`` (transformers >= 5 or 4.x names)."""
    for roles in (("q_proj", "k_proj", "v_proj"), ("attention.query", "attention.key", "attention.value")):
        names = [k for role in roles for k in state if k.endswith(f"layer.{layer}.attention.{role}.{kind}")]
        if len(names) == 3:
            return names
    raise AssertionError(f"no query/key/value {kind} names for layer {layer}")


def relabel(data: bytes, key: str, old: bytes, new: bytes) -> bytes:
    """The safetensors bytes with ``key``'s header dtype ``old`` replaced by ``new`` (same length: the
    header keeps its size, the tensor bytes are untouched)."""
    end = 8 + struct.unpack("<Q", data[:8])[0]
    at = data.index(f'"{key}":{{"dtype":"'.encode(), 8, end)
    at = data.index(old, at, end)
    return data[:at] + new + data[at + len(old) :]


def refusal(*args, **kw) -> str:
    with pytest.raises(CheckpointError) as info:
        load_vit(*args, **kw)
    return str(info.value)


def test_clean_file_loads_exactly(tmp_path):
    """Every weight of the model is the checkpoint's, q/k/v concatenated by hand here."""
    state = hf_state()
    model = load_vit(save(state, tmp_path / "clean.safetensors"), img_size=28, num_heads=2)
    got = model.state_dict()
    assert torch.equal(got["blocks.1.mlp.fc1.weight"], state["encoder.layer.1.mlp.fc1.weight"])
    assert torch.equal(got["blocks.0.attn.qkv.weight"], torch.cat([state[k] for k in qkv(state, 0, "weight")]))
    assert torch.equal(got["blocks.1.attn.qkv.bias"], torch.cat([state[k] for k in qkv(state, 1, "bias")]))
    assert torch.equal(got["patch_embed.proj.weight"], state["embeddings.patch_embeddings.projection.weight"])
    assert model.vit_nonfinite == []


@pytest.mark.parametrize(("dtype", "name"), [(b"I32", "int32"), (b"U8", None)])
def test_float_bytes_relabelled_as_integers_are_refused(tmp_path, dtype, name):
    """``F32`` -> ``I32`` keeps every size right: without the check it loads ~1e9 'weights'. A
    smaller type (``U8``) no longer fits the byte range and safetensors itself refuses the file."""
    path = save(hf_state(), tmp_path / "clean.safetensors")
    key = "encoder.layer.1.mlp.fc1.weight"
    bad = tmp_path / "relabelled.safetensors"
    bad.write_bytes(relabel(path.read_bytes(), key, b"F32", dtype))
    message = refusal(bad, img_size=28, num_heads=2)
    if name is None:
        assert message.startswith(f"{bad}: truncated or corrupt safetensors file")
    else:
        assert message == f"{bad}: {key}: dtype {name}, not floating point; a ViT's weights all are (a damaged or edited file?)"


def test_integer_weight_in_timm_layout_names_the_prefixed_key(tmp_path):
    state = {f"module.{k}": v for k, v in load_vit(hf_state(), img_size=28, num_heads=2).state_dict().items()}
    state["module.blocks.0.norm1.weight"] = torch.ones(32, dtype=torch.int64)
    path = save(state, tmp_path / "timm.safetensors")
    assert refusal(path, img_size=28, num_heads=2) == (
        f"{path}: module.blocks.0.norm1.weight: dtype int64, not floating point; a ViT's weights all are (a damaged or edited file?)"
    )


def test_wrong_shapes_are_refused_naming_the_tensor(tmp_path):
    state = hf_state()
    fc1 = dict(state, **{"encoder.layer.1.mlp.fc1.weight": torch.zeros(48, 32)})
    path = save(fc1, tmp_path / "fc1.safetensors")
    assert refusal(path, img_size=28, num_heads=2) == (
        f"{path}: encoder.layer.1.mlp.fc1.weight: shape (48, 32), but the architecture read from the checkpoint "
        "(2 layers, width 32, MLP 128) needs (128, 32)"
    )
    q, k, v = qkv(state, 1, "weight")
    path = save(dict(state, **{k: torch.zeros(16, 32)}), tmp_path / "key.safetensors")
    assert refusal(path, img_size=28, num_heads=2) == (
        f"{path}: query/key/value weights of layer 1 differ in shape: {q} (32, 32), {k} (16, 32), {v} (32, 32)"
    )
    key = "embeddings.patch_embeddings.projection.weight"
    path = save(dict(state, **{key: state[key].flatten(1)}), tmp_path / "flat.safetensors")
    assert refusal(path, img_size=28, num_heads=2) == f"{path}: {key}: shape (32, 588), expected 4 dimensions"


def test_nonfinite_weights_are_refused_at_load_and_inspect_warns(tmp_path, capsys):
    state = hf_state(prefix="dinov2.")
    _, k, _ = qkv(state, 1, "weight")
    state[k].view(-1)[[3, 5, 7]] = float("nan")
    state["dinov2.encoder.layer.1.mlp.fc2.bias"][0] = float("inf")
    path = save(state, tmp_path / "nan.safetensors")
    assert list(state).index(k) < list(state).index("dinov2.encoder.layer.1.mlp.fc2.bias")  # the first bad one
    assert refusal(path, img_size=28, num_heads=2) == (
        f"{path}: weights contain NaN or inf: 3 of the 1,024 values of {k} and 1 more tensor(s); {BROKEN}"
    )
    assert load_vit(path, img_size=28, num_heads=2, allow_nonfinite=True).vit_nonfinite == [k, "dinov2.encoder.layer.1.mlp.fc2.bias"]
    assert main(["inspect", "--ckpt", str(path), "--vit-heads", "2"]) == 0
    out = capsys.readouterr().out
    assert f"WARNING: NaN or inf in 2 weight tensor(s), first {k}: the checkpoint is broken and extract refuses it" in out
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (56, 56), (120, 30, 200)).save(images / "a.png")
    run = ["extract", "--ckpt", str(path), "--vit-heads", "2", "--vit-size", "28", "--images", str(images), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(run) == 2
    assert not (tmp_path / "run" / "metrics.csv").exists()
    assert capsys.readouterr().err.strip().splitlines() == [f"nlanalysis extract: error: {refusal(path, img_size=28, num_heads=2)}"]


def test_a_timm_training_checkpoint_with_its_args_reads_as_a_vit(tmp_path):
    """timm's train.py (and DINO, iBOT) save ``args``, an argparse.Namespace, beside the weights: placeholders, as the
    NL/GC loader does (it was sent to the ResNet loader: 'unknown layout: no ResNet backbone found')."""
    import argparse

    import timm

    from nlanalysis.checkpoints.vit.models import vit_checkpoint_layout

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32).eval()
    path = tmp_path / "checkpoint-3.pth.tar"
    torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": model.state_dict(),
                "args": argparse.Namespace(lr=5e-4, model="vit_tiny_patch16_224")}, path)  # fmt: skip
    assert vit_checkpoint_layout(path) == "timm"
    loaded = load_vit(path, img_size=32)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.forward_head(model.forward_features(x), pre_logits=True), rtol=1e-4, atol=1e-5)


def test_a_distilled_deit_is_refused_by_name(tmp_path):
    import timm

    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=1, img_size=32)
    torch.save(model.state_dict(), tmp_path / "deit.pth")
    with pytest.raises(CheckpointError, match=r"deit\.pth: a distilled DeiT \(dist_token"):
        load_vit(tmp_path / "deit.pth")
