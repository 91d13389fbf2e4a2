"""Which queries Figure 2 draws of a run that saved every query (``extract --save-maps all``).

A normal run saves the maps of a few chosen points (``--queries``; with COCO annotations the
default ``objects:2``: the deepest pixel of the two largest objects and of the background) and
Figure 2 draws them all. A ``--save-maps all`` run saves every cell of the query grid; Figure 2
draws the points a normal run would have chosen, each moved to the nearest saved query whose map
every block keeps (large grids keep only every s-th cell, ``qstride_i``):

* with the run's COCO annotation file (found where ``extract`` read it): ``objects:2``, placed
  as ``extract`` places them (:func:`nlanalysis.extract.select_queries`);
* otherwise three fixed points spread over the image, at :data:`FIXED_POINTS` (fractions of its
  height and width; those of ``reports/vit``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.transforms import image_region
from ..extract.maps import ImageMaps
from ..extract.objects import object_map
from ..extract.queries import QuerySpec, select_queries
from ..extract.results import ResultSet
from ..plots.query_maps import MAX_DRAWN_QUERIES, QueryChoice

__all__ = ["FIXED_POINTS", "OBJECT_POINTS", "QueryPicker", "every_query"]

#: ``(y, x)`` fractions of the image: the points drawn where a run has no annotations
FIXED_POINTS = ((0.3, 0.3), (0.5, 0.7), (0.75, 0.4))
#: objects drawn per image where it has annotations (and its background): extract's default ``objects:2``
OBJECT_POINTS = QuerySpec("objects", 2)


def every_query(run: ResultSet, maps: ImageMaps) -> bool:
    """Whether ``maps`` hold more queries than Figure 2 draws (``--save-maps all``): they must be chosen."""
    return run.info.get("settings", {}).get("save_maps") == "all" or len(maps.query_yx) > MAX_DRAWN_QUERIES


class QueryPicker:
    """Figure 2's queries for the images of one ``--save-maps all`` run (its annotations read once).

    Attributes:
        rule: how the points were chosen, for the figure's caption.
    """

    def __init__(self, run: ResultSet) -> None:
        self._coco = _annotations(run)
        self.rule = (f"the deepest points of the {OBJECT_POINTS.k} largest objects and of the background (as `extract` "
                     f"chooses `--queries {OBJECT_POINTS}`)" if self._coco is not None else
                     "three fixed points, at (y, x) = " + ", ".join(f"({y:g}, {x:g})" for y, x in FIXED_POINTS) +
                     " of the image's height and width")  # fmt: skip
        self.rule += ", each at the nearest saved query that every block kept"

    def __call__(self, maps: ImageMaps) -> QueryChoice:
        """The queries of one image: indices into ``maps.query_yx`` with the object each lies on.

        Each point goes to a saved query in the same cell of every block's query grid (so its maps
        are the maps a normal run saves for that point), the nearest such; where the subsampling
        dropped that cell, to the nearest saved query that has maps."""
        targets, labels = self._targets(maps)
        ok = _with_maps(maps)
        if not ok.any():
            return QueryChoice((), ())
        yx = maps.query_yx.astype(np.float64)
        saved_cells = [maps[f"cells_{i}"].astype(np.int64) for i in range(len(maps.blocks))]
        picked: dict[int, int] = {}
        for point, label in zip(targets, labels):
            same = ok.copy()
            for i, cells in enumerate(saved_cells):
                same &= (cells == _cell(maps, i, point)).all(1)
            pool = np.flatnonzero(same if same.any() else ok)
            q = int(pool[np.argmin(((yx[pool] - point) ** 2).sum(1))])
            picked.setdefault(q, int(label))  # two points on one saved query: drawn once
        return QueryChoice(tuple(picked), tuple(picked.values()))

    def _targets(self, maps: ImageMaps) -> tuple[np.ndarray, np.ndarray]:
        """``([P, 2] input pixels, [P] labels)`` of the points a normal run would have chosen."""
        size, input_size = (tuple(int(v) for v in maps[k]) for k in ("size", "input_size"))
        anns = self._coco.imgToAnns.get(_coco_id(maps["image_id"]), []) if self._coco is not None else None
        if anns is not None:
            original = tuple(int(v) for v in maps["original_size"])
            objects = object_map(anns, original, size, input_size, maps.offset)  # type: ignore[arg-type]
            grids = [tuple(int(v) for v in maps[f"query_shape_{i}"]) for i in range(len(maps.blocks))]
            points = select_queries(OBJECT_POINTS, size, np.random.default_rng(0), objects,  # type: ignore[arg-type]
                                    tuple(float(v) for v in maps["scale"]), maps.offset, input_size, grids)  # type: ignore[arg-type]
            return points.yx, points.label
        y0, y1, x0, x1 = image_region(size, maps.offset, input_size)  # type: ignore[arg-type]
        yx = np.array([(y0 + fy * (y1 - y0), x0 + fx * (x1 - x0)) for fy, fx in FIXED_POINTS], dtype=np.float64)
        return yx, np.full(len(yx), -1, dtype=np.int64)


def _cell(maps: ImageMaps, block: int, point: np.ndarray) -> np.ndarray:
    """``int64 [2]``: the cell of block ``block``'s query grid that holds input pixel ``point = (y, x)``."""
    grid = np.array([int(v) for v in maps[f"query_shape_{block}"]], dtype=np.int64)
    size = np.array([int(v) for v in maps["input_size"]], dtype=np.float64)
    return np.minimum(np.floor(point * grid / size).astype(np.int64), grid - 1)


def _with_maps(maps: ImageMaps) -> np.ndarray:
    """``bool [K]``: the saved queries that have a map (not dropped by the subsampling) in every block."""
    ok = np.ones(len(maps.query_yx), dtype=bool)
    for i in range(len(maps.blocks)):
        if not maps.quantised(i):
            continue
        cells = maps[f"cells_{i}"].astype(np.int64)
        keys = cells[:, 0] * (int(cells[:, 1].max(initial=0)) + 1) + cells[:, 1]
        ok &= np.isin(keys, keys[maps.kept_queries(i)])
    return ok


def _coco_id(image_id: Any) -> Any:
    text = str(np.asarray(image_id))
    return int(text) if text.lstrip("-").isdigit() else text


def _annotations(run: ResultSet) -> Any:
    """The run's COCO annotations (``pycocotools.coco.COCO``), or ``None``: not a COCO run, or its file is gone."""
    ann = run.info.get("selection_args", {}).get("coco_ann")
    if not ann or not Path(ann).is_file():
        return None
    from ..extract.coco import load_coco

    try:
        return load_coco(ann)
    except ValueError:  # a file changed since extract into one that is no longer a COCO file
        return None
