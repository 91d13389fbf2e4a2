"""What stands under a file name that is not a regular file, in words: the readers of images, checkpoints, configs
and result sets name it in their errors (and never open it: opening a named pipe waits for a writer). A broken
symbolic link reads as no file at all: the readers for which an absent file means something (defaults, none) ask
:func:`broken_link` before taking it for absent."""
from __future__ import annotations

import os
import stat

__all__ = ["broken_link", "file_kind"]

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
