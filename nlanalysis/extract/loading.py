"""Reading one image of an extract run, in DataLoader workers: its pixels in the frame its annotations are in, its
preprocessing and object labels (:class:`ImageDataset`; any error is that image's failure, and the image is marked as
being read meanwhile: :mod:`.readers`), and the workers' set-up."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import ImageReadError, image_size, load_image
from ..data.images import read_image_file
from ..data.transforms import Prepared
from .objects import ObjectMap, object_map
from .queries import QuerySpec
from .readers import ReadMarker, in_forked_worker
from .resume import release_inherited_claims
from .sources import ImageItem
from .store import file_check

__all__ = ["ImageDataset", "Loaded", "failure_reason", "forks", "worker_init"]


@dataclass
class Loaded:
    """One image read: its preprocessing (``prep``) or why it failed (``error``), its objects and query points, and the
    size and sha256 of the file's bytes it was decoded from (``image_file``, :func:`~.store.file_check`)."""

    item: ImageItem
    error: str | None = None
    prep: Prepared | None = None
    image_file: dict[str, Any] | None = None
    objects: ObjectMap | None = None
    queries: np.ndarray | None = None
    query_label: np.ndarray | None = None


class ImageDataset(torch.utils.data.Dataset):
    """The images ``items``, each read and prepared (:class:`Loaded`) under ``marker`` (the image being read, in a file
    that outlives a crashing decoder); those of ``skip`` (``{key: failure reason}``) fail unread."""

    def __init__(self, items: list[ImageItem], prepare: Callable[[np.ndarray], Prepared], queries: QuerySpec | None, objects: bool,
                 marker: ReadMarker | None = None, skip: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.items, self.prepare, self.queries, self.objects = items, prepare, queries, objects
        self.marker, self.skip = marker, dict(skip or {})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Loaded:
        item = self.items[i]
        if item.key in self.skip:  # its reader died on it twice
            return Loaded(item, error=self.skip[item.key])
        with self.marker.reading(item) if self.marker is not None else contextlib.nullcontext():
            return self._read(item)

    def _read(self, item: ImageItem) -> Loaded:
        try:
            data = read_image_file(item.path)  # read once: the bytes decoded are the bytes hashed
            prep = self.prepare(_annotated_pixels(item, data))
        except Exception as err:  # any error of one image is its failure (e.g. a decompression bomb), never the run's
            return Loaded(item, error=failure_reason(item, err))
        out = Loaded(item, prep=prep, image_file=file_check(data))
        try:
            if item.annotations is not None and (self.objects or (self.queries and self.queries.kind == "objects")):
                out.objects = object_map(item.annotations, prep.original_size, prep.size, tuple(prep.tensor.shape[1:]), prep.offset)
        except Exception as err:
            return Loaded(item, error=failure_reason(item, err, "annotations"))
        return out


def _annotated_pixels(item: ImageItem, data: bytes) -> np.ndarray:
    """``item``'s pixels, decoded from its file's bytes ``data``: a plain file as displayed (EXIF orientation applied, as
    mmcv reads images); a COCO image in the frame its annotations are drawn in: as stored where that has the entry's
    ``height`` x ``width`` (COCO's annotators drew on the stored pixels; the size cannot tell a flip or a half turn from
    none), else as displayed where that has it; ValueError where neither has it (a different file, or annotations made at
    another size). A COCO entry without its size is read as stored (its annotations were drawn on the stored pixels;
    turning the image would move it under them)."""
    if item.height is None or item.width is None:
        return load_image(item.path, orient=item.annotations is None, data=data)
    if image_size(item.path, orient=False, data=data) == (item.height, item.width):
        return load_image(item.path, orient=False, data=data)
    pixels = load_image(item.path, data=data)
    if pixels.shape[:2] == (item.height, item.width):
        return pixels
    h, w = pixels.shape[:2]
    raise ValueError(f"{item.path}: the file decodes to {h} x {w} pixels (height x width) but its COCO entry (image id "
                     f"{item.image_id!r}) says {item.height} x {item.width}: a different file, or annotations made at another size")


def failure_reason(item: ImageItem, err: BaseException, stage: str = "") -> str:
    """The failures.csv reason of ``err`` for ``item``: its path, the stage, the error (its type when
    not a plain ValueError / ImageReadError, whose messages are written for users)."""
    text = str(err) if isinstance(err, (ValueError, ImageReadError)) else f"{type(err).__name__}: {err}"
    if str(item.path) not in text:
        text = f"{item.path}: {stage + ': ' if stage else ''}{text}"
    return text


def worker_init(_: int, parent: int | None = None, forked: bool = False) -> None:
    """A DataLoader worker: one thread, no shard lock, marker descriptor nor SIGTERM handler inherited from extract
    (``fork``; :func:`~nlanalysis.extract.readers.in_forked_worker`), and, where extract (``parent``)
    is its parent (``fork``, ``spawn``), gone when extract dies: a killed extract would otherwise leave its workers
    hanging on a full pipe (and, forked, holding the shard: every rerun refused). A ``forkserver`` worker's parent is
    the server: left as it is."""
    torch.set_num_threads(1)
    release_inherited_claims()
    in_forked_worker()
    if parent is None:
        return
    if os.getppid() != parent:
        if forked:  # forked by extract, which is gone already
            os._exit(0)
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # prctl(PR_SET_PDEATHSIG, SIGKILL)
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # extract died before the line above
        os._exit(0)


def forks() -> bool:
    """Whether DataLoader workers are forked from this process (the start method ``fork``)."""
    import multiprocessing

    return (multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]) == "fork"  # unset: the default
