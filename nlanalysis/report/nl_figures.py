"""The NL report's per-image figures: GCNet's Figure 2 form per run and block, and the
query-distance heat map per run (:func:`maps_figures`), added to a :class:`~.pages.Report`."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..extract.results import ResultSet
from ..plots.query_maps import QueryChoice
from .drawn_queries import QueryPicker, every_query
from .images import find_images, load_pixels, stored_first
from .meta import Runs
from .pages import Report

__all__ = ["maps_figures", "representatives", "slug"]


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of other characters than ``A-Za-z0-9_.-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def representatives(runs: Runs, final: pd.DataFrame) -> list[str]:
    """One run per variant for the per-image figures: its last step, lowest seed, first given."""
    chosen: dict[str, tuple] = {}
    labels = list(dict.fromkeys(final["label"]))
    for m in runs.meta:
        if m.label not in labels:
            continue
        key = (m.seed if m.seed is not None else math.inf, labels.index(m.label))
        if m.variant not in chosen or key < chosen[m.variant][0]:
            chosen[m.variant] = (key, m.label)
    return [label for _, label in chosen.values()]


def _choose_images(res: ResultSet, n: int, image_ids: Sequence[Any] | None) -> list[Any]:
    have = list(res.maps)
    if image_ids is not None:
        wanted = {str(i) for i in image_ids}
        return [i for i in have if str(i) in wanted]
    return have[:n]


def maps_figures(
    runs: Runs,
    labels: list[str],
    blocks: list[str],
    report: Report,
    *,
    n_images: int,
    image_ids: Sequence[Any] | None,
    image_root: Any,
    convention: str = "1-cos",
) -> None:
    """Add to ``report`` the Figure 2 form per (run, block) and the query-distance heat map per run (in the runs' distance
    ``convention``, as their tables), for ``labels``."""
    from ..plots import plot_query_distances, plot_query_maps

    for label in labels:
        res, meta = runs.by_label(label)
        if res.maps.missing:
            gone = ", ".join(map(str, res.maps.missing[:5])) + (" ..." if len(res.maps.missing) > 5 else "")
            report.notes.append(f"`{label}`: the maps files of {len(res.maps.missing)} done image(s) are gone from "
                                f"{res.maps.folder} ({gone}): those images are not drawn")  # fmt: skip
        ids = _choose_images(res, n_images, image_ids)
        if not ids:
            why = (" for the requested images" if image_ids else f" (it saved them, but this copy has no {res.maps.folder})"
                   if res.maps.not_kept else " (run extract with --save-maps)")  # fmt: skip
            report.notes.append(f"`{label}`: no saved query maps{why}")
            continue
        maps = [res.maps[i] for i in ids]
        files = find_images(res, ids, image_root)
        pixels = [load_pixels(p, m, stored_first(res)) for p, m in zip(files, maps)]
        missing = [str(i) for i, p in zip(ids, pixels) if p is None]
        if missing:
            report.notes.append(f"`{label}`: image file(s) of {', '.join(missing)} not found (or not the file the run read: another size or content); their maps are drawn on grey (give --image-root)")
        ckpt = Path(meta.checkpoint).name if meta.checkpoint else meta.label
        drawn = [b for b in maps[0].blocks if b in blocks]
        chosen, rule = _drawn_queries(res, maps)
        for block in drawn:
            report.figure(plot_query_maps(maps, block, images=pixels, title=f"{label} (checkpoint {ckpt})", chosen=chosen),
                          f"query_maps_{slug(label)}_{slug(block)}",
                          f"`{label}`, block `{block}`: each query's attention map over the image (GCNet Figure 2 form). "
                          f"Numbered dots are the query points{rule}; one colour scale per image.")  # fmt: skip
        first = list(chosen[0].indices) if chosen is not None else None
        if drawn and len(maps[0].query_yx) and first != []:
            names = chosen[0].titles() if chosen is not None else None
            report.figure(plot_query_distances(maps[0], drawn, queries=first, names=names, title=f"{label} (checkpoint {ckpt})",
                                               convention=convention),
                          f"query_distances_{slug(label)}",
                          f"`{label}`, image {ids[0]}: cosine distance ({convention.replace('-', ' − ')}) between the maps of its query points{rule}, per block, "
                          "and its histogram over all pairs of saved queries; the means printed are over query pairs i ≠ j.")  # fmt: skip


def _drawn_queries(res: ResultSet, maps: list[Any]) -> tuple[list[QueryChoice] | None, str]:
    """Figure 2's queries of each image, and how they were chosen (for the captions): ``(None, "")``,
    every saved query, for a run with chosen queries; a few of them for a ``--save-maps all`` run."""
    if not any(every_query(res, m) for m in maps):
        return None, ""
    picker = QueryPicker(res)
    return [picker(m) for m in maps], f" (the run saved every query; drawn: {picker.rule})"
