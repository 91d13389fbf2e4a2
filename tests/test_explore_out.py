"""``nlanalysis explore RUN --out PAGE``: a page is written to a new ``.html`` name or over an explore page, never over
another file (the run's own ``metrics.csv``, say); refused in one line naming the file, before any work."""
import os

import pytest

from extract_inputs import cli_error, images_extract_args, one_thread, photos_and_checkpoint
from nlanalysis.explore import Explorer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from nlanalysis.cli import main

    root, ckpt = photos_and_checkpoint(tmp_path_factory.mktemp("explore_out"), 1)
    with one_thread():
        assert main(images_extract_args(root, ckpt, root / "run", "--save-maps", "all")) == 0
    return root / "run"


def test_a_runs_own_file_is_refused_and_left_as_it_was(run, capsys):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for name in ("metrics.csv", "run.json"):
        err = cli_error(capsys, ["explore", str(run), "--out", str(run / name)], "explore")
        assert f"{run / name}: an explore page is an .html file" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_an_html_file_explore_did_not_write_is_refused_its_own_page_is_replaced(run, tmp_path, capsys):
    from nlanalysis.cli import main

    mine = tmp_path / "paper.html"
    mine.write_text("<!DOCTYPE html>\n<html><body>my paper</body></html>\n")
    err = cli_error(capsys, ["explore", str(run), "--out", str(mine)], "explore")
    assert f"{mine}: a file that nlanalysis explore did not write (not an explore page)" in err
    assert mine.read_text() == "<!DOCTYPE html>\n<html><body>my paper</body></html>\n"
    page = tmp_path / "page.html"
    assert main(["explore", str(run), "--out", str(page)]) == 0
    first = page.read_bytes()
    page.write_bytes(first[:-100])  # an older page of the run: explore's own, replaced
    assert main(["explore", str(run), "--out", str(page)]) == 0 and page.read_bytes() == first
    assert main(["explore", str(run)]) == 0 and main(["explore", str(run)]) == 0  # the default RUN/explore.html, again
    assert (run / "explore.html").read_bytes() == first


def test_save_refuses_what_is_no_page_before_writing(tmp_path):
    page = Explorer(None, {"run": "r", "images": [], "sites": []})
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(ValueError, match="notes.txt: an explore page is an .html file"):
        page.save(tmp_path / "notes.txt")
    os.mkfifo(tmp_path / "pipe.html")
    with pytest.raises(ValueError, match="pipe.html: a named pipe, not an explore page"):
        page.save(tmp_path / "pipe.html")  # not opened: that would wait for a writer
    (tmp_path / "gone.html").symlink_to(tmp_path / "nowhere.html")
    with pytest.raises(ValueError, match="gone.html: a broken symbolic link"):
        page.save(tmp_path / "gone.html")
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and sorted(os.listdir(tmp_path)) == ["gone.html", "notes.txt",
                                                                                                "pipe.html"]  # fmt: skip
