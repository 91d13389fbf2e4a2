"""Reading images, with errors that name the file, and the real photos that ship in wheels.

No data set is downloaded at run time. The photos below are inside packages this project
already depends on (matplotlib) or that users commonly have (scikit-image, scikit-learn); all
are under permissive licences (see ../shared/REFERENCE.md of the project).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["ImageReadError", "load_image", "sample_photos"]


class ImageReadError(OSError):
    """An image file that is missing or cannot be decoded."""


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8`` RGB ``[H, W, 3]``.

    Raises:
        ImageReadError: the file is missing, empty or not a decodable image (message names it).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot decode image ({err})") from err


def _matplotlib_grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    return load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        from skimage import data

        image = getattr(data, name)()
        image = image[0] if name == "stereo_motorcycle" else image
        return np.ascontiguousarray(image[..., :3]).astype(np.uint8)

    return read


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(name))

    return read


_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "grace_hopper": _matplotlib_grace_hopper,
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}


def sample_photos(names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Real photos available offline, ``{name: uint8 RGB [H, W, 3]}``.

    ``grace_hopper`` ships with matplotlib and is always there; the others need scikit-image
    or scikit-learn and are skipped when those are missing (unless named explicitly).
    """
    wanted = names or list(_PHOTOS)
    photos: dict[str, np.ndarray] = {}
    for name in wanted:
        if name not in _PHOTOS:
            raise ValueError(f"unknown sample photo {name!r}; available: {sorted(_PHOTOS)}")
        try:
            photos[name] = _PHOTOS[name]()
        except ImportError:
            if names is not None:
                raise
    return photos
