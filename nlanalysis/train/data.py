"""Scene sets in memory for training: images and per-pixel class maps from COCO files."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checkpoints.preprocess import Preprocess
from ..data.images import load_image
from ..data.scenes import semantic_mask
from ..extract.sources import load_coco

__all__ = ["SceneSet", "load_scene_set", "normalize", "scene_preprocess"]


def scene_preprocess(size: int) -> Preprocess:
    """Preprocessing of the trained scene models, stored in their checkpoints."""
    return Preprocess(
        mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), to_rgb=True, scale=(size, size),
        keep_ratio=True, pad_divisor=16, source="nlanalysis train (Fashion-MNIST scenes)",
    )  # fmt: skip


@dataclass
class SceneSet:
    """A scene set held in memory.

    Attributes:
        images: ``uint8 [N, 3, H, W]`` RGB.
        masks: ``int64 [N, H, W]`` class per pixel (0 = background).
        image_ids: COCO image ids, in order.
        num_classes: categories + background.
        source: the annotation file.
    """

    images: Tensor
    masks: Tensor
    image_ids: list[int]
    num_classes: int
    source: str

    def __len__(self) -> int:
        return len(self.image_ids)

    def digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the ids, pixels and class maps: the same scenes give the same
        digest wherever their files lie (a run record keeps it, so moving the files does not void a resume)."""
        h = hashlib.sha256(repr((self.image_ids, self.num_classes, tuple(self.images.shape))).encode())
        for t in (self.images, self.masks):
            h.update(memoryview(t.contiguous().numpy()).cast("B"))
        return h.hexdigest()[:16]

    def subset(self, index: slice | list[int]) -> SceneSet:
        idx = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        return SceneSet(self.images[idx], self.masks[idx], [self.image_ids[i] for i in idx], self.num_classes, self.source)


def load_scene_set(ann_file: str | Path, image_dir: str | Path, limit: int | None = None) -> SceneSet:
    """Read a COCO scene set (pycocotools) into memory; image ids in ascending order."""
    coco = load_coco(ann_file)
    ids = sorted(coco.getImgIds())[:limit]
    if not ids:
        raise ValueError(f"{ann_file}: no images")
    images = np.stack([load_image(Path(image_dir) / coco.imgs[i]["file_name"]) for i in ids])
    masks = np.stack([semantic_mask(coco, i, images.shape[1:3]) for i in ids])
    num_classes = max(coco.getCatIds()) + 1
    return SceneSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks), ids, num_classes, str(ann_file))


def normalize(images: Tensor, pre: Preprocess) -> Tensor:
    """``uint8 [B, 3, H, W]`` -> float model input, exactly as :func:`nlanalysis.data.prepare_image`
    does for an image already at the model's size (no resize, no padding needed)."""
    mean = torch.tensor(pre.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(pre.std, dtype=torch.float32)[:, None, None]
    return (images.float() - mean) / std
