"""Resuming one shard of a run: who holds it, which of its images are done, which batches are left.

* :func:`claim_shard` -- one process per shard (``flock`` on ``shards/I-of-N.lock``): a second
  identical command is refused at once, naming the first's pid and host.
* :func:`verify_done` -- an image counts as done iff its part exists and its files match the
  sizes and sha256s recorded when they were written (``checks/KEY.json``); a damaged one is
  removed, so it is redone, and named in the session.
* :func:`plan_shard` -- both, then the batches of the shard that still hold an image to do.
  Batches are planned from the whole shard before anything is skipped (:func:`plan_batches`), so an
  image is always computed with the same batch mates: a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..data import image_size
from .sources import ImageItem
from .store import IMAGE_CHECK, RunStore, _read_json, is_run_file, now, sha256_file

__all__ = ["ShardPlan", "claim_shard", "damage", "plan_batches", "plan_shard", "release_inherited_claims", "verify_done"]


@contextlib.contextmanager
def claim_shard(store: RunStore, shard: str) -> Iterator[None]:
    """Hold shard ``shard`` (``I-of-N``) of ``store``'s run for this process; refuse if another holds it.

    Two identical commands into one folder would each analyse every image; the second is refused
    at once (waiting would only end in skipping what the first did). Other shards may share the
    folder. The lock (``flock`` on ``shards/I-of-N.lock``) dies with its process."""
    path = store.shards / f"{shard}.lock"
    with open(path, "a+") as f, _claimed(f.fileno()):
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ValueError(f"--out {store.root}: shard {shard} of this run is being analysed by {holder}; wait for it to "
                             "finish (rerunning then resumes what is left), or give another --out") from None  # fmt: skip
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} (since {now()})")
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


#: the file descriptors of the shard locks this process holds (:func:`release_inherited_claims`)
_CLAIMS: set[int] = set()


@contextlib.contextmanager
def _claimed(fd: int) -> Iterator[None]:
    _CLAIMS.add(fd)
    try:
        yield
    finally:
        _CLAIMS.discard(fd)


def release_inherited_claims() -> None:
    """In a process forked while a shard was claimed (a DataLoader worker): close the inherited lock descriptors.
    A ``flock`` lasts while any descriptor of its open file lives; a worker orphaned by a killed extract would
    otherwise hold the shard, and every rerun be refused naming the dead process."""
    for fd in list(_CLAIMS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _CLAIMS.clear()


def verify_done(store: RunStore, keys: set[str], header: str | None = None) -> dict[str, str]:
    """Check the done images of ``keys`` against their recorded sizes and sha256s (and, given ``header``, the first
    line of their parts: this run's columns); remove the part (and checks) of each damaged one so it is redone.
    Returns ``{key: what was wrong}``.

    Parts written before checks were recorded are checked by reading them (the part as CSV, the
    maps as a zip)."""
    broken = {}
    for key in sorted(store.done_keys() & keys):
        why = damage(store, key) or (_other_columns(store.part_path(key), header) if header is not None else None)
        if why:
            broken[key] = why
            for p in (store.part_path(key), store.check_path(key), store.maps_path(key)):
                p.unlink(missing_ok=True)
    return broken


def damage(store: RunStore, key: str) -> str | None:
    """What is wrong with the files of done image ``key`` (``None``: nothing). ValueError, naming it, where one of them is a
    directory or a named pipe (:func:`~nlanalysis.extract.store.is_run_file`): not damage to redo (removing a directory
    failed with a bare errno; a pipe read as missing, or, in ``checks/``, as a run written before checks)."""
    if not is_run_file(store.check_path(key)):
        return _unchecked_damage(store.part_path(key), store.maps_path(key))
    try:
        checks = _read_json(store.check_path(key))
    except ValueError as err:
        return str(err)
    for rel, want in checks.items():
        if rel == IMAGE_CHECK:  # the picture measured, not a file of the run (plan_shard compares it)
            continue
        path = store.root / rel
        if not is_run_file(path):
            return f"{path}: missing"
        if path.stat().st_size != want.get("size"):
            return f"{path}: {path.stat().st_size} bytes, {want.get('size')} were written (truncated or changed)"
        if sha256_file(path) != want.get("sha256"):
            return f"{path}: its sha256 differs from the one recorded when it was written (changed or damaged)"
    return None


def _other_columns(part: Path, header: str) -> str | None:
    """Why ``part`` is not one of this run's (its first line is not ``header``), or ``None``."""
    with open(part, "rb") as f:
        first = f.readline().decode(errors="replace").rstrip("\r\n")
    if first == header:
        return None
    return f"{part}: its columns are not this run's (written by another version of nlanalysis?)"


def _unchecked_damage(part: Path, maps: Path) -> str | None:
    """What is wrong with a part written before checks were recorded, and its maps (``None``: nothing found)."""
    is_run_file(part)  # there (a done image's), but maybe not a file
    try:
        pd.read_csv(part)
    except (ValueError, UnicodeDecodeError) as err:
        return f"{part}: cannot be read as CSV ({err})"
    if is_run_file(maps):
        try:
            with zipfile.ZipFile(maps) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            return f"{maps}: not a readable npz ({err})"
        if bad is not None:
            return f"{maps}: member {bad} is damaged"
    return None


def _input_shape(
    item: ImageItem, shape_of: Callable[[int, int], tuple[int, int]], from_image: bool = True
) -> tuple[int, int] | None:
    """The model-input shape of ``item`` without decoding it (``None`` when unknown).

    ``from_image=False``: the shape does not depend on the image's size; its file is not opened.
    """
    h, w = item.height, item.width
    if not from_image:
        return shape_of(int(h or 0), int(w or 0))
    if not (h and w):
        try:
            h, w = image_size(item.path, orient=item.annotations is None)  # as _annotated_pixels reads it
        except Exception:  # unreadable: it fails (alone) when loaded
            return None
    return shape_of(int(h), int(w))


def plan_batches(
    items: list[ImageItem], shape_of: Callable[[int, int], tuple[int, int]], batch_size: int, from_image: bool = True
) -> list[list[int]]:
    """Group image positions into batches of equal padded shape, greedily in order.

    ``shape_of(h, w)`` is the model-input shape of an ``h x w`` image (:meth:`Analysis.input_shape`);
    ``from_image=False`` (:attr:`Analysis.shape_from_image`): it is the same for every image, and no
    image file is opened for its size.
    A batch is emitted when its shape has ``batch_size`` images; at most ``4 * batch_size``
    images wait, beyond which the fullest group is emitted early. Depends only on the list.
    """
    if batch_size <= 1:
        return [[i] for i in range(len(items))]
    waiting: dict[Any, list[int]] = {}
    batches: list[list[int]] = []
    for i, item in enumerate(items):
        shape = _input_shape(item, shape_of, from_image) or ("unknown", i)
        group = waiting.setdefault(shape, [])
        group.append(i)
        if len(group) == batch_size:
            batches.append(waiting.pop(shape))
        elif sum(map(len, waiting.values())) > 4 * batch_size:
            fullest = max(waiting, key=lambda s: len(waiting[s]))
            batches.append(waiting.pop(fullest))
    batches.extend(waiting.values())
    return batches


@dataclass
class ShardPlan:
    """What is left of a shard: ``todo`` (batches of positions in ``items``), ``n_todo`` images in
    them not done, ``done_before`` (keys), ``redone`` (``{key: why}`` of damaged images redone)."""

    items: list[ImageItem]
    todo: list[list[int]]
    n_todo: int
    done_before: set[str]
    redone: dict[str, str]


def _refuse_other_pictures(store: RunStore, done: list[ImageItem]) -> None:
    """Raise if a done image was measured on another file than the one its name finds now (another image folder, or a
    re-encoded copy, given to resume): its rows would join rows of other pictures under one run. Images done before
    this was recorded are not checked."""
    other = []
    for item in done:
        try:
            want = _read_json(store.check_path(item.key)).get(IMAGE_CHECK)
        except (OSError, ValueError):
            continue
        if want and item.path and os.path.isfile(item.path):
            try:
                if os.path.getsize(item.path) != want.get("size") or sha256_file(item.path) != want.get("sha256"):
                    other.append(item)
            except OSError:  # unreadable now (permissions, I/O): done already, it is not read again; not compared
                continue
    if other:
        raise ValueError(f"{store.root}: {len(other)} of its {len(done)} done images were measured on other files than those "
                         f"now under their names, first {other[0].path} (sha256 differs from the one recorded when it was measured): "
                         "another image set, or edited images; give them another --out, or the same images to resume")  # fmt: skip


def plan_shard(store: RunStore, items: list[ImageItem], shape_of: Callable[[int, int], tuple[int, int]], batch_size: int,
               from_image: bool = True, columns: Sequence[str] | None = None) -> ShardPlan:  # fmt: skip
    """The work left in the shard ``items`` (held with :func:`claim_shard`): temporary files of a
    killed process removed, damaged images redone (:func:`verify_done`; with ``columns``, the run's, also parts
    of other columns), batches planned from the whole shard (:func:`plan_batches`) and those holding an image not
    done kept."""
    keys = {it.key for it in items}
    store.clean_temporary(keys)
    header = None if columns is None else pd.DataFrame(columns=list(columns)).to_csv(index=False).rstrip("\r\n")
    redone = verify_done(store, keys, header)
    done_before = store.done_keys()
    _refuse_other_pictures(store, [it for it in items if it.key in done_before])
    todo = [b for b in plan_batches(items, shape_of, batch_size, from_image) if any(items[i].key not in done_before for i in b)]
    n_todo = sum(items[i].key not in done_before for b in todo for i in b)
    return ShardPlan(items, todo, n_todo, done_before, redone)
