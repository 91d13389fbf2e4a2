"""Reading a COCO instances file honestly: every field the analysis uses is checked before use.

pycocotools indexes whatever it is given: a duplicate image id silently replaces the first
image (whose objects then go with the other image's pixels), a duplicate annotation or category id
the first annotation or category, a string id is accepted, and a ``file_name`` may point anywhere
on the disk. :func:`load_coco` refuses such a file up front with
a :class:`CocoFileError` that names the file and the offending entry.

What is required (the COCO format, https://cocodataset.org/#format-data):

* ``images``: a list of objects with a unique integer ``id`` and a ``file_name`` relative to the
  image folder that stays inside it (no absolute path, no ``..`` leading out; symbolic links
  inside the folder are followed as the user made them); ``height``/``width``, when given,
  positive 32-bit integers. Ids of every kind fit in 64 bits.
* ``annotations`` (optional): objects with a unique integer ``id`` and an integer ``image_id``, an integer
  ``category_id`` when the file has ``categories``, and, when present, a ``bbox`` of four finite
  numbers ``[x, y, w, h]`` with ``w, h >= 0``, a ``segmentation`` (polygons: lists of numbers;
  or RLE: ``counts`` and ``size``), and ``iscrowd`` 0 or 1.
* ``categories`` (optional): objects with a unique integer ``id``.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from .objects import check_rle

__all__ = ["CocoFileError", "check_coco", "load_coco"]


class CocoFileError(ValueError):
    """A COCO instances file that is not valid JSON or not a well-formed instances file (message names it)."""


def load_coco(ann_file: str | os.PathLike[str]) -> Any:
    """``pycocotools.coco.COCO`` for an instances file, checked by :func:`check_coco` first.

    Raises:
        FileNotFoundError: no such file.
        CocoFileError: not JSON, or not a well-formed COCO instances file.
    """
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"--coco-ann {path}: no such annotation file")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise CocoFileError(f"--coco-ann {path}: not a JSON file ({type(err).__name__}: {err})") from err
    check_coco(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def check_coco(data: Any, path: str | os.PathLike[str]) -> None:
    """Raise :class:`CocoFileError` (naming ``path``) unless ``data`` is a well-formed instances file (module docstring)."""
    where = f"--coco-ann {path}"
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CocoFileError(f"{where}: not a COCO instances file (no 'images' list)")
    names: dict[int, str] = {}
    for n, image in enumerate(data["images"]):
        image_id, name = _check_image(image, f"{where}: images[{n}]")
        if image_id in names:
            raise CocoFileError(f"{where}: image id {image_id} is listed twice, for {names[image_id]!r} and {name!r}: ids must be unique")
        names[image_id] = name
    categories = data.get("categories")
    known = _unique_ids([_int_field(cat, "id", f"{where}: categories[{n}]") for n, cat in enumerate(_list(categories, f"{where}: 'categories'"))],
                        where, "categories", "category")  # fmt: skip
    annotations = _list(data.get("annotations"), f"{where}: 'annotations'")
    for n, ann in enumerate(annotations):
        _check_annotation(ann, f"{where}: annotations[{n}]", categories=known if "categories" in data else None)
    _unique_ids([ann["id"] for ann in annotations], where, "annotations", "annotation")


def _unique_ids(ids: list[int], where: str, key: str, what: str) -> set[int]:
    """The set of ``ids`` (those of ``data[key]``, in order); CocoFileError naming the first that repeats, where it
    stands, and how many repeat: pycocotools keeps one entry per id, and the other would be lost without a word."""
    seen: dict[int, int] = {}
    for n, value in enumerate(ids):
        if value in seen:
            repeated = len(ids) - len(set(ids))
            more = f"; {repeated} {what}s repeat an earlier one's id" if repeated > 1 else ""
            raise CocoFileError(f"{where}: {what} id {value} is listed twice, {key}[{seen[value]}] and {key}[{n}]{more}: "
                                f"ids must be unique (pycocotools would keep one and drop the other)")  # fmt: skip
        seen[value] = n
    return set(seen)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CocoFileError(f"{what} is a {type(value).__name__}, not a list")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_field(entry: Any, key: str, where: str) -> int:
    if not isinstance(entry, dict):
        raise CocoFileError(f"{where} is a {type(entry).__name__}, not an object")
    if key not in entry:
        raise CocoFileError(f"{where} has no {key!r}")
    value = entry[key]
    if not _is_int(value):
        raise CocoFileError(f"{where}: {key} {value!r} is not an integer (COCO ids are integers)")
    if not -(2**63) <= value < 2**63:
        raise CocoFileError(f"{where}: {key} {value} does not fit in 64 bits")
    return value


def _check_image(image: Any, where: str) -> tuple[int, str]:
    """``(id, file_name)`` of one ``images`` entry, checked."""
    image_id = _int_field(image, "id", where)
    name = image.get("file_name")
    if not isinstance(name, str) or not name or "\0" in name:
        raise CocoFileError(f"{where} (id {image_id}): file_name {name!r} is not a file name")
    parts = Path(os.path.normpath(name)).parts
    if os.path.isabs(name) or not parts or parts[0] in ("..", "."):
        raise CocoFileError(
            f"{where} (id {image_id}): file_name {name!r} leaves the image folder: names must be relative "
            "to --coco-images and stay inside it (a symbolic link inside the folder is fine)"
        )
    for key in ("height", "width"):
        value = image.get(key)
        if value is not None and not (_is_int(value) and 0 < value < 2**31):
            raise CocoFileError(f"{where} ({name!r}): {key} {value!r} is not a positive 32-bit integer")
    return image_id, name


def _check_annotation(ann: Any, where: str, categories: set[int] | None) -> None:
    """One annotation, checked: ``category_id`` must be an integer wherever it is given (1.2 and 1.7 would read as one
    category), and be listed where the file has a ``categories`` list (``categories``; there it must be given)."""
    _int_field(ann, "id", where)
    _int_field(ann, "image_id", where)
    if categories is not None or "category_id" in ann:
        category = _int_field(ann, "category_id", where)
        if categories is not None and category not in categories:
            raise CocoFileError(f"{where} (id {ann['id']}): category_id {category} is not in the file's 'categories' "
                                f"(ids {', '.join(map(str, sorted(categories)[:8]))}{', ...' * (len(categories) > 8)})")  # fmt: skip
    bbox = ann.get("bbox")
    if "bbox" in ann and not (  # a bbox given as null too: absent, say so; present, it must be a box
        isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox)) and bbox[2] >= 0 and bbox[3] >= 0
    ):
        raise CocoFileError(f"{where} (id {ann['id']}): bbox {bbox!r} is not [x, y, w, h] of finite numbers with w, h >= 0")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise CocoFileError(f"{where} (id {ann['id']}): iscrowd {ann['iscrowd']!r} is not 0 or 1")
    if "area" in ann and not _is_number(ann["area"]):
        raise CocoFileError(f"{where} (id {ann['id']}): area {ann['area']!r} is not a finite number")
    seg = ann.get("segmentation")
    if seg and not (_polygons(seg) or _rle(seg)):
        raise CocoFileError(
            f"{where} (id {ann['id']}): segmentation is neither polygons (lists of numbers) nor an RLE "
            "({'counts': runs or their compressed string, 'size': [h, w]}, the runs covering h * w pixels)"
        )


def _polygons(seg: Any) -> bool:
    return isinstance(seg, list) and all(isinstance(p, list) and len(p) % 2 == 0 and all(map(_is_number, p)) for p in seg)


def _rle(seg: Any) -> bool:
    if not isinstance(seg, dict):
        return False
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
        return False
    try:
        check_rle(seg, *size)
    except ValueError:
        return False
    return True
