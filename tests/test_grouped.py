"""The one table engine (nlanalysis.metrics.grouped) against scipy and plain pandas, and the tables built on it."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from nlanalysis.analyze_vit import layer_table
from nlanalysis.extract.results import summarize
from nlanalysis.metrics import hierarchical_mean_ci
from nlanalysis.metrics.grouped import grouped_intervals
from nlanalysis.report.vit import heads_table
from nlanalysis.schema import HEAD_MEAN
from nlanalysis.tables import summarise


def _t(values, level=0.95):
    """scipy's t-interval: mean, mean -/+ t * sem (ddof=1)."""
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    mean = values.mean()
    low, high = scipy_stats.t.interval(level, len(values) - 1, loc=mean, scale=scipy_stats.sem(values, ddof=1))
    return mean, low, high


def test_hierarchical_interval_over_single_image_groups_is_the_t_interval_over_images():
    values = np.random.default_rng(0).normal(0.3, 0.1, size=9)
    ci = hierarchical_mean_ci(values, groups=[f"image {i}" for i in range(9)])  # each image its own group
    assert (ci.mean, ci.low, ci.high) == pytest.approx(_t(values), rel=1e-12)


def _frame(seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"layer": layer, "head": head, "image": image, "att": rng.uniform(0, 1), "input": rng.uniform(0.2, 0.8)}
            for layer in (1, 0) for head in (HEAD_MEAN, 1, 0) for image in range(5)]  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.loc[3, "att"] = math.nan  # dropped, not counted
    return frame


def test_grouped_intervals_are_scipy_t_intervals_per_group():
    frame = _frame()
    table = grouped_intervals(frame, ["layer", "head"], ["att", "input"], sort=True, facts=lambda p: {"rows": len(p)})
    assert list(table.columns[:3]) == ["layer", "head", "rows"]
    assert list(zip(table["layer"], table["head"])) == [(0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]
    for row in table.itertuples():
        part = frame[(frame["layer"] == row.layer) & (frame["head"] == row.head)]
        for s in ("att", "input"):
            assert (getattr(row, s), getattr(row, f"{s}_low"), getattr(row, f"{s}_high")) == pytest.approx(_t(part[s]), rel=1e-12)
    unsorted = grouped_intervals(frame, ["layer"], ["att"])
    assert list(unsorted["layer"]) == [1, 0]  # first-seen order by default


def test_grouped_intervals_pool_units_hierarchically_and_cut_to_bounds():
    rng = np.random.default_rng(1)
    seed = np.repeat([0, 1, 2], 4)
    frame = pd.DataFrame({"block": "b", "seed": seed, "att": np.array([0.001, 0.08, 0.002])[seed] + rng.uniform(0, 1e-3, 12)})
    row = grouped_intervals(frame, ["block"], ["att"], unit="seed", bounds={"att": (0.0, 2.0)}).iloc[0]
    seed_means = frame.groupby("seed")["att"].mean()
    mean, low, high = _t(seed_means)  # t over the 3 seed means, low end below 0 ...
    assert low < 0 and row["att"] == pytest.approx(mean) and row["att_high"] == pytest.approx(high)
    assert row["att_low"] == 0.0  # ... cut to the range
    one_seed = grouped_intervals(frame[frame["seed"] == 0], ["block"], ["att"], unit="seed").iloc[0]
    assert (one_seed["att"], one_seed["att_low"], one_seed["att_high"]) == pytest.approx(_t(frame["att"][:4]))


def _cut(interval, low=0.0, high=2.0):
    """An interval cut to a cosine distance's range [0, 2] (as every table cuts it)."""
    mean, lo, hi = interval
    return mean, max(lo, low), min(hi, high)


def test_layer_and_heads_tables_are_per_image_t_intervals():
    frame = _frame()
    layers = layer_table(frame, columns=("att",))
    heads = heads_table(frame, columns=("att", "input"))
    assert list(zip(heads["layer"], heads["head"])) == [(0, 0), (0, 1), (0, -1), (1, 0), (1, 1), (1, -1)]  # head mean last
    assert list(heads.columns[:3]) == ["layer", "head", "n_images"]
    for row in heads.itertuples():
        part = frame[(frame["layer"] == row.layer) & (frame["head"] == row.head)]
        assert (row.att, row.att_low, row.att_high) == pytest.approx(_cut(_t(part["att"])), rel=1e-12)
        assert row.n_images == 5
    for row in layers.itertuples():
        part = frame[(frame["layer"] == row.layer) & (frame["head"] == HEAD_MEAN)]
        assert (row.att, row.att_low, row.att_high) == pytest.approx(_cut(_t(part["att"])), rel=1e-12)


def test_summarize_is_the_plain_mean_per_block_in_run_order():
    frame = _frame().rename(columns={"layer": "block"}).assign(block=lambda f: f["block"].map({0: "z.second", 1: "a.first"}))
    got = summarize(frame)
    expected = frame[frame["head"] == HEAD_MEAN].groupby("block", sort=False)[["input", "att"]].mean()
    assert list(got.index) == ["a.first", "z.second"] and list(got.columns) == ["input", "att"]
    np.testing.assert_allclose(got.to_numpy(float), expected.to_numpy(float), rtol=1e-12)
    assert summarize(frame.iloc[:0]).empty


def test_summarise_table1_numbers_unchanged_by_the_engine():
    """Table 1 over two seeds: the hierarchical t over seed means, by hand, and cut at 0."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"variant": "v", "block": "b", "label": np.repeat(["s0", "s1"], 6), "seed": np.repeat([0.0, 1.0], 6),
                          "image_id": np.tile(np.arange(6), 2), "att": rng.uniform(0, 0.1, 12), "convention": "1-cos"})  # fmt: skip
    row = summarise(frame).iloc[0]
    mean, low, high = _t(frame.groupby("seed")["att"].mean())
    assert row["att"] == pytest.approx(mean) and row["att_low"] == pytest.approx(max(low, 0.0))
    assert row["att_high"] == pytest.approx(min(high, 2.0)) and row["seeds"] == 2 and row["images"] == 6


def test_a_statistic_missing_for_a_seed_is_over_the_other_seeds_and_the_ci_text_says_so():
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"variant": "v", "block": "b", "label": np.repeat(["s0", "s1", "s2"], 4), "seed": np.repeat([0.0, 1.0, 2.0], 4),
                          "image_id": np.tile(np.arange(4), 3), "att": rng.uniform(0, 1, 12), "output": rng.uniform(0.5, 0.52, 12)})  # fmt: skip
    frame.loc[frame.seed == 2, "output"] = math.nan
    row = summarise(frame, by=("variant",), stats=("att", "output")).iloc[0]
    mean, low, high = _t(frame[frame.seed < 2].groupby("seed")["output"].mean())  # df = 1: two seed means
    assert (row["output"], row["output_low"], row["output_high"]) == pytest.approx((mean, low, high), rel=1e-12)  # not cut at [0, 2]
    assert row["seeds"] == 3 and row["ci"] == "95% t over 3 seed means (images within seeds); output over 2 of them"
    assert summarise(frame, by=("variant",), stats=("att",)).iloc[0]["ci"] == "95% t over 3 seed means (images within seeds)"


def test_the_ci_text_counts_the_seeds_each_interval_is_over():
    """One seed's statistic all NaN: a row whose every interval is over the other two seeds says 2 of 3, not 3; a task
    metric missing for a seed (a checkpoint that did not record it) is named as a statistic is."""
    rng = np.random.default_rng(6)
    frame = pd.DataFrame({"variant": "v", "block": "b", "label": np.repeat(["s0", "s1", "s2"], 4), "seed": np.repeat([0.0, 1.0, 2.0], 4),
                          "image_id": np.tile(np.arange(4), 3), "att": rng.uniform(0, 1, 12), "output": rng.uniform(0.5, 0.52, 12),
                          "metric_name": "miou", "metric": np.repeat([0.41, 0.43, 0.40], 4)})  # fmt: skip
    frame.loc[frame.seed == 2, "att"] = math.nan
    no_metric = frame.drop(columns=["metric_name", "metric"])
    row = summarise(no_metric, by=("variant",), stats=("att",)).iloc[0]
    assert row["att"] == pytest.approx(frame[frame.seed < 2].groupby("seed")["att"].mean().mean())  # over the two seeds
    assert row["ci"] == "95% t over 2 of 3 seed means (images within seeds)" and row["seeds"] == 3
    no_metric.loc[no_metric.seed > 0, "output"] = math.nan  # measured in seed 0 only
    row = summarise(no_metric, by=("variant",), stats=("att", "output")).iloc[0]
    assert row["ci"] == "95% t over 2 of 3 seed means (images within seeds); output over 1 of them"
    row = summarise(frame, by=("variant",), stats=("att", "output")).iloc[0]  # the metric's interval is over all three
    assert row["ci"] == "95% t over 3 seed means (images within seeds); att over 2 of them"
    frame.loc[frame.seed == 0, "metric"] = math.nan
    row = summarise(frame, by=("variant",), stats=("output",)).iloc[0]
    assert row["metric"] == pytest.approx(0.415) and row["ci"] == "95% t over 3 seed means (images within seeds); miou over 2 of them"


def test_geometric_columns_are_the_exponentiated_t_interval_of_the_logs():
    rng = np.random.default_rng(3)
    lifts = np.exp(rng.normal(0.2, 0.4, size=8))
    frame = pd.DataFrame({"layer": 0, "image": range(10), "lift": [*lifts, 0.0, np.inf], "att": rng.uniform(0, 1, size=10)})
    got = grouped_intervals(frame, ["layer"], ["lift", "att"], geometric=["lift"], bounds={"lift": (0.0, 0.5)}).iloc[0]
    mean, low, high = _t(np.log(lifts))  # 0 and inf left out; no bounds on a ratio
    assert (got["lift"], got["lift_low"], got["lift_high"]) == pytest.approx((np.exp(mean), np.exp(low), np.exp(high)), rel=1e-12)
    assert (got["att"], got["att_low"], got["att_high"]) == pytest.approx(_t(frame["att"]), rel=1e-12)  # arithmetic, as before


def test_vit_tables_summarise_ratio_columns_as_geometric_means():
    frame = _frame()
    frame["own_object_lift"] = np.exp(np.random.default_rng(4).normal(0.0, 1.0, size=len(frame)))
    table = layer_table(frame, columns=("own_object_lift",)).set_index("layer")
    for layer in (0, 1):
        values = frame[(frame["layer"] == layer) & (frame["head"] == HEAD_MEAN)]["own_object_lift"]
        mean, low, high = _t(np.log(values))
        row = table.loc[layer]
        assert (row["own_object_lift"], row["own_object_lift_low"], row["own_object_lift_high"]) == pytest.approx(
            (np.exp(mean), np.exp(low), np.exp(high)), rel=1e-12)
