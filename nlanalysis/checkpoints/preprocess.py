"""Input preprocessing a checkpoint expects, from its config or mmdetection's defaults.

mmdetection normalises RGB images with ImageNet statistics in 0..255 units, resizes keeping the
aspect ratio to fit (1333, 800) and pads to a multiple of 32 (``configs/_base_/datasets/
coco_detection.py``). Configs say so in different places by version: 2.x ``img_norm_cfg`` and
the ``Normalize``/``Resize``/``MultiScaleFlipAug``/``Pad`` transforms, 3.x
``model.data_preprocessor`` (``mean``, ``std``, ``bgr_to_rgb``, ``pad_size_divisor``) and
``Resize(scale=..., keep_ratio=True)``, the GCNet repository (mmdetection v0.x)
``data.test`` (``img_norm_cfg``, ``img_scale``, ``size_divisor``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["Preprocess", "preprocess_from_config"]


@dataclass(frozen=True)
class Preprocess:
    """How to turn an image into the model's input.

    Attributes:
        mean, std: per channel, in the units of the 0..255 image, in the model's channel order.
        to_rgb: convert BGR (OpenCV-loaded) images to RGB before normalising; for images already
            in RGB it means "the model expects RGB".
        scale: the resize's ``scale`` as the config gives it, ``(w, h)``, mmdetection's ``(1333, 800)``.
        keep_ratio: keep the aspect ratio (fit inside ``scale``'s long and short side, either orientation), else resize
            every image to exactly ``w x h`` (a portrait image too, as mmcv's ``imresize(img, (w, h))``).
        pad_divisor: pad height and width to a multiple of this (0: no padding).
        source: where these values come from (for ``inspect``).
    """

    mean: tuple[float, ...] = (123.675, 116.28, 103.53)
    std: tuple[float, ...] = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    scale: tuple[int, int] = (1333, 800)
    keep_ratio: bool = True
    pad_divisor: int = 32
    source: str = "mmdetection defaults"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(mean=list(self.mean), std=list(self.std), scale=list(self.scale))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        data = dict(data)
        for key in ("mean", "std", "scale"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _walk(value)


def _test_section(cfg: dict[str, Any]) -> Any:
    for key in ("test_pipeline", "test_dataloader"):
        if key in cfg:
            return cfg[key]
    data = cfg.get("data")
    if isinstance(data, dict) and "test" in data:
        return data["test"]
    return cfg


def _scale(value: Any) -> tuple[int, int] | None:
    if isinstance(value, list) and value and isinstance(value[0], (list, tuple)):
        value = value[0]  # multi-scale test: take the first
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def preprocess_from_config(cfg: dict[str, Any], source: str) -> Preprocess | None:
    """Preprocessing stated by a parsed mmdetection config, or ``None`` if it states none."""
    found: dict[str, Any] = {}

    def norm(d: dict[str, Any]) -> None:
        if "mean" in d and "std" in d:
            found.update(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]))
        if "to_rgb" in d:
            found["to_rgb"] = bool(d["to_rgb"])
        if "bgr_to_rgb" in d:
            found["to_rgb"] = bool(d["bgr_to_rgb"])

    if isinstance(cfg.get("img_norm_cfg"), dict):
        norm(cfg["img_norm_cfg"])
    for d in _walk(_test_section(cfg)):
        kind = d.get("type")
        if kind == "Normalize" or isinstance(d.get("img_norm_cfg"), dict):
            norm(d if kind == "Normalize" else d["img_norm_cfg"])
        for key in ("scale", "img_scale"):
            if (kind in ("Resize", "MultiScaleFlipAug", None) or "img_scale" in d) and _scale(d.get(key)):
                found["scale"] = _scale(d[key])
        if "keep_ratio" in d:
            found["keep_ratio"] = bool(d["keep_ratio"])
        if "size_divisor" in d and isinstance(d["size_divisor"], int):
            found["pad_divisor"] = d["size_divisor"]
    model = cfg.get("model")
    if isinstance(model, dict) and isinstance(model.get("data_preprocessor"), dict):
        dp = model["data_preprocessor"]
        norm(dp)
        if any(k in dp for k in ("mean", "std", "bgr_to_rgb", "rgb_to_bgr")):  # mmengine's ImgDataPreprocessor flips the
            found["to_rgb"] = bool(dp.get("bgr_to_rgb") or dp.get("rgb_to_bgr"))  # channels when told: else BGR, as loaded
        if isinstance(dp.get("pad_size_divisor"), int):
            found["pad_divisor"] = dp["pad_size_divisor"]
    if not found:
        return None
    return replace(Preprocess(), source=source, **found)
