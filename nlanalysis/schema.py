"""Every result-table column, defined once (bottom floor: imports nothing of the package).

A :class:`Column` says what one column of ``metrics.csv`` (and of the in-memory frames of
``analyze`` / ``analyze_vit``) is: its meaning, dtype, valid range, which sites have it and its
Table 1 header. :data:`REGISTRY` lists them in ``metrics.csv`` order; the column lists of a run
(:func:`metrics_columns`), the statistics (:func:`statistic_columns`), the tables' headers
(:func:`headers`), the range check (:func:`check_ranges`) and the README's column table
(:func:`readme_table`) are read from it.

:data:`DEFINITIONS` is the version of how the columns are computed: ``run.json`` records it, and bumping it
(with a line in :data:`DEFINITIONS_HISTORY`) keeps rows of two computations out of one run.

Sites: :data:`NL` (an NL/GC block, one map) and :data:`VIT` (a ViT layer's heads and head mean),
named as ``run.json``'s ``analysis``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOTH", "DEFINITIONS", "DEFINITIONS_HISTORY", "HEAD_MEAN", "NL", "RATIOS", "REGISTRY", "ROLES", "TABLE1", "VIT", "Column", "check_ranges", "column", "headers",
    "locality_control_columns", "metrics_columns", "names", "object_columns", "pick", "query_columns", "readme_table", "statistic_columns", "value_range",
]  # fmt: skip

#: ``head`` value of the rows of a site's head-averaged map (and of an NL block's only map).
HEAD_MEAN = -1

#: sites: an NL/GC block, a ViT layer's heads (the ``analysis`` of ``run.json``).
NL, VIT = "nl-blocks", "vit-heads"
BOTH = frozenset({NL, VIT})

DEFINITIONS: int = 1
"""The version of the columns' definitions: which computation of each column wrote a ``metrics.csv``'s values.

Bump it in the same commit as any change that can move a column's value for the same model, image and settings (a fix,
a new convention), and add that version's line to :data:`DEFINITIONS_HISTORY`; when in doubt, bump (the cost: runs in
progress start again). ``extract`` records it in ``run.json`` (``settings.measure.definitions``), so a run written under
other definitions (or none recorded: before 2026-12-06) is neither resumed nor merged with rows of these: its rows and
the new ones would stand in one ``metrics.csv`` without a word. Reading a finished run is not refused (nothing in it is
mixed); a report of runs of different definitions says so in its notes.
"""

#: one line per :data:`DEFINITIONS` version: the date from which it was written, what it changed
DEFINITIONS_HISTORY: dict[int, str] = {
    1: "2026-12-06: everything up to and including that date's fixes (e.g. d322bef: ctrl_form_att_jsd on rows whose weight "
       "underflows; before it: the suite's cosine convention, logit_rank1 on flat maps, zero rows); runs before it record none",
}  # fmt: skip

#: what a column is for: ``image`` (filled from the image file), ``site`` (which block / layer /
#: head and its shape), ``stat`` (a statistic of the trained maps), ``check`` (how far to trust
#: one: sampling error, excluded vectors), ``control`` (the random-projection control), ``fact``
#: (how the numbers were made), ``locality`` (ViT: where a head's weight lies around its query,
#: recorded by ``extract`` beside the statistics, :mod:`nlanalysis.extract.locality`; NL blocks: with
#: the query-dependence suite), ``query`` (what kind of query dependence: the suite of
#: :mod:`nlanalysis.measure.query_dep`, measured with ``query_dependence="cheap"`` or ``"all"``),
#: ``object`` (object-specific context from annotation masks, :mod:`nlanalysis.metrics.object_context`:
#: recorded by ``extract`` with the query-dependence suite, NaN without objects).
ROLES = ("image", "site", "stat", "check", "control", "fact", "locality", "query", "object", "object_control")

_INF = math.inf


@dataclass(frozen=True)
class Column:
    """One result column.

    Attributes:
        name: the column's name.
        meaning: one line, as the README says it.
        dtype: ``str``, ``int``, ``float`` or ``bool``.
        role: one of :data:`ROLES`.
        range: ``(low, high)`` of valid values (NaN is always allowed), or ``None``.
        sites: the sites that have it (:data:`NL`, :data:`VIT`).
        header: its Table 1 header, or ``None`` (not in Table 1).
        unit: ``1-cos`` for cosine distances, each in the run's ``convention`` (all of them halve under ``(1-cos)/2``,
            their upper bound with them: ``att`` and the suite's ``att_*`` distances alike), ``bits``, ...
        stored: written to ``metrics.csv`` (``False``: computed by a report from the same maps).
    """

    name: str
    meaning: str
    dtype: str
    role: str
    range: tuple[float, float] | None = None
    sites: frozenset[str] = BOTH
    header: str | None = None
    unit: str = ""
    stored: bool = True


_c = Column

_NL, _VIT = frozenset({NL}), frozenset({VIT})
_UNIT, _COUNT, _DIST = (0.0, 1.0), (0.0, _INF), (0.0, 2.0)

#: every column, in ``metrics.csv`` order (a run's columns are those its site has).
REGISTRY: tuple[Column, ...] = (
    _c("image_id", "the image: its COCO id, or its file's path relative to the common folder", "str", "image"),
    _c("file_name", "the image's file name", "str", "image"),
    _c("block", "dotted name of the block (ViT: of the layer's attention module)", "str", "site"),
    _c("use", "the block's run in one forward, counted from 0: a module called twice per forward gives rows 0 and 1 "
       "(analyze's frames, only when some block ran twice)", "int", "site", _COUNT, stored=False),
    _c("layer", "transformer layer, counted from 0", "int", "site", _COUNT, sites=_VIT),
    _c("head", "head, counted from 0; -1: the head-averaged map and the whole attention branch", "int", "site", (-1.0, _INF), sites=_VIT),
    _c("family", "the block family (the adapter that found the block)", "str", "site"),
    _c("mode", "the pairwise function (gaussian, embedded_gaussian, dot_product, concatenation, ...)", "str", "site"),
    _c("num_heads", "heads in the layer", "int", "site", (1.0, _INF), sites=_VIT),
    _c("n_prefix", "class and register tokens before the patches", "int", "site", _COUNT, sites=_VIT),
    _c("keys", "`patch`: maps over patch keys only; `all`: class/register keys included", "str", "site", sites=_VIT),
    _c("height", "rows of the query grid (NL: the block's feature map; ViT: the patch grid)", "int", "site", _COUNT),
    _c("width", "columns of the query grid", "int", "site", _COUNT),
    _c("n_query", "valid query positions (padding excluded)", "int", "site", _COUNT),
    _c("n_key", "valid key positions (padding excluded)", "int", "site", _COUNT),
    _c("input", "mean pairwise cosine distance of the input features `x_i` (ViT: the residual stream)", "float", "stat", _DIST,
       header="input", unit="1-cos"),
    _c("output", "mean pairwise cosine distance of what the block adds before fusion, `z_i - x_i` (= `W_z y_i`; a ViT head: its share of the branch)",
       "float", "stat", _DIST, header="output", unit="1-cos"),
    _c("att", "mean pairwise cosine distance of the query maps: query `i`'s map over all keys is a row of the `N x N_k` map", "float", "stat", _DIST,
       header="att", unit="1-cos"),
    _c("att_jsd", "mean pairwise Jensen-Shannon divergence of query maps, from sampled pairs", "float", "stat", _UNIT,
       header="att JSD (bits)", unit="bits"),
    _c("att_jsd_stderr", "standard error of `att_jsd`'s pair-sampled estimate (0 when exact)", "float", "check", _COUNT, unit="bits"),
    _c("att_entropy", "mean normalised entropy of the query maps (1 = uniform, 0 = one-hot)", "float", "stat", _UNIT, header="entropy"),
    _c("att_max", "mean largest weight of a query map", "float", "stat", _UNIT, header="max weight"),
    _c("att_zero_rows", "fraction of all-zero query rows (common in concatenation blocks)", "float", "stat", _UNIT,
       header="zero rows"),
    _c("input_zero", "all-zero input vectors (no direction: excluded from `input`)", "int", "check", _COUNT),
    _c("output_zero", "all-zero context vectors (excluded from `output`)", "int", "check", _COUNT),
    _c("att_own_object", "attention mass a query on an object puts on that object's keys (NaN without objects)", "float", "stat",
       _UNIT, header="own-object mass"),
    _c("own_object_share", "share of the valid keys that the query's object covers (what uniform attention gives)", "float",
       "stat", _UNIT, header="own-object share"),
    _c("own_object_density", "mean over object queries of the mass per unit area on the query's own object (mass / the object's "
       "share of the valid keys; 1 = uniform), rows over valid keys outside mixed pooled keys (NaN without objects; signed maps NaN)",
       "float", "object", _COUNT, header="own-object density"),
    _c("own_object_null", "`own_object_density` when every query gets the image's mean map (its rows averaged over queries)",
       "float", "object", _COUNT),
    _c("own_object_lift", "`own_object_density / own_object_null`: 1 = no object-specific context (a query-independent map "
       "gives exactly 1; a merely local map reads above 1 too); tables: geometric mean over images, CI of the mean log-lift", "float", "object", (0.0, _INF),
       header="own-object lift", unit="ratio"),
    _c("own_object_lift_objects", "`own_object_lift` against the mean map of the object queries only: removes a sharper "
       "attention of object than of background queries to one shared map (a temperature, not object-specific context)", "float",
       "object", (0.0, _INF), header="own-object lift, object-query null", unit="ratio"),
    _c("other_object_density", "mass per unit area object queries put on the image's other objects (all together)", "float",
       "object", _COUNT),
    _c("other_object_null", "`other_object_density` of the image's mean map", "float", "object", _COUNT),
    _c("background_density", "mass per unit area object queries put on the background (keys on no object)", "float", "object",
       _COUNT),
    _c("background_null", "`background_density` of the image's mean map", "float", "object", _COUNT),
    _c("same_category_density", "mass per unit area object queries put on other objects of their category (COCO categories; "
       "NaN without such objects)", "float", "object", _COUNT),
    _c("other_category_density", "mass per unit area object queries put on objects of other categories", "float", "object",
       _COUNT),
    _c("same_category_null", "`same_category_density` of the image's mean map", "float", "object", _COUNT),
    _c("same_category_lift", "`same_category_density / same_category_null`: 1 = no preference for the query's own category "
       "(on the query-specific scenes: its own group); tables: geometric mean, CI of the mean log-lift", "float", "object",
       (0.0, _INF), header="same-category lift", unit="ratio"),
    _c("ctrl_local_sigma_px", "locality control (`--locality-control`): the width in input pixels of maps by distance alone, "
       "`softmax_k(-d_qk^2 / 2 sigma^2)` over the valid keys, whose mean attention distance is this map's `att_distance_px` "
       "(inf: the uniform map, for a map as spread as it; NaN where the valid cells are not a rectangle or the distance is "
       "below the nearest key's)", "float", "object_control", (0.0, _INF),
       unit="px"),
    _c("ctrl_local_own_object_lift", "`own_object_lift` of the locality control's maps: what locality alone reads (a local map "
       "reads above 1)", "float", "object_control", (0.0, _INF), unit="ratio"),
    _c("ctrl_local_own_object_lift_objects", "`own_object_lift_objects` of the locality control's maps", "float", "object_control",
       (0.0, _INF), unit="ratio"),
    _c("ctrl_local_same_category_lift", "`same_category_lift` of the locality control's maps (a local map reads below 1)", "float",
       "object_control", (0.0, _INF), unit="ratio"),
    _c("own_object_lift_objects_vs_local", "`own_object_lift_objects / ctrl_local_own_object_lift_objects` per image (report-side): "
       "above 1, more on its own object than locality explains", "float", "object_control", (0.0, _INF),
       unit="ratio", stored=False),
    _c("same_category_lift_vs_local", "`same_category_lift / ctrl_local_same_category_lift` per image (report-side): above 1, "
       "more on its own category than locality explains", "float", "object_control", (0.0, _INF),
       unit="ratio", stored=False),
    _c("ctrl_att", "`att` of random query/key projections of the same input at the trained maps' entropy (`--controls`)", "float", "control",
       _DIST, header="att, random proj.", unit="1-cos"),
    _c("ctrl_att_jsd", "`att_jsd` of the random-projection control", "float", "control", _UNIT, header="JSD, random proj.",
       unit="bits"),
    _c("ctrl_att_own_object", "`att_own_object` of the random-projection control", "float", "control", _UNIT,
       header="own-object mass, random proj."),
    _c("ctrl_temperature", "the logit scale that matched the control's entropy to the trained maps'", "float", "control", _COUNT),
    _c("ctrl_form", "which control the `ctrl_form_*` columns hold, in the form of the maps: `softmax-per-query` (each control "
       "row's entropy matched to its trained row's), `relu-concat` (ReLU(a_i + b_j)/N_k at the trained share of zero weights), "
       "`signed-dot` (q.k/N_k, signed); the `ctrl_*` columns are always `softmax-mean-entropy`", "str", "control"),
    _c("ctrl_form_att", "`att` of the random-projection control in the maps' own form (`ctrl_form`)", "float", "control", _DIST,
       header="att, form control", unit="1-cos"),
    _c("ctrl_form_att_jsd", "`att_jsd` of the form control (NaN for `signed-dot`)", "float", "control", _UNIT, unit="bits"),
    _c("ctrl_form_att_own_object", "`att_own_object` of the form control (NaN for `signed-dot`)", "float", "control", _UNIT),
    _c("ctrl_form_gap", "how far the form control's sharpness is from the trained maps': mean absolute per-row entropy gap "
       "(`softmax-per-query`), gap in the share of zero weights (`relu-concat`), NaN (`signed-dot`: nothing to match)", "float",
       "control", _UNIT),
    _c("att_prefix_mass", "weight patch queries put on class/register tokens", "float", "stat", _UNIT, sites=_VIT),
    _c("query_independent", "one map serves every query by construction (GC, simplified NL): `att` = 0", "bool", "fact"),
    _c("convention", "the cosine distance of every `1-cos` column (`att`, `input`, `output`, the suite's `att_*`): `1-cos` "
       "(default, as scipy) or `(1-cos)/2`", "str", "fact"),
    _c("input_space", "`block`: input/output are the residual stream; `attention`: the attention module's own", "str", "fact",
       sites=_VIT),
    _c("image_height", "height of the image file, pixels", "int", "image", _COUNT),
    _c("image_width", "width of the image file, pixels", "int", "image", _COUNT),
    _c("att_local", "weight a query puts on its own and the 8 neighbouring cells, rows renormalised over valid keys (NL blocks: key "
       "cells, with `--query-dependence`; ViT: always recorded by extract)",
       "float", "locality", _UNIT),
    _c("att_local_uniform", "what a uniform map puts on those 3x3 cells", "float", "locality", _UNIT),
    _c("peak_offsets", "how many queries have their map's largest weight at each offset from the query: `dy,dx:count` "
       "(patches), space-separated, offsets in `(dy, dx)` order", "str", "locality", sites=_VIT),
    _c("logit_rank1", "share of the row-centred logits' energy in their best rank-1 fit (one key profile x a gain per query; "
       "maps that are not a softmax: of the map itself; head mean: log of the mean map; NaN where the centred logits are 0 to rounding, "
       "e.g. a uniform shared map) (`--query-dependence all`)", "float", "query",
       _UNIT, header="logit rank-1 share"),
    _c("att_gain_only", "`att` of the maps rebuilt as softmax(gain_i x the shared key profile): one map, a temperature per query "
       "(softmax maps; `all`)", "float", "query", _DIST, header="att, gain only", unit="1-cos"),
    _c("gain_only_tv", "mean total-variation distance of those rebuilt maps to the real ones (softmax maps; `all`)", "float",
       "query", _UNIT, header="TV, gain only"),
    _c("unary_var_share", "DNL split of `q_i.k_j` (Yin et al. 2020): share of the logits' variance across keys in the unary "
       "term `mu_q.k_j` (explicit q/k: Gaussian, embedded Gaussian, dot product, ViT heads)", "float", "query", _UNIT,
       header="unary var. share"),
    _c("att_pairwise_only", "`att` of the maps from the whitened pairwise term `(q_i-mu_q).(k_j-mu_k)` alone (softmax of it; dot "
       "product: the term itself)", "float", "query", _DIST, header="att, pairwise only", unit="1-cos"),
    _c("att_abs", "`att` of the rows' absolute values (signed maps: dot product; NaN for non-negative maps, where it is `att`)",
       "float", "query", _DIST, unit="1-cos"),
    _c("att_norm_weighted", "1 - mean cosine of query-map pairs weighted by their row norms (signed maps only; halved under "
       "`(1-cos)/2`, as every cosine distance)", "float", "query",
       _DIST, unit="1-cos"),
    _c("qk_nmi", "normalised query-key mutual information I(q;k)/sqrt(H(q)H(k)), uniform prior over queries (Park et al. "
       "2023; non-negative maps)", "float", "query", _UNIT, header="q-k NMI"),
    _c("att_distance_px", "mean attention distance in input pixels (cell centres x the site's stride; non-negative maps)",
       "float", "query", _COUNT, header="att. distance (px)", unit="px"),
    _c("cross_site_cos", "mean cosine similarity of a query's map here and at the previous site of the forward (DeepViT, Zhou et al. "
       "2021; ViT: head h vs head h of the previous layer, head mean vs head mean); NaN at the first site and where the grids differ",
       "float", "query", (-1.0, 1.0)),
)  # fmt: skip

_BY_NAME = {c.name: c for c in REGISTRY}

#: the ratio columns (unit ``ratio``, e.g. ``own_object_lift``): every table summarises them as geometric means.
RATIOS = frozenset(c.name for c in REGISTRY if c.unit == "ratio")

#: Table 1's statistic columns, in table order (those with a ``header``).
TABLE1 = (
    "input", "output", "att", "att_jsd", "ctrl_att", "ctrl_att_jsd", "ctrl_form_att",
    "att_entropy", "att_max", "att_zero_rows", "att_own_object", "own_object_share", "ctrl_att_own_object",
    "own_object_density", "own_object_lift", "own_object_lift_objects",
)  # fmt: skip


def column(name: str) -> Column:
    """The column called ``name`` (ValueError naming the known ones if there is none)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown result column {name!r}; known: {', '.join(_BY_NAME)}") from None


def pick(*wanted: str) -> tuple[str, ...]:
    """``wanted`` as a tuple, each checked to be a known column (for a table's own column order)."""
    return tuple(column(n).name for n in wanted)


def names(site: str | None = None, roles: Iterable[str] | None = None, *, stored: bool | None = True) -> list[str]:
    """Names of the columns of ``site`` (any if ``None``) with one of ``roles``, in registry order.

    ``stored``: ``True`` only ``metrics.csv`` columns, ``False`` only report-side ones, ``None`` both.
    """
    if site is not None and site not in BOTH:
        raise ValueError(f"unknown site {site!r}; expected {NL!r} or {VIT!r}")
    roles = set(ROLES if roles is None else roles)
    if roles - set(ROLES):
        raise ValueError(f"unknown role(s) {sorted(roles - set(ROLES))}; expected some of {ROLES}")
    return [c.name for c in REGISTRY
            if (site is None or site in c.sites) and c.role in roles and (stored is None or c.stored == stored)]  # fmt: skip


def query_columns(site: str) -> list[str]:
    """The query-dependence suite's columns of ``site`` (role ``query``; NL blocks: with their 3x3 local
    mass, which ViT runs record anyway), in order: in a run only when it measured the suite."""
    return names(site, ("query",)) + (["att_local", "att_local_uniform"] if site == NL else [])


def object_columns(site: str) -> list[str]:
    """The object-context columns of ``site`` (role ``object``), in order: in a run only when it measured
    the query-dependence suite (after :func:`query_columns`; NaN without annotated objects)."""
    return names(site, ("object",))


def locality_control_columns(site: str) -> list[str]:
    """The locality control's columns (role ``object_control``): in a run only with ``--locality-control`` (after
    :func:`object_columns`)."""
    return names(site, ("object_control",))


def metrics_columns(site: str, query: bool = False, locality_control: bool = False) -> list[str]:
    """The columns of a ``site`` run's ``metrics.csv``, in order; ``query``: the run measured the
    query-dependence suite (its columns last: :func:`query_columns`, then :func:`object_columns`);
    ``locality_control``: and the locality control of its lifts (:func:`locality_control_columns`, last)."""
    extra = query_columns(site) + object_columns(site)
    control = locality_control_columns(site)
    base = [n for n in names(site) if n not in extra and n not in control]
    return base + (extra if query else []) + (control if query and locality_control else [])


def statistic_columns(site: str) -> list[str]:
    """The measured columns of a ``site`` (statistics, their checks and controls), in order."""
    return names(site, ("stat", "check", "control"))


def headers() -> dict[str, str]:
    """``{column: Table 1 header}`` of the columns that have one."""
    return {c.name: c.header for c in REGISTRY if c.header is not None}


def value_range(name: str, convention: str = "1-cos") -> tuple[float, float] | None:
    """The valid ``(low, high)`` of column ``name``; cosine distances end at 1 under ``(1-cos)/2``."""
    col = column(name)
    if col.range is None:
        return None
    low, high = col.range
    return (low, high / 2) if col.unit == "1-cos" and convention == "(1-cos)/2" else (low, high)


def frame_ranges(stats: Iterable[str], frame: Any) -> dict[str, tuple[float, float] | None]:
    """Each statistic's valid range in ``frame`` (:func:`value_range`; distances end at 1 when every row
    of ``frame`` is ``(1-cos)/2``); ``None`` for columns the registry does not know (intervals: no cut)."""
    half = "convention" in frame and (frame["convention"] == "(1-cos)/2").all()
    return {s: value_range(s, "(1-cos)/2" if half else "1-cos") if s in _BY_NAME else None for s in stats}


def check_ranges(frame: Any, source: str, *, tol: float = 1e-6) -> None:
    """Raise ValueError at the first value of ``frame`` outside its column's range.

    Args:
        frame: a pandas DataFrame of result rows (columns not in the registry are not checked).
        source: where the rows came from (a file name), named in the error.
        tol: float rounding allowed beyond each end (e.g. a distance of ``-1e-9``).

    NaN is allowed everywhere; a value that is not a number in a column with a range is an error.
    Rows are counted from 0 in the frame's order (CSV line = row + 2).
    """
    import pandas as pd  # bottom floor: pandas only when a frame is checked

    checked = [n for n in frame.columns if n in _BY_NAME and _BY_NAME[n].range is not None]
    bad = pd.DataFrame(False, index=range(len(frame)), columns=checked)
    for n in checked:
        raw = frame[n].reset_index(drop=True)
        values = pd.to_numeric(raw, errors="coerce")
        low, high = _BY_NAME[n].range
        bad[n] = (values < low - tol) | (values > high + tol) | (values.isna() & raw.notna())
    rows = bad.any(axis=1)
    if not rows.any():
        return
    row = int(rows.to_numpy().argmax())
    name = next(n for n in checked if bad.at[row, n])
    col = _BY_NAME[name]
    value = frame[name].iloc[row]
    value = value.item() if hasattr(value, "item") else value  # numpy scalars print as plain numbers
    raise ValueError(
        f"{source}: row {row} (CSV line {row + 2}), column {name!r} = {value!r} lies outside "
        f"[{col.range[0]}, {col.range[1]}] ({col.meaning})"
    )


def _range_text(col: Column) -> str:
    if col.range is None:
        return ""
    low, high = col.range
    if col.unit == "1-cos":
        return "[0, 2] (`(1-cos)/2`: [0, 1])"
    return f"[{low:g}, {high:g}]" if high != _INF else f">= {low:g}"


_SITE_TEXT = {BOTH: "both", _NL: "NL blocks", _VIT: "ViT heads"}


def readme_table(roles: Sequence[str] = ("stat", "check", "control", "object", "object_control", "query")) -> str:
    """The README's Markdown table of the ``metrics.csv`` columns with ``roles`` (default: the measured ones)."""
    lines = ["| column | meaning | unit | range | sites |", "|---|---|---|---|---|"]
    for c in REGISTRY:
        if c.role in roles and c.stored:
            lines.append(f"| `{c.name}` | {c.meaning} | {c.unit} | {_range_text(c)} | {_SITE_TEXT[c.sites]} |")
    return "\n".join(lines) + "\n"
