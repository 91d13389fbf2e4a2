"""``report --out DIR``: the folder a report replaces. Nothing of a user's is lost: not by an ``--out`` that is the
current folder, not by a failure half-way through the swap, not inside the report's own ``figures/`` and ``tables/``;
only the files the last report listed (``.nlanalysis-report.json``) are replaced."""
import json
import os
from pathlib import Path

import pytest

from extract_inputs import copy_committed_run
from nlanalysis.cli import main
from nlanalysis.report import write_report
from nlanalysis.report.staging import MANIFEST, staged_folder

OWN = frozenset({"index.md", "index.html", "tables", "figures", "explore"})
DEMO_RUN = "reports/demo/runs/gc"
#: the head of a report's index.html (before the list, the only mark of a report's folder)
SIGNED = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>t</title>\n<style>body{font-family:system-ui,'
          'sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}</style></head><body>\n')


def _tree(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _report(out, files):
    """A stand-in report: ``files`` (``{relative path: text}``) written through :func:`staged_folder`."""
    with staged_folder(out, OWN) as work:
        for rel, text in files.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)


def _user_folder(root):
    paper = root / "paper"
    (paper / "src").mkdir(parents=True)
    (paper / "src" / "train.py").write_text("code\n")
    (paper / "README.md").write_text("notes\n")
    return paper


@pytest.mark.parametrize("given", [".", "./", "..", "../.."])
def test_the_current_folder_or_one_above_it_is_refused_before_anything_moves(tmp_path, monkeypatch, given):
    paper = _user_folder(tmp_path)
    monkeypatch.chdir(paper)
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=f"--out {given}: .*(current folder|above the current one)"):
        with staged_folder(given, OWN):
            raise AssertionError("the block ran")
    assert _tree(tmp_path) == before and sorted(os.listdir(paper)) == ["README.md", "src"]


def test_the_root_of_the_file_system_is_refused():
    with pytest.raises(ValueError, match="--out /: the root of the file system"):
        with staged_folder("/", OWN):
            raise AssertionError("the block ran")


def test_report_out_dot_says_so_and_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys):
    run = copy_committed_run(DEMO_RUN, tmp_path / "gc")
    paper = _user_folder(tmp_path)
    monkeypatch.chdir(paper)
    assert main(["report", str(run), "--out", ".", "--no-explore"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlanalysis report: error: --out .: the current folder"), err
    assert _tree(paper) == {"README.md": b"notes\n", "src/train.py": b"code\n"}
    assert sorted(os.listdir(tmp_path)) == ["gc", "paper"]


@pytest.mark.parametrize("failing", ["aside", "in", "list"])
def test_a_failure_during_the_swap_puts_every_moved_entry_back(tmp_path, monkeypatch, failing):
    """A move that fails late (the last report's files set aside, the new ones moved in, the new list written: a full
    disk, a busy mount) leaves the folder as it was, the user's files included, and nothing beside it."""
    out = tmp_path / "rep"
    _report(out, {"index.md": "# 1\n", "index.html": "<p>1</p>\n", "figures/a.png": "a"})
    (out / "make.sh").write_text("echo mine\n")
    (out / "figures" / "fig1_main_result.pdf").write_text("mine")
    before = _tree(tmp_path)
    name = {"aside": "rename", "in": "link", "list": "replace"}[failing]
    real, calls = getattr(os, name), []

    def fails(src, dst, **kw):  # the second call (a list: its first), into out
        if Path(dst).parent.is_relative_to(out) and ".nlanalysis-report.old" not in str(src):
            calls.append(dst)
            if len(calls) == (1 if failing == "list" else 2):
                raise OSError(28, "No space left on device", str(dst))
        return real(src, dst, **kw)

    monkeypatch.setattr(os, name, fails)
    with pytest.raises(OSError, match="No space left"):
        _report(out, {"index.md": "# 2\n", "index.html": "<p>2</p>\n", "figures/b.png": "b"})
    assert calls and _tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["rep"]


def test_where_putting_back_fails_too_the_error_says_where_the_files_are_and_the_next_report_ends_it(tmp_path, monkeypatch,
                                                                                                    capsys):  # fmt: skip
    out = tmp_path / "rep"
    _report(out, {"index.md": "# 1\n", "index.html": "<p>1</p>\n"})
    (out / "make.sh").write_text("echo mine\n")
    link, rename = os.link, os.rename

    def no_link(src, dst, **kw):
        if Path(dst).name == "index.md":
            raise OSError(28, "No space left on device", str(dst))
        link(src, dst, **kw)

    def no_rename_back(src, dst):
        if ".nlanalysis-report.old" in str(src):
            raise OSError(5, "Input/output error", str(dst))
        rename(src, dst)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "rename", no_rename_back)
    with pytest.raises(OSError, match=r"putting the earlier one back failed too .*: its files are in .*\.nlanalysis-report\.old; "
                                      "the next report into .* puts them back"):  # fmt: skip
        _report(out, {"index.md": "# 2\n", "index.html": "<p>2</p>\n"})
    assert (out / ".nlanalysis-report.old" / "files" / "index.md").read_text() == "# 1\n"
    assert (out / "make.sh").read_text() == "echo mine\n"  # never moved
    monkeypatch.undo()
    capsys.readouterr()
    _report(out, {"index.md": "# 3\n", "index.html": "<p>3</p>\n"})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a report stopped half-way was undone" in err[0], err
    tree = _tree(out)
    tree.pop(MANIFEST)
    assert tree == {"index.md": b"# 3\n", "index.html": b"<p>3</p>\n", "make.sh": b"echo mine\n"}
    assert sorted(os.listdir(tmp_path)) == ["rep"]


def test_a_rereport_replaces_only_what_the_last_report_listed(tmp_path):
    out = tmp_path / "rep"
    _report(out, {"index.md": "# 1\n", "index.html": "<p>1</p>\n", "figures/a.png": "a", "tables/t.csv": "x\n1\n",
                  "explore/run.html": "page"})  # fmt: skip
    assert json.loads((out / MANIFEST).read_text())["files"] == ["explore/run.html", "figures/a.png", "index.html",
                                                                  "index.md", "tables/t.csv"]  # fmt: skip
    mine = {"figures/fig1_main_result.pdf": b"mine", "tables/my_table.csv": b"a\n2\n", "figures/drafts/d.png": b"d",
            "explore/notes.txt": b"n", "make.sh": b"echo\n"}  # fmt: skip
    for rel, data in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    _report(out, {"index.md": "# 2\n", "index.html": "<p>2</p>\n", "figures/b.png": "b", "tables/t.csv": "x\n2\n"})
    new = {"index.md": b"# 2\n", "index.html": b"<p>2</p>\n", "figures/b.png": b"b", "tables/t.csv": b"x\n2\n"}
    tree = _tree(out)
    listed = json.loads(tree.pop(MANIFEST))["files"]
    assert tree == {**new, **mine} and listed == sorted(new)  # a.png and run.html (the last report's) are gone


def test_a_user_file_the_new_report_would_write_over_is_refused_by_name(tmp_path):
    out = tmp_path / "rep"
    _report(out, {"index.md": "# 1\n", "index.html": "<p>1</p>\n", "figures/a.png": "a"})
    (out / "figures" / "x.png").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=f"--out {out}: {out / 'figures' / 'x.png'} was not written by a report; move it"):
        _report(out, {"index.md": "# 2\n", "index.html": "<p>2</p>\n", "figures/x.png": "x"})
    assert _tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["rep"]


def test_a_folder_that_is_no_report_keeps_its_index_md(tmp_path):
    """Without a list, only a report's folder (``index.md`` and ``index.html``) has files a report may replace."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "index.md").write_text("my notes\n")
    with pytest.raises(ValueError, match="index.md was not written by a report"):
        _report(out, {"index.md": "# 1\n", "index.html": "<p>1</p>\n"})
    assert _tree(tmp_path) == {"notes/index.md": b"my notes\n"}


def test_a_report_made_before_the_list_is_replaced_as_before_and_other_files_kept(tmp_path):
    """Without a list, a report folder (its ``index.html`` has a report's head) has files: those its pages link
    (``linked.png``: gone though the new report has no such figure) and those the new report writes; a file neither names (``old.png``) is kept."""
    out = tmp_path / "rep"
    for rel, text in {"index.md": "# 0\n![a](figures/linked.png)\n", "index.html": SIGNED + '<p><img src="figures/linked.png"></p>\n',
                      "figures/a.png": "a0", "figures/linked.png": "l", "figures/old.png": "o",
                      "tables/t.csv": "x\n0\n"}.items():  # fmt: skip
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    _report(out, {"index.md": "# 1\n", "index.html": "<p>1</p>\n", "figures/a.png": "a1", "tables/t.csv": "x\n1\n"})
    tree = _tree(out)
    tree.pop(MANIFEST)
    assert tree == {"index.md": b"# 1\n", "index.html": b"<p>1</p>\n", "figures/a.png": b"a1", "figures/old.png": b"o",
                    "tables/t.csv": b"x\n1\n"}  # fmt: skip


def test_reporting_twice_into_a_folder_gives_the_same_report_and_keeps_the_users_files(tmp_path):
    run = copy_committed_run(DEMO_RUN, tmp_path / "gc")
    out = tmp_path / "rep"
    write_report([run], out, formats=("png",), explore=None)
    first = _tree(out)
    mine = {"figures/fig1_main_result.pdf": b"%PDF mine", "tables/my_table.csv": b"a\n1\n"}
    for rel, data in mine.items():
        (out / rel).write_bytes(data)
    write_report([run], out, formats=("png",), explore=None)
    assert _tree(out) == {**first, **mine}
    assert sorted(os.listdir(tmp_path)) == ["gc", "rep"]


def test_vit_report_refuses_the_current_folder_before_it_extracts(tmp_path, monkeypatch):
    from nlanalysis.report.vit import write_vit_report

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--out .: the current folder"):
        write_vit_report(".", tmp_path / "no-such-vit.pth", formats=("png",))
    assert os.listdir(tmp_path) == []  # no run/, no photos/
