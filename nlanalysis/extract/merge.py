"""Combine the result sets of shards of one run (``extract --shard I/N``) into one: :func:`merge_runs`."""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import fsync_folder, fsync_tree, require_folder
from .definitions import check_shards_definitions
from .resume import damage
from .store import RunStore, _write_json, check_same_settings

__all__ = ["merge_runs"]


def merge_runs(inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Combine the result sets of shards of one run into ``out``.

    Refuses runs with different settings (checkpoint, selection, preprocessing, queries, seed,
    ..., and the column definitions that wrote them: :mod:`.definitions`), runs that both hold (done or failed) the same image, a result set copied without its
    ``parts/`` (merge reads the per-image files extract writes), and any done image whose files do
    not match the checks written with them (named: rerun extract on that folder to redo it). Files
    are copied into a temporary folder beside ``out`` that is put on the disk and renamed to ``out`` when all is merged;
    ``out`` must not exist yet or be empty. Returns the merged ``run.json``.
    """
    require_folder(out, "the merged run")  # a file there, or on the way: said in words, before the runs are read
    stores = [RunStore(p) for p in inputs]
    if not stores:
        raise ValueError("give at least one RUN_DIR to merge")
    infos = [s.info() for s in stores]
    check_shards_definitions([s.root for s in stores], [info["settings"] for info in infos])  # first: its own words
    for s, info in zip(stores[1:], infos[1:]):
        check_same_settings(infos[0]["settings"], info["settings"], f"{s.root} (against {stores[0].root})",
                            "merge only shards of one run (the same extract arguments but --shard); merge the others separately")
    owner: dict[str, Path] = {}
    for s in stores:
        _check_input(s)
        for key in sorted(s.done_keys() | s.failed_keys()):
            if key in owner:
                raise ValueError(f"{s.root} and {owner[key]} overlap (both hold image {key}); merge disjoint shards only")
            owner[key] = s.root
    if not owner:
        raise ValueError(f"none of {', '.join(str(s.root) for s in stores)} holds an analysed or failed image; nothing to merge")
    final = Path(out)
    if final.exists() and any(final.iterdir()):
        raise ValueError(f"--out {final} is not empty; give a new folder for the merged run")
    whole = final.resolve()
    whole.parent.mkdir(parents=True, exist_ok=True)
    target = RunStore(whole.with_name(f".{whole.name}.merging.{os.getpid()}"))
    try:
        _copy_inputs(stores, target)
        merged = dict(infos[0])
        merged["merged_from"] = [str(s.root) for s in stores]
        _write_json(target.run_json, merged)
        target.assemble()
        fsync_tree(target.root)  # the copies on the disk before the rename shows them
        os.replace(target.root, whole)  # onto a missing or empty folder (through a link to one, too)
        fsync_folder(whole.parent)
    finally:
        shutil.rmtree(target.root, ignore_errors=True)
    return RunStore(final).info()


def _check_input(store: RunStore) -> None:
    """Refuse a result set merge cannot read whole: no ``parts/``, or a done image whose files fail their checks."""
    if not store.parts.is_dir():
        raise ValueError(f"{store.root} holds no parts/ (a copy of its metrics.csv only?): merge reads the per-image files "
                         "extract writes; merge the folders extract wrote")  # fmt: skip
    for key in sorted(store.done_keys()):
        why = damage(store, key)
        if why:
            raise ValueError(f"{why}; rerun extract with that folder's arguments to redo the image, then merge")


def _copy_inputs(stores: Sequence[RunStore], target: RunStore) -> None:
    """Copy each input's done images (part, checks, maps), failures and shard sessions into ``target``."""
    for d in (target.parts, target.failed, target.maps, target.shards, target.checks):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy2(stores[0].root / "images.csv", target.root / "images.csv")
    for s in stores:
        done = s.done_keys()
        for key in sorted(done):
            for src, dst in ((s.part_path(key), target.part_path(key)), (s.check_path(key), target.check_path(key)),
                             (s.maps_path(key), target.maps_path(key))):  # fmt: skip
                if src.is_file():  # checks: not in runs written before they were recorded; maps: with --save-maps
                    shutil.copy2(src, dst)
        for key in sorted(s.failed_keys() - done):
            shutil.copy2(s.failure_path(key), target.failure_path(key))
        for p in s.shards.glob("*.json"):
            dst = target.shards / p.name
            n = 1
            while dst.exists():  # the same shard name from two folders (e.g. two 0-of-1 runs of subsets)
                dst, n = target.shards / f"{p.stem}.{n}.json", n + 1
            shutil.copy2(p, dst)
