"""The data-set loop of ``nlanalysis extract``: images in, a result set out (see ``store``).

For each image: read it (in DataLoader workers with ``workers > 0``), preprocess it as the
checkpoint expects (resize keeping the ratio, normalise, pad to the divisor), draw its objects
into a label map (COCO), choose its query points (``--save-maps``), run the model under
:class:`~nlanalysis.capture.Capture` with the valid-pixel mask (padding is excluded from every
statistic, as queries and as keys), and write its rows (and maps) atomically.

Determinism (what makes a resumed run equal an uninterrupted one row for row):

* The batches are planned from the whole shard before anything is skipped, so an image is
  always computed with the same batch mates; a batch with some images done is recomputed whole
  and only its missing images are written.
* Only images with the same padded input shape share a batch (each image is padded to its own
  divisor, as at batch size 1), so batching never changes an image's input. Results then equal
  a batch-size-1 run up to float rounding of batched kernels, except ``att_jsd``, whose query pairs
  are drawn by one generator per forward: it differs within its standard error
  (``att_jsd_stderr``) unless the batch size is 1.
* Random choices are seeded from ``(seed, image key)`` (queries) or ``(seed, keys of the batch)``
  (JSD pairs), never from the order images are processed in.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..adapters import list_blocks
from ..analyze import STAT_COLUMNS, records_to_frame
from ..capture import BlockRecord, Capture
from ..checkpoints import LoadedCheckpoint, Preprocess, load_checkpoint
from ..data import ImageReadError, load_image, prepare_image
from ..data.transforms import resized_size
from .maps import save_image_maps
from .objects import ObjectMap, object_map
from .queries import QuerySpec, parse_queries, select_queries
from .sources import ImageItem, coco_images, file_images, shard_of
from .results import summarize
from .store import FORMAT, FORMAT_VERSION, RunStore, frame_from_csv, now

__all__ = ["COLUMNS", "OBJECT_COLUMNS", "ExtractReport", "resolve_device", "resolve_shard", "run_extract"]

#: own-object columns (NaN without annotated objects in the image).
OBJECT_COLUMNS = ["att_own_object", "own_object_share"]

#: the columns of ``metrics.csv``, in order (``height``, ``width``: the block's query grid;
#: ``image_height``, ``image_width``: the image file).
COLUMNS = [
    "image_id", "file_name", "block", "family", "mode", "height", "width", "n_query", "n_key",
    *STAT_COLUMNS, *(c for c in OBJECT_COLUMNS if c not in STAT_COLUMNS),
    "query_independent", "convention", "image_height", "image_width",
]  # fmt: skip



@dataclass
class ExtractReport:
    """What one ``run_extract`` call did.

    Attributes:
        path: the run directory.
        shard: ``(index, count)`` this process worked on.
        done, failed, skipped: images analysed, failed and skipped (done before) in this call.
        seconds: wall time of the loop.
        info: the run's ``run.json`` after assembly (counts cover every shard in the folder).
        summary: mean of each statistic per block over all done images of the run.
    """

    path: Path
    shard: tuple[int, int]
    done: int
    failed: int
    skipped: int
    seconds: float
    info: dict[str, Any]
    summary: pd.DataFrame = field(repr=False)

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu``/``cuda``/``cuda:N``; under torchrun ``cuda`` means ``cuda:LOCAL_RANK``."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device} was asked for, but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); use --device cpu"
            )
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: expected cpu or cuda")
    return dev


def resolve_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``I/N`` (0-based) from the argument, else from torchrun's ``RANK``/``WORLD_SIZE``, else ``0/1``."""
    if shard is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else (0, 1)
    if isinstance(shard, str):
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard {shard!r}: expected I/N, e.g. 0/4 (I is 0-based)") from None
        shard = (i, n)
    if shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"--shard {shard[0]}/{shard[1]}: need 0 <= I < N (I is 0-based, as torchrun's RANK)")
    return shard


def _seed_of(*parts: Any) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("nlanalysis", "torch", "torchvision", "numpy", "pandas", "pycocotools", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


# -- per image work (runs in DataLoader workers) ------------------------------------------------


@dataclass
class _Loaded:
    item: ImageItem
    error: str | None = None
    tensor: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    queries: np.ndarray | None = None
    query_label: np.ndarray | None = None
    scale: tuple[float, float] = (1.0, 1.0)
    size: tuple[int, int] = (0, 0)
    original_size: tuple[int, int] = (0, 0)


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[ImageItem], pre: Preprocess, queries: QuerySpec | None, objects: bool, seed: int) -> None:
        self.items, self.pre, self.queries, self.objects, self.seed = items, pre, queries, objects, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> _Loaded:
        item = self.items[i]
        try:
            prep = prepare_image(load_image(item.path), self.pre)
        except (ImageReadError, ValueError) as err:
            return _Loaded(item, error=str(err))
        out = _Loaded(item, tensor=prep.tensor, valid=prep.valid, scale=prep.scale, size=prep.size, original_size=prep.original_size)
        try:
            objects: ObjectMap | None = None
            if item.annotations is not None and (self.objects or (self.queries and self.queries.kind == "objects")):
                objects = object_map(item.annotations, prep.original_size, prep.size, tuple(prep.tensor.shape[1:]))
                if self.objects:
                    out.labels = torch.from_numpy(objects.labels)
            if self.queries is not None:
                rng = np.random.default_rng(_seed_of(self.seed, item.key, "queries"))
                points = select_queries(self.queries, prep.size, rng, objects, prep.scale)
                out.queries, out.query_label = points.yx, points.label
        except ValueError as err:
            return _Loaded(item, error=f"{item.path}: annotations: {err}")
        return out


def _as_list(batch: list[_Loaded]) -> list[_Loaded]:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _padded_shape(item: ImageItem, pre: Preprocess) -> tuple[int, int] | None:
    """The model-input shape of ``item`` without decoding it (``None`` when unknown)."""
    h, w = item.height, item.width
    if not (h and w):
        try:
            from PIL import Image

            with Image.open(item.path) as img:
                w, h = img.size
        except Exception:  # unreadable: it fails (alone) when loaded
            return None
    nh, nw = resized_size(int(h), int(w), pre)
    d = pre.pad_divisor
    return (-(-nh // d) * d, -(-nw // d) * d) if d else (nh, nw)


def plan_batches(items: list[ImageItem], pre: Preprocess, batch_size: int) -> list[list[int]]:
    """Group image positions into batches of equal padded shape, greedily in order.

    A batch is emitted when its shape has ``batch_size`` images; at most ``4 * batch_size``
    images wait, beyond which the fullest group is emitted early. Depends only on the list.
    """
    if batch_size <= 1:
        return [[i] for i in range(len(items))]
    waiting: dict[Any, list[int]] = {}
    batches: list[list[int]] = []
    for i, item in enumerate(items):
        shape = _padded_shape(item, pre) or ("unknown", i)
        group = waiting.setdefault(shape, [])
        group.append(i)
        if len(group) == batch_size:
            batches.append(waiting.pop(shape))
        elif sum(map(len, waiting.values())) > 4 * batch_size:
            fullest = max(waiting, key=lambda s: len(waiting[s]))
            batches.append(waiting.pop(fullest))
    batches.extend(waiting.values())
    return batches


# -- the loop ------------------------------------------------------------------------------------


def run_extract(
    ckpt: str | os.PathLike[str] | LoadedCheckpoint,
    out: str | os.PathLike[str],
    *,
    coco_ann: str | os.PathLike[str] | None = None,
    coco_images_dir: str | os.PathLike[str] | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
    blocks: str | Sequence[str] | None = None,
    queries: str | None = None,
    limit: int | None = None,
    image_ids: Sequence[int | str] | None = None,
    cat_ids: Sequence[int] | None = None,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    shard: str | tuple[int, int] | None = None,
    save_maps: bool = False,
    jsd_pairs: int = 512,
    chunk_size: int = 256,
    controls: bool = False,
    checkpoint_options: dict[str, Any] | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> ExtractReport:
    """Analyse every selected image and write (or resume) the result set ``out``.

    Args:
        ckpt: a checkpoint file (loaded with :func:`nlanalysis.checkpoints.load_checkpoint`) or
            an already loaded one.
        out: the run directory (created; resumed when it holds the same run).
        coco_ann, coco_images_dir: a COCO instances file and its image folder, or
        images: image files, folders (recursive) and globs.
        blocks: glob(s) on block names (default: every NL/GC block).
        queries: ``grid:K``, ``random:K`` or ``objects:K`` for the saved maps (default
            ``objects:2``, i.e. two objects and the background, with annotations, else ``random:3``).
        limit, image_ids, cat_ids, seed: the selection (see :mod:`nlanalysis.extract.sources`);
            ``seed`` also seeds query points and JSD pair sampling.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per forward (only images of equal padded shape are batched).
        workers: DataLoader worker processes for reading and preprocessing (0: in this process).
        shard: ``"I/N"`` or ``(I, N)``; default from torchrun's ``RANK``/``WORLD_SIZE``.
        save_maps: write the query maps of every image (``maps/KEY.npz``).
        jsd_pairs, chunk_size, controls: passed to :class:`~nlanalysis.capture.Capture`
            (``controls``: the random-projection control, ``ctrl_*`` columns; see :mod:`nlanalysis.controls`).
        checkpoint_options: keyword arguments of ``load_checkpoint`` (``config``, ``trust``, ``overrides``).
        progress: show a tqdm progress bar.
        command: the command line to record (default ``sys.argv``).
    """
    started, t0 = now(), time.perf_counter()
    shard_index, shard_count = resolve_shard(shard)
    dev = resolve_device(device)
    if batch_size < 1 or workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    coco = coco_ann is not None
    if (coco_ann is None) != (coco_images_dir is None):
        raise ValueError("--coco-ann and --coco-images go together")
    if coco == (images is not None):
        raise ValueError("give either --coco-ann ANN --coco-images DIR, or --images PATH...")
    if not coco and cat_ids:
        raise ValueError("--cat-ids needs COCO annotations (--coco-ann/--coco-images)")
    if coco:
        items = coco_images(coco_ann, coco_images_dir, image_ids=image_ids, cat_ids=cat_ids, limit=limit, seed=seed)
    else:
        items = file_images(images, image_ids=image_ids, limit=limit, seed=seed)
    spec = parse_queries(queries or ("objects:2" if coco else "random:3"))
    if spec.kind == "objects" and not coco:
        raise ValueError("--queries objects:K needs annotated images: use --coco-ann/--coco-images, or grid:K / random:K")

    loaded = ckpt if isinstance(ckpt, LoadedCheckpoint) else load_checkpoint(ckpt, **(checkpoint_options or {}))
    model = loaded.model.eval().to(dev)
    block_names = [b.name for b in list_blocks(model, include=blocks)]
    if not block_names:
        shown = blocks if isinstance(blocks, str) else " ".join(blocks or [])
        raise ValueError(f"--blocks {shown} matches none of the NL/GC blocks of {loaded.path}: {', '.join(loaded.blocks) or 'none'}")

    info = _describe_run(loaded, items, block_names, spec, save_maps=save_maps, seed=seed, coco_ann=coco_ann,
                         measure={"jsd_pairs": jsd_pairs, "controls": controls})  # fmt: skip
    info.update(
        command=list(command if command is not None else sys.argv),
        selection_args={"coco_ann": coco_ann, "coco_images": coco_images_dir, "images": images, "image_ids": image_ids,
                        "cat_ids": cat_ids, "limit": limit, "seed": seed},  # fmt: skip
        started=started,
    )
    store = RunStore(out)
    store.open(json.loads(json.dumps(info, default=str)), items)

    mine = shard_of(items, shard_index, shard_count)
    store.clean_temporary({it.key for it in mine})
    done_before = store.done_keys()
    todo = [b for b in plan_batches(mine, loaded.preprocess, batch_size) if any(mine[i].key not in done_before for i in b)]
    n_todo = sum(mine[i].key not in done_before for b in todo for i in b)
    shard_name = f"{shard_index}-of-{shard_count}"
    session = {
        "id": uuid.uuid4().hex, "started": started, "finished": None, "command": info["command"],
        "host": socket.gethostname(), "pid": os.getpid(), "device": str(dev), "batch_size": batch_size,
        "workers": workers, "images": len(mine), "skipped": len(mine) - n_todo, "done": 0, "failed": 0,
    }  # fmt: skip
    store.write_session(shard_name, session)

    loader = torch.utils.data.DataLoader(
        _ImageDataset(mine, loaded.preprocess, spec if save_maps else None, coco, seed),
        batch_sampler=todo,
        num_workers=workers,
        collate_fn=_as_list,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
    )
    work = partial(_analyse, model=model, device=dev, blocks=block_names, store=store, done_before=done_before,
                   save_maps=save_maps, seed=seed, use_objects=coco,
                   capture_kwargs=dict(jsd_pairs=jsd_pairs, chunk_size=chunk_size, controls=controls))  # fmt: skip
    from tqdm import tqdm

    desc = f"extract {shard_name}" if shard_count > 1 else "extract"
    bar = tqdm(total=n_todo, unit="img", disable=not progress, desc=desc, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for batch in loader:
                done, failed = work(batch)
                session["done"] += done
                session["failed"] += failed
                bar.update(done + failed)
                if session["failed"]:
                    bar.set_postfix(failed=session["failed"])
    finally:
        bar.close()
        session["finished"] = now() if session["done"] + session["failed"] == n_todo else None
        session["seconds"] = round(time.perf_counter() - t0, 3)
        store.write_session(shard_name, session)
        run_info = store.assemble()
    metrics = frame_from_csv((store.root / "metrics.csv").read_text(), run_info["settings"]["selection"]["id_type"])
    return ExtractReport(store.root, (shard_index, shard_count), session["done"], session["failed"], session["skipped"],
                         time.perf_counter() - t0, run_info, summarize(metrics))  # fmt: skip


def _describe_run(
    loaded: LoadedCheckpoint,
    items: list[ImageItem],
    block_names: list[str],
    spec: QuerySpec,
    *,
    save_maps: bool,
    seed: int,
    coco_ann: str | os.PathLike[str] | None,
    measure: dict[str, Any],
) -> dict[str, Any]:
    """``run.json`` before the run: ``settings`` (what must match to resume or merge) and facts."""
    settings = {
        "checkpoint_sha256": _sha256_file(loaded.path),
        "arch": loaded.arch.to_dict(),  # with the hash: the model, whatever options rebuilt it
        "blocks": block_names,
        "preprocess": loaded.preprocess.to_dict(),
        "selection": {
            "source": "coco" if coco_ann is not None else "files",
            "annotations_sha256": _sha256_file(coco_ann) if coco_ann is not None else None,
            "images": len(items),
            "keys_sha256": hashlib.sha256("\n".join(it.key for it in items).encode()).hexdigest(),
            "id_type": "int" if coco_ann is not None else "str",
        },
        "queries": str(spec) if save_maps else None,
        "save_maps": save_maps,
        "seed": seed,
        "measure": {**measure, "convention": "1-cos", "zero": "exclude", "own_object": coco_ann is not None},
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "checkpoint": {
            "path": str(Path(loaded.path).resolve()),
            "sha256": settings["checkpoint_sha256"],
            "format": loaded.format,
            "arch": loaded.arch.to_dict(),
            "blocks": loaded.blocks,
            "notes": loaded.notes,
        },
        "preprocess": loaded.preprocess.to_dict(),
        "padding": "positions that are only padding are excluded from every statistic, as queries and as keys",
        "versions": _versions(),
        "finished": None,
    }


def _analyse(batch: list[_Loaded], *, store: RunStore, done_before: set[str], **kw: Any) -> tuple[int, int]:
    """Analyse one planned batch; write its images not done before. Returns ``(done, failed)``."""
    failures = [(one, one.error) for one in batch if one.error is not None]
    results: list[tuple[_Loaded, pd.DataFrame, Any]] = []
    groups: dict[tuple[int, ...], list[_Loaded]] = {}
    for one in batch:
        if one.error is None:
            groups.setdefault(tuple(one.tensor.shape), []).append(one)
    for group in groups.values():
        try:
            results += _forward(group, **kw)
        except ValueError as err:  # e.g. NaN features
            if len(group) == 1:
                failures.append((group[0], f"{group[0].item.path}: {err}"))
                continue
            for one in group:  # one bad image must not fail its batch mates
                try:
                    results += _forward([one], **kw)
                except ValueError as err1:
                    failures.append((one, f"{one.item.path}: {err1}"))
    done = failed = 0
    for one, reason in failures:
        if one.item.key not in done_before:
            store.write_failure(one.item, reason)
            failed += 1
    for one, rows, save in results:
        if one.item.key not in done_before:
            if save is not None:
                store.write_maps(one.item.key, save)
            store.write_part(one.item.key, rows)
            done += 1
    return done, failed


def _forward(
    group: list[_Loaded],
    *,
    model: torch.nn.Module,
    device: torch.device,
    blocks: list[str],
    save_maps: bool,
    seed: int,
    use_objects: bool,
    capture_kwargs: dict[str, Any],
) -> list[tuple[_Loaded, pd.DataFrame, Any]]:
    """One forward over images of equal shape: per image, its rows and its maps writer (or None)."""
    images = torch.stack([g.tensor for g in group]).to(device)
    valid = torch.stack([g.valid for g in group]).to(device)
    offsets = np.cumsum([0] + [len(g.queries) if g.queries is not None else 0 for g in group])
    points = np.concatenate([g.queries for g in group]) if save_maps and offsets[-1] else None
    jsd_seed = _seed_of(seed, tuple(g.item.key for g in group), "jsd")
    with Capture(model, blocks, queries=points, keep_records=True, seed=jsd_seed, **capture_kwargs) as cap:
        cap.set_valid(valid)
        if use_objects and all(g.labels is not None for g in group):
            cap.set_objects(torch.stack([g.labels for g in group]).to(device))
        model(images)
    records = cap.records
    frame = records_to_frame(records, image_ids=list(range(len(group))))
    for name in OBJECT_COLUMNS:
        if name not in frame:  # a capture without own-object statistics
            frame[name] = math.nan
    out = []
    for b, g in enumerate(group):
        rows = frame[frame["image"] == b].copy()
        rows["image_id"] = g.item.image_id
        rows["file_name"] = g.item.file_name
        rows["image_height"], rows["image_width"] = g.original_size
        save = None
        if save_maps:
            sl = slice(int(offsets[b]), int(offsets[b + 1]))
            save = partial(_save_maps, records=records, b=b, sl=sl, one=g, input_size=tuple(images.shape[-2:]))
        out.append((g, rows[COLUMNS].reset_index(drop=True), save))
    return out


def _save_maps(file: Any, *, records: list[BlockRecord], b: int, sl: slice, one: _Loaded, input_size: tuple[int, int]) -> None:
    recs = [r for r in records if r.queries is not None]
    save_image_maps(
        file,
        image_id=one.item.image_id,
        blocks=[r.name for r in recs],
        maps=[r.queries.maps[b, sl].numpy() for r in recs],
        cells=[r.queries.feature_yx[sl].numpy() for r in recs],
        query_shapes=[r.query_shape for r in recs],
        key_shapes=[r.key_shape for r in recs],
        query_yx=one.queries if one.queries is not None else np.zeros((0, 2)),
        query_label=one.query_label if one.query_label is not None else np.zeros(0, dtype=np.int64),
        scale=one.scale,
        size=one.size,
        original_size=one.original_size,
        input_size=input_size,
    )
