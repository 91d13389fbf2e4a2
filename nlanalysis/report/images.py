"""The image files behind a result set's saved maps, for the Figure 2 drawings."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..extract.maps import ImageMaps
from ..extract.results import ResultSet

__all__ = ["find_image", "find_images", "load_pixels", "stored_first"]


def find_images(run: ResultSet, image_ids: Sequence[Any], image_root: str | os.PathLike[str] | None = None) -> list[Path | None]:
    """The file of each of ``image_ids`` in ``run`` (``None`` where it cannot be found).

    Looks in, in order: ``image_root / file_name``; the ``path`` column of ``images.csv``
    (where the run records it); the COCO image folder the run was given; the image files and
    folders, or the shipped photos, it was given (relative paths are taken from the current directory, then from the
    one extract ran in, where ``run.json`` records it).
    """
    table = run.images.assign(_id=run.images["image_id"].astype(str)).drop_duplicates("_id").set_index("_id")
    args = run.info.get("selection_args", {})
    there = run.info.get("cwd")
    listed: dict[str, Path] | None = None
    found: list[Path | None] = []
    for image_id in image_ids:
        key = str(image_id)
        if key not in table.index:
            found.append(None)
            continue
        file_name = str(table.loc[key, "file_name"])
        candidates = [Path(image_root) / file_name] if image_root is not None else []
        if "path" in table:
            candidates.append(Path(str(table.loc[key, "path"])))
        if args.get("coco_images"):
            candidates += [root / file_name for root in _placed(args["coco_images"], there)]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None and (args.get("images") or args.get("photos") is not None):
            if listed is None:  # the files the run was given, listed once
                images = [next((p for p in _placed(i, there) if p.exists()), Path(i)) for i in args.get("images") or []]
                listed = _listed_files([str(p) for p in images], args.get("photos"))
            hit = listed.get(key)
        found.append(hit if hit is not None and hit.is_file() else None)
    return found


def _placed(path: str | os.PathLike[str], there: str | None) -> list[Path]:
    """Where a path a run was given may be now: as given (from here), then, if relative, from the folder extract ran in."""
    p = Path(path)
    return [p] if p.is_absolute() or not there else [p, Path(there) / p]


def find_image(run: ResultSet, image_id: Any, image_root: str | os.PathLike[str] | None = None) -> Path | None:
    """The file of one image of ``run`` (see :func:`find_images`), or ``None``."""
    return find_images(run, [image_id], image_root)[0]


def _listed_files(paths: Sequence[str] | None, photos: Sequence[str] | None) -> dict[str, Path]:
    from ..extract.sources import file_images, photo_images

    try:
        items = file_images(paths) if paths else photo_images(photos)
        return {str(it.image_id): Path(it.path) for it in items}
    except (ValueError, OSError):
        return {}


def stored_first(run: ResultSet) -> bool:
    """Whether ``run`` read its images in their stored frame where that fits (COCO images: extract reads them in the
    frame of their annotations) rather than as displayed (EXIF orientation applied: plain files and photos)."""
    return run.info.get("settings", {}).get("selection", {}).get("source") == "coco"


def load_pixels(path: Path | None, maps: ImageMaps, stored: bool = False) -> np.ndarray | None:
    """The uint8 RGB pixels ``[H, W, 3]`` of ``path`` in the frame extract read them in (``stored``: :func:`stored_first`
    of the run), or ``None`` when it is missing, unreadable, not of the size the maps were made at or, where the maps
    record it, not the file the run read (another file of the same name and size: its sha256 differs)."""
    if path is None:
        return None
    from ..data import ImageReadError, load_image
    from ..extract.store import sha256_file

    recorded = maps.file_sha256
    try:
        if recorded is not None and sha256_file(path) != recorded:
            return None
    except OSError:  # unreadable: drawn on grey, as a missing file is
        return None

    size = tuple(int(v) for v in maps["original_size"])
    try:  # as extract read it: in its first frame where that has the size of the maps' image, else in the other
        for orient in ((False, True) if stored else (True, False)):
            pixels = load_image(path, orient=orient)
            if pixels.shape[:2] == size:
                return pixels
    except ImageReadError:
        return None
    return None
