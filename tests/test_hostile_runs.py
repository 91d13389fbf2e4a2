"""Careless and hostile input to result sets (issue 14): no lost file, no aborted run, no silent wrong number."""
import json

import pytest

from extract_inputs import one_thread, tiny_checkpoint, write_coco, write_photos
from nlanalysis.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    photos = write_photos(root / "images", n=3, max_side=96)
    write_coco(root / "ann.json", photos)
    return root, tiny_checkpoint(root / "tiny.pth")


def _args(data, out, *extra):
    root, ckpt = data
    return ["extract", "--ckpt", str(ckpt), "--images", str(root / "images"), "--out", str(out), "--jsd-pairs", "16", "--quiet", *extra]


def _error(capsys, args, command="extract"):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nlanalysis {command}: error: "), err
    return err[0]


# -- 1. no lost data -----------------------------------------------------------------------------


def test_extract_refuses_a_folder_with_files_it_did_not_write(data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("my,own\n1,2\n")
    line = _error(capsys, _args(data, out))
    assert f"--out {out} is not empty and not a result set of `nlanalysis extract` (it holds metrics.csv, but no run.json)" in line
    assert (out / "metrics.csv").read_text() == "my,own\n1,2\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]  # nothing created beside it


def test_extract_refuses_a_foreign_run_json(data, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": "someone-else", "settings": {}}))
    assert "its run.json is not one `nlanalysis extract` wrote" in _error(capsys, _args(data, out))
    (out / "run.json").write_text("{not json")
    assert f"{out / 'run.json'}: not valid JSON" in _error(capsys, _args(data, out))


def test_extract_writes_into_an_empty_folder_and_resumes_its_own(data, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(_args(data, out)) == 0
    first = (out / "metrics.csv").read_text()
    assert main(_args(data, out)) == 0  # its own result set: resumed, nothing redone
    assert (out / "metrics.csv").read_text() == first and len(first.splitlines()) == 1 + 3 * 2


# -- 2. every per-image failure is a failures.csv row ---------------------------------------------


def test_any_error_of_one_image_is_its_failure_row(data, tmp_path, monkeypatch, capsys):
    import nlanalysis.extract.runner as runner

    real_load, real_queries = runner.load_image, runner.select_queries

    def load(path):
        if str(path).endswith("photo_001.jpg"):
            raise KeyError("a reader bug")
        return real_load(path)

    calls = []

    def queries(*args):
        calls.append(1)
        if len(calls) == 1:  # the first image (photo_000) only
            raise IndexError("query bug")
        return real_queries(*args)

    monkeypatch.setattr(runner, "load_image", load)
    monkeypatch.setattr(runner, "select_queries", queries)
    out = tmp_path / "r"
    assert main(_args(data, out, "--save-maps", "--queries", "grid:2")) == 1
    import pandas as pd

    failures = pd.read_csv(out / "failures.csv").set_index("image_id")["reason"]
    root = data[0] / "images"
    assert failures.to_dict() == {
        "photo_000.jpg": f"{root / 'photo_000.jpg'}: queries: IndexError: query bug",
        "photo_001.jpg": f"{root / 'photo_001.jpg'}: KeyError: 'a reader bug'",
    }
    assert pd.read_csv(out / "metrics.csv")["image_id"].unique().tolist() == ["photo_002.jpg"]


def test_a_decompression_bomb_fails_alone(data, tmp_path, monkeypatch):
    import pandas as pd
    from PIL import Image

    images = tmp_path / "images"
    write_photos(images, n=2, max_side=96)
    Image.new("RGB", (400, 400), (90, 120, 30)).save(images / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 400 x 400 is over twice this: PIL refuses it as a bomb
    out = tmp_path / "r"
    args = ["extract", "--ckpt", str(data[1]), "--images", str(images), "--out", str(out), "--jsd-pairs", "0", "--quiet"]
    assert main(args) == 1
    failures = pd.read_csv(out / "failures.csv")
    assert failures["image_id"].tolist() == ["bomb.png"] and str(images / "bomb.png") in failures["reason"][0]
    assert pd.read_csv(out / "metrics.csv")["image_id"].unique().tolist() == ["photo_000.jpg", "photo_001.jpg"]
    assert main(args) == 1  # a rerun retries it, and fails it again, without aborting


def test_coco_string_image_ids_make_a_whole_run(data, tmp_path):
    import pandas as pd

    from nlanalysis.extract import load_run

    root, ckpt = data
    coco = json.loads((root / "ann.json").read_text())
    names = {im["id"]: f"img-{im['id']}" for im in coco["images"]}
    for im in coco["images"]:
        im["id"] = names[im["id"]]
    for ann in coco["annotations"]:
        ann["image_id"] = names[ann["image_id"]]
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "r"
    assert main(["extract", "--ckpt", str(ckpt), "--coco-ann", str(tmp_path / "ann.json"), "--coco-images", str(root / "images"),
                 "--out", str(out), "--jsd-pairs", "0", "--quiet"]) == 0  # fmt: skip
    assert pd.read_csv(out / "metrics.csv")["image_id"].unique().tolist() == ["img-1", "img-2", "img-3"]
    run = load_run(out)
    assert run.complete and run.info["settings"]["selection"]["id_type"] == "str"
    assert run.metrics["image_id"].unique().tolist() == ["img-1", "img-2", "img-3"]
