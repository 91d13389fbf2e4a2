"""Files on disk: what stands under a name that is not a regular file, in words (the readers of images, checkpoints,
configs and result sets name it in their errors, and never open it: opening a named pipe waits for a writer; a
broken symbolic link reads as no file at all, so the readers for which an absent file means something ask
:func:`broken_link` before taking it for absent), and the one atomic, durable write every writer of the package
goes through (:func:`atomic_write`)."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "broken_link", "file_kind", "fsync_folder", "fsync_tree", "require_folder"]

_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))  # fmt: skip


def file_kind(mode: int, folder: str = "a directory") -> str:
    """What a ``st_mode`` that is not a regular file's is (``folder``: the word for a directory)."""
    if stat.S_ISDIR(mode):
        return folder
    return next((name for test, name in _KINDS if test(mode)), "no regular file")


def broken_link(path: str | os.PathLike[str]) -> str | None:
    """``"a broken symbolic link (to 'TARGET')"`` where ``path`` is a symbolic link whose target (or a link on the way to
    it) is gone, else ``None`` (a file, a missing name, or a link loop: opening that fails with its own error)."""
    try:
        target = os.readlink(path)
    except (OSError, ValueError):  # not a link, missing, or not a usable name
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"a broken symbolic link (to {target!r})"
    except OSError:
        return None
    return None


def require_folder(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` (an ``--out``) where it is a folder or can be made one; else a ValueError in words: it, or a folder on
    the way to it, is a file, a broken link or another kind of entry (what ``mkdir`` would say as an errno)."""
    path = Path(path)
    for place in (path, *path.parents):
        try:
            mode = os.stat(place).st_mode
        except FileNotFoundError:
            link = broken_link(place)
            if link is None:
                continue
            kind = link
        except NotADirectoryError:  # a file further up: found on the way
            continue
        else:
            if stat.S_ISDIR(mode):
                return path
            kind = "a file" if stat.S_ISREG(mode) else file_kind(mode)
        where = f"{kind}, not a folder" if place == path else f"{place} is {kind}, not a folder"
        raise ValueError(f"--out {path}: {where}; give a folder for {what}")
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = None, unique: bool = False,
                 sync: bool = True) -> Iterator[IO[Any]]:  # fmt: skip
    """Open a temporary file beside ``path`` (``.NAME.PID.tmp``); when the block succeeds, put it on the disk (flush,
    ``fsync``), rename it onto ``path`` and put the rename on the disk (``fsync`` of the folder, :func:`fsync_folder`).

    A process killed at any point, or a power loss, leaves ``path`` as it was or whole, never empty or cut short (a rename
    that reaches the disk before the file's bytes would); the temporary file goes when the block fails. ``unique``: a
    name no other writer shares (``.NAME.PID.RANDOM.tmp``, created exclusively), for writers in threads of one process.
    ``sync=False``: no ``fsync`` (the file stays atomic against a killed process, not a power loss), for files whose
    reader checks them (an extract part against its recorded sha256) where two ``fsync`` calls a file would cost more.
    An OSError that names no file (e.g. "No space left on device" from a write) is raised again naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{f'.{uuid.uuid4().hex[:8]}' if unique else ''}.tmp")
    try:
        with open(tmp, mode.replace("w", "x") if unique else mode, encoding=encoding) as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync:
            fsync_folder(path.parent)
    except OSError as err:
        named = _naming(err, path, tmp)
        if named is err:
            raise
        raise named from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _naming(err: OSError, path: Path, tmp: Path) -> OSError:
    """``err`` as it should reach the user: naming ``path`` where it named the hidden temporary file or nothing (a
    full disk's write error), unchanged where it names another file."""
    if err.filename is not None and Path(err.filename) != tmp:
        return err
    if err.errno is None:
        return type(err)(f"{err} (writing {path})")
    if err.filename is not None:  # the temporary file: the user knows the name written, not the hidden one
        return type(err)(err.errno, err.strerror, str(path))
    return type(err)(err.errno, f"{err.strerror or err} (writing {path})")


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Put a folder's entries (a file renamed into it) on the disk; nothing where the platform cannot open a folder
    (Windows) or the file system cannot sync one."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _NO_FOLDER_SYNC:
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike[str]) -> None:
    """Put a folder's regular files and folders, all the way down, on the disk (before a rename shows it whole)."""
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_folder(root)


#: what ``fsync`` of a folder raises on a file system that cannot sync one
_NO_FOLDER_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM})
