"""A Hugging Face model folder whose weights name is a broken symbolic link is refused naming the link and its target
(as its config files are), not reported as a folder with no weights in it, and not read from a weights file further
down the list in its place."""
from __future__ import annotations

import pytest
import torch

from extract_inputs import tiny_hf_vit
from nlanalysis.checkpoints import CheckpointError
from nlanalysis.checkpoints.vit.models import load_vit
from nlanalysis.cli import main

pytest.importorskip("transformers")
pytest.importorskip("timm")


@pytest.fixture
def folder(tmp_path):
    """A tiny Hugging Face ViT folder whose model.safetensors is a link to a file that is gone."""
    tiny_hf_vit(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.rename(tmp_path / "moved.safetensors")
    weights.symlink_to(tmp_path / "gone.safetensors")
    return tmp_path / "hf"


def test_a_broken_weights_link_is_named(folder, tmp_path, capsys):
    said = f"{folder / 'model.safetensors'}: is a broken symbolic link (to '{tmp_path / 'gone.safetensors'}')"
    with pytest.raises(CheckpointError, match="broken symbolic link") as info:
        load_vit(folder, img_size=28)
    assert str(info.value).startswith(said)
    assert main(["inspect", "--ckpt", str(folder)]) == 2
    err = capsys.readouterr().err
    assert said in err and "no model.safetensors" not in err
    assert main(["extract", "--ckpt", str(folder), "--photos", "grace_hopper", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_broken_weights_link_is_not_replaced_by_the_next_name(folder, tmp_path):
    """pytorch_model.bin beside the broken model.safetensors: the folder's first weights are gone, and are said to be."""
    torch.save(load_vit(tmp_path / "moved.safetensors", img_size=28, num_heads=2).state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="model.safetensors: is a broken symbolic link"):
        load_vit(folder, img_size=28)
