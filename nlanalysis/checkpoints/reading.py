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

import functools
import json
import os
import pickle
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..files import broken_link
from .config import _kind
from .errors import CheckpointError

__all__ = ["Placeholder", "check_checkpoint_file", "names_damaged_file", "read_checkpoint_file"]

_PICKLE_PROTOCOL_BYTE = 0x80
#: the weights files of a Hugging Face-style model folder, in the order they are looked for.
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.pth")
_F = TypeVar("_F", bound=Callable[..., Any])


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
        link = broken_link(path)
        raise CheckpointError(path, f"is {link}, not a checkpoint file" if link else "no such file")
    if path.is_dir():
        raise _folder_error(path)
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # a FIFO, a device: its size is 0 ("empty file"), and opening a FIFO waits for a writer
        raise CheckpointError(path, f"not a regular file ({_kind(mode)}), not a checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "empty file, not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        _check_zip(path, size)
        return
    if head[0] != _PICKLE_PROTOCOL_BYTE:
        raise CheckpointError(
            path, "not a PyTorch checkpoint (neither torch.save's zip format nor a legacy pickle)"
        )


def _check_zip(path: Path, size: int) -> None:
    """A zip checkpoint whose every record matches the CRC-32 ``torch.save`` wrote (torch.load
    checks none: a flipped byte in a tensor would load as a wrong weight)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
        raise CheckpointError(path, f"truncated or corrupt checkpoint (broken zip archive, {size} bytes: {err})") from err
    except Exception as err:  # noqa: BLE001  (zipfile raises odd types on damaged headers, e.g. zlib.error)
        raise CheckpointError(path, f"truncated or corrupt checkpoint (broken zip archive: {type(err).__name__}: {err})") from err
    if bad is not None:
        raise CheckpointError(path, f"truncated or corrupt checkpoint (record {bad!r} fails its CRC-32 check: the file changed after it was written)")


def folder_weights(folder: Path) -> Path | None:
    """The weights file of a model folder: the first of :data:`FOLDER_WEIGHTS` that is a regular file (``None``: none is).
    A broken symbolic link under a name before it is refused, naming it (the folder's weights are gone, not absent: as
    for its ``config.json``)."""
    for name in FOLDER_WEIGHTS:
        entry = folder / name
        if entry.is_file():
            return entry
        link = broken_link(entry)
        if link is not None:
            raise CheckpointError(entry, f"is {link}, not a regular file; the model folder's {name} cannot be read")
    return None


def _folder_error(path: Path) -> CheckpointError:
    """Why a folder given as a checkpoint is refused: say what the folder is and what is wrong with it
    (the ViT reader took it for no ViT, or it would have been read as one)."""
    kind = "a Hugging Face model folder" if (path / "config.json").is_file() else "a folder"
    try:
        weights = folder_weights(path)
    except CheckpointError as err:  # a broken link under a weights name: named, not "none in it"
        return err
    there = next((path / name for name in FOLDER_WEIGHTS if (path / name).exists()), None)
    if weights is None and there is not None:  # a folder or a FIFO under a weights name: not "none in it"
        return CheckpointError(path, f"{kind} whose {there.name} is {_kind(there.stat().st_mode)}, not a regular file")
    if weights is None:
        return CheckpointError(path, f"{kind}, not a checkpoint file (no {' / '.join(FOLDER_WEIGHTS)} in it)")
    if weights.suffix == ".safetensors":
        return CheckpointError(path, f"{kind} whose {weights.name} holds no ViT in a known layout (Hugging Face Dinov2/ViT or timm)")
    try:
        _load_safely(weights)
    except pickle.UnpicklingError as err:
        return CheckpointError(
            path,
            f"{kind} whose {weights.name} is refused in safe mode: unpickling it would run code ({_first_line(err)}). "
            "Model folders are only read safely (--trust-checkpoint is for single checkpoint files); "
            f"if you trust its origin, save its state dict as {FOLDER_WEIGHTS[0]}",
        )
    except Exception as err:  # noqa: BLE001  (any failure of the safe load: the file is damaged)
        return CheckpointError(path, f"{kind} whose {weights.name} is truncated or corrupt ({_first_line(err)})")
    return CheckpointError(path, f"{kind} whose {weights.name} holds no ViT in a known layout (Hugging Face Dinov2/ViT or timm)")


def _load_safely(path: Path, mmap: bool = False) -> tuple[Any, list[str]]:
    """``torch.load(weights_only=True)`` with the file's unknown globals mapped to placeholders (``mmap``: tensors mapped,
    not read; zip files only)."""
    placeholders: list[str] = []
    if zipfile.is_zipfile(path):
        placeholders = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))))
    mapped = [(_placeholder(name), name) for name in placeholders]
    with torch.serialization.safe_globals(mapped):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), placeholders


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
    try:
        return _load_safely(path)
    except pickle.UnpicklingError as err:
        if not trust:
            raise CheckpointError(
                path,
                f"the safe loader refused it ({_first_line(err)}); if you trust this file's origin, "
                "pass --trust-checkpoint (unpickling can run code)",
            ) from err
    except Exception as err:  # noqa: BLE001  (the safe unpickler runs nothing of the file's: a failure is damage)
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({_describe(err)})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False), []
    except Exception as err:  # noqa: BLE001  (trusted load: any failure is "corrupt")
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({_describe(err)})") from err


def check_checkpoint_file(path: str | os.PathLike[str]) -> None:
    """Raise the :class:`CheckpointError` that :func:`read_checkpoint_file` would for a missing, non-regular, empty, truncated
    or corrupt file (or a folder, saying what is wrong with it), without keeping what it reads; a file the safe loader
    refuses because unpickling it would run code is no damage and passes (``--trust-checkpoint`` decides about it).
    What a caller asks first where another refusal (an option of another kind of model) would hide why the file cannot
    be read."""
    path = Path(path)
    _check_file(path)
    try:
        _load_safely(path, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        return
    except Exception as err:  # noqa: BLE001  (the safe unpickler runs nothing of the file's: a failure is damage)
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({_describe(err)})") from err


def _describe(err: BaseException) -> str:
    """The first line of an error, with its type when the message alone says little."""
    line = _first_line(err)
    return line if isinstance(err, (RuntimeError, EOFError, zipfile.BadZipFile, OSError)) else f"{type(err).__name__}: {line}"


def _first_line(err: BaseException, limit: int | None = 200) -> str:
    """The telling first line of an error (one naming a pickle GLOBAL first), cut to ``limit`` characters."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    telling = [line for line in lines if "GLOBAL" in line or "global" in line]
    return ((telling or lines or [type(err).__name__])[0])[:limit]


def names_damaged_file(func: _F) -> _F:
    """Decorate a reader whose first argument is a checkpoint path (a file or a Hugging Face folder):
    errors of a damaged file (a safetensors header, ``config.json``) become a :class:`CheckpointError`
    naming that file instead of a traceback, and so do ``ValueError`` messages that do not name it."""

    @functools.wraps(func)
    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(path, *args, **kwargs)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            where = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
            raise CheckpointError(where, f"not valid JSON text ({err})") from err
        except ValueError as err:  # the ViT converter's errors do not always name the file
            if (isinstance(err, CheckpointError) and err.path) or str(err).startswith(str(path)):
                raise
            # the project's own messages are whole (detect_layout's sample of keys); others' first line is cut
            raise CheckpointError(path, _first_line(err, None if isinstance(err, CheckpointError) else 200)) from err
        except Exception as err:
            if type(err).__module__.split(".")[0] != "safetensors" and type(err).__name__ != "SafetensorError":
                raise
            where = Path(path) / FOLDER_WEIGHTS[0] if Path(path).is_dir() else Path(path)
            raise CheckpointError(where, f"truncated or corrupt safetensors file ({_first_line(err)})") from err

    return wrapper  # type: ignore[return-value]
