"""What the explore page shows, gathered from a result set into one JSON-able dict (:func:`page_data`).

Per image: its pixels (JPEG, base64), its size and placement in the model input (``scale``,
``offset``, ``input_size``: the crop/pad of the preprocessing) and, per site (an NL block, or a
ViT layer's head or head mean), the saved maps of its kept queries, 8-bit with a per-row low and
range (:func:`nlanalysis.extract.maps.quantise_maps`; zlib, base64: the page inflates them with
the browser's ``DecompressionStream``) and the statistics of its
``metrics.csv`` row. The page draws a map exactly as :meth:`ImageMaps.overlay
<nlanalysis.extract.maps.ImageMaps.overlay>` places it, with the colour maps of Figure 2.
"""
from __future__ import annotations

import base64
import io
import math
import zlib
from typing import Any

import numpy as np
import pandas as pd

from .. import schema
from ..extract.maps import ImageMaps, quantise_maps
from ..extract.results import ResultSet
from ..extract.sources import few

__all__ = ["COLORMAPS", "page_data", "site_label"]

#: the colour maps of Figure 2 (:func:`nlanalysis.plots.map_grid.map_norm`): inferno, RdBu_r for signed maps
COLORMAPS = ("inferno", "RdBu_r")
#: the longest side of the embedded pictures (pixels); the maps are drawn at the page's size
PICTURE_SIDE = 448


def site_label(block: str, head: int | None) -> str:
    """``block`` for an NL block; ``block head 3`` / ``block mean`` for a ViT layer's head / head mean."""
    if head is None:
        return block
    return f"{block} {'mean' if head == schema.HEAD_MEAN else f'head {head}'}"


def page_data(run: ResultSet, image_ids: list[Any] | None = None, image_root: str | None = None) -> dict[str, Any]:
    """The page's data for ``run`` (every image with saved maps, or ``image_ids``).

    Done images whose maps file is gone are left out, and a note says which.

    Raises:
        ValueError: the run has no image with saved maps (saying why), or some of ``image_ids`` have none.
    """
    from ..report.images import find_images, stored_first

    ids = list(run.maps) if image_ids is None else list(image_ids)
    if not ids:
        raise ValueError(_no_maps(run))
    have = {str(k) for k in run.maps}
    lacking = [str(i) for i in ids if str(i) not in have]
    if lacking:
        raise ValueError(f"{run.path}: no saved maps for {len(lacking)} of the {_count(len(ids), 'image')} asked for: {_why_not(run, lacking)}")
    files = find_images(run, ids, image_root)
    stats = _stat_columns(run)
    metrics = run.metrics.assign(_id=run.metrics["image_id"].astype(str))
    images, notes = [], set()
    lost = _lost_maps(run)
    if lost and image_ids is None:
        notes.add(f"{_count(len(lost), 'done image')} left out, the maps file missing: {few([f'{i} (maps/{k}.npz)' for i, k in lost], 3)}")
    for image_id, path in zip(ids, files):
        maps = run.maps[image_id]
        rows = metrics[metrics["_id"] == str(image_id)]
        images.append(_image(maps, image_id, path, rows, stats, notes, stored_first(run)))
    if run.info.get("settings", {}).get("save_maps") != "all":
        notes.add("only the run's chosen queries have maps (the nearest is shown): extract with --save-maps all to hover every query")
    first = images[0]["sites"]
    return {
        "run": str(run.path),
        "analysis": run.analysis,
        "stats": stats,
        "colormaps": {name: _lut(name) for name in COLORMAPS},
        "sites": [{k: s[k] for k in ("key", "label", "block", "head")} for s in first],
        "notes": sorted(notes),
        "images": images,
    }


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _keys(run: ResultSet) -> dict[str, str]:
    """``{image id as text: key}`` of the run's images (a maps file is ``maps/KEY.npz``)."""
    return dict(zip(run.images["image_id"].astype(str), run.images["key"].astype(str)))


def _done(run: ResultSet) -> set[str]:
    """The ids (text) of the run's done images: those with rows in ``metrics`` (none: no columns either)."""
    return set(run.metrics["image_id"].astype(str)) if "image_id" in run.metrics else set()


def _lost_maps(run: ResultSet) -> list[tuple[str, str]]:
    """``(image id, key)`` of the done images whose maps file is gone, where the run saved maps (``run.maps.missing``)."""
    keys = _keys(run)
    return [(str(i), keys.get(str(i), "?")) for i in run.maps.missing]


def _no_maps(run: ResultSet) -> str:
    """Why ``run`` holds no image with saved maps (the error of :func:`page_data`)."""
    save = run.info.get("settings", {}).get("save_maps")
    if not save:
        return f"{run.path}: the run saved no maps; run `nlanalysis extract ... --save-maps all` to explore it"
    n, failed, lost = len(run.images), len(run.failures), _lost_maps(run)
    why = [f"{failed} of its {_count(n, 'image')} failed (failures.csv says why)"] if failed else []
    if run.maps.not_kept:
        why.append(f"this copy of the run has no {run.maps.folder} folder (its numbers were kept without the maps)")
    if lost:
        why.append(f"{_count(len(lost), 'done image')} without its maps file: {few([f'maps/{k}.npz' for _, k in lost], 3)}")
    pending = n - failed - len(_done(run))
    if pending > 0:
        why.append(f"{_count(pending, 'image')} not done yet")
    flag = "--save-maps all" if save == "all" else "--save-maps"
    return f"{run.path}: the run saved maps ({flag}) but holds no image with maps: {'; '.join(why) or 'it has no images'}"


def _why_not(run: ResultSet, ids: list[str]) -> str:
    """Why each of ``ids`` (text) has no saved maps in ``run``, grouped by reason."""
    keys, failed, done = _keys(run), set(run.failures["image_id"].astype(str)), _done(run)
    saved = bool(run.info.get("settings", {}).get("save_maps"))
    groups: dict[str, list[str]] = {}
    for i in ids:
        if i not in keys:
            reason, shown = "not among the run's images", i
        elif i in failed:
            reason, shown = "failed (failures.csv says why)", i
        elif not saved:
            reason, shown = "the run saved no maps (extract it with --save-maps all)", i
        elif i in done:
            reason, shown = "maps file missing", f"{i} (maps/{keys[i]}.npz)"
        else:
            reason, shown = "not done yet", i
        groups.setdefault(reason, []).append(shown)
    return "; ".join(f"{few(shown, 3)}: {reason}" for reason, shown in groups.items())


def _stat_columns(run: ResultSet) -> list[str]:
    site = schema.VIT if run.analysis == schema.VIT else schema.NL
    wanted = [c for c in schema.statistic_columns(site) if c in run.metrics and c != "att_jsd_stderr"]
    return [c for c in wanted if run.metrics[c].notna().any()]


def _image(maps: ImageMaps, image_id: Any, path: Any, rows: pd.DataFrame, stats: list[str], notes: set[str],
           stored: bool = False) -> dict[str, Any]:  # fmt: skip
    picture, shown = _picture(path, maps, stored)
    if not shown:
        notes.add("some image files were not found: their maps are drawn on grey")
    sites = []
    for i, block in enumerate(maps.blocks):
        heads = maps.num_heads(i)
        for head in ([*range(heads), schema.HEAD_MEAN] if heads else [None]):
            sites.append(_site(maps, i, block, head, rows, stats, notes))
    return {
        "id": str(image_id),
        "picture": picture,
        "original_size": [int(v) for v in maps["original_size"]],
        "size": [int(v) for v in maps["size"]],
        "input_size": [int(v) for v in maps["input_size"]],
        "offset": list(maps.offset),
        "scale": [float(v) for v in maps["scale"]],
        "sites": sites,
    }


def _site(maps: ImageMaps, i: int, block: str, head: int | None, rows: pd.DataFrame, stats: list[str], notes: set[str]) -> dict[str, Any]:
    kept, cells = maps.kept_queries(i), maps[f"cells_{i}"]
    values = maps.kept_maps(i, head)
    q = quantise_maps(values, cells[kept], max_bytes=1 << 62)  # already one row per cell: nothing dropped
    if maps.quantised(i):
        notes.add("maps stored 8-bit per weight (per-row low and range: error at most range / 510)")
        stride = int(maps[f"qstride_{i}"])
        if stride > 1:
            notes.add(f"{block}: query grid subsampled, every {stride}th row and column of cells kept")
    else:
        notes.add("maps shown 8-bit per weight (per-row low and range: error at most range / 510)")
    row = rows[rows["block"] == block]
    if head is not None and "head" in row:
        row = row[row["head"] == head]
    values = row.iloc[0] if len(row) else None
    return {
        "key": f"{block}|{'' if head is None else head}",
        "label": site_label(block, head),
        "block": block,
        "head": head,
        "query_shape": [int(v) for v in maps[f"query_shape_{i}"]],
        "key_shape": [int(v) for v in maps[f"key_shape_{i}"]],
        "cells": _b64(cells[kept].astype("<i4")),
        "q": _b64(q["qmaps"], compress=True),
        "low": _b64(q["qlow"].astype("<f4")),
        "range": _b64(q["qscale"].astype("<f4")),
        "stats": {c: _number(values[c]) if values is not None and c in values else None for c in stats},
    }


def _b64(array: np.ndarray, compress: bool = False) -> str:
    """An array's bytes in base64 (little-endian; ``compress``: zlib first)."""
    raw = np.ascontiguousarray(array).tobytes()
    return base64.b64encode(zlib.compress(raw, 6) if compress else raw).decode("ascii")


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def _picture(path: Any, maps: ImageMaps, stored: bool = False) -> tuple[str | None, bool]:
    """The image as a base64 JPEG data URL, at most :data:`PICTURE_SIDE` pixels long (``None``: not found); ``stored``:
    :func:`~nlanalysis.report.images.stored_first` of the run."""
    from PIL import Image

    from ..report.images import load_pixels

    pixels = load_pixels(path, maps, stored)
    if pixels is None:
        return None, False
    picture = Image.fromarray(pixels)
    picture.thumbnail((PICTURE_SIDE, PICTURE_SIDE))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), True


def _lut(name: str) -> str:
    """256 RGB entries of matplotlib's colour map ``name``, base64 (768 bytes)."""
    from matplotlib import colormaps

    rgb = (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return base64.b64encode(rgb.tobytes()).decode("ascii")
