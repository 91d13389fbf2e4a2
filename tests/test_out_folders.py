"""``--out`` of ``extract``, ``merge``, ``demo`` and ``report`` where a file stands (or one on the way to it): said in
words in one line naming it, before any work, never as a bare errno (``[Errno 17] File exists``)."""
import pytest

from extract_inputs import cli_error, images_extract_args, one_thread, photos_and_checkpoint
from nlanalysis.files import require_folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny checkpoint, one photo, a run of them, and a file ``afile``."""
    from nlanalysis.cli import main

    root, ckpt = photos_and_checkpoint(tmp_path_factory.mktemp("out_folders"), 1)
    with one_thread():
        assert main(images_extract_args(root, ckpt, root / "run")) == 0
    (root / "afile").write_text("mine\n")
    return root, ckpt


@pytest.mark.parametrize("out", ["afile", "afile/run"])
def test_extract_out_on_a_file_says_so(made, capsys, out):
    root, ckpt = made
    err = cli_error(capsys, images_extract_args(root, ckpt, root / out))
    where = "a file, not a folder" if out == "afile" else f"{root / 'afile'} is a file, not a folder"
    assert err.endswith(f"--out {root / out}: {where}; give a folder for the result set"), err
    assert (root / "afile").read_text() == "mine\n"


def test_merge_out_on_a_file_says_so(made, capsys):
    root, _ = made
    err = cli_error(capsys, ["merge", str(root / "run"), "--out", str(root / "afile")], "merge")
    assert err.endswith(f"--out {root / 'afile'}: a file, not a folder; give a folder for the merged run"), err


def test_demo_out_on_a_file_says_so_before_it_extracts(made, capsys, monkeypatch):
    import nlanalysis.demo

    def no_work(*args, **kwargs):
        raise AssertionError("the demo started extracting")

    monkeypatch.setattr(nlanalysis.demo, "run_extract", no_work)
    root, _ = made
    for out, where in ((root / "afile", "a file, not a folder"), (root / "afile" / "demo", f"{root / 'afile'} is a file")):
        err = cli_error(capsys, ["demo", "--out", str(out), "--scenes", "1", "--quiet"], "demo")
        assert f"--out {out}: {where}" in err, err


def test_report_out_below_a_file_says_so(made, capsys):
    root, _ = made
    err = cli_error(capsys, ["report", str(root / "run"), "--out", str(root / "afile" / "rep")], "report")
    assert err.endswith(f"--out {root / 'afile' / 'rep'}: {root / 'afile'} is a file, not a folder; give a folder for the report")


def test_require_folder_names_other_kinds_and_takes_new_folders(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="pipe: a named pipe, not a folder; give a folder for X"):
        require_folder(tmp_path / "pipe", "X")
    with pytest.raises(ValueError, match=r"gone/a: .*gone is a broken symbolic link \(to .*\), not a folder"):
        require_folder(tmp_path / "gone" / "a", "X")
    assert require_folder(tmp_path / "new" / "deeper", "X") == tmp_path / "new" / "deeper"
    assert require_folder(tmp_path, "X") == tmp_path
