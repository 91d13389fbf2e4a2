"""Small real inputs for the ``extract`` tests: a tiny checkpoint, photos, a COCO file.

Used by the tests and by ``benchmarks/extract.py`` (which puts ``tests/`` on its path). The photos are the real ones that ship in wheels
(:func:`nlanalysis.data.sample_photos`); the COCO file annotates them with made-up objects of
every kind COCO has (polygon masks, compressed and uncompressed RLE, box only, crowd), valid for
pycocotools. The checkpoint is this project's native format, untrained (seeded, BatchNorm
calibrated on the photos).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlanalysis.checkpoints import Preprocess, save_checkpoint
from nlanalysis.models import BlockSpec, ResNetArch, build_model

__all__ = ["TINY_ARCH", "one_thread", "tiny_checkpoint", "tiny_hf_vit", "write_coco", "write_photos"]

#: two stages of a ResNet, a GC block in res2 and an embedded-Gaussian NL block in res3.
TINY_ARCH = ResNetArch(
    (1, 1),
    [
        BlockSpec("layer1.0.context_block", "ContextBlock", 256, "after_conv3", {"ratio": 1 / 16}),
        BlockSpec("layer2.0.nonlocal_block", "NonLocal2d", 512, "after_conv3", {"mode": "embedded_gaussian"}),
    ],
    prefix="backbone.",
)


def tiny_hf_vit(folder: str | os.PathLike[str], heads: int = 2) -> Path:
    """Write a tiny random Hugging Face ViT folder (``config.json`` stating ``heads`` heads, ``model.safetensors``;
    1 layer, width 32, 14-pixel patches, 28 x 28 input); needs transformers."""
    import transformers

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=heads, intermediate_size=64, patch_size=14,
                                    image_size=28)  # fmt: skip
    torch.manual_seed(0)
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return Path(folder)


def tiny_checkpoint(path: str | os.PathLike[str], scale: tuple[int, int] = (96, 64), seed: int = 0, arch: ResNetArch = TINY_ARCH) -> Path:
    """Write a native checkpoint of ``arch`` whose preprocessing resizes to fit ``scale`` and pads to 32.

    Untrained but not degenerate: convs get their default (seeded) init and the BatchNorm
    statistics are set on the sample photos, so features are normalised and the NL block's
    attention is far from uniform (an untouched net gives near-uniform maps).
    """
    from nlanalysis.data import collate, prepare_image, sample_photos

    torch.manual_seed(seed)
    model = build_model(arch)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    pre = Preprocess(scale=scale, source="tests/extract_inputs.py")
    images, _ = collate([prepare_image(img, Preprocess(scale=(96, 64))) for img in sample_photos().values()])
    model.train()
    with torch.no_grad():
        model(images)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return save_checkpoint(path, model.eval(), pre)


def write_photos(folder: str | os.PathLike[str], n: int | None = None, ext: str = ".jpg", max_side: int | None = None) -> list[Path]:
    """Write ``n`` real photos (cycling through the sample photos, named ``photo_000.jpg``, ...).

    ``max_side`` shrinks them first (faster to decode); ``None`` keeps their size.
    """
    from PIL import Image

    from nlanalysis.data import sample_photos

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photos = list(sample_photos().values())
    n = len(photos) if n is None else n
    paths = []
    for i in range(n):
        img = Image.fromarray(photos[i % len(photos)])
        if max_side and max(img.size) > max_side:
            img.thumbnail((max_side, max_side))
        path = folder / f"photo_{i:03d}{ext}"
        img.save(path, quality=90) if ext in (".jpg", ".jpeg") else img.save(path)
        paths.append(path)
    return paths


def _polygon_ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> list[float]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).ravel().round(2).tolist()


def write_coco(path: str | os.PathLike[str], images: list[Path], first_id: int = 1) -> dict[str, Any]:
    """Write a COCO instances file for ``images`` (their files must exist) and return it.

    Image ``i`` gets, cycling through four patterns: an ellipse polygon plus a box-only object;
    a compressed-RLE rectangle plus an uncompressed-RLE rectangle; a crowd region plus a polygon;
    no annotation at all. Category ids are 1 (polygon), 2 (RLE), 3 (box only).
    """
    from PIL import Image
    from pycocotools import mask as mask_utils

    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "blob"}, {"id": 2, "name": "block"}, {"id": 3, "name": "box"}],
    }
    ann_id = 100
    for i, p in enumerate(images):
        with Image.open(p) as img:
            w, h = img.size
        image_id = first_id + i
        coco["images"].append({"id": image_id, "file_name": Path(p).name, "height": h, "width": w})

        def add(cat: int, bbox: list[float], segmentation: Any = None, iscrowd: int = 0) -> None:
            nonlocal ann_id
            ann_id += 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [round(v, 2) for v in bbox],
                   "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd}  # fmt: skip
            if segmentation is not None:
                ann["segmentation"] = segmentation
            coco["annotations"].append(ann)

        pattern = i % 4
        if pattern == 0:
            add(1, [0.1 * w, 0.2 * h, 0.5 * w, 0.5 * h], [_polygon_ellipse(0.35 * w, 0.45 * h, 0.25 * w, 0.25 * h)])
            add(3, [0.65 * w, 0.1 * h, 0.3 * w, 0.3 * h])
        elif pattern == 1:
            m = np.zeros((h, w), dtype=np.uint8, order="F")
            m[h // 10 : h // 2, w // 10 : w // 2] = 1
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode()
            add(2, [w // 10, h // 10, w // 2 - w // 10, h // 2 - h // 10], rle)
            m2 = np.zeros((h, w), dtype=np.uint8)
            m2[h // 2 : 9 * h // 10, w // 2 : 9 * w // 10] = 1
            counts, flat, run, last = [], m2.ravel(order="F"), 0, 0
            for v in flat:  # uncompressed RLE: run lengths starting with zeros, column-major
                if v != last:
                    counts.append(run)
                    run, last = 0, v
                run += 1
            counts.append(run)
            add(2, [w // 2, h // 2, 9 * w // 10 - w // 2, 9 * h // 10 - h // 2], {"size": [h, w], "counts": counts})
        elif pattern == 2:
            add(1, [0, 0, w, h // 4], [[0, 0, w - 1, 0, w - 1, h / 4, 0, h / 4]], iscrowd=0)
            crowd = np.zeros((h, w), dtype=np.uint8, order="F")
            crowd[h // 2 :, :] = 1
            rle = mask_utils.encode(crowd)
            rle["counts"] = rle["counts"].decode()
            add(2, [0, h // 2, w, h - h // 2], rle, iscrowd=1)
    Path(path).write_text(json.dumps(coco))
    return coco


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block.

    Tiny convolutions on a busy machine: OpenMP threads that spin-wait for each other can make
    a forward 100x slower than on one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def photos_and_checkpoint(root: Path, n: int) -> tuple[Path, Path]:
    """``root`` with ``n`` small photos in ``root/images`` and a tiny checkpoint ``root/tiny.pth``: the inputs of
    :func:`images_extract_args`."""
    write_photos(root / "images", n=n, max_side=96)
    return root, tiny_checkpoint(root / "tiny.pth")


def images_extract_args(root: Path, ckpt: Path, out: str | os.PathLike[str], *extra: str) -> list[str]:
    """``nlanalysis extract`` of ``root/images`` with ``ckpt`` into ``out`` (16 JSD pairs, quiet), then ``extra``."""
    return ["extract", "--ckpt", str(ckpt), "--images", str(Path(root) / "images"), "--out", str(out), "--jsd-pairs", "16", "--quiet", *extra]


def cli_error(capsys: Any, args: list[str], command: str = "extract") -> str:
    """Run the CLI with ``args``, which must fail with exit status 2 and exactly one stderr line
    ``nlanalysis COMMAND: error: ...``; that line."""
    from nlanalysis.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nlanalysis {command}: error: "), err
    return err[0]


#: the committed files of a result set (its parts/, maps/, checks/, shards/ stay where `nlanalysis demo` wrote them)
COMMITTED_RUN_FILES = ("run.json", "metrics.csv", "failures.csv", "images.csv")


def copy_committed_run(run: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """A copy of the files the repository keeps of result set ``run`` (``reports/demo/runs/gc``, say) at ``dest``, as
    a clean checkout has them: whatever a local `nlanalysis demo` left beside them (ignored by git) is not copied."""
    src, dest = Path(run), Path(dest)
    if not src.is_absolute():
        src = Path(__file__).resolve().parents[1] / src
    dest.mkdir(parents=True)
    for name in COMMITTED_RUN_FILES:
        if (src / name).is_file():
            (dest / name).write_bytes((src / name).read_bytes())
    return dest
