"""A shipped photo whose package is not installed (scikit-learn's ``china`` and ``flower``) is refused in one line naming
the photo and the package to install (``extract``, ``vit-report``), not a ModuleNotFoundError traceback; the listing of
an unknown name says which photos need which package; with no names given, such photos are skipped as before."""
from __future__ import annotations

import sys

import pytest
import torch

from nlanalysis.checkpoints.vit._deps import MissingExtraError
from nlanalysis.cli import main
from nlanalysis.extract.sources import photo_images

timm_vit = pytest.importorskip("timm.models.vision_transformer")


@pytest.fixture
def no_sklearn(monkeypatch):
    for name in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, installed or not


def test_a_photo_whose_package_is_missing_names_it(no_sklearn):
    with pytest.raises(MissingExtraError, match=r"the photo 'china' ships in the scikit-learn package, which is not installed.*pip install scikit-learn"):
        photo_images(("china",))
    assert "china" not in [it.image_id for it in photo_images()]  # none named: every one installed, as before
    with pytest.raises(ValueError, match=r"unknown photo; the shipped photos are .*china, flower \(need scikit-learn\)"):
        photo_images(("nope",))


def test_the_commands_refuse_it_in_one_line(no_sklearn, tmp_path, capsys):
    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    for command in (["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-heads", "2", "--vit-size", "28", "--photos", "china"],
                    ["vit-report", "--model", str(tmp_path / "vit.pth"), "--vit-heads", "2", "--size", "28", "--photos", "flower"]):  # fmt: skip
        assert main([*command, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "ships in the scikit-learn package" in err and "pip install scikit-learn" in err
