"""Seed-paired margins and the plateau rule (nlanalysis.train.compare) against hand computations."""
from __future__ import annotations

import math

import pytest

from nlanalysis.train.compare import load_results, paired_margins, plateau
from nlanalysis.train.loop import TrainConfig, TrainResult
from nlanalysis.train.run import _record_run


def _runs(variant: str, mious: list[float], seeds=(0, 1, 2)) -> list[TrainResult]:
    return [TrainResult(variant, s, m, 0.9, 10.0 + s) for s, m in zip(seeds, mious)]


def test_paired_margin_matches_the_t_formula_for_two_degrees_of_freedom():
    base = _runs("baseline", [0.30, 0.40, 0.50])
    nl = _runs("nl", [0.31, 0.42, 0.53])  # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01
    row = paired_margins(base + nl).set_index("variant").loc["nl"]
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t_{0.975, 2}
    assert row.margin == pytest.approx(0.02, abs=1e-12)
    assert row.margin_low == pytest.approx(0.02 - half, abs=1e-12)
    assert row.margin_high == pytest.approx(0.02 + half, abs=1e-12)
    t = 0.02 / (0.01 / math.sqrt(3))
    assert row.margin_p == pytest.approx(1.0 - t / math.sqrt(2.0 + t * t), rel=1e-9)  # closed-form t_2 tail
    assert row.verdict == "no difference shown"  # 0.02 - 0.0248 < 0: the interval includes 0
    assert row.miou == pytest.approx(0.42)


def test_verdict_only_when_the_interval_excludes_zero_and_pairs_by_seed():
    base = _runs("baseline", [0.30, 0.40, 0.50])
    better = _runs("gc", [0.35, 0.451, 0.549])  # differences 0.05 +- 0.001
    worse = _runs("se", [0.20, 0.30, 0.40])
    unpaired = _runs("snl", [0.9], seeds=(7,))
    table = paired_margins(base + better + worse + unpaired).set_index("variant")
    assert table.loc["gc", "verdict"] == "better" and table.loc["se", "verdict"] == "worse"
    assert table.loc["baseline", "verdict"] == "baseline"
    assert math.isnan(table.loc["snl", "margin"])  # seed 7 has no baseline partner
    assert table.loc["snl", "pairs"] == 0 and table.loc["gc", "pairs"] == 3
    with pytest.raises(ValueError, match="no 'baseline' runs"):
        paired_margins(better)


def test_plateau_rule_uses_the_larger_of_the_floor_and_the_seed_sd():
    short = _runs("a", [0.30, 0.31, 0.32]) + _runs("b", [0.30, 0.30, 0.30]) + _runs("c", [0.3, 0.3, 0.3])
    long = _runs("a", [0.305, 0.32, 0.33]) + _runs("b", [0.35, 0.36, 0.34])  # c: no long runs yet
    table = plateau(short, long).set_index("variant")
    assert table.loc["a", "gain"] == pytest.approx(0.025 / 3)
    assert table.loc["a", "threshold"] == pytest.approx(0.01)  # sd 0.01 ties the floor
    assert table.loc["a", "plateau"] == True  # noqa: E712
    assert table.loc["b", "plateau"] == False  # noqa: E712  (gain 0.05)
    assert table.loc["c", "plateau"] is None and table.loc["c", "pairs"] == 0


def test_load_results_reads_what_training_records_and_names_a_bad_file(tmp_path):
    result = TrainResult("gc", 1, 0.4, 0.9, 12.5, history=[{"variant": "gc", "seed": 1, "step": 0, "miou": 0.1}])
    _record_run(tmp_path, result, TrainConfig(seed=1), {"train": "t", "val": "v"})
    (loaded,) = load_results(tmp_path)
    assert (loaded.variant, loaded.seed, loaded.miou, loaded.seconds) == ("gc", 1, 0.4, 12.5)
    (tmp_path / "runs" / "x_s0.json").write_text("{not json")
    with pytest.raises(ValueError, match="x_s0.json"):
        load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        load_results(tmp_path / "nowhere")


def test_compare_runs_command_prints_and_writes_both_tables(tmp_path, capsys):
    from nlanalysis.cli import main

    for folder, gain in (("short", 0.0), ("long", 0.005)):
        for r in _runs("baseline", [0.30 + gain, 0.40, 0.50]) + _runs("gc", [0.35, 0.451 + gain, 0.549]):
            _record_run(tmp_path / folder, r, TrainConfig(seed=r.seed), {"train": "t", "val": "v"})
    assert main(["compare-runs", str(tmp_path / "short"), "--long", str(tmp_path / "long"), "--csv", str(tmp_path / "t")]) == 0
    text = capsys.readouterr().out
    assert "better" in text and "plateau" in text
    import pandas as pd

    assert set(pd.read_csv(tmp_path / "t_margins.csv").variant) == {"baseline", "gc"}
    assert pd.read_csv(tmp_path / "t_plateau.csv").plateau.all()
    assert main(["compare-runs", str(tmp_path / "missing")]) == 2


def test_compare_runs_against_another_variant_pairs_with_it(tmp_path):
    """--against gc: the margins of every variant over gc, paired by seed (hand-computed differences)."""
    from nlanalysis.cli import main
    import pandas as pd

    for r in (_runs("baseline", [0.30, 0.40, 0.50]) + _runs("gc", [0.35, 0.45, 0.55])
              + _runs("embedded_gaussian", [0.40, 0.52, 0.60])):  # fmt: skip
        _record_run(tmp_path / "grid", r, TrainConfig(seed=r.seed), {"train": "t", "val": "v"})
    assert main(["compare-runs", str(tmp_path / "grid"), "--against", "baseline", "gc", "--csv", str(tmp_path / "t")]) == 0
    table = pd.read_csv(tmp_path / "t_margins.csv").set_index(["against", "variant"])
    diffs = [0.05, 0.07, 0.05]  # embedded_gaussian - gc per seed
    assert table.loc[("gc", "embedded_gaussian"), "margin"] == pytest.approx(sum(diffs) / 3)
    assert table.loc[("gc", "embedded_gaussian"), "verdict"] == "better"
    assert table.loc[("baseline", "gc"), "margin"] == pytest.approx(0.05)
    assert table.loc[("gc", "baseline"), "verdict"] == "worse"


def test_a_run_given_twice_is_refused_not_paired_with_every_copy(tmp_path):
    """A copy of a record would pair every copy with every copy: 4 differences from 3 seeds (a narrower interval than
    scipy's paired t over the 3 real pairs)."""
    from scipy import stats

    base, nl = _runs("baseline", [0.40, 0.42, 0.41]), _runs("nl", [0.43, 0.44, 0.42])
    with pytest.raises(ValueError, match="runs given twice: baseline seed 0"):
        paired_margins(base + nl + base[:1])
    row = paired_margins(base + nl).set_index("variant").loc["nl"]
    diffs = [0.03, 0.02, 0.01]
    low, high = stats.t.interval(0.95, 2, loc=0.02, scale=stats.sem(diffs))
    assert (row.margin_low, row.margin_high) == (pytest.approx(low), pytest.approx(high))
    assert row.margin_p == pytest.approx(stats.ttest_rel([0.43, 0.44, 0.42], [0.40, 0.42, 0.41]).pvalue)
    for folder in ("a", "b"):  # two record files of one run (a copy under another name): refused, naming both
        _record_run(tmp_path, TrainResult("gc", 1, 0.4, 0.9, 12.5), TrainConfig(seed=1), "data")
        (tmp_path / "runs" / "gc_s1.json").rename(tmp_path / "runs" / f"{folder}_s1.json")
    with pytest.raises(ValueError, match="b_s1.json and a_s1.json: both record 'gc' seed 1"):
        load_results(tmp_path)


def test_the_plateau_rule_is_not_read_from_one_seed():
    """Its threshold is the sd over seeds (floored at 0.01): one seed has none, so no verdict (it read True or False)."""
    table = plateau(_runs("a", [0.30], seeds=(0,)), _runs("a", [0.35], seeds=(0,))).set_index("variant")
    assert table.loc["a", "plateau"] is None and math.isnan(table.loc["a", "threshold"]) and table.loc["a", "gain"] == pytest.approx(0.05)


def test_a_long_run_without_a_result_is_no_pair_of_the_plateau_rule():
    """A NaN mIoU (a failed run) is left out of the gain and of the pairs that the table counts."""
    table = plateau(_runs("a", [0.30, 0.31, 0.32]), _runs("a", [0.35, math.nan, math.nan])).set_index("variant")
    assert table.loc["a", "pairs"] == 1 and table.loc["a", "gain"] == pytest.approx(0.05)
