"""mmdetection-style test-time preprocessing: resize keeping ratio, normalise, pad.

Follows mmdetection's ``Resize(keep_ratio=True)`` + ``Normalize`` + ``Pad(size_divisor)``: the
image is scaled by ``min(long / max(h, w), short / min(h, w))`` for ``scale = (long, short)``
(rounded to the nearest pixel), normalised with per-channel mean/std in 0..255 units, and padded
with zeros at the bottom and right to a multiple of ``pad_divisor``. The returned ``valid`` mask
marks image pixels (False on padding); statistics exclude padded positions through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoints.preprocess import Preprocess

__all__ = ["Prepared", "collate", "prepare_image", "resized_size"]


@dataclass
class Prepared:
    """One image ready for the model.

    Attributes:
        tensor: ``[3, H_pad, W_pad]`` float32, normalised and padded.
        valid: ``[H_pad, W_pad]`` bool, True on image pixels.
        scale: ``(sy, sx)`` resized / original size.
        size: ``(H, W)`` of the resized image before padding.
        original_size: ``(H, W)`` of the input image.
    """

    tensor: Tensor
    valid: Tensor
    scale: tuple[float, float]
    size: tuple[int, int]
    original_size: tuple[int, int]


def resized_size(h: int, w: int, pre: Preprocess) -> tuple[int, int]:
    """``(H, W)`` an ``h x w`` image is resized to before padding, as :func:`prepare_image` does."""
    if not pre.keep_ratio:
        long_side, short_side = pre.scale
        return (short_side, long_side) if h <= w else (long_side, short_side)
    long_side, short_side = max(pre.scale), min(pre.scale)
    factor = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def prepare_image(image: np.ndarray, pre: Preprocess) -> Prepared:
    """Resize, normalise and pad one ``uint8`` RGB ``[H, W, 3]`` image as ``pre`` says."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, pre)
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)  # cv2 INTER_LINEAR, no antialias (mmcv.imrescale)
    x = x[0]
    if not pre.to_rgb:  # the model expects BGR
        x = x.flip(0)
    mean = torch.tensor(pre.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(pre.std, dtype=torch.float32)[:, None, None]
    x = (x - mean) / std
    d = pre.pad_divisor
    ph = -(-nh // d) * d if d else nh
    pw = -(-nw // d) * d if d else nw
    x = F.pad(x, (0, pw - nw, 0, ph - nh))
    valid = torch.zeros(ph, pw, dtype=torch.bool)
    valid[:nh, :nw] = True
    return Prepared(x, valid, (nh / h, nw / w), (nh, nw), (h, w))


def collate(items: list[Prepared]) -> tuple[Tensor, Tensor]:
    """Stack prepared images into ``([B, 3, H, W], valid [B, H, W])``, padding to the largest."""
    ph = max(p.tensor.shape[1] for p in items)
    pw = max(p.tensor.shape[2] for p in items)
    images = torch.zeros(len(items), 3, ph, pw)
    valid = torch.zeros(len(items), ph, pw, dtype=torch.bool)
    for i, p in enumerate(items):
        _, h, w = p.tensor.shape
        images[i, :, :h, :w] = p.tensor
        valid[i, :h, :w] = p.valid
    return images, valid
