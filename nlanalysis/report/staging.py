"""Write a report folder whole or not at all: build it beside its place, put it on the disk, then rename it in.

What a report wrote is listed in its folder (:data:`MANIFEST`): the next report into that folder removes only those
files; every other file, inside the report's own folders or beside them, is kept, and no step that moves a user's
file can lose it: a failure puts every moved entry back.
"""
from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..files import atomic_write, fsync_folder, fsync_tree, require_folder

__all__ = ["MANIFEST", "report_folder", "staged_folder"]

#: the list of the files a report wrote (relative POSIX paths), in the report folder
MANIFEST = ".nlanalysis-report.json"


def report_folder(out: str | os.PathLike[str]) -> Path:
    """``out`` as the absolute, resolved folder a report replaces (a symbolic link: the folder it names), or a
    ValueError saying why it cannot be one: a file (:func:`~nlanalysis.files.require_folder`), the root of the file
    system, the current folder or one above it."""
    require_folder(out, "the report")  # it, or a folder on the way to it, is a file: said in words
    try:
        path = Path(out).resolve()
    except (OSError, RuntimeError) as err:  # a loop of symbolic links
        raise ValueError(f"--out {out}: {err}") from None
    if path.parent == path:
        raise ValueError(f"--out {out}: the root of the file system; give a folder of the report's own")
    with contextlib.suppress(OSError):  # no current folder (deleted): nothing to compare with
        cwd = Path.cwd().resolve()
        if path == cwd or path in cwd.parents:
            where = "the current folder" if path == cwd else f"a folder above the current one ({cwd})"
            raise ValueError(f"--out {out}: {where}; the report replaces its folder: give a folder of its own, e.g. "
                             f"{Path(out) / 'report'}")  # fmt: skip
    return path


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str], own: frozenset[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block succeeds it becomes ``out``.

    ``own``: the top-level names the writer makes (``index.md``, ``tables``, ...). An existing ``out`` is replaced only
    when the block succeeds (:func:`_carry_plan` says what of it is kept): a file in an ``own`` entry goes when the last
    report listed it (:data:`MANIFEST`), or, in a report folder without the list (made before it, holding
    ``index.md`` and ``index.html``), when its pages link it or the new report writes its name; any other file is kept
    at its place, and a kept file the new report would write over is refused, naming it, before ``out`` is touched.
    Entries outside ``own`` (a user's ``make.sh``, a ViT report's ``run``) are kept whole. When the block or the swap
    fails, ``out`` is left as it was. ``out`` is resolved first (:func:`report_folder`): where it is a symbolic link, the folder it
    names is replaced. The new folder's files reach the disk before the rename, the rename after it: a power loss
    leaves no empty file in it.
    """
    out = report_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    work.mkdir()
    try:
        yield work
        written = _files(work)
        with atomic_write(work / MANIFEST, encoding="utf-8") as f:
            f.write(json.dumps({"written_by": "nlanalysis report", "files": written}, indent=1) + "\n")
        fsync_tree(work)  # what the writer made: on the disk before a rename shows it
        moves = _carry_plan(out, work, own | {MANIFEST}, set(written)) if out.is_dir() else []
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # the writer's files only: nothing of out is in it yet
        raise
    _swap(out, work, moves)


def _files(folder: Path, prefix: str = "") -> list[str]:
    """Every entry under ``folder`` that is not a folder (symbolic links included, not followed), as sorted relative
    POSIX paths."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        found += _files(Path(entry.path), f"{rel}/") if entry.is_dir(follow_symlinks=False) else [rel]
    return found


def _listed(out: Path) -> set[str] | None:
    """The files the report in ``out`` wrote: its :data:`MANIFEST`'s list; without one, ``None``."""
    try:
        files = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else None


def _linked(out: Path) -> set[str]:
    """The relative paths ``out/index.md`` and ``out/index.html`` link (a report's figures, tables and explore pages)."""
    found = set()
    for name, pattern in (("index.md", r"\]\(([^)\s]+)\)"), ("index.html", r'(?:href|src)="([^"]+)"')):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            links = re.findall(pattern, (out / name).read_text(encoding="utf-8"))
            found |= {html.unescape(link).split("#")[0].removeprefix("./") for link in links}
    return found


def _carry_plan(out: Path, work: Path, own: frozenset[str], written: set[str]) -> list[tuple[Path, Path]]:
    """The ``(entry of out, its place in work)`` moves that keep what is not the last report's: every top-level entry
    outside ``own`` whole, and every file inside an ``own`` entry but those the last report listed (without a list: in
    a report folder, those its pages link and those the new report writes). A ValueError names a kept file whose place
    the new report took."""
    listed = _listed(out)
    if listed is None and (out / "index.md").is_file() and (out / "index.html").is_file():
        listed = written | _linked(out)  # a report made before the list: what its pages link, and what the new one writes
    moves = []
    for entry in sorted(os.scandir(out), key=lambda e: e.name):
        if entry.name == MANIFEST:
            continue
        if entry.name not in own:
            keep = [entry.name]
        elif entry.is_dir(follow_symlinks=False):
            keep = [rel for rel in _files(Path(entry.path), f"{entry.name}/") if rel not in (listed or set())]
        else:
            keep = [] if entry.name in (listed or set()) else [entry.name]
        for rel in keep:
            if _taken(work, rel):
                raise ValueError(f"--out {out}: {out / rel} was not written by a report; move it or choose another folder")
            moves.append((out / rel, work / rel))
    return moves


def _taken(work: Path, rel: str) -> bool:
    """Whether the new report wrote ``rel`` or a file where one of its folders would go."""
    parts = rel.split("/")
    if os.path.lexists(work.joinpath(*parts)):
        return True
    return any(os.path.lexists(work.joinpath(*parts[:i])) and not work.joinpath(*parts[:i]).is_dir() for i in range(1, len(parts)))


def _swap(out: Path, work: Path, moves: list[tuple[Path, Path]]) -> None:
    """Move the kept entries of ``out`` into ``work``, ``out`` aside and ``work`` onto it; on any failure, put back
    what was moved (a folder that may hold a user's file is never removed)."""
    old = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
    done: list[tuple[Path, Path]] = []
    aside = False
    try:
        for src, dst in moves:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            done.append((src, dst))
        for folder in sorted({dst.parent for _, dst in moves}):
            fsync_folder(folder)  # the entries moved in
        if out.is_dir():
            os.replace(out, old)
            aside = True
        os.replace(work, out)
    except BaseException as err:
        _put_back(out, work, old if aside else None, done, err)
        raise
    fsync_folder(out.parent)
    if aside:
        shutil.rmtree(old, ignore_errors=True)  # the last report's files only: every other one was moved out of it


def _put_back(out: Path, work: Path, old: Path | None, done: list[tuple[Path, Path]], err: BaseException) -> None:
    """Undo :func:`_swap`'s moves after ``err``; where that fails too, say where the entries are and remove nothing."""
    try:
        if old is not None:
            os.replace(old, out)
        for src, dst in reversed(done):
            os.replace(dst, src)
    except OSError as undo:
        raise OSError(f"--out {out}: writing the report failed ({err}) and putting its folder back failed too ({undo}): "
                      f"its entries are in {old or out} and {work}") from err  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)  # the writer's files only, now
