"""Write a report into its folder without touching anything of the user's: build it beside the folder, then, holding
a lock, swap only the report's own files inside it.

What a report wrote is listed in its folder (:data:`MANIFEST`: relative paths and their sha256): the next report into
that folder replaces only those files, and only while they are as the report wrote them. The folder itself stays (its
inode, mode and owner; a process working in it keeps it), a user's entry never moves, and a new file never lands on
one: a collision is refused, naming the file, before anything moves. A report stopped half-way (killed, a power loss)
leaves the earlier report's files in :data:`HOLDER` and a plan of the swap; the next report puts them back (or, where
the new list was already written, finishes) and says so in one line.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import html
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..files import atomic_write, fsync_folder, fsync_tree, require_folder
from .staging_leftovers import HOLDER, PLAN, hashed, recover, undo

try:
    import fcntl
except ImportError:  # not POSIX: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = ["HOLDER", "MANIFEST", "report_folder", "staged_folder"]

#: the list of the files a report wrote (relative POSIX paths, and their sha256), in the report folder
MANIFEST = ".nlanalysis-report.json"

#: the head of ``index.html`` as every report wrote it before :data:`MANIFEST` (``pages._CSS``'s first line): a folder
#: without the list whose ``index.html`` starts so is an earlier report; any other folder without it is a user's
_SIGNATURE = "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}"

#: the link errors after which a file is moved in by a rename instead (a file system without hard links)
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS})


def report_folder(out: str | os.PathLike[str]) -> Path:
    """``out`` as the absolute, resolved folder a report writes (a symbolic link: the folder it names), or a
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
            raise ValueError(f"--out {out}: {where}; the report writes its files into its folder: give a folder of its own, e.g. "
                             f"{Path(out) / 'report'}")  # fmt: skip
    return path


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str], own: frozenset[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; when the block succeeds, its files become the report in ``out``.

    ``own``: the top-level names the writer makes (``index.md``, ``tables``, ...); only files under them are ever a
    report's. A new ``out`` is the temporary folder renamed. In an existing ``out`` the files the last report listed
    (:data:`MANIFEST`) and that are as it wrote them go; the new ones come in; every other entry stays where it is. A
    folder without the list is an earlier report only where its ``index.html`` carries the report's head
    (:data:`_SIGNATURE`; then its files are those its pages link and those the new report writes); else it is a
    user's and nothing of it is replaced. A new file whose place holds a file that is not the last report's (or one
    changed since), or an entry at :data:`MANIFEST` that is no list of a report's, is refused by name before anything
    moves. Everything runs under an exclusive ``flock`` (``.NAME.report.lock`` beside ``out``): a second report into
    ``out`` meanwhile is refused. When the block or the swap fails, ``out`` is left as it was.
    """
    out = report_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        for line in recover(out, MANIFEST):
            print(f"nlanalysis report: {line}", file=sys.stderr)
        work = out.parent / f".{out.name}.report.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        work.mkdir()
        try:
            yield work
            written = {rel: hashed(work / rel) for rel in _files(work)}
            text = json.dumps({"written_by": "nlanalysis report", "files": sorted(written), "sha256": written}, indent=1) + "\n"
            if not out.is_dir():
                with atomic_write(work / MANIFEST, encoding="utf-8") as f:
                    f.write(text)
                fsync_tree(work)  # what the writer made: on the disk before a rename shows it
                os.rename(work, out)
                fsync_folder(out.parent)
                return
            fsync_tree(work)
            old = _plan(out, own, written)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # the writer's files only: nothing of out is in it
            raise
        _swap(out, work, written, old, text)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.report.lock`` beside ``out`` (removed at the end); a held one: a
    ValueError. Where there is no flock (not POSIX, a file system without locks) it says so and goes on unlocked."""
    lock = out.parent / f".{out.name}.report.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no flock on this platform")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"--out {out}: another report is being written into it now ({lock} is locked); wait for it "
                             "to end, or choose another folder") from None  # fmt: skip
        except OSError as err:
            print(f"nlanalysis report: {lock}: cannot lock it ({err}); two reports into {out} at once are not kept apart",
                  file=sys.stderr)  # fmt: skip
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:  # not one an ending report removed meanwhile
                break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while locked: a report waiting on this one's file retries on a new one
        os.close(fd)


def _files(folder: Path, prefix: str = "") -> list[str]:
    """Every entry under ``folder`` that is not a folder (symbolic links included, not followed), as sorted relative
    POSIX paths."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        found += _files(Path(entry.path), f"{rel}/") if entry.is_dir(follow_symlinks=False) else [rel]
    return found


def _folders(folder: Path, prefix: str = "") -> list[str]:
    """Every folder under ``folder`` (not through a symbolic link), parents first, as relative POSIX paths."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            found += [f"{prefix}{entry.name}", *_folders(Path(entry.path), f"{prefix}{entry.name}/")]
    return found


def _listed(out: Path, own: frozenset[str], written: dict[str, str]) -> dict[str, str | None]:
    """The files of the last report in ``out`` (relative path: its recorded sha256, ``None`` where none is recorded),
    from its :data:`MANIFEST`; without one, those of an earlier report's folder (:data:`_SIGNATURE`), or none. An entry
    at :data:`MANIFEST` that is no such list: a ValueError naming it."""
    path = out / MANIFEST
    if os.path.lexists(path):
        try:
            if path.is_symlink() or not path.is_file():
                raise ValueError
            data = json.loads(path.read_text(encoding="utf-8"))
            files, sums = data["files"], data.get("sha256", {})
            if data.get("written_by") != "nlanalysis report" or not isinstance(files, list) or not isinstance(sums, dict):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"--out {out}: {path} is not the list of files a report wrote; a report writes its list "
                             "there: move it or choose another folder") from None  # fmt: skip
        listed = {f: sums.get(f) if isinstance(sums.get(f), str) else None for f in files if isinstance(f, str)}
    elif _signed(out):  # a report made before the list: what its pages link, and what the new one writes
        listed = dict.fromkeys({"index.md", "index.html", *_linked(out), *written})
    else:
        return {}
    return {rel: sha for rel, sha in listed.items() if _inside(rel, own)}


def _signed(out: Path) -> bool:
    """Whether ``out/index.html`` is a report's (:data:`_SIGNATURE` in its head)."""
    try:
        with open(out / "index.html", encoding="utf-8", errors="replace") as f:
            return _SIGNATURE in f.read(4096)
    except OSError:
        return False


def _inside(rel: str, own: frozenset[str]) -> bool:
    """Whether ``rel`` is a plain relative path under one of ``own`` (no ``..``, not absolute, not the list)."""
    parts = rel.split("/")
    return bool(rel) and parts[0] in own and all(p not in ("", ".", "..") for p in parts) and "\\" not in rel


def _linked(out: Path) -> set[str]:
    """The relative paths ``out/index.md`` and ``out/index.html`` link (a report's figures, tables and explore pages)."""
    found = set()
    for name, pattern in (("index.md", r"\]\(([^)\s]+)\)"), ("index.html", r'(?:href|src)="([^"]+)"')):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            links = re.findall(pattern, (out / name).read_text(encoding="utf-8"))
            found |= {html.unescape(link).split("#")[0].removeprefix("./") for link in links}
    return found


def _plan(out: Path, own: frozenset[str], written: dict[str, str]) -> list[str]:
    """The files of ``out`` that are the last report's as it wrote them (they go); a ValueError names the first new file
    whose place (or a folder on the way to it) holds anything else."""
    listed, old = _listed(out, own, written), []
    changed = set(listed) if os.path.lexists(out / MANIFEST) else set()  # listed, kept: said to be changed since
    for rel, sha in sorted(listed.items()):
        if _plain(out, rel) and os.path.lexists(out / rel) and not (out / rel).is_dir():
            if sha is None or hashed(out / rel) == sha:
                old.append(rel)
    going = set(old)
    for rel in sorted(written):
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            here, sub = out.joinpath(*parts[:i]), "/".join(parts[:i])
            if not os.path.lexists(here) or sub in going or (i < len(parts) and here.is_dir() and not here.is_symlink()):
                continue
            if i == len(parts) and here.is_dir() and not here.is_symlink():
                why = "is a folder of yours where the report writes a file"
            elif sub in changed:
                why = "was changed since the last report wrote it; the report would write over it"
            else:
                why = "was not written by a report"
            raise ValueError(f"--out {out}: {here} {why}; move it or choose another folder")
    return old


def _plain(out: Path, rel: str) -> bool:
    """Whether every folder on the way to ``out/rel`` is a real folder (no symbolic link to elsewhere)."""
    parts = rel.split("/")
    return all(out.joinpath(*parts[:i]).is_dir() and not out.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts)))


def _swap(out: Path, work: Path, written: dict[str, str], old: list[str], text: str) -> None:
    """Move the last report's files ``old`` into :data:`HOLDER`, the new ones in, write the list last; then remove the
    holder and the report's emptied folders. The plan is on the disk first: a failure here is undone at once, a stop
    by the next report (:func:`~.staging_leftovers.recover`)."""
    holder = out / HOLDER
    made = [d for d in _folders(work) if not os.path.lexists(out / d)]
    plan = {"work": work.name, "new": written, "old": old, "made": made,
            "manifest": hashlib.sha256(text.encode()).hexdigest()}  # fmt: skip
    try:
        holder.mkdir()
        with atomic_write(holder / PLAN, encoding="utf-8") as f:
            f.write(json.dumps(plan, indent=1) + "\n")
        for rel in old:
            (holder / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(out / rel, holder / "files" / rel)
        for rel in made:
            (out / rel).mkdir(exist_ok=True)
        for rel in sorted(written):
            _move_in(work / rel, out / rel)
        for folder in sorted({(out / rel).parent for rel in [*old, *written]}):
            fsync_folder(folder)
        with atomic_write(out / MANIFEST, encoding="utf-8") as f:
            f.write(text)
    except BaseException as err:
        try:
            undo(out, MANIFEST)
        except OSError as failed:
            raise OSError(f"--out {out}: writing the report failed ({err}) and putting the earlier one back failed too "
                          f"({failed}): its files are in {holder}; the next report into {out} puts them back") from err  # fmt: skip
        raise
    undo(out, MANIFEST)  # the list is the new one: this finishes (holder, emptied folders and work go)


def _move_in(src: Path, dst: Path) -> None:
    """Move a new file onto ``dst``, never over an entry there (a hard link, then the name removed; a rename after a
    look where the file system has no hard links)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise ValueError(f"{dst} appeared while the report was moved in; it was not written by a report: move it") from None
    except OSError as err:
        if err.errno not in _NO_LINKS:
            raise
        if os.path.lexists(dst):
            raise ValueError(f"{dst} appeared while the report was moved in; it was not written by a report: move it") from None
        os.rename(src, dst)
        return
    os.unlink(src)
