"""The report's reading of the query-dependence suite (nlanalysis/report/query_text.py) on hand-built
metrics frames whose reading is known, and the split tables (nlanalysis/report/nl_tables.py) on the
committed demo result sets, checked against numpy means of their metrics."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nlanalysis.report import write_report
from nlanalysis.report.query_text import THRESHOLDS, kind, query_lines, query_reading
from nlanalysis.tables import DIAGNOSTIC_STATS, HEADLINE_STATS, QUERY_TABLE_STATS, summarise

DEMO = Path(__file__).resolve().parents[1] / "reports" / "demo" / "runs"


def _frame(mode="embedded_gaussian", n=30, noise=0.002, seed=0, **means):
    """``n`` images of one block whose statistics scatter (sd ``noise``) around ``means``, exactly (ratios: their logs)."""
    rng = np.random.default_rng(seed)

    def scatter(v):
        z = rng.standard_normal(n)
        z = (z - z.mean()) / z.std(ddof=1)
        return np.full(n, np.nan) if not np.isfinite(v) else v * np.exp(noise * z) if "lift" in k else v + noise * z

    rows = {}
    for k, v in means.items():
        rows[k] = scatter(v)
    return pd.DataFrame({"label": "run", "variant": "v", "block": "layer1.1", "mode": mode, "image_id": range(n),
                         "query_independent": False, "convention": "1-cos", **rows})  # fmt: skip


def _row(**kw):
    return summarise(_frame(**kw), by=("variant",)).iloc[0]


def test_one_shared_map_at_different_sharpness():
    r = _row(att=0.096, att_gain_only=0.089, gain_only_tv=0.028, logit_rank1=0.998, unary_var_share=0.78, att_pairwise_only=0.24)
    assert kind(r) == "one map"
    text = query_reading(r, "`eg`")
    assert text.startswith("`eg`: **one shared map at different sharpness**")
    assert "reproduces 0.0890 [" in text and "(93%)" in text and "at TV 0.0280" in text
    assert "rank 1 (one key profile times a gain per query)" in text
    assert "78.0% [" in text and "it dominates" in text
    assert "pairwise term alone would give `att` 0.240" in text and "more than the real maps" in text
    for absent in ("own-object", "NMI", "absolute values", "form", "distance"):  # statistics the row lacks are not mentioned
        assert absent not in text


def test_query_specific_maps_and_object_specific_context():
    r = _row(att=0.78, att_gain_only=0.30, gain_only_tv=0.5, logit_rank1=0.85, own_object_lift_objects=1.7, own_object_lift=4.8,
             noise=0.01)  # fmt: skip
    assert kind(r) == "not one map"
    text = query_reading(r, "g")
    assert "**not one map at different sharpness: query-specific maps**" in text
    assert "rank 1 (" not in text  # 85% is not claimed to be one profile
    assert "against the object-query null: more on its own object (object-specific context or locality" in text


def test_sign_flip_of_one_map():
    r = _row(mode="dot_product", att=0.28, att_abs=0.05, att_norm_weighted=0.09, logit_rank1=0.99)
    assert kind(r) == "sign"
    text = query_reading(r, "dp")
    assert "**a sign flip of one map**" in text and "`att` 0.280" in text and "absolute values 0.0500" in text
    assert "centred maps are 99.0%" in text and "a signed gain per query" in text
    # att_abs over half of att: no sign reading
    assert kind(_row(mode="dot_product", att=0.28, att_abs=0.2, logit_rank1=0.9)) is None


def test_intervals_that_straddle_a_threshold_are_not_claimed():
    # mean share 0.85 (above 0.8) but images so spread that the interval's least favourable ratio is below 0.8
    wide = _row(att=0.1, att_gain_only=0.085, gain_only_tv=0.02, noise=0.03)
    lo, hi = wide["att_gain_only_low"] / wide["att_high"], wide["att_gain_only"] / wide["att"]
    assert lo < 0.8 < hi
    assert kind(wide) == "partly"
    assert "the share's lower end" in query_reading(wide, "x") and "is below 80%" in query_reading(wide, "x")
    tight = _row(att=0.1, att_gain_only=0.085, gain_only_tv=0.02, noise=0.0005)
    assert kind(tight) == "one map"
    # a lift whose interval spans 1.1 is not called object-specific nor none
    spread = _row(att=0.1, own_object_lift_objects=1.12, noise=0.2)
    assert spread["own_object_lift_objects_low"] < 1.1 < spread["own_object_lift_objects_high"]
    assert "more on its own object" not in query_reading(spread, "x") and "no object-specific context" not in query_reading(spread, "x")


def test_a_group_of_one_image_has_no_interval_and_no_reading():
    """One image: the means alone would read "one shared map", "dominates" and "more on its own object"; without an
    interval nothing is claimed (THRESHOLDS: a reading needs the whole 95% interval)."""
    means = dict(att=0.1, att_gain_only=0.099, gain_only_tv=0.001, unary_var_share=0.51, own_object_lift_objects=1.5)
    one = summarise(_frame(n=3, **means).iloc[:1], by=("variant",)).iloc[0]
    assert np.isnan(one["att_low"]) and kind(one) is None
    text = query_reading(one, "x")
    assert "dominates" not in text and "more on its own object" not in text and text.count("no interval to read") == 2
    many = _row(att=0.1, att_gain_only=0.099, gain_only_tv=0.001, unary_var_share=0.70, own_object_lift_objects=1.5)
    assert kind(many) == "one map" and "it dominates" in query_reading(many, "x")  # the same means, read with intervals


def test_no_object_specific_context_with_the_interval_stated():
    r = _row(att=0.096, own_object_lift_objects=1.01, own_object_lift=1.43, noise=0.01)
    lift = _frame(att=0.096, own_object_lift_objects=1.01, own_object_lift=1.43, noise=0.01)["own_object_lift_objects"]
    assert r["own_object_lift_objects"] == pytest.approx(1.01)  # the geometric mean
    ci = stats.t.interval(0.95, len(lift) - 1, loc=np.log(lift).mean(), scale=stats.sem(np.log(lift)))
    assert r["own_object_lift_objects_low"] == pytest.approx(np.exp(ci[0])) and r["own_object_lift_objects_high"] == pytest.approx(np.exp(ci[1]))
    text = query_reading(r, "x")
    assert "against the object-query null: no object-specific context (at most" in text
    assert "against all queries' mean map it is 1.43" in text


def test_rows_without_the_suite_or_with_one_map_by_construction_say_nothing():
    assert query_reading(_row(att=0.3, input=0.6), "x") is None
    gc = summarise(_frame(att=0.0, logit_rank1=1.0).assign(query_independent=True), by=("variant",)).iloc[0]
    assert query_reading(gc, "gc") is None
    assert query_lines(summarise(_frame(att=0.3), by=("variant",)), ["x"]) == []
    lines = query_lines(summarise(_frame(att=0.3, logit_rank1=0.99, att_gain_only=0.29, gain_only_tv=0.01), by=("variant",)), ["x"])
    assert lines[0] == THRESHOLDS and "80%" in THRESHOLDS and "0.05" in THRESHOLDS and len(lines) == 2


def test_demo_report_splits_the_tables_and_reads_the_suite(tmp_path):
    runs = [DEMO / "embedded_gaussian", DEMO / "dot_product", DEMO / "gc"]
    report = write_report(runs, tmp_path / "r", formats=("png",))
    out = report.out
    metrics = {r.name: pd.read_csv(r / "metrics.csv") for r in runs}
    t1, qd, diag = (pd.read_csv(out / f"tables/{n}.csv").set_index("variant") for n in ("table1", "query_dependence", "diagnostics"))
    stat_cols = lambda t: [c for c in t.columns if c in HEADLINE_STATS + QUERY_TABLE_STATS + DIAGNOSTIC_STATS]
    assert set(stat_cols(t1)) <= set(HEADLINE_STATS) and "logit_rank1" not in t1 and "metric" in t1
    assert set(stat_cols(qd)) <= set(QUERY_TABLE_STATS) and "input" not in qd and "metric" not in qd
    assert set(stat_cols(diag)) <= set(DIAGNOSTIC_STATS) and "att_max" in diag
    eg = metrics["embedded_gaussian"]
    assert t1.loc["embedded_gaussian", "att"] == pytest.approx(eg["att"].mean(), rel=1e-5)
    assert qd.loc["embedded_gaussian", "att_gain_only"] == pytest.approx(eg["att_gain_only"].mean(), rel=1e-5)
    assert qd.loc["embedded_gaussian", "own_object_lift_objects"] == pytest.approx(np.exp(np.log(eg["own_object_lift_objects"]).mean()), rel=1e-5)
    assert qd.loc["dot_product", "att_abs"] == pytest.approx(metrics["dot_product"]["att_abs"].mean(), rel=1e-5)
    md = report.index_md.read_text()
    assert "## What kind of query dependence" in md and "## Table 2: what kind of query dependence" in md
    assert "`embedded_gaussian` · layer1.1: **one shared map at different sharpness**" in md
    assert "`dot_product` · layer1.1: **a sign flip of one map**" in md
    assert "`gc` · layer1.1:" not in md  # one map by construction: nothing to read
    for name in ("table1", "query_dependence", "diagnostics"):
        assert f"(figures/{name}.png)" in md and (out / f"figures/{name}.png").is_file()
    widest = max(len(line.split("|")) for line in (out / "tables/table1.md").read_text().splitlines())
    assert widest <= 17  # Table 1 alone: 15 columns, not the ~30 of headline + suite


def test_vit_layers_group_their_heads_by_reading():
    """Per layer: the head-mean map's reading, then the single heads grouped by theirs (hand-built heads table)."""
    from nlanalysis.report.query_text import layer_lines

    def head(layer, h, att, gain, tv):
        return {"layer": layer, "head": h, "att": att, "att_low": att * 0.98, "att_high": att * 1.02, "att_gain_only": gain,
                "att_gain_only_low": gain * 0.98, "att_gain_only_high": gain * 1.02, "gain_only_tv": tv, "gain_only_tv_low": tv * 0.9,
                "gain_only_tv_high": tv * 1.1}  # fmt: skip

    table = pd.DataFrame([head(0, 0, 0.2, 0.19, 0.01), head(0, 1, 0.5, 0.1, 0.4), head(0, 2, 0.2, 0.19, 0.02),
                          head(0, -1, 0.1, 0.095, 0.01), head(1, 0, 0.3, 0.2, 0.08), head(1, -1, 0.3, 0.1, 0.3)])  # fmt: skip
    lines = layer_lines(table)
    assert lines[0] == THRESHOLDS and len(lines) == 3
    assert lines[1].startswith("layer 0, head-mean map: **one shared map at different sharpness**")
    assert "Its 3 heads: one shared map at different sharpness: h0, h2; not one map at different sharpness: query-specific maps: h1." in lines[1]
    assert lines[2].startswith("layer 1, head-mean map: **not one map") and "partly one shared map" in lines[2] and ": h0." in lines[2]
    assert layer_lines(table[["layer", "head", "att", "att_low", "att_high"]]) == []


def test_a_share_below_1_never_prints_as_100_percent():
    from nlanalysis.report.query_text import _pct

    row = pd.Series({"s": 0.99996, "s_low": 0.9996, "s_high": 0.999999})
    assert _pct(row, "s") == "99.99% [99.96, 99.99]"
    assert _pct(pd.Series({"s": 1.0}), "s") == "100.0%" and _pct(pd.Series({"s": 0.339}), "s") == "33.9%"


def test_a_tiny_ratio_to_the_form_control_is_not_written_as_zero():
    # att 0.004 against a form control of 1.0: 0.004x as much (two decimals would print "0.00x")
    text = query_reading(_row(mode="concatenation", att=0.004, ctrl_form_att=1.0, logit_rank1=0.5, noise=0.0001), "`c`")
    assert "differ between queries 0.004× as much" in text and "0.00×" not in text
    assert "differ between queries 0.40× as much" in query_reading(_row(att=0.4, ctrl_form_att=1.0, logit_rank1=0.5), "`e`")
