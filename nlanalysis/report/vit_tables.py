"""The ViT report's tables: per layer (:func:`layers_table`) and per layer x head
(:func:`heads_table`), with the pair of heads the report draws (:func:`choose_heads`)."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..analyze_vit import HEAD_MEAN, image_intervals, layer_table
from ..schema import VIT, pick, query_columns
from ..tables import HEADERS, QUERY_TABLE_STATS, RATIO_STATS, ci_column

__all__ = ["HEAD_COLUMNS", "choose_heads", "heads_table", "layers_caption", "layers_table", "layers_text", "measured_query_columns",
           "query_layers_table", "query_layers_text", "rows_by_head"]  # fmt: skip

#: statistics summarised per layer and head (means with 95% CIs over photos), in table order.
HEAD_COLUMNS = pick("input", "output", "att", "ctrl_att", "att_jsd", "att_entropy", "att_max", "att_prefix_mass", "att_local",
                    "att_local_uniform")


def choose_heads(frame: pd.DataFrame, stat: str = "att") -> tuple[tuple[int, int], tuple[int, int]]:
    """``((layer, head) with the lowest, (layer, head) with the highest)`` mean over images of ``stat``.

    Only single heads compete (head-mean rows are left out); ties go to the first in (layer, head) order.
    """
    per = frame[frame["head"] != HEAD_MEAN].groupby(["layer", "head"])[stat].mean().dropna()
    if per.empty:
        raise ValueError(f"choose_heads: no per-head values of {stat!r}")
    (l0, h0), (l1, h1) = per.idxmin(), per.idxmax()
    return (int(l0), int(h0)), (int(l1), int(h1))


def rows_by_head(per_head: pd.DataFrame) -> dict[tuple[int, int], pd.Series]:
    """The rows of a :func:`heads_table` by ``(layer, head)``."""
    return {(int(r["layer"]), int(r["head"])): r for _, r in per_head.iterrows()}


def heads_table(
    frame: pd.DataFrame, columns: Sequence[str] = HEAD_COLUMNS, level: float = 0.95, offsets: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per layer and head (``HEAD_MEAN`` last in each layer): mean and CI over images of ``columns``.

    With ``offsets`` (the peak-offset counts, :func:`~nlanalysis.extract.locality.parse_peak_offsets`), also
    where the maps peak, pooled over images: ``peak_dy``/``peak_dx``, the offset from the query
    with the largest share of queries averaged over images (each image's share: its patch queries
    whose map peaks there; ties go to the first in ``(dy, dx)`` order), ``peak_share``, that
    average share at that one offset, and ``peak_images``, the images whose own commonest offset
    it is.
    """
    columns = [c for c in columns if c in frame]
    table = image_intervals(frame, ["layer", "head"], columns, level=level)
    last = table["head"].max() + 1  # the head mean after the heads of its layer
    table["_order"] = table["head"].where(table["head"] != HEAD_MEAN, last)
    table = table.sort_values(["layer", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
    if offsets is not None:
        table = table.merge(_pooled_peaks(frame, offsets), on=["layer", "head"], how="left")
    return table


def _pooled_peaks(frame: pd.DataFrame, offsets: pd.DataFrame) -> pd.DataFrame:
    """Per layer and head: the offset with the largest mean share over images, that share, and
    how many images have it as their own commonest offset (see :func:`heads_table`)."""
    keys = ["layer", "head"]
    n_images = frame.groupby(keys)["image"].nunique().rename("n")
    share = offsets.assign(share=offsets["queries"] / offsets["n_query"])
    share = share.groupby([*keys, "peak_dy", "peak_dx"])["share"].sum().reset_index().join(n_images, on=keys)
    share["peak_share"] = share["share"] / share["n"]  # images without a query at the offset count as 0
    share = share.sort_values([*keys, "peak_share", "peak_dy", "peak_dx"], ascending=[True, True, False, True, True], kind="stable")
    best = share.groupby(keys, as_index=False).head(1)[[*keys, "peak_dy", "peak_dx", "peak_share"]]
    own = frame[[*keys, "peak_dy", "peak_dx"]].merge(best, on=[*keys, "peak_dy", "peak_dx"])
    best = best.merge(own.groupby(keys).size().rename("peak_images").reset_index(), on=keys, how="left")
    best["peak_images"] = best["peak_images"].fillna(0).astype(int)
    best[["peak_dy", "peak_dx"]] = best[["peak_dy", "peak_dx"]].astype(int)
    return best[[*keys, "peak_dy", "peak_dx", "peak_images", "peak_share"]]


def layers_table(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per layer: the head-mean rows' statistics (mean, CI) plus the mean of the per-head ``att``
    (``heads_att``) and the layer's lowest- and highest-att heads."""
    cols = [c for c in HEAD_COLUMNS if c in frame and c != "att_local_uniform"]
    table = layer_table(frame, columns=cols, head=HEAD_MEAN, level=level)
    avg = layer_table(frame, columns=("att",), head="avg", level=level)
    table = table.merge(avg[["layer", "att", "att_low", "att_high"]].rename(columns=lambda c: c if c == "layer" else f"heads_{c}"), on="layer")
    per = frame[frame["head"] != HEAD_MEAN].groupby(["layer", "head"])["att"].mean().reset_index()
    lo = per.loc[per.groupby("layer")["att"].idxmin()].set_index("layer")
    hi = per.loc[per.groupby("layer")["att"].idxmax()].set_index("layer")
    table["min_att_head"] = table["layer"].map(lo["head"]).astype(int)
    table["min_att"] = table["layer"].map(lo["att"])
    table["max_att_head"] = table["layer"].map(hi["head"]).astype(int)
    table["max_att"] = table["layer"].map(hi["att"])
    return table


def layers_text(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`layers_table` as text cells (``mean [low, high]``) under readable headers."""
    out = pd.DataFrame({"layer": table["layer"].astype(int).astype(str), "photos": table["n_images"].astype(int).astype(str)})
    named = [("input", "input"), ("output", "output"), ("att", "att (head-mean map)"), ("ctrl_att", "att, random control"),
             ("heads_att", "att (mean of heads)"), ("min_att", "lowest-att head"), ("max_att", "highest-att head"),
             ("att_jsd", "att JSD"), ("att_entropy", "entropy"), ("att_local", "3x3 mass"), ("att_prefix_mass", "class-token mass")]  # fmt: skip
    for col, name in named:
        if name.endswith(" head"):  # the layer's lowest / highest single head: h3: 0.123
            out[name] = [f"h{int(h)}: {v}" for h, v in zip(table[f"{col}_head"], ci_column(table, col))]
        elif col in table:
            out[name] = ci_column(table, col)
    return out


def layers_caption(n_photos: int, keys: str, n_heads: int) -> str:
    return (
        f"Per layer of the ViT: mean over {n_photos} photos [95% Student-t interval over photos]. Each distance is a photo's "
        "average over all ordered pairs of patch positions (i = j included; padded patches excluded as queries and keys), "
        "cosine distance 1 − cos. input: the tokens entering the transformer block (residual stream); output: what the "
        "attention branch adds (LayerScale applied); att (head-mean map): the distance between query maps of the "
        "head-averaged attention; att, random control: the same for maps of the same sharpness that ignore what training "
        "learned (per head, random query/key projections of the layer's input tokens at the head's width, temperature "
        "matched to the head's entropy; here one control matched to the head-averaged map's entropy, "
        "nlanalysis.measure.head_controls; one random draw per photo); "
        f"att (mean of heads): the average of the {n_heads} heads' own att; lowest/highest-att head: "
        "the layer's heads with the smallest and largest att (mean over photos). "
        f"Maps are over {keys} keys, each row renormalised over the photo's patches. att JSD: mean Jensen–Shannon divergence "
        "between two queries' maps (bits, sampled pairs); entropy: normalised (1 = uniform); 3x3 mass: weight a query puts on "
        "its own and the 8 neighbouring patches; class-token mass: weight on the class token before renormalising. "
        "Uniform attention would give att = 0, JSD = 0, entropy 1. Layers and heads count from 0."
    )


def measured_query_columns(frame: pd.DataFrame) -> list[str]:
    """The query-dependence suite's columns a ViT run measured (not all NaN), its form control, and the object-context
    lifts of :data:`~nlanalysis.tables.QUERY_TABLE_STATS` with their ratios to the locality control (a run on photos with
    object labels; ratios are summarised as geometric means)."""
    lifts = [c for c in QUERY_TABLE_STATS if c in RATIO_STATS]
    return [c for c in ("ctrl_form_att", *query_columns(VIT), *lifts) if c in frame and frame[c].notna().any()]


def query_layers_table(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame | None:
    """Per layer, the head-mean maps' query-dependence columns (:data:`~nlanalysis.tables.QUERY_TABLE_STATS`
    the run measured; mean and CI over photos, ratios as geometric means), or None without the suite and lifts."""
    means = frame[frame["head"] == HEAD_MEAN]
    cols = [c for c in QUERY_TABLE_STATS if c in measured_query_columns(means) + ["att"]]
    if not set(cols) - {"att", "ctrl_form_att"}:
        return None
    return layer_table(frame, columns=cols, head=HEAD_MEAN, level=level)  # intervals cut to each statistic's range


def query_layers_text(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`query_layers_table` as text cells under the tables' headers."""
    out = pd.DataFrame({"layer": table["layer"].astype(int).astype(str), "photos": table["n_images"].astype(int).astype(str)})
    for c in QUERY_TABLE_STATS:
        if c in table:
            out[HEADERS[c]] = ci_column(table, c)
    return out
