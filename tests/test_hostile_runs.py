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
