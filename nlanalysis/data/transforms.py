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

__all__ = ["Prepared", "collate", "image_region", "padded_size", "prepare_image", "resized_size"]


@dataclass
class Prepared:
    """One image ready for the model.

    Attributes:
        tensor: ``[3, H_pad, W_pad]`` float32, normalised and padded.
        valid: ``[H_pad, W_pad]`` bool, True on image pixels.
        scale: ``(sy, sx)`` resized / original size.
        size: ``(H, W)`` of the resized image before padding.
        original_size: ``(H, W)`` of the input image.
        offset: ``(top, left)``: the model-input pixel where the resized image's corner lies, so
            input pixel ``(y, x)`` shows resized pixel ``(y - top, x - left)``. ``(0, 0)`` here
            (padding at the bottom/right); a centred pad has it positive, a centre crop negative
            (:func:`nlanalysis.data.vit_preprocess.prepare_vit_image`).
    """

    tensor: Tensor
    valid: Tensor
    scale: tuple[float, float]
    size: tuple[int, int]
    original_size: tuple[int, int]
    offset: tuple[int, int] = (0, 0)

    @property
    def region(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the model-input pixels that show the image (:func:`image_region`)."""
        return image_region(self.size, self.offset, tuple(self.tensor.shape[-2:]))


def image_region(
    size: tuple[int, int], offset: tuple[int, int] = (0, 0), input_size: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the model-input pixels ``[y0, y1) x [x0, x1)`` that show the image.

    Args:
        size: ``(h, w)`` of the resized image.
        offset: ``(top, left)`` of its corner in the input (negative where it was cropped).
        input_size: ``(H, W)`` of the input, to clip to (``None``: the image lies inside it).
    """
    (h, w), (top, left) = size, offset
    big_h, big_w = input_size if input_size is not None else (top + h, left + w)
    return max(top, 0), min(top + h, big_h), max(left, 0), min(left + w, big_w)


def resized_size(h: int, w: int, pre: Preprocess) -> tuple[int, int]:
    """``(H, W)`` an ``h x w`` image is resized to before padding, as :func:`prepare_image` does."""
    if not pre.keep_ratio:  # exactly the config's (w, h), whatever the image's orientation (mmcv.imresize(img, (w, h)))
        return pre.scale[1], pre.scale[0]
    long_side, short_side = max(pre.scale), min(pre.scale)
    factor = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def padded_size(h: int, w: int, pre: Preprocess) -> tuple[int, int]:
    """``(H, W)`` of the model input of an ``h x w`` image: its :func:`resized_size` padded to ``pre.pad_divisor``."""
    nh, nw = resized_size(h, w, pre)
    d = pre.pad_divisor
    return (-(-nh // d) * d, -(-nw // d) * d) if d else (nh, nw)


def prepare_image(image: np.ndarray, pre: Preprocess) -> Prepared:
    """Resize, normalise and pad one ``uint8`` RGB ``[H, W, 3]`` image as ``pre`` says."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, pre)
    if nh < 1 or nw < 1:
        raise ValueError(f"the image ({h}x{w} pixels) is too small or too thin for the preprocessing: it resizes to {nh}x{nw}")
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)  # cv2 INTER_LINEAR, no antialias (mmcv.imrescale)
    x = x[0]
    if not pre.to_rgb:  # the model expects BGR
        x = x.flip(0)
    mean = torch.tensor(pre.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(pre.std, dtype=torch.float32)[:, None, None]
    x = (x - mean) / std
    ph, pw = padded_size(h, w, pre)
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
