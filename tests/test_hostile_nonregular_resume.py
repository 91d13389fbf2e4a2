"""Resuming into a result set (and reading its saved maps) where a directory or a named pipe stands under a file's name: one
error naming the file and saying the result set is damaged, before any work, nothing removed and no pipe opened. It was a
bare ``[Errno 21] Is a directory`` (a part, metrics.csv, failures.csv, a maps file), a pipe part or maps file redone as
"missing", a pipe or directory in checks/ read as a run written before checks (without a word), and saved maps "gone"."""
import os
import shutil

import pytest

from extract_inputs import images_extract_args, photos_and_checkpoint
from nlanalysis.cli import main
from test_hostile_nonregular import unopened

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return photos_and_checkpoint(tmp_path_factory.mktemp("nonregular_resume"), n=3)


def _args(data, out):
    return images_extract_args(*data, out, "--save-maps")


@pytest.fixture(scope="module")
def done(data):
    """A complete run with saved maps and checks."""
    out = data[0] / "done"
    assert main(_args(data, out)) == 0
    return out


def _odd(done, tmp_path, name, kind):
    """A copy of ``done`` with a directory or a named pipe where its file ``name`` (``KEY``: its second image's) was."""
    run = shutil.copytree(done, tmp_path / "run")
    key = sorted(p.stem for p in (run / "parts").glob("*.csv"))[1]
    path = run / name.replace("KEY", key)
    path.unlink()
    (os.mkdir if kind == "directory" else os.mkfifo)(path)
    return run, path


def _files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock" and "shards" not in p.parts}


@pytest.mark.parametrize("kind", ["directory", "named pipe"])
@pytest.mark.parametrize("name", ["parts/KEY.csv", "checks/KEY.json", "maps/KEY.npz", "metrics.csv", "failures.csv", "images.csv",
                                  "unchecked parts/KEY.csv", "unchecked maps/KEY.npz"])  # fmt: skip
def test_resume_into_a_run_with_a_directory_or_a_fifo_for_a_file_names_it(data, done, tmp_path, capsys, name, kind):
    run, path = _odd(done, tmp_path, name.removeprefix("unchecked "), kind)
    if name.startswith("unchecked"):  # written before checks were recorded: the part and maps are read to check them
        shutil.rmtree(run / "checks")
    before = _files(run)
    capsys.readouterr()
    if kind == "named pipe":
        assert unopened(path, main, _args(data, run)) is None  # (it returns 2; a read of the pipe fails the test, not hangs it)
    else:
        assert main(_args(data, run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nlanalysis extract: error: {path}: is a {kind}, not a regular file; the result set is damaged"]
    assert path.is_dir() if kind == "directory" else (path.exists() and not path.is_file())  # left for the user to see
    assert _files(run) == before  # nothing redone, removed or assembled


@pytest.mark.parametrize("kind", ["directory", "named pipe"])
def test_saved_maps_that_are_a_directory_or_a_fifo_are_named_not_gone(done, tmp_path, capsys, kind):
    from nlanalysis.extract import load_run

    run, path = _odd(done, tmp_path, "maps/KEY.npz", kind)
    expected = f"{path}: is a {kind}, not a regular file; the result set is damaged"
    err = unopened(path, load_run, run)
    assert isinstance(err, ValueError) and str(err) == expected  # was: maps[id] -> KeyError "... (its maps file is gone)"
    capsys.readouterr()
    assert unopened(path, main, ["explore", str(run), "--out", str(tmp_path / "page.html")]) is None
    assert capsys.readouterr().err.strip().splitlines() == [f"nlanalysis explore: error: {expected}"]  # was: a note, "missing"
    assert not (tmp_path / "page.html").exists()
