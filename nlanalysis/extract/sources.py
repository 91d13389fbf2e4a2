"""Which images a run covers: a COCO instances file or image files, folders and globs.

Selection is reproducible: the candidate images are ordered (COCO: by image id; files: by path),
filtered by ``image_ids`` and ``cat_ids``, and, with ``limit``, a uniform sample of ``limit`` of them
is drawn with ``numpy.random.default_rng(seed)`` and put back in order. The same arguments
always select the same images in the same order; that order is the order of ``metrics.csv``.

COCO annotations (masks or boxes) travel with each image: they are used for the ``objects:K``
query points and for the own-object statistics.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import PHOTO_FILES, check_image_file, photo_file, photo_listing
from .coco import CocoFileError, load_coco

__all__ = [
    "IMAGE_EXTENSIONS", "CocoFileError", "ImageItem", "coco_images", "file_images", "load_coco", "photo_images", "select", "shard_of",
]  # fmt: skip

#: file name endings that ``--images FOLDER`` picks up (case-insensitive); of a GIF, the first frame is read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageItem:
    """One image of a run.

    Attributes:
        image_id: COCO image id (``int``), or the file's path relative to the common folder of
            the selected files (``str``).
        file_name: as in the COCO file, or the same relative path.
        path: where the file is read from.
        key: a file-name-safe unique name, used for the per-image files of a run.
        height, width: the image size when known without decoding it (COCO), else ``None``.
        annotations: COCO annotations of the image (``segmentation``, ``bbox``, ``iscrowd``,
            ``category_id``, ``id``, ``area``); ``None`` for plain files (no annotations at all).
    """

    image_id: int | str
    file_name: str
    path: str
    key: str
    height: int | None = None
    width: int | None = None
    annotations: list[dict[str, Any]] | None = field(default=None, repr=False)


def select(
    items: list[ImageItem], *, limit: int | None = None, seed: int = 0, what: str = "images"
) -> list[ImageItem]:
    """Draw ``limit`` of ``items`` uniformly with ``seed`` (kept in their order); all without a limit."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit} selects no images: give a positive number, or leave --limit out for all {what}")
    if not items:
        raise ValueError(f"the selection is empty: no {what} to analyse")
    if limit is None or limit >= len(items):
        return list(items)
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return [items[i] for i in chosen]


def shard_of(items: list[ImageItem], index: int, count: int) -> list[ImageItem]:
    """Shard ``index`` (0-based) of ``count``: every ``count``-th image from position ``index``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= I < N (I is 0-based, as torchrun's RANK)")
    return items[index::count]


def _coco_key(image_id: int | str) -> str:
    if isinstance(image_id, int) and image_id >= 0:
        return f"{image_id:012d}"
    return _safe_key(str(image_id))


def _safe_key(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "image"
    return f"{stem}-{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _printable(name: str) -> str:
    """A file name as text any file can hold: bytes that are not UTF-8 (a name made on another system, which Python
    keeps as surrogates) written ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def coco_images(
    ann_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    *,
    image_ids: Sequence[int] | None = None,
    cat_ids: Sequence[int] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[ImageItem]:
    """The selected images of a COCO instances file (read with pycocotools).

    Args:
        ann_file: ``instances_*.json``.
        images_dir: the folder the ``file_name`` s are relative to.
        image_ids: keep these images only (each must be in the file).
        cat_ids: keep images with at least one annotation of any of these categories.
        limit, seed: see the module docstring.

    Raises:
        FileNotFoundError: no such file or folder.
        CocoFileError: the file is not a well-formed instances file (:mod:`nlanalysis.extract.coco`:
            e.g. a duplicate or non-integer image id, a ``file_name`` leaving ``images_dir``).
        ValueError: ``image_ids``/``cat_ids``/``limit`` select nothing the file has.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--coco-images {images_dir}: no such folder")
    coco = load_coco(ann_file)
    if not coco.imgs:
        raise CocoFileError(f"--coco-ann {ann_file}: lists no images")
    ids = sorted(coco.imgs)
    if image_ids is not None:
        unknown = sorted(set(image_ids) - set(coco.imgs))
        if unknown:
            raise ValueError(f"--image-ids: {few(unknown)} not in {ann_file} ({len(ids)} images, ids {ids[0]}..{ids[-1]})")
        wanted = set(image_ids)
        ids = [i for i in ids if i in wanted]  # the file's own ids (a numpy integer given is the same image, the same key)
    if cat_ids is not None:
        unknown = sorted(set(cat_ids) - set(coco.cats))
        if unknown:
            raise ValueError(f"--cat-ids: {few(unknown)} not in {ann_file} (categories: {few(sorted(coco.cats))})")
        with_cat = set().union(*(coco.catToImgs.get(c, []) for c in cat_ids))
        ids = [i for i in ids if i in with_cat]
    what = f"images in {ann_file}" + (" with the given ids/categories" if image_ids or cat_ids else "")
    items = []
    for i in ids:
        info = coco.imgs[i]
        anns = [_plain_annotation(a) for a in coco.imgToAnns.get(i, [])]
        items.append(
            ImageItem(
                image_id=i,
                file_name=info["file_name"],
                path=str(images_dir / info["file_name"]),
                key=_coco_key(i),
                height=info.get("height"),
                width=info.get("width"),
                annotations=anns,
            )
        )
    return select(items, limit=limit, seed=seed, what=what)


def _plain_annotation(ann: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "category_id", "bbox", "segmentation", "iscrowd", "area")
    return {k: ann[k] for k in keep if k in ann}


def few(values: Sequence[Any], n: int = 5) -> str:
    """The first ``n`` values, and how many there are in all where there are more (for messages)."""
    shown = ", ".join(map(str, values[:n]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def _glob(pattern: str) -> list[Path]:
    """``glob.glob(pattern, recursive=True)``, but a ``**`` walk does not follow a link back into a folder it is
    inside: glob follows linked folders, and a link to its own folder (``a -> .``) made it list paths without end."""
    parts = Path(pattern).parts
    if "**" not in parts:
        return [Path(p) for p in glob.glob(pattern)]
    if pattern.endswith((os.sep, os.sep + ".", os.sep + "..")):  # glob lists folders only there (pathlib drops the ending)
        return []
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root, wanted = Path(*parts[:fixed]) if fixed else Path("."), parts[fixed:]
    found, above = [], {}  # per folder walked: the real folders on its way down (a link back to one of them: a cycle)
    for folder, dirs, files in os.walk(root, followlinks=True):
        chain = above.get(folder, frozenset()) | {os.path.realpath(folder)}
        rel = Path(folder).relative_to(root).parts
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in chain  # cycles are cut, and
                   and _leads((*rel, d), wanted)]  # folders no match can pass through (hidden ones: glob's ** skips them)
        above.update({os.path.join(folder, d): chain for d in dirs})
        found += [Path(folder, f) for f in files if _matches((*rel, f), wanted)]
    return found


def _leads(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether folder ``parts`` can begin a path that matches ``pattern`` (:func:`_matches`)."""
    if not parts:
        return bool(pattern)
    if not pattern:
        return False
    if pattern[0] == "**":
        hidden = next((i for i, p in enumerate(parts) if p.startswith(".")), len(parts))
        return hidden == len(parts) or any(_leads(parts[i:], pattern[1:]) for i in range(hidden + 1))
    if parts[0].startswith(".") and not pattern[0].startswith("."):
        return False
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and _leads(parts[1:], pattern[1:])


def _matches(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether path ``parts`` match glob ``pattern`` parts as ``glob`` matches them: ``**`` any number of folders, a
    wildcard never a name starting with a dot."""
    if not pattern:
        return not parts
    if pattern[0] == "**":  # a trailing ** takes one part at least: what stands before it is a folder, as in glob
        return any(_matches(parts[i:], pattern[1:]) for i in range(int(len(pattern) == 1), len(parts) + 1)
                   if not any(p.startswith(".") for p in parts[:i]))  # fmt: skip
    if not parts or (parts[0].startswith(".") and not pattern[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _expand(arg: str) -> list[Path]:
    if glob.has_magic(arg):
        found = _glob(arg)
        files = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise FileNotFoundError(f"--images {arg}: the pattern matches no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    path = Path(arg)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise FileNotFoundError(f"--images {arg}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if path.is_file():
        return [path]
    if path.exists():  # there, but neither a file nor a folder (a named pipe, a socket, a device)
        check_image_file(path)  # raises, saying what it is (it is never opened)
    raise FileNotFoundError(f"--images {arg}: no such file or folder")


def file_images(
    paths: Sequence[str | os.PathLike[str]],
    *,
    image_ids: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[ImageItem]:
    """The selected images among files, folders (searched recursively) and globs.

    Each image's id is its path relative to the common folder of all selected files, so ids
    stay the same when the same arguments are given again (which resuming relies on).
    """
    if not paths:
        raise ValueError("--images: give at least one file, folder or glob")
    files = sorted({p.resolve() for arg in paths for p in _expand(os.fspath(arg))})
    root = Path(os.path.commonpath([p.parent for p in files]))
    items = [
        ImageItem(image_id=rel, file_name=rel, path=str(p), key=_safe_key(rel))
        for p in files
        for rel in [_printable(p.relative_to(root).as_posix())]
    ]
    if image_ids is not None:
        wanted = {str(i) for i in image_ids}
        unknown = sorted(wanted - {it.image_id for it in items})
        if unknown:
            raise ValueError(f"--image-ids: {few(unknown)} not among the {len(items)} files (ids are paths relative to {root})")
        items = [it for it in items if it.image_id in wanted]
    return select(items, limit=limit, seed=seed, what=f"image files under {root}")


def photo_images(
    photos: Sequence[str] = (), *, image_ids: Sequence[str] | None = None, limit: int | None = None, seed: int = 0
) -> list[ImageItem]:
    """The real photos shipped in pip wheels (matplotlib, scikit-image, scikit-learn), in the order
    of :func:`nlanalysis.data.images.sample_photos`; each one's id is its name.

    Args:
        photos: names (``()``: every photo whose package is installed), or ``NAME=PATH``: the file
            ``PATH`` under the id ``NAME``.
        image_ids, limit, seed: as :func:`file_images`.
    """
    items = []
    for text in photos or PHOTO_FILES:
        name, given, path = text.partition("=")
        if not given and name not in PHOTO_FILES:
            raise ValueError(f"--photos {name}: unknown photo; the shipped photos are {photo_listing()} (or NAME=PATH)")
        try:
            file = Path(path) if given else photo_file(name)
        except ImportError:
            if photos:
                raise
            continue
        if any(it.image_id == name for it in items):  # one id, two images: one's rows would overwrite the other's
            raise ValueError(f"--photos: the name {name!r} is given twice; each photo needs its own name (NAME=PATH)")
        items.append(ImageItem(image_id=name, file_name=file.name, path=str(file), key=_safe_key(name)))
    if image_ids is not None:
        wanted = {str(i) for i in image_ids}
        unknown = sorted(wanted - {it.image_id for it in items})
        if unknown:
            raise ValueError(f"--image-ids: {few(unknown)} not among the photos ({', '.join(it.image_id for it in items)})")
        items = [it for it in items if it.image_id in wanted]
    return select(items, limit=limit, seed=seed, what="photos")
