"""``vit-report --model CHECKPOINT`` takes extract's ViT flags (``--vit-heads``, ``--vit-mean`` / ``--vit-std``,
``--vit-keys``: the same definitions, not copies) and forwards them to the run; its index says what was assumed where
``run.json`` records it (a head count guessed from the width, ImageNet normalisation)."""
from __future__ import annotations

import json

import pytest
import torch

from nlanalysis.cli import build_parser, main
from nlanalysis.extract import load_run

timm_vit = pytest.importorskip("timm.models.vision_transformer")
PHOTOS = ["--photos", "grace_hopper", "astronaut", "--size", "28", "--formats", "png"]


def subparser(name: str):
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices[name]


def test_vit_report_has_extracts_vit_flags():
    report, extract = subparser("vit-report")._option_string_actions, subparser("extract")._option_string_actions
    for flag in ("--vit-heads", "--vit-mean", "--vit-std", "--vit-keys"):
        mine, theirs = report[flag], extract[flag]
        assert (mine.type, mine.nargs, mine.choices, mine.help) == (theirs.type, theirs.nargs, theirs.choices, theirs.help), flag


@pytest.mark.filterwarnings("ignore:.*assumed head_dim 64:UserWarning")  # the guess warns, as it should
def test_the_flags_reach_the_run_and_the_index_says_what_was_assumed(tmp_path):
    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=192, depth=1, num_heads=6, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    assert main(["vit-report", "--model", str(tmp_path / "vit.pth"), *PHOTOS, "--out", str(tmp_path / "guessed")]) == 0
    index = (tmp_path / "guessed" / "index.md").read_text()
    assert "1 layers x 3 heads (heads assumed 64-wide" in index and "`--vit-heads` states it" in index
    assert "ImageNet mean/std, assumed: the checkpoint does not state its input normalisation" in index
    assert main(["vit-report", "--model", str(tmp_path / "vit.pth"), *PHOTOS, "--out", str(tmp_path / "told"), "--vit-heads", "6",
                 "--vit-mean", "0.5", "0.5", "0.5", "--vit-std", "0.5", "0.5", "0.5", "--vit-keys", "all"]) == 0  # fmt: skip
    run = load_run(tmp_path / "told" / "run")
    assert (run.metrics["num_heads"] == 6).all() and set(run.metrics["keys"]) == {"all"}
    info = json.loads((tmp_path / "told" / "run" / "run.json").read_text())
    assert info["checkpoint"]["spec"]["heads_from"].startswith("caller") and info["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    index = (tmp_path / "told" / "index.md").read_text()
    assert "1 layers x 6 heads;" in index and "mean [0.5, 0.5, 0.5] / std [0.5, 0.5, 0.5] of x / 255, given" in index
    assert "assumed" not in index.split("**Statistics**")[0]
