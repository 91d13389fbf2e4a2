"""A ViT-only option (``--vit-heads`` ...) on a ``--ckpt`` that no ViT reader claims -- a missing, truncated or corrupt
file, a folder without weights -- is refused for what is wrong with the file, not as an option of another kind of
model: the options are refused only for a checkpoint that reads (an NL/GC one)."""
from __future__ import annotations

import pickle

import pytest
import torch

from extract_inputs import tiny_checkpoint
from nlanalysis.checkpoints import CheckpointError
from nlanalysis.cli import main
from nlanalysis.extract import load_analysis

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def damaged(tmp_path):
    """``{name: (path, what its error says)}``: files the ViT readers do not claim, each with its own error."""
    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=4, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    data = (tmp_path / "vit.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2)[:-3])  # a legacy pickle cut short
    (tmp_path / "empty_folder").mkdir()
    return {
        "missing": (tmp_path / "nope.pth", "nope.pth: no such file"),
        "truncated zip": (tmp_path / "cut.pth", "cut.pth: truncated or corrupt checkpoint"),
        "truncated pickle": (tmp_path / "legacy.pth", "legacy.pth: truncated or corrupt checkpoint"),
        "folder": (tmp_path / "empty_folder", "empty_folder: a folder, not a checkpoint file"),
    }


def test_the_files_error_comes_before_the_options(tmp_path, capsys):
    for name, (path, said) in damaged(tmp_path).items():
        for options in ({"vit_heads": 3}, {"vit_size": 56, "vit_preprocess": "crop"}):
            with pytest.raises(CheckpointError, match=said):
                load_analysis(path, options=options)
        run = ["extract", "--ckpt", str(path), "--vit-heads", "3", "--photos", "grace_hopper", "--out", str(tmp_path / "run"), "--quiet"]
        assert main(run) == 2, name
        err = capsys.readouterr().err
        assert said in err and "options of ViTs" not in err, (name, err)
        assert main(["inspect", "--ckpt", str(path), "--vit-heads", "3"]) == 2
        err = capsys.readouterr().err
        assert said in err and "--vit-heads is for ViT checkpoints" not in err, (name, err)
    assert not (tmp_path / "run").exists()


def test_a_readable_nl_checkpoint_still_refuses_vit_options(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "nl.pth")
    with pytest.raises(ValueError, match="vit_heads: options of ViTs; .*nl.pth is of the kind nl-blocks"):
        load_analysis(ckpt, options={"vit_heads": 3})
    assert main(["inspect", "--ckpt", str(ckpt), "--vit-heads", "3"]) == 2
    assert "--vit-heads is for ViT checkpoints; this is an NL/GC checkpoint" in capsys.readouterr().err
