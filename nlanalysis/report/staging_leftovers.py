"""What a report swap stopped half-way leaves, and how the next report ends it (:mod:`.staging` writes it).

A swap first writes its plan (:data:`PLAN`) into :data:`HOLDER` inside the report folder, then moves the last
report's files into the holder, the new ones in, and writes the new list last. Found later (the process was killed, the
power went), the holder is undone: where the folder's list is the plan's new one, the swap had finished and the holder
(the last report's files only) goes; else the new files that came in go and the last report's come back. A user's
file is in neither: it never moves.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

__all__ = ["HOLDER", "PLAN", "hashed", "recover", "undo"]

#: the folder, inside the report folder, holding the last report's files while a new one is swapped in
HOLDER = ".nlanalysis-report.old"
#: the swap's plan, in :data:`HOLDER`: the temporary folder, the new files (sha256), the old ones, the folders made
PLAN = "plan.json"


def hashed(path: Path) -> str | None:
    """The sha256 of a file's bytes (of a symbolic link: of its target, marked so); ``None``: no file there."""
    try:
        if path.is_symlink():
            return hashlib.sha256(b"symlink:" + os.fsencode(os.readlink(path))).hexdigest()
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def recover(out: Path, manifest: str) -> list[str]:
    """End what a stopped report left in and beside ``out`` (under the report lock); one line for each thing done or
    kept. A holder that cannot be ended: a ValueError saying where its files are."""
    lines = []
    holder = out / HOLDER
    if os.path.lexists(holder):
        try:
            done = undo(out, manifest)
        except OSError as err:
            raise ValueError(f"--out {out}: {holder} holds an earlier report's files from a report that stopped half-way, "
                             f"and they cannot be put back ({err}); put them back by hand and remove it") from None  # fmt: skip
        lines.append(f"{out}: a report stopped half-way was {done}")
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(report\.)?\d+\.[0-9a-f]{{8}}\.(tmp|old)")
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(out.parent), key=lambda e: e.name):
            found = pattern.fullmatch(entry.name)
            if not found or not entry.is_dir(follow_symlinks=False):
                continue
            if found.group(1):  # ours: the new report's files only, none of the user's
                shutil.rmtree(entry.path, ignore_errors=True)
                lines.append(f"{out}: removed {entry.path}, the unfinished files of a report that stopped")
            else:
                lines.append(f"{out}: {entry.path} was left by an earlier nlanalysis whose report stopped half-way; it "
                             "may hold files of yours moved out of the folder: look in it (kept)")  # fmt: skip
    return lines


def undo(out: Path, manifest: str) -> str:
    """End the swap whose plan is in ``out``'s holder: finish it where ``out``'s list is the new one, else put the last
    report's files back and remove the new ones; the folders it made and emptied go, then the holder and the
    temporary folder. Returns what was done, in words; an OSError where a file could not be put back (kept)."""
    holder = out / HOLDER
    if not os.path.lexists(holder):
        return "nothing to undo"
    try:
        plan = json.loads((holder / PLAN).read_text(encoding="utf-8"))
        work, new, old, made = plan["work"], plan["new"], plan["old"], plan["made"]
    except (OSError, ValueError, KeyError, TypeError):  # stopped before its plan was whole: nothing had moved
        if any(p.name != PLAN and not p.name.startswith(f".{PLAN}.") for p in holder.rglob("*") if not p.is_dir()):
            raise OSError(f"{holder} holds files but no readable plan") from None
        shutil.rmtree(holder)
        return "undone (nothing had moved)"
    finished = hashed(out / manifest) == plan["manifest"]
    if not finished:
        for rel, sha in new.items():
            place = out / rel
            if (rel not in old or os.path.lexists(holder / "files" / rel)) and hashed(place) == sha:
                place.unlink()  # a new file that came in
        kept = []
        for rel in old:
            src = holder / "files" / rel
            if os.path.lexists(src):
                if os.path.lexists(out / rel):
                    kept.append(rel)
                    continue
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.rename(src, out / rel)
        if kept:
            raise OSError(f"{', '.join(kept)}: taken in {out} meanwhile; the earlier report's are in {holder / 'files'}")
    gone = {str(Path(rel).parent) for rel in old} if finished else set()
    for rel in sorted({*made, *gone, *(p for rel in gone for p in _parents(rel))}, key=lambda r: -r.count("/")):
        with contextlib.suppress(OSError):  # not empty: a file of the user's or of the report is in it
            if rel != "." and not (out / rel).is_symlink():
                os.rmdir(out / rel)
    shutil.rmtree(holder)
    shutil.rmtree(out.parent / work, ignore_errors=True)  # the new report's files only
    return "finished: the earlier report's files it had set aside are removed" if finished else \
        "undone: the earlier report's files are back, the new ones it had moved in removed"


def _parents(rel: str) -> list[str]:
    """The folders on the way to ``rel`` (``a/b/c``: ``a``, ``a/b``)."""
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
