"""What stands under a file name that is not a regular file, in words: the readers of images, checkpoints, configs
and result sets name it in their errors (and never open it: opening a named pipe waits for a writer)."""
from __future__ import annotations

import stat

__all__ = ["file_kind"]

_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))  # fmt: skip


def file_kind(mode: int, folder: str = "a directory") -> str:
    """What a ``st_mode`` that is not a regular file's is (``folder``: the word for a directory)."""
    if stat.S_ISDIR(mode):
        return folder
    return next((name for test, name in _KINDS if test(mode)), "no regular file")
