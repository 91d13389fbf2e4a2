"""Reading checkpoint files without running the code a pickle may carry.

``torch.save`` writes pickles, and unpickling can call any importable function. This module
always loads with ``torch.load(weights_only=True)``, torch's restricted unpickler. Real
checkpoints carry more than tensors: mmengine (``mmengine/runner/checkpoint.py``,
``Runner.save_checkpoint``) stores ``message_hub`` (a ``MessageHub`` state of
``mmengine.logging.HistoryBuffer`` objects holding numpy arrays), timm stores an
``argparse.Namespace``, and ``meta`` may hold numpy scalars and dtypes. Those globals are mapped
to :class:`Placeholder` subclasses registered with ``torch.serialization.safe_globals`` under
the checkpoint's own names: nothing is imported, nothing of theirs runs, and the placeholder
keeps the constructor arguments and state for display. Unrestricted unpickling happens only
with ``trust=True`` (the CLI's ``--trust-checkpoint``).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["Placeholder", "read_checkpoint_file"]

_PICKLE_PROTOCOL_BYTE = 0x80


class Placeholder:
    """Inert stand-in for an object of a class that was not imported.

    Attributes:
        qualified_name: ``module.Name`` of the original global (class attribute).
        args: positional arguments the pickle passed to it.
        state: the state the pickle set on it.
    """

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        inst = super().__new__(cls)
        inst.args = args
        inst.state = None
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualified_name}>"


def _placeholder(full_name: str) -> type[Placeholder]:
    module, _, name = full_name.rpartition(".")
    return type(name or full_name, (Placeholder,), {"qualified_name": full_name, "__module__": f"<placeholder {module}>"})


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "empty file, not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        if not zipfile.is_zipfile(path):
            raise CheckpointError(path, f"truncated or corrupt checkpoint (broken zip archive, {size} bytes)")
        return
    if head[0] != _PICKLE_PROTOCOL_BYTE:
        raise CheckpointError(
            path, "not a PyTorch checkpoint (neither torch.save's zip format nor a legacy pickle)"
        )


def read_checkpoint_file(path: str | os.PathLike[str], trust: bool = False) -> tuple[Any, list[str]]:
    """Load a ``torch.save`` file safely.

    Args:
        path: the file.
        trust: allow unrestricted unpickling (runs code from the file) when the safe load fails.

    Returns:
        ``(object, placeholders)``: the loaded object and the ``module.Name`` of every global
        replaced by a :class:`Placeholder`.

    Raises:
        CheckpointError: missing, empty, non-checkpoint, truncated or corrupt file, or a legacy
            pickle that needs code to run and ``trust`` is off.
    """
    path = Path(path)
    _check_file(path)
    placeholders: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            placeholders = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))))
        mapped = [(_placeholder(name), name) for name in placeholders]
        with torch.serialization.safe_globals(mapped):
            return torch.load(path, map_location="cpu", weights_only=True), placeholders
    except pickle.UnpicklingError as err:
        if not trust:
            raise CheckpointError(
                path,
                f"the safe loader refused it ({_first_line(err)}); if you trust this file's origin, "
                "pass --trust-checkpoint (unpickling can run code)",
            ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError) as err:
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({_first_line(err)})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False), []
    except Exception as err:  # noqa: BLE001  (trusted load: any failure is "corrupt")
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    telling = [line for line in lines if "GLOBAL" in line or "global" in line]
    return ((telling or lines or [type(err).__name__])[0])[:200]
