"""The ViT report's figures, from a result set: layers x heads maps of att, entropy and local mass,
and GCNet's Figure 2 of two heads from the maps ``extract --save-maps`` kept."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pandas as pd

from ..extract.maps import PhotoMaps, photo_maps
from ..extract.results import ResultSet
from ..plots.vit_heads import head_name
from .images import find_images, load_pixels, stored_first
from .pages import Report
from .vit_tables import rows_by_head

__all__ = ["DEFAULT_QUERIES", "vit_figures"]

#: ``(y, x)`` fractions of each photo: the queries of the map figure (``vit-report``'s ``--queries points:...``), and
#: where a run saved more maps (``--save-maps all``) the saved queries nearest to them are drawn
DEFAULT_QUERIES: tuple[tuple[float, float], ...] = ((0.3, 0.3), (0.5, 0.7), (0.75, 0.4))
#: the most queries of a ``--save-maps all`` run (every patch) a photo's row draws as saved; more are thinned to :data:`DEFAULT_QUERIES`
MAX_DRAWN = 8


def vit_figures(
    run: ResultSet,
    frame: pd.DataFrame,
    per_head: pd.DataFrame,
    chosen_heads: list[tuple[int, int]],
    labels: dict[tuple[int, int], str],
    report: Report,
    model_name: str,
    *,
    image_root: str | os.PathLike[str] | None = None,
) -> None:
    """Add to ``report`` the layers x heads maps of att, entropy and local mass, and the Figure 2 grids of the two heads."""
    from ..plots.vit_heads import plot_head_maps, plot_layer_heads

    highlight = {h: labels[h] for h in chosen_heads}
    for stat, text in _heads_stats(frame):
        report.figure(plot_layer_heads(frame, stat, title=model_name, highlight=highlight), f"heads_{stat}", text)
    maps = _saved_maps(run, frame, chosen_heads, image_root)
    every = run.info["settings"].get("save_maps") == "all"  # queries chosen by the user are drawn as chosen
    thinned = every and any(len(m.points) > MAX_DRAWN for m in maps)
    maps = [_few_queries(m) for m in maps] if every else maps
    if not maps:
        return
    row_of = rows_by_head(per_head)
    head_titles = [f"{head_name(*h)} ({labels[h]}): att {row_of[h]['att']:.3f}" for h in chosen_heads]
    fig = plot_head_maps(maps, chosen_heads, head_titles=head_titles,
                         title=f"{model_name}: attention map of each query (one colour scale per photo and head)")  # fmt: skip
    queries = str(run.info["settings"].get("queries"))
    where = f"`--queries {queries}`"
    if queries.startswith("points:"):
        where = "fixed fractions of the photo, moved to the centre of their patch"
    if thinned:
        where = ("of the saved queries, the nearest to (y, x) = " + ", ".join(f"({y:g}, {x:g})" for y, x in DEFAULT_QUERIES)
                 + " of the photo's height and width")  # fmt: skip
    report.figure(fig, "head_maps",
                  f"GCNet Figure 2 form for the two heads: each photo with {len(maps[0].points)} query points ({where}), "
                  "then each query's map (weights on the photo's patches as the "
                  "model computed them, mass on the class token and on padded patches not shown), stretched bilinearly over "
                  "the input and cut to the photo. One colour scale per photo and head.")  # fmt: skip


def _saved_maps(run: ResultSet, frame: pd.DataFrame, heads: list[tuple[int, int]], image_root: str | os.PathLike[str] | None) -> list:
    """The :class:`~nlanalysis.extract.maps.PhotoMaps` of every photo of ``run`` with saved maps and a file found."""
    prep = run.info["preprocess"]
    block_of = dict(zip(frame["layer"].astype(int), frame["block"]))
    ids = [i for i in dict.fromkeys(frame["image"]) if i in run.maps]
    out = []
    for image_id, path in zip(ids, find_images(run, ids, image_root)):
        pixels = load_pixels(path, run.maps[image_id], stored_first(run))  # in the frame extract read it in
        if pixels is not None:
            out.append(photo_maps(run.maps[image_id], str(image_id), pixels, {h: block_of[h[0]] for h in heads},
                                  int(prep["size"]), prep["mode"]))  # fmt: skip
    return out


def _few_queries(pm: PhotoMaps) -> PhotoMaps:
    """``pm``, or where it holds more than :data:`MAX_DRAWN` queries (``--save-maps all``: every patch), the saved query
    nearest to each :data:`DEFAULT_QUERIES` point of the photo (a figure of every query would be tens of thousands of
    pixels wide and take minutes)."""
    if len(pm.points) <= MAX_DRAWN:
        return pm
    top, left, h, w = pm.box
    targets = np.array([(top + fy * h, left + fx * w) for fy, fx in DEFAULT_QUERIES])
    picked = list(dict.fromkeys(int(np.argmin(((pm.points - t) ** 2).sum(1))) for t in targets))
    return replace(pm, cells=pm.cells[picked], points=pm.points[picked], maps={k: m[picked] for k, m in pm.maps.items()})


def _heads_stats(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The statistics drawn as layers x heads maps, each with its caption."""
    return [("att", "att: 1 − cos between the attention maps of two queries, averaged over all pairs of the photo's patch "
                    "queries, then over photos; per head, and (last column, “mean”) the att of the head-averaged map, "
                    "not the mean of the cells. 0: every query has the same map. A dot: the head's att is below its "
                    "control (ctrl_att), where the run has controls."),
            ("att_entropy", "Normalised entropy of a query's map (1: uniform over the photo's patches), mean over queries "
                            "and photos. A low att with a high entropy is one broad map shared by all queries; with a low "
                            "entropy, a few patches that every query looks at."),
            ("att_local", "Weight a query puts on its own and the 8 neighbouring patches, mean over queries and photos "
                          "(a uniform map puts about "
                          f"{frame['att_local_uniform'].mean():.3f} there). High: a local head.")]  # fmt: skip
