"""A report into an existing folder swaps only its own files: the folder stays (inode, mode), a user's entry never moves,
a second report at once is refused, and a report killed at any step leaves nothing of the user's elsewhere and is
ended by the next one (:mod:`nlanalysis.report.staging`)."""
import json
import os
import stat

import pytest

from nlanalysis.report.staging import HOLDER, MANIFEST
from test_report_out import _report, _tree

FIRST = {"index.md": "# 1\n", "index.html": "<p>1</p>\n", "figures/a.png": "a", "figures/b.png": "b", "tables/t.csv": "1\n",
         "explore/run.html": "page"}  # fmt: skip
SECOND = {"index.md": "# 2\n", "index.html": "<p>2</p>\n", "figures/a.png": "a2", "figures/c.png": "c", "tables/t.csv": "2\n"}
MINE = {"make.sh": b"echo mine\n", "figures/fig1_mine.pdf": b"%PDF mine", "tables/my.csv": b"m\n"}


def _with_mine(out):
    _report(out, FIRST)
    for rel, data in MINE.items():
        (out / rel).write_bytes(data)


def _expect(out, files):
    tree = _tree(out)
    listed = json.loads(tree.pop(MANIFEST))
    assert tree == {**{k: v.encode() for k, v in files.items()}, **MINE}
    assert listed["files"] == sorted(files)


def test_a_users_site_folder_without_the_list_is_no_report_and_loses_nothing(tmp_path):
    """index.md and index.html without a report's head (a user's docs): the collision is refused, nothing replaced."""
    docs = tmp_path / "docs"
    (docs / "figures").mkdir(parents=True)
    (docs / "index.md").write_text("# My notes\n![logo](figures/logo.png)\n")
    (docs / "index.html").write_text('<html><img src="figures/logo.png"></html>\n')
    (docs / "figures" / "logo.png").write_text("MY LOGO")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=f"{docs / 'figures' / 'logo.png'} was not written by a report"):
        _report(docs, {"index.md": "# r\n", "index.html": "<p>r</p>\n", "figures/logo.png": "png"})
    assert _tree(tmp_path) == before and os.listdir(tmp_path) == ["docs"]


def test_a_second_report_into_the_folder_meanwhile_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "rep"
    _with_mine(out)
    before = _tree(out)
    lock = tmp_path / ".rep.report.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a report at work
        with pytest.raises(ValueError, match=f"another report is being written into it now \\({lock} is locked\\)"):
            _report(out, SECOND)
    assert _tree(out) == before
    lock.unlink()
    _report(out, SECOND)  # the lock let go: the report goes on
    _expect(out, SECOND)
    assert sorted(os.listdir(tmp_path)) == ["rep"]


def test_the_folder_itself_stays_its_inode_mode_and_an_open_handle(tmp_path):
    out = tmp_path / "rep"
    _with_mine(out)
    os.chmod(out, 0o700)
    ino, fd = os.stat(out).st_ino, os.open(out, os.O_RDONLY)
    try:
        _report(out, SECOND)
        assert os.stat(out).st_ino == ino and stat.S_IMODE(os.stat(out).st_mode) == 0o700
        assert "index.md" in os.listdir(fd) and os.fstat(fd).st_ino == ino  # a process working in it keeps it
    finally:
        os.close(fd)
    _expect(out, SECOND)
    assert not (out / "explore").exists()  # emptied of the last report's page, made by it: gone


def test_empty_folders_of_the_user_stay(tmp_path):
    out = tmp_path / "rep"
    _report(out, FIRST)
    for rel in ("figures/drafts", "tables/mine", "explore/old"):
        (out / rel).mkdir()
    _report(out, SECOND)
    assert all((out / rel).is_dir() for rel in ("figures/drafts", "tables/mine", "explore/old"))


@pytest.mark.parametrize("entry", ["folder", "other json", "broken"])
def test_an_entry_at_the_lists_name_that_is_no_list_is_refused_by_name(tmp_path, entry):
    out = tmp_path / "rep"
    _report(out, FIRST)
    (out / MANIFEST).unlink()
    if entry == "folder":
        (out / MANIFEST).mkdir()
        (out / MANIFEST / "mine.txt").write_text("mine")
    else:
        (out / MANIFEST).write_text('{"files": ["x"]}' if entry == "other json" else "{not json")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=f"{out / MANIFEST} is not the list of files a report wrote"):
        _report(out, SECOND)
    assert _tree(tmp_path) == before


def test_a_listed_file_changed_since_is_kept_and_a_report_over_it_refused(tmp_path):
    out = tmp_path / "rep"
    _report(out, FIRST)
    (out / "tables" / "t.csv").write_text("my edit\n")  # the report writes it again: refused
    with pytest.raises(ValueError, match=f"{out / 'tables' / 't.csv'} was changed since the last report wrote it"):
        _report(out, SECOND)
    assert (out / "tables" / "t.csv").read_text() == "my edit\n" and (out / "index.md").read_text() == "# 1\n"
    (out / "tables" / "t.csv").unlink()
    (out / "figures" / "b.png").write_text("my b")  # the report does not write it again: kept, not the report's now
    _report(out, SECOND)
    assert (out / "figures" / "b.png").read_text() == "my b"
    assert "figures/b.png" not in json.loads((out / MANIFEST).read_text())["files"]


def test_a_list_naming_files_elsewhere_touches_none_of_them(tmp_path):
    out = tmp_path / "rep"
    _report(out, FIRST)
    (tmp_path / "victim.txt").write_text("precious")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "v.txt").write_text("precious")
    (out / "figures" / "link").symlink_to(tmp_path / "outside")
    listed = json.loads((out / MANIFEST).read_text())
    listed["files"] += ["../victim.txt", str(tmp_path / "victim.txt"), "figures/link/v.txt", "..", "figures/../../victim.txt"]
    (out / MANIFEST).write_text(json.dumps(listed))
    _report(out, SECOND)
    assert (tmp_path / "victim.txt").read_text() == "precious" and (tmp_path / "outside" / "v.txt").read_text() == "precious"


def test_leftovers_of_an_earlier_versions_stopped_report_are_named_and_kept(tmp_path, capsys):
    out = tmp_path / "rep"
    _with_mine(out)
    left = tmp_path / ".rep.1234.0123abcd.tmp"
    left.mkdir()
    (left / "notes.txt").write_text("moved out by the old swap")
    _report(out, SECOND)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{left} was left by an earlier nlanalysis" in err[0] and "look in it (kept)" in err[0], err
    assert (left / "notes.txt").read_text() == "moved out by the old swap"


def _moves():
    """The renames, links and replaces of one swap of FIRST (with MINE) for SECOND: how many steps a kill can follow."""
    return len(FIRST) + len(SECOND) + 3  # old files aside, new ones in, plan and list written (atomic_write: a replace)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a killed process is simulated by a forked one")
def test_a_report_killed_after_any_step_loses_nothing_and_the_next_one_ends_it(tmp_path, capsys):
    """A process killed (os._exit: no cleanup runs) after each rename/link/replace of the swap in turn: the user's files
    are at their places and nowhere else; the next report ends the stopped one in one line, and the folder is its
    report and the user's files, nothing hidden left in or beside it."""
    for step in range(1, _moves() + 1):
        base = tmp_path / str(step)
        out = base / "rep"
        _with_mine(out)
        pid = os.fork()
        if pid == 0:  # the report that is killed
            try:
                count = [0]

                def dies(real):
                    def call(*args, **kw):
                        real(*args, **kw)
                        count[0] += 1
                        if count[0] == step:
                            os._exit(9)
                    return call

                for name in ("rename", "link", "replace"):
                    setattr(os, name, dies(getattr(os, name)))
                _report(out, SECOND)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert {rel: (out / rel).read_bytes() for rel in MINE} == MINE, step
        elsewhere = [p for p in base.rglob("*") if p.is_file() and p.read_bytes() in MINE.values()
                     and p.relative_to(out).as_posix() not in MINE]  # fmt: skip
        assert not elsewhere, (step, elsewhere)
        capsys.readouterr()
        _report(out, SECOND)
        err = capsys.readouterr().err.strip().splitlines()
        if os.waitstatus_to_exitcode(status) == 9:
            assert len(err) == 1 and "stopped" in err[0], (step, err)
        _expect(out, SECOND)
        assert os.listdir(base) == ["rep"] and not (out / HOLDER).exists(), step
