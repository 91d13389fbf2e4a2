"""Write a report folder whole or not at all: build it beside its place, put it on the disk, then rename it in."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..files import fsync_folder, fsync_tree

__all__ = ["staged_folder"]


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str], own: frozenset[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block succeeds it becomes ``out``.

    An existing ``out`` is replaced only then: its entries named in ``own`` (what the writer
    makes, e.g. ``index.md``, ``tables``) are dropped with it, any other entry (a user's
    ``make.sh``) is moved into the new folder first. When the block fails, ``out`` is left as it
    was and the temporary folder is removed. Where ``out`` is a symbolic link, the folder it names is replaced. The new
    folder's files reach the disk before the rename, the rename after it: a power loss leaves no empty file in it.
    """
    out = Path(out)
    if out.is_symlink():  # the folder it links to is replaced; the link stays (os.replace would move the link itself)
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, not a folder; give a folder for the report")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.{os.getpid()}.tmp"
    old = out.parent / f".{out.name}.{os.getpid()}.old"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        fsync_tree(work)  # what the writer made: on the disk before a rename shows it
        if out.is_dir():
            for entry in out.iterdir():
                if entry.name not in own and not (work / entry.name).exists():
                    os.replace(entry, work / entry.name)
            fsync_folder(work)  # the entries moved in
            os.replace(out, old)
        os.replace(work, out)
        fsync_folder(out.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
