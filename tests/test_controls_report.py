"""The controls report's words (reports/controls/PLAN.md's reading rules) on hand-built rows and runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import pandas as pd

from nlanalysis.controls import answer, gate, read_attention, training_table, write_controls_report
from nlanalysis.train.loop import TrainConfig, TrainResult
from nlanalysis.train.run import _record_run

KEPT_SET = Path(__file__).resolve().parents[1] / "reports/controls/runs/query-specific-v3/embedded_gaussian_s0"


def _row(**stats) -> pd.Series:
    """A summary row: each statistic given as (mean, low, high)."""
    data = {"variant": stats.pop("variant", "embedded_gaussian"), "block": "layer1.1"}
    for name, (mean, low, high) in stats.items():
        data.update({name: mean, f"{name}_low": low, f"{name}_high": high})
    return pd.Series(data)


def test_each_rule_says_only_what_its_interval_allows():
    words = read_attention(_row(same_category_lift=(1.3, 1.1, 1.5), att=(0.4, 0.35, 0.45), ctrl_form_att=(0.2, 0.18, 0.22),
                                unary_var_share=(0.3, 0.25, 0.35)))  # fmt: skip
    assert words[0].startswith("attends its own group") and "above its form-matched control" in words[1]
    assert words[2].startswith("pairwise term dominates")
    words = read_attention(_row(same_category_lift=(1.02, 0.99, 1.05), att=(0.1, 0.05, 0.2), ctrl_form_att=(0.15, 0.1, 0.2),
                                unary_var_share=(0.5, 0.4, 0.6)))  # fmt: skip
    assert words[0].startswith("no own-group preference shown") and "not distinguishable" in words[1]
    assert words[2].startswith("neither term dominates")
    words = read_attention(_row(variant="concatenation", same_category_lift=(0.8, 0.7, 0.9), att=(0.01, 0.0, 0.02),
                                ctrl_form_att=(0.16, 0.15, 0.17), unary_var_share=(0.9, 0.8, 1.0)))  # fmt: skip
    assert words[0].startswith("avoids its own group") and "below its form-matched control" in words[1]
    assert len(words) == 2  # concatenation has no explicit query/key: no unary/pairwise reading
    assert read_attention(_row(att=(0.1, 0.05, 0.2))) == []  # nothing to compare with: nothing said


def test_the_lifts_are_read_against_their_locality_control():
    """Rule 4: a lift's ratio to its locality control is called above / below only where its interval excludes 1 (bounds
    in four digits: an interval that just excludes 1 does not print as one that touches it)."""
    words = read_attention(_row(same_category_lift_vs_local=(1.31, 1.001, 1.71), own_object_lift_objects_vs_local=(0.9, 0.85, 0.95)))
    assert words == ["own_object_lift_objects below its locality control (ratio 0.9 [0.85, 0.95])",
                     "same_category_lift above its locality control (ratio 1.31 [1.001, 1.71])"]
    assert read_attention(_row(same_category_lift_vs_local=(1.26, 0.96, 1.65))) == [
        "same_category_lift not distinguishable from locality (ratio 1.26 [0.96, 1.65])"]


def test_each_images_lift_is_set_against_its_own_control_and_summarised_as_a_ratio():
    """with_locality_ratios divides per image (not the means), and the summary is their geometric mean."""
    from nlanalysis.tables import summarise, with_locality_ratios

    frame = pd.DataFrame({"block": "b", "image_id": [1, 2, 3, 4], "label": "r", "variant": "v", "same_category_lift": [2.0, 4.0, 1.0, 2.0],
                          "ctrl_local_same_category_lift": [1.0, 1.0, 1.0, 0.5]})  # fmt: skip
    ratios = with_locality_ratios(frame)
    assert list(ratios["same_category_lift_vs_local"]) == [2.0, 4.0, 1.0, 4.0] and "own_object_lift_objects_vs_local" not in ratios
    out = summarise(ratios, by=("variant",), stats=["same_category_lift_vs_local"])
    assert float(out["same_category_lift_vs_local"].iloc[0]) == pytest.approx(32 ** 0.25)
    assert with_locality_ratios(frame.drop(columns="ctrl_local_same_category_lift")).columns.tolist() == [
        c for c in frame if c != "ctrl_local_same_category_lift"]  # no control: no ratio
    # a control whose Gaussian tail put ~nothing on the category (or nothing at all: 0, inf ratio) is not read over
    tails = frame.assign(ctrl_local_same_category_lift=[1.0, 0.0, 2.6e-260, 0.5])
    ratios = with_locality_ratios(tails)
    assert ratios["same_category_lift_vs_local"].isna().tolist() == [False, True, True, False]
    assert float(summarise(ratios, by=("variant",), stats=["same_category_lift_vs_local"])["same_category_lift_vs_local"].iloc[0]) == pytest.approx(8**0.5)


def test_the_reading_counts_images_without_a_readable_control_and_lifts_of_0_apart(tmp_path):
    """An unreadable control (below 1e-3) and a lift of exactly 0 (fine control, no log) are different things: each is
    counted as itself (a lift of 0 used to be called an unreadable control)."""
    from nlanalysis.controls import attention_summary

    sets = []
    for seed in (0, 1):
        folder = tmp_path / f"embedded_gaussian_s{seed}"
        folder.mkdir()
        kept = pd.read_csv(KEPT_SET / "metrics.csv").head(5)
        kept = kept.assign(ctrl_local_same_category_lift=[0.9, 0.0, 0.8, 1.1, 1.0], ctrl_local_own_object_lift_objects=1.0)
        if seed == 1:  # a trained lift of exactly 0 has no log: not read either
            kept.loc[0, "same_category_lift"] = 0.0
        kept.to_csv(folder / "metrics.csv", index=False)
        (folder / "images.csv").write_text((KEPT_SET / "images.csv").read_text())
        info = json.loads((KEPT_SET / "run.json").read_text())
        info["checkpoint"]["meta"]["train_config"]["seed"] = seed  # each set its own model and seed (a copy: counted once)
        info["checkpoint"]["sha256"] = info["settings"]["checkpoint_sha256"] = str(seed) * 64
        (folder / "run.json").write_text(json.dumps(info))
        sets.append(folder)
    row = attention_summary(sets).iloc[0]
    counts = [row[f"same_category_lift{k}"] for k in ("_vs_local_read", "_vs_local_unread", "_zero", "_images")]
    assert counts == [7, 2, 1, 10]
    words = read_attention(row)
    assert words[0].endswith("; 1 of 10 image results with lift 0 left out)"), words  # rule 1: the lift's own geometric mean
    ratio = [w for w in words if w.startswith("same_category_lift")]
    assert len(ratio) == 1 and ratio[0].endswith("; 2 of 10 image results without a readable control; 1 of 10 image results with lift 0 left out)")
    own = [w for w in words if w.startswith("own_object_lift_objects")]
    assert len(own) == 1 and "left out" not in own[0] and "readable" not in own[0]


def test_a_shared_maps_lift_of_1_plus_rounding_reads_as_no_preference():
    """GC/SNL maps give lifts of exactly 1 up to float rounding: an interval [1 + 1e-16, 1 + 3e-16] is not a preference."""
    eps = 2.0**-52
    words = read_attention(_row(variant="gc", same_category_lift=(1 + 2 * eps, 1 + eps, 1 + 3 * eps),
                                same_category_lift_vs_local=(1 - 2 * eps, 1 - 3 * eps, 1 - eps)))  # fmt: skip
    assert words[0].startswith("no own-group preference shown") and "not distinguishable from locality" in words[1]
    assert read_attention(_row(same_category_lift=(1.01, 1.000001, 1.02)))[0].startswith("attends its own group")


def test_a_result_set_whose_seed_is_not_known_is_refused(tmp_path):
    """Without its seed (run.json without the checkpoint's facts, the checkpoint gone), a set would be read as a variant of
    its own with images for seeds; the report refuses it, naming the set."""
    from nlanalysis.controls import attention_summary

    folder = tmp_path / "embedded_gaussian_s0"
    folder.mkdir()
    info = json.loads((KEPT_SET / "run.json").read_text())
    assert info["checkpoint"]["meta"]["variant"] == "embedded_gaussian"  # kept sets carry their facts (no checkpoint needed)
    del info["checkpoint"]["meta"]
    info["checkpoint"]["path"] = str(tmp_path / "gone.pth")
    (folder / "run.json").write_text(json.dumps(info))
    for name in ("metrics.csv", "images.csv"):
        (folder / name).write_text((KEPT_SET / name).read_text())
    with pytest.raises(ValueError, match=f"not known for: {folder}.*gone"):
        attention_summary([folder])


def test_a_variant_off_its_plateau_is_marked_on_its_attention_line_too():
    from nlanalysis.controls import _not_at_plateau

    training = pd.DataFrame({"variant": ["gc", "snl", "se"], "plateau": [False, True, None], "pairs": 3, "seeds": 3})
    assert _not_at_plateau(training, "gc") == ", not at plateau"
    assert _not_at_plateau(training, "snl") == _not_at_plateau(training, "se") == _not_at_plateau(training, "pooled_fc") == ""
    assert _not_at_plateau(training.drop(columns="plateau"), "gc") == ""
    # mid-batch: a verdict read from 1 of 3 seed pairs says so, as the training table does
    assert _not_at_plateau(training.assign(pairs=1), "gc") == ", not at plateau (1 of 3 seeds)"


def test_a_shared_maps_locality_ratio_says_that_its_lift_is_1_by_construction():
    """GC/SNL's one map gives a lift of 1; its ratio to the locality control is 1 over the control's lift and may lie
    just above 1: the line says where that comes from."""
    row = _row(variant="gc", same_category_lift=(1.0, 1.0, 1.0), same_category_lift_vs_local=(1.006, 1.004, 1.009))
    shared = read_attention(pd.concat([row, pd.Series({"query_independent": True})]))[-1]
    assert shared.startswith("same_category_lift above its locality control") and "lift is 1 by construction" in shared
    assert "by construction" not in read_attention(row)[-1]


def test_an_infinite_value_is_left_out_of_its_summary():
    """A locality control's sigma at the uniform limit (inf) is a limit, not a number to average."""
    from nlanalysis.tables import summarise

    frame = pd.DataFrame({"block": "b", "image_id": [1, 2, 3], "label": "r", "variant": "v", "ctrl_local_sigma_px": [10.0, 20.0, math.inf]})
    out = summarise(frame, by=("variant",), stats=["ctrl_local_sigma_px"])
    assert float(out["ctrl_local_sigma_px"].iloc[0]) == pytest.approx(15.0)


def _grid(folder, mious: dict[str, list[float]]):
    for variant, values in mious.items():
        for seed, m in enumerate(values):
            _record_run(folder, TrainResult(variant, seed, m, 0.9, 60.0), TrainConfig(seed=seed), "data")


def test_gate_and_answer_follow_the_plan(tmp_path):
    _grid(tmp_path / "a", {"baseline": [0.30, 0.40, 0.50], "gc": [0.31, 0.41, 0.51], "snl": [0.30, 0.41, 0.50],
                           "embedded_gaussian": [0.40, 0.52, 0.60]})  # fmt: skip
    holds, sentence = gate(training_table(tmp_path / "a"))
    assert holds and sentence.startswith("the gate holds") and "embedded_gaussian - snl" in sentence
    assert answer(holds, _row(same_category_lift=(1.3, 1.1, 1.5))).startswith("Yes")
    assert answer(holds, _row(same_category_lift=(1.0, 0.9, 1.1))).startswith("The block helps")
    assert "not extracted yet" in answer(holds, None)
    _grid(tmp_path / "b", {"baseline": [0.30, 0.40, 0.50], "gc": [0.35, 0.45, 0.55], "snl": [0.30, 0.41, 0.50],
                           "embedded_gaussian": [0.36, 0.44, 0.56]})  # fmt: skip
    holds, sentence = gate(training_table(tmp_path / "b"))
    assert holds is False and answer(holds, None).startswith("No valid positive control")
    _grid(tmp_path / "c", {"baseline": [0.3], "gc": [0.3], "snl": [0.3], "embedded_gaussian": [0.4]})
    assert gate(training_table(tmp_path / "c"))[0] is None
    # two of the plan's three seeds give an interval, but the gate waits for the third
    _grid(tmp_path / "d", {"baseline": [0.30, 0.40], "gc": [0.31, 0.41], "snl": [0.30, 0.41], "embedded_gaussian": [0.40, 0.52]})
    holds, sentence = gate(training_table(tmp_path / "d"))
    assert holds is None and "3 paired seeds" in sentence


def test_training_table_pairs_with_each_reference_and_applies_the_plateau_rule(tmp_path):
    _grid(tmp_path / "g" / "query-specific_e12", {"baseline": [0.30, 0.40, 0.50], "gc": [0.32, 0.33, 0.34]})
    _grid(tmp_path / "g" / "query-specific_e24", {"baseline": [0.30, 0.40, 0.50], "gc": [0.40, 0.41, 0.42]})
    table = training_table(tmp_path / "g" / "query-specific_e12", tmp_path / "g" / "query-specific_e24").set_index("variant")
    assert math.isclose(table.loc["gc", "margin_vs_baseline"], (0.02 - 0.07 - 0.16) / 3, abs_tol=1e-12)
    assert math.isclose(table.loc["baseline", "margin_vs_gc"], (0.16 + 0.07 - 0.02) / 3, abs_tol=1e-12)
    # gc gains 0.08 > max(0.01, its sd 0.01): not at its plateau; baseline gains 0
    assert table.loc["baseline", "plateau"] and not table.loc["gc", "plateau"]
    text = write_controls_report(tmp_path / "g", tmp_path / "out").read_text()
    assert "## The answer" in text and "NO (+0.080)" in text and "## independent\n\nNot trained yet." in text
    assert "| gc | 2,225 | 3 | 0.330 (0.010) | -0.0700 [" in text
    assert (tmp_path / "out" / "query-specific_training.csv").is_file()
    # the 24-epoch records as the repository keeps them (flat, no runs/ folder), one seed of gc still training
    kept = tmp_path / "kept" / "query-specific_e24"
    kept.mkdir(parents=True)
    for record in sorted((tmp_path / "g" / "query-specific_e24" / "runs").glob("*.json")):
        if record.name != "gc_s2.json":
            (kept / record.name).write_text(record.read_text())
    table = training_table(tmp_path / "g" / "query-specific_e12", kept).set_index("variant")
    assert table.loc["gc", "pairs"] == 2 and table.loc["baseline", "plateau"]
    (tmp_path / "kept" / "query-specific_e12").mkdir()
    for record in (tmp_path / "g" / "query-specific_e12" / "runs").glob("*.json"):
        (tmp_path / "kept" / "query-specific_e12" / record.name).write_text(record.read_text())
    text = write_controls_report(tmp_path / "kept", tmp_path / "out2").read_text()
    assert "NO (+0.080) (2 of 3 seeds)" in text and "| baseline | 0 | 3 |" in text
    # the 24-epoch grid's own table and the gate's second reading, beside the first
    assert "24-epoch finals (5 of 27 runs: the grid is still training; a second reading" in text and "| gc | 2,225 | 2 | 0.405 (0.007) |" in text
    assert "12-epoch finals (6 of 27 runs: the grid is still training)" in text
    assert "Gate at 24 epochs (the second reading; the answer above keeps the 12-epoch one): gate not decided yet" in text


def test_the_revised_positive_control_gives_the_answer_once_trained(tmp_path):
    """PLAN.md's v2: with both query-specific grids trained, the answer is v2's gate (and says which design),
    while v1's failed gate stays in its own section."""
    refs = {"baseline": [0.30, 0.40, 0.50], "snl": [0.30, 0.41, 0.50]}
    _grid(tmp_path / "query-specific_e12", {**refs, "gc": [0.35, 0.45, 0.55], "embedded_gaussian": [0.36, 0.44, 0.56]})
    text = write_controls_report(tmp_path, tmp_path / "out").read_text()
    assert "On `query-specific`: No valid positive control" in text and "## query-specific-v2\n\nNot trained yet." in text
    _grid(tmp_path / "query-specific-v2_e12", {**refs, "gc": [0.31, 0.41, 0.51], "embedded_gaussian": [0.40, 0.52, 0.60]})
    text = write_controls_report(tmp_path, tmp_path / "out").read_text()
    answer_part = text.split("## The answer")[1].split("##")[0]
    assert "On `query-specific-v2`: The gate holds" in answer_part and "No valid positive control" not in answer_part
    assert text.count("Gate: ") == 2 and (tmp_path / "out" / "query-specific-v2_training.csv").is_file()
    # v2 at 24 epochs: the gate fails there; its reading goes beside the 12-epoch one and the answer keeps the latter
    _grid(tmp_path / "query-specific-v2_e24", {**refs, "gc": [0.40, 0.50, 0.60], "embedded_gaussian": [0.40, 0.52, 0.60]})
    text = write_controls_report(tmp_path, tmp_path / "out").read_text()
    assert "On `query-specific-v2`: The gate holds" in text.split("## The answer")[1].split("##")[0]
    v2 = text.split("## query-specific-v2")[1]
    assert "Gate: the gate holds" in v2 and "Gate at 24 epochs (the second reading; the answer above keeps the 12-epoch one): the gate fails" in v2
    assert (tmp_path / "out" / "query-specific-v2_training_e24.csv").is_file()
    # and at 48 epochs: the third reading; the 24-epoch table gains its own plateau column (24 -> 48)
    _grid(tmp_path / "query-specific-v2_e48", {**refs, "gc": [0.40, 0.50, 0.60], "embedded_gaussian": [0.45, 0.57, 0.65]})
    v2 = write_controls_report(tmp_path, tmp_path / "out").read_text().split("## query-specific-v2")[1]
    assert "48-epoch finals (12 of 27 runs: the grid is still training; a third reading beside the 12-epoch one" in v2
    assert "Gate at 48 epochs (the third reading; the answer above keeps the 12-epoch one): the gate holds" in v2
    e24 = v2.split("24-epoch finals")[1].split("48-epoch finals")[0]
    eg = next(line for line in e24.splitlines() if line.startswith("| embedded_gaussian |"))
    assert "| plateau |" in e24 and eg.endswith("| yes |")  # gains 0.05 from 24 to 48, under its 24-epoch sd of 0.1


def test_the_report_reads_the_numbers_kept_in_the_repository(tmp_path, monkeypatch):
    """make.sh keeps each run's record flat (reports/controls/runs/D_e12/*.json, no runs/ folder) and the result
    sets of the finals beside their snapshots (D/VARIANT_sSEED, D/VARIANT_sSEED_stepN): the report reads the
    records as a training folder's and only the finals as attention."""
    import shutil

    import nlanalysis.controls as controls
    from nlanalysis.train.compare import load_results

    grid = {"baseline": [0.30, 0.40, 0.50], "gc": [0.31, 0.41, 0.51], "snl": [0.30, 0.41, 0.50],
            "embedded_gaussian": [0.40, 0.52, 0.60]}  # fmt: skip
    _grid(tmp_path / "train", grid)
    kept = tmp_path / "kept" / "query-specific-v2_e12"
    shutil.copytree(tmp_path / "train" / "runs", kept)
    assert load_results(kept) == load_results(tmp_path / "train")
    for run in ("embedded_gaussian_s0", "embedded_gaussian_s0_step282", "gc_s1"):
        (tmp_path / "kept" / "query-specific-v2" / run).mkdir(parents=True)
        (tmp_path / "kept" / "query-specific-v2" / run / "metrics.csv").write_text("x\n")
    seen = []
    monkeypatch.setattr(controls, "attention_summary", lambda paths: seen.extend(p.name for p in paths))
    text = write_controls_report(tmp_path / "kept", tmp_path / "out").read_text()
    assert sorted(seen) == ["embedded_gaussian_s0", "gc_s1"]
    assert "On `query-specific-v2`: The gate holds" in text and "| gc | 2,225 | 3 | 0.410 (0.100) |" in text
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        load_results(tmp_path / "out")


def test_a_longer_grid_of_two_jobs_is_raised_not_skipped_as_not_started(tmp_path):
    """Only a longer grid with no reference finished yet is left out of the report; a folder whose records come from two
    jobs (another learning rate) is an error, not a silently missing section."""
    grid = {"baseline": [0.30, 0.40, 0.50], "gc": [0.31, 0.41, 0.51], "snl": [0.30, 0.41, 0.50], "embedded_gaussian": [0.4, 0.5, 0.6]}
    _grid(tmp_path / "query-specific-v2_e12", grid)
    _grid(tmp_path / "query-specific-v2_e24", {"embedded_gaussian": [0.4, 0.5, 0.6]})  # no reference yet: skipped
    assert "24-epoch finals" not in write_controls_report(tmp_path, tmp_path / "out").read_text()
    _record_run(tmp_path / "query-specific-v2_e24", TrainResult("baseline", 0, 0.3, 0.9, 60.0), TrainConfig(seed=0, lr=0.01), "data")
    with pytest.raises(ValueError, match="embedded_gaussian_s0.json: trained with other settings than .*baseline_s0.json"):
        write_controls_report(tmp_path, tmp_path / "out")


def test_the_training_table_counts_each_blocks_parameters_on_a_built_model(tmp_path):
    """The extra parameters of a variant's block, counted here by hand from its layers' shapes (C = 64)."""
    _grid(tmp_path / "p", {"baseline": [0.3, 0.4, 0.5], "gc": [0.3, 0.4, 0.5], "pooled_fc": [0.3, 0.4, 0.5], "se": [0.3, 0.4, 0.5]})
    params = training_table(tmp_path / "p").set_index("variant").block_params
    c, h = 64, 16
    gc = (c + 1) + (c * h + h) + 2 * h + (h * c + c)  # key mask conv, transform conv, LayerNorm, conv back
    assert params.to_dict() == {"baseline": 0, "gc": gc, "pooled_fc": c * c + c, "se": (c * h + h) + (h * c + c)}
