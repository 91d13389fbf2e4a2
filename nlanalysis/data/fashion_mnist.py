"""Fashion-MNIST (Xiao et al., arXiv 1708.07747) read from its IDX files with gzip + numpy.

The files come from the Debian package ``dataset-fashion-mnist`` (MIT licence, Zalando SE),
which installs them under ``/usr/share/datasets/fashion-mnist``::

    apt-get update && apt-get install -y dataset-fashion-mnist

Any folder holding the four IDX files (``.gz`` or uncompressed) works through ``source``. The
IDX format (LeCun's MNIST page): two zero bytes, a type code (``0x08`` = uint8, ...), the number
of dimensions, then one big-endian uint32 per dimension, then the data in C order.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["CLASS_NAMES", "DEFAULT_SOURCE", "FashionMNISTNotFound", "IdxFormatError", "load_fashion_mnist", "read_idx"]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
"""Fashion-MNIST label ``i`` is ``CLASS_NAMES[i]``."""

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class FashionMNISTNotFound(FileNotFoundError):
    """The IDX files of the requested split are not where they were looked for."""


class IdxFormatError(ValueError):
    """A file that is not a well-formed IDX file (message names it and what is wrong)."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) as a native-endian array of its declared shape.

    Raises:
        IdxFormatError: bad gzip stream, bad magic, unknown type code, or a data length that
            does not match the header's dimensions.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxFormatError(f"{path}: corrupt gzip stream ({err})") from err
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _DTYPES:
        raise IdxFormatError(
            f"{path}: not an IDX file (magic {raw[:4].hex() or 'empty'}; expected 0000 then a type code "
            f"in {sorted(hex(c) for c in _DTYPES)} then the number of dimensions)"
        )
    ndim, dtype = raw[3], np.dtype(_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise IdxFormatError(f"{path}: IDX header declares {ndim} dimension(s) but the file is {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path}: IDX header declares shape {dims} of {dtype} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(source: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    return None


def load_fashion_mnist(split: str, source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split.

    Args:
        split: ``"train"`` (60,000 items) or ``"test"`` (10,000).
        source: folder with the IDX files; default :data:`DEFAULT_SOURCE` (the Debian package).

    Returns:
        ``(images uint8 [N, 28, 28], labels int64 [N])``, labels in ``0..9`` (:data:`CLASS_NAMES`).

    Raises:
        FashionMNISTNotFound: the files are missing (message names them and how to install them).
        IdxFormatError: a file is corrupt, or images and labels do not fit together.
    """
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(_FILES)}")
    folder = Path(source) if source is not None else DEFAULT_SOURCE
    stems = _FILES[split]
    found = [_find(folder, stem) for stem in stems]
    if None in found:
        missing = [stem + ".gz" for stem, path in zip(stems, found) if path is None]
        raise FashionMNISTNotFound(
            f"Fashion-MNIST {split} split not found in {folder}: missing {', '.join(missing)} (or uncompressed). "
            f"Install it with `{INSTALL_HINT}`, or point source/--source at a folder holding the IDX files"
        )
    images, labels = (read_idx(path) for path in found)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(f"{found[0]}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IdxFormatError(f"{found[1]}: expected {len(images)} labels [N] to match {found[0]}, got shape {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() < len(CLASS_NAMES):
        raise IdxFormatError(f"{found[1]}: labels outside 0..{len(CLASS_NAMES) - 1}")
    return images, labels.astype(np.int64)
