"""The data-set loop of ``nlanalysis extract``: images in, a result set out (see ``store``).

For each image: read it (in DataLoader workers with ``workers > 0``), preprocess it as the model
expects (an NL/GC checkpoint: resize keeping the ratio, normalise, pad to the divisor; a ViT:
224 x 224 pad-to-square or centre crop), draw its objects into a label map (COCO), choose its
query points (``--save-maps``; in the main process, in cells the analysed blocks keep), run the
model under the analysis' capture with the valid-pixel mask (padding is excluded from every
statistic, as queries and as keys), and write its rows (and maps) atomically. What depends on the kind of model comes from an
:class:`~nlanalysis.extract.analyses.Analysis` (NL/GC blocks or ViT heads); the loop is one.

Determinism (what makes a resumed run equal an uninterrupted one row for row):

* The batches are planned from the whole shard before anything is skipped (:mod:`.resume`); a
  batch with some images done is recomputed whole and only its missing images are written.
* Only images with the same padded input shape share a batch (each image is padded to its own
  divisor, as at batch size 1), so batching never changes an image's input. Results then equal
  a batch-size-1 run up to float rounding of batched kernels, except ``att_jsd``, whose query pairs
  are drawn by one generator per forward: it differs within its standard error
  (``att_jsd_stderr``) unless the batch size is 1.
* Random choices are seeded from ``(seed, image key)`` (queries) or ``(seed, keys of the batch)``
  (JSD pairs and controls; or ``MeasureSpec.batch_seed``), never from the order images are processed in.
* An image whose reading process died on it twice (a crashing or, with ``read_timeout``, hung decoder: :mod:`.readers`;
  a kill after ``read_timeout`` counts only in sessions whose limit is no larger) fails unread, in its planned batch:
  its batch mates are measured as beside any image that cannot be read. A loader whose worker died is made again for
  the batches not yet measured: nothing is measured twice or skipped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import schema
from ..data.images import exif_orientation
from ..files import require_folder
from ..metrics.threads import free_core_threads
from .analyses import Analysis, LayerMaps, load_analysis
from .loading import ImageDataset, Loaded, failure_reason, forks, worker_init
from .maps import save_image_maps
from .queries import QuerySpec, select_queries
from .readers import Readers, ReadMarker
from .results import summarize
from .resume import claim_shard, plan_shard
from .sources import ImageItem, coco_images, file_images, photo_images, shard_of
from .spec import RunSpec
from .store import FORMAT, FORMAT_VERSION, RunStore, frame_from_csv, now, sha256_file
from .termination import exit_on_term

__all__ = ["ExtractReport", "resolve_device", "resolve_shard", "run_extract"]


@dataclass
class ExtractReport:
    """What one ``run_extract`` call did.

    Attributes:
        path: the run directory.
        shard: ``(index, count)`` this process worked on.
        done, failed, skipped: images analysed, failed and skipped (done before) in this call.
        seconds: wall time of the loop.
        info: the run's ``run.json`` after assembly (counts cover every shard in the folder).
        summary: mean of each statistic per block (ViT: per layer, head-mean rows) over all done
            images of the run.
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
    valid = "valid devices: cpu, cuda, cuda:N"
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device}: not a device torch knows; {valid}") from None
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
        raise ValueError(f"--device {device}: not supported; {valid}")
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


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("nlanalysis", "torch", "torchvision", "numpy", "pandas", "pycocotools", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _choose_queries(one: Loaded, spec: QuerySpec, analysis: Analysis, seed: int) -> None:
    """Set ``one``'s query points: on the seen image, in cells every analysed block keeps.

    Runs in the main process: the blocks' query grids (:meth:`Analysis.query_grids`) come from the model.
    """
    p, input_size = one.prep, tuple(one.prep.tensor.shape[1:])
    rng = np.random.default_rng(_seed_of(seed, one.item.key, "queries"))
    points = select_queries(spec, p.size, rng, one.objects, p.scale, p.offset, input_size, analysis.query_grids(input_size))
    one.queries, one.query_label = points.yx, points.label


# -- the loop ------------------------------------------------------------------------------------


def run_extract(spec: RunSpec, *, progress: bool = True, command: Sequence[str] | None = None) -> ExtractReport:
    """Analyse every image ``spec`` selects and write (or resume) its result set ``spec.output.out``.

    Args:
        spec: the run (:class:`~nlanalysis.extract.spec.RunSpec`): the model (a checkpoint, NL/GC or
            ViT, told apart by its keys; a named model; a loaded checkpoint or a ready
            :class:`~nlanalysis.extract.analyses.Analysis`), the images (COCO, files or the shipped
            photos), the measurement (JSD pairs, chunks, controls), the output (folder, saved maps
            and their query points) and how this process runs (device, batch size, workers, shard).
            Recorded whole in ``run.json`` (``spec``).
        progress: show a tqdm progress bar.
        command: the command line to record (default ``sys.argv``).
    """
    started, t0 = now(), time.perf_counter()
    require_folder(spec.output.out, "the result set")  # in words, before the model and the images are read
    shard_index, shard_count = resolve_shard(spec.running.shard)
    dev = resolve_device(spec.running.device)
    items = _select(spec)
    analysis = load_analysis(spec.model.ckpt, model=spec.model.name, blocks=spec.model.blocks, options=spec.model.options)
    if spec.measure.controls and not analysis.controls:
        why = " with --vit-keys all (the control's maps are over patch keys)" if analysis.kind == "vit-heads" else ""
        raise ValueError(f"--controls (random projections at matched sharpness) is not available for {analysis.kind}{why}")
    analysis.set_query_dependence(spec.measure.query_dependence)
    analysis.set_locality_control(spec.measure.locality_control)
    analysis.model.to(dev)
    use_objects = spec.data.coco and analysis.object_statistics
    info = _describe_run(analysis, items, spec, own_object=use_objects)
    info.update(command=list(command if command is not None else sys.argv), selection_args=_selection_args(spec),
                spec=spec.to_dict(), started=started, cwd=os.getcwd())  # fmt: skip  (cwd: where relative paths lead)
    store = RunStore(spec.output.out)
    store.open(json.loads(json.dumps(info, default=str)), items)

    shard_name = f"{shard_index}-of-{shard_count}"
    # one process per shard: a second identical command is refused; SIGTERM/SIGHUP end the session as an error would
    with claim_shard(store, shard_name), exit_on_term() as term:
        batch_size = spec.running.batch_size or analysis.batch_size
        plan = plan_shard(store, shard_of(items, shard_index, shard_count), analysis.input_shape, batch_size, analysis.shape_from_image,
                          analysis.columns)
        for why in plan.redone.values():
            print(f"nlanalysis extract: warning: redoing a damaged image: {why}", file=sys.stderr)
        session = {
            "id": uuid.uuid4().hex, "started": started, "finished": None, "command": info["command"],
            "host": socket.gethostname(), "pid": os.getpid(), "device": str(dev), "batch_size": batch_size,
            "workers": spec.running.workers, "images": len(plan.items), "skipped": len(plan.items) - plan.n_todo, "done": 0,
            "failed": 0, "redone_damaged": [{"key": k, "why": why} for k, why in plan.redone.items()],
            **({"read_timeout": spec.running.read_timeout} if spec.running.read_timeout else {}),
        }  # fmt: skip
        store.write_session(shard_name, session)
        readers = Readers(store, shard_name, session, spec.running.read_timeout)
        work = _BatchWork(spec, analysis, store, dev, plan.done_before, use_objects)
        try:
            readers.recover()  # an image an earlier session's reader died on: counted, skipped at its second death
            batches = readers.batches(partial(_loader, spec, analysis, plan.items, use_objects, readers.marker), plan.todo)
            _loop(batches, work, session, plan.n_todo, progress, f"extract {shard_name}" if shard_count > 1 else "extract")
        finally:
            term.hold()  # a polite kill now waits for the session to be written
            readers.close()
            session["finished"] = now() if session["done"] + session["failed"] == plan.n_todo else None
            session["seconds"] = round(time.perf_counter() - t0, 3)
            store.write_session(shard_name, session)
            run_info = store.assemble()
    metrics_csv = store.root / "metrics.csv"
    metrics = frame_from_csv(metrics_csv.read_text(), run_info["settings"]["selection"]["id_type"], metrics_csv)
    return ExtractReport(store.root, (shard_index, shard_count), session["done"], session["failed"], session["skipped"],
                         time.perf_counter() - t0, run_info, summarize(metrics))  # fmt: skip


def _loader(spec: RunSpec, analysis: Analysis, items: list[ImageItem], use_objects: bool, marker: ReadMarker,
            batches: Sequence[list[int]], skip: Mapping[str, str]) -> torch.utils.data.DataLoader:  # fmt: skip
    """The loader of ``batches`` of ``items`` (images read in DataLoader workers with ``workers > 0``), each image marked
    as being read (``marker``) but those of ``skip`` (``{key: failure reason}``), which fail unread (:mod:`.readers`)."""
    workers, queries = spec.running.workers, spec.query_spec() if spec.output.save_maps else None
    return torch.utils.data.DataLoader(
        ImageDataset(items, analysis.prepare, queries, use_objects, marker, skip),
        batch_sampler=batches, num_workers=workers, collate_fn=list, worker_init_fn=partial(worker_init, parent=os.getpid(), forked=forks()) if workers else None,
        prefetch_factor=2 if workers else None, timeout=spec.running.read_timeout or 0,
    )  # fmt: skip


def _selection_args(spec: RunSpec) -> dict[str, Any]:
    data = spec.data
    return {"coco_ann": data.coco_ann, "coco_images": data.coco_images, "images": data.images, "photos": data.photos,
            "image_ids": data.image_ids, "cat_ids": data.cat_ids, "limit": data.limit, "seed": spec.seed}  # fmt: skip


def _select(spec: RunSpec) -> list[ImageItem]:
    """The selected images of ``spec.data`` (COCO, files or the shipped photos), in run order."""
    data = spec.data
    if data.coco:
        return coco_images(data.coco_ann, data.coco_images, image_ids=data.image_ids, cat_ids=data.cat_ids, limit=data.limit,
                           seed=spec.seed)  # fmt: skip
    if data.photos is not None:
        return photo_images(data.photos, image_ids=data.image_ids, limit=data.limit, seed=spec.seed)
    return file_images(data.images, image_ids=data.image_ids, limit=data.limit, seed=spec.seed)


def _loop(
    batches: Generator[list[Loaded], None, None], work: Callable[[list[Loaded]], tuple[int, int]], session: dict[str, Any], total: int, progress: bool,
    desc: str,
) -> None:
    """Run ``work`` over the batches, counting into ``session``, with a progress bar; the batches are closed (their
    workers shut down) when it ends."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", disable=not progress, desc=desc, dynamic_ncols=True)
    try:
        with torch.inference_mode(), contextlib.closing(batches):
            for batch in batches:
                done, failed = work(batch)
                session["done"] += done
                session["failed"] += failed
                bar.update(done + failed)
                if session["failed"]:
                    bar.set_postfix(failed=session["failed"])
    finally:
        bar.close()


def _coco_rules(items: list[ImageItem]) -> dict[str, str]:
    """The settings of the COCO rules that change the rows of these images: crowd regions left out where an annotation
    is a crowd with a mask, the stored frame first where an image file has an EXIF orientation (a header read each), and
    the stored frame for such a file whose entry states no size (earlier runs read it as displayed: they lack the key)."""
    rules = {}
    if any(a.get("iscrowd") and a.get("segmentation") for it in items for a in it.annotations or ()):
        rules["crowd"] = "left-out"
    turned = [it for it in items if exif_orientation(it.path) != 1]
    if turned:
        rules["frame"] = "stored-first"
    if any(it.height is None or it.width is None for it in turned):  # since 2026-12-06: read as stored, not as displayed
        rules["frame_unsized"] = "stored"
    return rules


def _describe_run(analysis: Analysis, items: list[ImageItem], spec: RunSpec, *, own_object: bool) -> dict[str, Any]:
    """``run.json`` before the run: ``settings`` (what must match to resume or merge) and facts.

    The settings are those runs written before :class:`RunSpec` existed hold, key for key, but
    ``measure.definitions`` (the column definitions' version, :data:`nlanalysis.schema.DEFINITIONS`): runs written
    before it was recorded, or under other definitions, are refused on resume and merge, saying why."""
    coco_ann, save_maps = spec.data.coco_ann, spec.output.save_maps
    settings = {
        **analysis.settings(),
        "selection": {
            "source": "coco" if coco_ann is not None else "photos" if spec.data.photos is not None else "files",
            "annotations_sha256": sha256_file(coco_ann) if coco_ann is not None else None,
            "images": len(items),
            "keys_sha256": hashlib.sha256("\n".join(it.key for it in items).encode()).hexdigest(),
            # COCO ids are ints, but a file may use strings: then they are read back as text
            "id_type": "int" if coco_ann is not None and all(_is_int(it.image_id) for it in items) else "str",
            # COCO runs since 2026-12-05, where the rule changes rows: crowd regions neither object nor background
            # (annotations with crowds), images read in their stored frame first (images with an EXIF orientation,
            # _annotated_pixels); earlier runs with such data lack the keys and refuse to resume or merge
            **(_coco_rules(items) if coco_ann is not None else {}),
        },
        "queries": str(spec.query_spec()) if save_maps else None,
        # saved query points keep to cells every block's statistics keep; runs written before this rule placed
        # them anywhere on the image and lack this setting, so they refuse to resume or merge with new ones
        "query_placement": "kept-cells" if save_maps else None,
        "save_maps": save_maps,
        "seed": spec.seed,
        "measure": {"jsd_pairs": spec.measure.jsd_pairs, "controls": spec.measure.controls, "convention": "1-cos", "zero": "exclude",
                    "own_object": own_object, **analysis.measure_settings(),
                    # which computation of the columns wrote the rows (schema.DEFINITIONS): runs written before it was
                    # recorded lack it, so they refuse to resume or merge with new ones (.definitions says why)
                    "definitions": schema.DEFINITIONS,
                    # only when given: runs made before it resume and merge as before
                    **({"batch_seed": spec.measure.batch_seed} if spec.measure.batch_seed is not None else {}),
                    **({"query_dependence": spec.measure.query_dependence} if spec.measure.query_dependence != "off" else {}),
                    **({"locality_control": True} if spec.measure.locality_control else {})},  # fmt: skip
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "analysis": analysis.kind,
        "settings": settings,
        **analysis.describe(),
        "versions": _versions(),
        "finished": None,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class _BatchWork:
    """The work on one planned batch (called with it): analyse it, write its images not done before."""

    spec: RunSpec
    analysis: Analysis
    store: RunStore
    device: torch.device
    done_before: set[str]
    use_objects: bool

    def __post_init__(self) -> None:
        self.queries = self.spec.query_spec() if self.spec.output.save_maps else None

    def __call__(self, batch: list[Loaded]) -> tuple[int, int]:
        """Returns ``(done, failed)``."""
        failures = [(one, one.error) for one in batch if one.error is not None]
        results: list[tuple[Loaded, pd.DataFrame, Any]] = []
        groups: dict[tuple[int, ...], list[Loaded]] = {}
        for one in batch:
            if one.error is None and self.queries is not None:
                try:
                    _choose_queries(one, self.queries, self.analysis, self.spec.seed)
                except Exception as err:
                    failures.append((one, failure_reason(one.item, err, "queries")))
                    continue
            if one.error is None:
                groups.setdefault(tuple(one.prep.tensor.shape), []).append(one)
        for group in groups.values():
            try:
                results += self.forward(group)
            except Exception as err:  # e.g. NaN features, out of memory on one large image
                if len(group) == 1:
                    failures.append((group[0], failure_reason(group[0].item, err)))
                    continue
                for one in group:  # one bad image must not fail its batch mates
                    try:
                        results += self.forward([one])
                    except Exception as err1:
                        failures.append((one, failure_reason(one.item, err1)))
        kept = []
        for one, rows, save in results:
            too_small = _too_small(one, rows)
            if too_small:
                failures.append((one, too_small))
            else:
                kept.append((one, rows, save))
        failures = [(one, why) for one, why in failures if one.item.key not in self.done_before]
        kept = [(one, rows, save) for one, rows, save in kept if one.item.key not in self.done_before]
        for one, why in failures:
            self.store.write_failure(one.item, why)
        for one, rows, save in kept:
            self.store.write_done(one.item.key, rows, save, one.image_file)
        return len(kept), len(failures)

    def forward(self, group: list[Loaded]) -> list[tuple[Loaded, pd.DataFrame, Any]]:
        """One forward over images of equal shape: per image, its rows and its maps writer (or None)."""
        analysis, measure, save_maps = self.analysis, self.spec.measure, self.spec.output.save_maps
        images = torch.stack([g.prep.tensor for g in group]).to(self.device)
        valid = torch.stack([g.prep.valid for g in group]).to(self.device)
        offsets = np.cumsum([0] + [len(g.queries) if g.queries is not None else 0 for g in group])
        points = np.concatenate([g.queries for g in group]) if save_maps and offsets[-1] else None
        seed = measure.batch_seed if measure.batch_seed is not None else _seed_of(self.spec.seed, tuple(g.item.key for g in group), "jsd")
        with free_core_threads(), analysis.capture(queries=points, seed=seed, jsd_pairs=measure.jsd_pairs,
                                                   chunk_size=measure.chunk_size, controls=measure.controls) as cap:  # fmt: skip
            cap.set_valid(valid)
            if self.use_objects and all(g.objects is not None for g in group):
                cap.set_objects(torch.stack([torch.from_numpy(g.objects.labels) for g in group]).to(self.device))
                cap.object_categories = [g.objects.category_ids for g in group]  # same/other-category context (.object_sites)
            analysis.model(images)
        records = cap.records
        frame = analysis.frame(records, len(group), valid)
        out = []
        for b, g in enumerate(group):
            rows = frame[frame["image"] == b].copy()
            rows["image_id"] = g.item.image_id
            rows["file_name"] = g.item.file_name
            rows["image_height"], rows["image_width"] = g.prep.original_size
            save = None
            if save_maps:
                layers = analysis.layer_maps(records, b, slice(int(offsets[b]), int(offsets[b + 1])))
                save = partial(_save_maps, layers=layers, one=g, input_size=tuple(images.shape[-2:]))
            out.append((g, rows[analysis.columns].reset_index(drop=True), save))
        return out


def _too_small(one: Loaded, rows: pd.DataFrame) -> str | None:
    """The failure reason of an image too small for some block's grid: no query cell of that block
    lies on the image (every statistic would be NaN), or ``None``."""
    empty = rows.loc[rows["n_query"] == 0, "block"].unique().tolist()
    if not empty:
        return None
    (h, w), size = one.prep.original_size, one.prep.size
    grids = rows.loc[rows["block"].isin(empty), ["height", "width"]].drop_duplicates().astype(int).values.tolist()
    return (
        f"{one.item.path}: the image ({h}x{w} pixels, {size[0]}x{size[1]} after preprocessing) is too small for "
        f"{', '.join(map(str, empty))}: no cell of its {' / '.join(f'{a}x{b}' for a, b in grids)} query grid lies on the image"
    )


def _save_maps(file: Any, image_sha256: str | None, *, layers: list[LayerMaps], one: Loaded, input_size: tuple[int, int]) -> None:
    p = one.prep
    save_image_maps(
        file, image_id=one.item.image_id, blocks=[m.name for m in layers], maps=[m.maps for m in layers], cells=[m.cells for m in layers],
        query_shapes=[m.query_shape for m in layers], key_shapes=[m.key_shape for m in layers],
        query_yx=one.queries if one.queries is not None else np.zeros((0, 2)),
        query_label=one.query_label if one.query_label is not None else np.zeros(0, dtype=np.int64),
        scale=p.scale, size=p.size, original_size=p.original_size, input_size=input_size, offset=p.offset,
        file_sha256=image_sha256,  # the hash of the image file's bytes measured (RunStore.write_done)
    )  # fmt: skip
