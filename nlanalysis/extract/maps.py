"""Saved query maps (``--save-maps``): one ``maps/KEY.npz`` per image, and lazy reading.

Format (``numpy.load`` reads it; format name ``nlanalysis-maps-1``), ``K`` queries, block ``i``:

==========================  ===============  ====================================================
array                       dtype, shape     meaning
==========================  ===============  ====================================================
``format``                  str              ``nlanalysis-maps-1``
``image_id``                str              the image's id (as text)
``blocks``                  str ``[n]``      block names; block ``i`` is ``blocks[i]``
``query_yx``                float32 ``[K,2]`` query points ``(y, x)`` in model-input pixels
``query_yx_original``       float32 ``[K,2]`` the same in original-image pixels
                                             (``(query_yx - offset) / scale``)
``query_label``             int64 ``[K]``     COCO annotation id the point lies on, 0 background,
                                             -1 grid/random point
``scale``                   float64 ``[2]``   ``(sy, sx)``: resized size / original size
``size``                    int64 ``[2]``     ``(h, w)`` of the resized image inside the input
``original_size``           int64 ``[2]``     ``(h, w)`` of the image file
``input_size``              int64 ``[2]``     ``(H, W)`` of the padded model input
``offset``                  int64 ``[2]``     ``(top, left)``: input pixel of the resized image's
                                             corner (``(0, 0)``: padding at the bottom and right,
                                             the NL preprocessing; positive: the ViT's centred pad;
                                             negative: a centre crop). Files written before it
                                             existed lack it and read as ``(0, 0)``.
``maps_i``                  float16 ``[K,Hk,Wk]`` attention of each query over block ``i``'s keys;
                            ``[K,h+1,Hk,Wk]`` for a ViT layer of ``h`` heads: every head, then
                                             the head mean
``cells_i``                 int64 ``[K,2]``   each query's cell on block ``i``'s query grid
``qmaps_i``                 uint8            instead of ``maps_i`` where there are more than
                            ``[R,Hk,Wk]`` or  ``QUANTISE_ABOVE`` (64) queries (``--save-maps all``:
                            ``[R,h+1,Hk,Wk]`` every cell of the finest grid): one row per kept cell, 8 bits
                                             per weight, ``weight = qlow + q / 255 * qscale``
``qlow_i``, ``qscale_i``    float32 ``[R]``   each row's smallest weight and range (largest -
                            or ``[R,h+1]``    smallest; per head); the error is at most
                                             ``qscale / 510``
``qrows_i``                 int64 ``[R]``     the query (index into ``query_yx``) of each row:
                                             one per distinct cell, in row-major cell order
``qstride_i``               int64            query subsampling step: ``1`` keeps every cell; ``s``
                                             keeps the cells whose row and column (counted from
                                             the first kept cell) are multiples of ``s``, the
                                             smallest ``s`` that keeps the 8-bit rows of the block
                                             under ``MAX_MAP_BYTES`` (2 MiB): COCO res4, N ~ 4,200,
                                             gets ``s = 3`` (~470 queries, ~2 MB)
``query_shape_i``           int64 ``[2]``     block ``i``'s query grid
``key_shape_i``             int64 ``[2]``     block ``i``'s key grid
==========================  ===============  ====================================================

The maps are the block's weights as the model computed them, so they include the weight put on
padded keys (the model does attend there); the statistics exclude padding, and
:meth:`ImageMaps.overlay` crops it. Key cell ``(r, c)`` covers input pixels
``[r * H / Hk, (r + 1) * H / Hk) x [c * W / Wk, (c + 1) * W / Wk)``; input pixel ``(y, x)`` shows
original pixel ``((y - top) / sy, (x - left) / sx)``.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import image_region
from .store import is_run_file

__all__ = [
    "MAPS_FORMAT", "MAX_MAP_BYTES", "QUANTISE_ABOVE", "ImageMaps", "MapsIndex", "PhotoMaps", "grid_overlay", "key_cover", "photo_maps",
    "quantise_maps", "save_image_maps",
]

MAPS_FORMAT = "nlanalysis-maps-1"
#: with more queries than this, maps are stored 8-bit (``qmaps_i``), one row per distinct cell
QUANTISE_ABOVE = 64
#: the most bytes of 8-bit map rows kept per image and block: above it the query grid is subsampled
MAX_MAP_BYTES = 2 << 20


def quantise_maps(maps: np.ndarray, cells: np.ndarray, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The ``qmaps``/``qlow``/``qscale``/``qrows``/``qstride`` arrays (format above) of one block's maps.

    Args:
        maps: ``[K, Hk, Wk]`` or ``[K, M, Hk, Wk]`` the maps of ``K`` queries (``M`` maps per query).
        cells: ``[K, 2]`` each query's cell; one row is kept per distinct cell.
        max_bytes: the most bytes of rows kept (default :data:`MAX_MAP_BYTES`); above it every
            ``s``-th row and column of cells.
    """
    max_bytes = MAX_MAP_BYTES if max_bytes is None else max_bytes
    maps, cells = np.asarray(maps, dtype=np.float32), np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((cells[:, 1], cells[:, 0]))
    rows = order[np.r_[True, np.any(np.diff(cells[order], axis=0) != 0, axis=1)]] if len(order) else order
    per_row = int(np.prod(maps.shape[1:]))
    stride, kept = 1, rows
    while len(kept) * per_row > max_bytes and stride < 1 << 12:
        stride += 1
        rel = cells[rows] - cells[rows].min(axis=0)
        kept = rows[np.all(rel % stride == 0, axis=1)]
    picked = maps[kept]
    low = picked.min(axis=(-2, -1)).astype(np.float32)
    scale = (picked.max(axis=(-2, -1)) - low).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None, None]
    q = np.clip(np.rint((picked - low[..., None, None]) / safe * 255), 0, 255).astype(np.uint8)
    return {"qmaps": q, "qlow": low, "qscale": scale, "qrows": kept.astype(np.int64), "qstride": np.array(stride, dtype=np.int64)}


def save_image_maps(
    file: BinaryIO,
    *,
    image_id: Any,
    blocks: list[str],
    maps: list[np.ndarray],
    cells: list[np.ndarray],
    query_shapes: list[tuple[int, int]],
    key_shapes: list[tuple[int, int]],
    query_yx: np.ndarray,
    query_label: np.ndarray,
    scale: tuple[float, float],
    size: tuple[int, int],
    original_size: tuple[int, int],
    input_size: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
    file_sha256: str | None = None,
) -> None:
    """Write one image's maps in the format above (compressed npz) into ``file``; ``file_sha256``: the image file's, so that
    a drawing over it can tell the file the run read from another of the same name and size."""
    arrays: dict[str, np.ndarray] = dict(
        format=np.array(MAPS_FORMAT),
        image_id=np.array(str(image_id)),
        blocks=np.array(blocks, dtype=str),
        query_yx=np.asarray(query_yx, dtype=np.float32).reshape(-1, 2),
        query_yx_original=((np.asarray(query_yx, dtype=np.float64).reshape(-1, 2) - np.array(offset)) / np.array(scale)).astype(np.float32),
        query_label=np.asarray(query_label, dtype=np.int64),
        scale=np.array(scale, dtype=np.float64),
        size=np.array(size, dtype=np.int64),
        original_size=np.array(original_size, dtype=np.int64),
        input_size=np.array(input_size, dtype=np.int64),
        offset=np.array(offset, dtype=np.int64),
        **({"file_sha256": np.array(file_sha256)} if file_sha256 else {}),
    )
    for i in range(len(blocks)):
        if len(np.asarray(cells[i]).reshape(-1, 2)) > QUANTISE_ABOVE:
            arrays.update({f"{k}_{i}": v for k, v in quantise_maps(maps[i], cells[i]).items()})
        else:
            arrays[f"maps_{i}"] = np.asarray(maps[i], dtype=np.float16)
        arrays[f"cells_{i}"] = np.asarray(cells[i], dtype=np.int64)
        arrays[f"query_shape_{i}"] = np.array(query_shapes[i], dtype=np.int64)
        arrays[f"key_shape_{i}"] = np.array(key_shapes[i], dtype=np.int64)
    np.savez_compressed(file, **arrays)


def grid_overlay(
    grid_map: np.ndarray | torch.Tensor,
    input_size: tuple[int, int],
    size: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
    out_size: tuple[int, int] | None = None,
    scale: tuple[float, float] | None = None,
    cover: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """``float32 [oh, ow]``: a map over a key grid, laid over the image the model was given.

    The grid is stretched over the ``input_size`` model input (bilinear, ``align_corners=False``; over its top-left
    ``cover`` fraction where the keys are a sub-sampled grid that leaves the last row or column out: :func:`key_cover`,
    the rest NaN), the input pixels that show the image are cut out
    (:func:`~nlanalysis.data.transforms.image_region` of the resized image's ``size`` at
    ``offset``: padding dropped) and resized to ``out_size`` (default: ``size``, the image as
    resized; the original image's size to draw over the file). Where the preprocessing cut the
    image (a centre crop: negative offset), the pixels the model never saw are NaN; ``scale``
    (``(sy, sx)``: resized / ``out_size``; default their ratio) places the seen part.
    """
    (h, w), (top, left) = (int(v) for v in size), (int(v) for v in offset)
    oh, ow = (int(v) for v in out_size) if out_size is not None else (h, w)
    m = torch.as_tensor(np.asarray(grid_map, dtype=np.float32))[None, None]
    big_h, big_w = (int(v) for v in input_size)
    ch, cw = round(big_h * float(cover[0])), round(big_w * float(cover[1]))
    part = F.interpolate(m, size=(ch, cw), mode="bilinear", align_corners=False)
    m = part if (ch, cw) == (big_h, big_w) else F.pad(part, (0, big_w - cw, 0, big_h - ch), value=float("nan"))
    y0, y1, x0, x1 = image_region((h, w), (top, left), tuple(int(v) for v in input_size))  # type: ignore[arg-type]
    seen = m[..., y0:y1, x0:x1]
    if (y0, y1, x0, x1) == (top, top + h, left, left + w):  # the whole image is in the input
        return F.interpolate(seen, size=(oh, ow), mode="bilinear", align_corners=False)[0, 0].numpy()
    sy, sx = (float(v) for v in scale) if scale is not None else (h / oh, w / ow)
    r0, r1 = round((y0 - top) / sy), max(round((y1 - top) / sy), round((y0 - top) / sy) + 1)
    c0, c1 = round((x0 - left) / sx), max(round((x1 - left) / sx), round((x0 - left) / sx) + 1)
    r1, c1 = min(r1, oh), min(c1, ow)
    out = np.full((oh, ow), np.nan, dtype=np.float32)
    out[r0:r1, c0:c1] = F.interpolate(seen, size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False)[0, 0].numpy()
    return out


def key_cover(query_shape: Sequence[int], key_shape: Sequence[int]) -> tuple[float, float]:
    """The fraction ``(fy, fx)`` of the query grid (the model input) a key grid covers: 1 where the keys are the queries'
    grid; a key grid pooled by ``f = q // k`` (``sub_sample``: 2x2 max-pooling, floor) covers the first ``f * k`` of ``q``
    rows or columns (an odd 9 x 7 grid pools to 4 x 3 keys over 8 x 6 of its cells)."""
    return tuple(1.0 if k >= q or k < 1 else (q // k) * k / q for q, k in zip(query_shape, key_shape))  # type: ignore[return-value]


@dataclass
class PhotoMaps:
    """One photo's query points and the saved maps of chosen ViT heads, over the photo as the model saw it
    (:func:`photo_maps`; what :func:`nlanalysis.plots.vit_heads.plot_head_maps` draws).

    Attributes:
        name: the photo's name.
        image: the photo as the model saw it, ``uint8 [h, w, 3]``: the model input without its
            padding (the resized photo; with ``"crop"`` preprocessing, the crop).
        input_size: ``(H, W)`` of the model input.
        box: ``(top, left, height, width)`` of the model-input pixels that show the photo
            (:attr:`nlanalysis.data.transforms.Prepared.region`).
        grid: ``(H_g, W_g)`` patch grid.
        cells: ``[K, 2]`` patch ``(row, col)`` of each query.
        points: ``[K, 2]`` ``(y, x)`` of each query in model-input pixels (its patch's centre).
        maps: ``{(layer, head): [K, H_g, W_g]}`` each query's weights on the patch keys as the
            model computed them (mass on the class/register tokens left out, not renormalised;
            ``head == HEAD_MEAN``: the mean over heads), as saved (float16).
    """

    name: str
    image: np.ndarray
    input_size: tuple[int, int]
    box: tuple[int, int, int, int]
    grid: tuple[int, int]
    cells: np.ndarray
    points: np.ndarray
    maps: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of :attr:`image`."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def overlay(self, layer: int, head: int, query: int) -> np.ndarray:
        """``float32 [h, w]``: the query's map of ``(layer, head)`` over :attr:`image`
        (:func:`grid_overlay`: stretched over the input, cut to :attr:`box`)."""
        if (layer, head) not in self.maps:
            raise KeyError(f"{self.name}: no maps of layer {layer} head {head} (have {sorted(self.maps)})")
        top, left, h, w = self.box
        return grid_overlay(self.maps[layer, head][query], self.input_size, (h, w), (top, left), self.size)

    def points_on_image(self) -> np.ndarray:
        """``[K, 2]`` query points in the pixels of :attr:`image`."""
        top, left, h, w = self.box
        ph, pw = self.size
        return (self.points - np.array([top, left], dtype=np.float64)) * np.array([ph / h, pw / w])


def photo_maps(
    saved: ImageMaps, name: str, photo: np.ndarray, heads: Mapping[tuple[int, int], str], size: int, mode: str
) -> PhotoMaps:
    """The :class:`PhotoMaps` of one photo of a ViT run saved with ``--save-maps``.

    Args:
        saved: the photo's saved maps.
        name: its name.
        photo: the photo file's pixels, ``uint8 [H, W, 3]`` (prepared again as the run did, to show it as the model saw it).
        heads: ``{(layer, head): block}`` the heads to take (``head == -1``: the head mean) and their layer's block.
        size, mode: the run's ViT preprocessing (``run.json``'s ``preprocess``).
    """
    from ..data.vit_preprocess import IMAGENET_MEAN, IMAGENET_STD, prepare_vit_image

    prepared = prepare_vit_image(photo, size, mode)
    y0, y1, x0, x1 = prepared.region
    rgb = prepared.tensor * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    seen = (rgb.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()[y0:y1, x0:x1]
    first = saved._index(next(iter(heads.values())))
    pm = PhotoMaps(name, seen, (size, size), (y0, x0, y1 - y0, x1 - x0), tuple(int(v) for v in saved[f"query_shape_{first}"]),
                   saved[f"cells_{first}"], saved.query_yx.astype(np.float64))  # fmt: skip
    for (layer, head), block in heads.items():
        pm.maps[layer, head] = saved.maps(block, head)
    return pm


class ImageMaps:
    """The saved maps of one image, read from its npz when first touched."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._data is None:
            try:
                with np.load(self.path) as z:
                    self._data = {k: z[k] for k in z.files}
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
                raise ValueError(f"{self.path}: a damaged maps file ({type(err).__name__}: {err}); rerun extract with the same "
                                 "arguments to redo its image") from None  # fmt: skip
            if str(self._data.get("format")) != MAPS_FORMAT:
                raise ValueError(f"{self.path}: not an nlanalysis maps file (format {self._data.get('format')!r})")
        return self._data

    def __getitem__(self, name: str) -> np.ndarray:
        data = self._load()
        if name not in data:
            raise ValueError(f"{self.path}: a damaged maps file (no {name!r} array; it has {', '.join(sorted(data))}); rerun "
                             "extract with the same arguments to redo its image")  # fmt: skip
        return data[name]

    def keys(self) -> list[str]:
        return list(self._load())

    @property
    def blocks(self) -> list[str]:
        return [str(b) for b in self["blocks"]]

    @property
    def file_sha256(self) -> str | None:
        """The sha256 of the image file the run read (``None``: a file saved before it was recorded)."""
        value = self._load().get("file_sha256")
        return None if value is None else str(value)

    @property
    def query_yx(self) -> np.ndarray:
        """``[K, 2]`` query points in model-input pixels."""
        return self["query_yx"]

    @property
    def query_yx_original(self) -> np.ndarray:
        """``[K, 2]`` query points in original-image pixels."""
        return self["query_yx_original"]

    @property
    def query_label(self) -> np.ndarray:
        return self["query_label"]

    def _index(self, block: str | int) -> int:
        if isinstance(block, int):
            return block
        names = self.blocks
        if block not in names:
            raise KeyError(f"{self.path}: no maps of block {block!r}; blocks: {names}")
        return names.index(block)

    @property
    def offset(self) -> tuple[int, int]:
        """``(top, left)`` of the resized image in the input; ``(0, 0)`` in files without it."""
        data = self._load()
        return tuple(int(v) for v in data["offset"]) if "offset" in data else (0, 0)  # type: ignore[return-value]

    @property
    def region(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the input pixels that show the image (not padding, not cut off)."""
        size, input_size = (tuple(int(v) for v in self[k]) for k in ("size", "input_size"))
        return image_region(size, self.offset, input_size)  # type: ignore[arg-type]

    def quantised(self, block: str | int) -> bool:
        """Whether ``block``'s maps are stored 8-bit (``qmaps_i``: more than ``QUANTISE_ABOVE`` queries)."""
        return f"qmaps_{self._index(block)}" in self._load()

    def kept_queries(self, block: str | int) -> np.ndarray:
        """``int64 [R]``: one query per distinct cell of ``block`` (row-major cell order), the rows
        :meth:`kept_maps` has; stored 8-bit, the cells the subsampling kept (``qstride_i``)."""
        i = self._index(block)
        if self.quantised(i):
            return self[f"qrows_{i}"]
        cells = self[f"cells_{i}"]
        _, first = np.unique(cells[:, 0] * (int(cells[:, 1].max(initial=0)) + 1) + cells[:, 1], return_index=True)
        return first.astype(np.int64)

    def _stored(self, block: str | int) -> np.ndarray:
        i = self._index(block)
        return self[f"qmaps_{i}"] if self.quantised(i) else self[f"maps_{i}"]

    def num_heads(self, block: str | int) -> int:
        """The heads of a ViT layer's maps (0: an NL/GC block, one map per query)."""
        arr = self._stored(block)
        return arr.shape[1] - 1 if arr.ndim == 4 else 0

    def kept_maps(self, block: str | int, head: int | None = None) -> np.ndarray:
        """``float32 [R, Hk, Wk]``: the maps of :meth:`kept_queries` (dequantised where stored 8-bit)."""
        i = self._index(block)
        if not self.quantised(i):
            return self.maps(i, head)[self.kept_queries(i)]
        q, low, scale = self[f"qmaps_{i}"], self[f"qlow_{i}"], self[f"qscale_{i}"]
        if q.ndim == 4:
            h = self._head(block, q.shape[1] - 1, head)
            q, low, scale = q[:, h], low[:, h], scale[:, h]
        elif head is not None:
            raise ValueError(f"{self.path}: block {block!r} is not a multi-head layer; omit head=")
        return low[:, None, None] + q.astype(np.float32) * (scale / 255).astype(np.float32)[:, None, None]

    def _head(self, block: str | int, heads: int, head: int | None) -> int:
        if head is not None and not -1 <= head < heads:
            raise IndexError(f"{self.path}: block {block!r} has heads 0..{heads - 1} (-1 or None: the head mean)")
        return -1 if head is None else head

    def maps(self, block: str | int, head: int | None = None) -> np.ndarray:
        """``float32 [K, Hk, Wk]``: every query's map over the key grid of ``block``.

        ``head`` picks one head of a ViT layer (default: the head mean); NL/GC blocks have none.
        Stored 8-bit: a query shares the row of its cell; queries of cells the subsampling dropped are NaN.
        """
        i = self._index(block)
        if self.quantised(i):
            kept, cells = self.kept_maps(i, head), self[f"cells_{i}"]
            rows = self.kept_queries(i)
            width = int(cells[:, 1].max()) + 1 if len(cells) else 1
            where = dict(zip((cells[rows, 0] * width + cells[rows, 1]).tolist(), range(len(rows))))
            at = np.array([where.get(k, -1) for k in (cells[:, 0] * width + cells[:, 1]).tolist()], dtype=np.int64)
            out = np.concatenate([kept, np.full((1, *kept.shape[1:]), np.nan, dtype=np.float32)])
            return out[at]
        arr = self[f"maps_{i}"]
        if arr.ndim == 4:
            arr = arr[:, self._head(block, arr.shape[1] - 1, head)]
        elif head is not None:
            raise ValueError(f"{self.path}: block {block!r} is not a multi-head layer; omit head=")
        return arr.astype(np.float32)

    def overlay(self, block: str | int, query: int, head: int | None = None) -> np.ndarray:
        """``float32 [h, w]``: query ``query``'s map of ``block`` on the original image.

        The key grid is stretched over the input (bilinear; a sub-sampled grid over the part it covers,
        :func:`key_cover`), the part that shows the image is cut out (padding dropped) and resized to the
        original image size, so it can be drawn over the image file. Where the preprocessing cut the image
        (a centre crop), the pixels the model never saw are NaN. ``head``: as in :meth:`maps`.
        """
        i = self._index(block)
        maps = self.maps(block, head)
        if not (isinstance(query, (int, np.integer)) and 0 <= query < len(maps)):  # -1 would draw the last one
            raise IndexError(f"{self.path}: query {query!r} of block {self.blocks[i]!r}: its {len(maps)} saved queries are 0..{len(maps) - 1}")
        return grid_overlay(
            maps[query], tuple(int(v) for v in self["input_size"]), tuple(int(v) for v in self["size"]),
            self.offset, tuple(int(v) for v in self["original_size"]), tuple(float(v) for v in self["scale"]),
            key_cover(self[f"query_shape_{i}"], self[f"key_shape_{i}"]),
        )  # fmt: skip


class MapsIndex(Mapping):
    """``{image_id: ImageMaps}`` over a run's ``maps/`` folder; files are opened on access.

    Attributes:
        missing: the ids of ``keys`` whose file is gone from ``maps/``, where the run saved maps (``expected``); a directory or
            a named pipe under a file's name is a ValueError naming it (:func:`~nlanalysis.extract.store.is_run_file`).
        not_kept: the run saved maps but this copy of it has no ``maps/`` folder (its numbers kept without them).
    """

    def __init__(self, folder: Path, keys: dict[Any, str], expected: bool = False) -> None:
        self.folder = folder
        self._keys = {k: v for k, v in keys.items() if is_run_file(folder / f"{v}.npz")}  # a pipe or a directory: named, not gone
        self.not_kept = expected and bool(keys) and not folder.is_dir()
        self.missing = [k for k in keys if k not in self._keys] if expected and not self.not_kept else []
        self._text = {str(k): v for k, v in self._keys.items()}

    def first(self, n: int) -> MapsIndex:
        """The index of the first ``n`` images with maps only (in run order)."""
        return MapsIndex(self.folder, dict(list(self._keys.items())[:n]))

    def __getitem__(self, image_id: Any) -> ImageMaps:
        key = self._keys.get(image_id) or self._text.get(str(image_id))
        if key is None:
            why = ("its maps file is gone" if image_id in self.missing or str(image_id) in map(str, self.missing) else
                   "the run holds no such image done" if self.missing or self._keys else "was the run made with --save-maps?")
            raise KeyError(f"no saved maps for image {image_id!r} in {self.folder} ({why})")
        return ImageMaps(self.folder / f"{key}.npz")

    def __iter__(self) -> Iterator[Any]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
