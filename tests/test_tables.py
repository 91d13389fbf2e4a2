"""GCNet's Table 1 form: values equal the metrics they summarise; CIs; CSV, Markdown, LaTeX."""
import math

import numpy as np
import pandas as pd
import pytest

from nlanalysis.metrics import hierarchical_mean_ci, mean_ci
from nlanalysis.tables import caption, final_steps, format_table, short_block_names, summarise, to_latex, to_markdown, write_table
from plot_inputs import labelled_frame


def test_one_run_values_are_the_image_means_with_t_intervals():
    frame = labelled_frame(variants=("embedded_gaussian",), seeds=(0,), steps=(100,), images=6)
    t = summarise(frame)
    assert len(t) == 1 and t.loc[0, "images"] == 6 and t.loc[0, "runs"] == 1 and t.loc[0, "ci"] == "95% t over images"
    for s in ("input", "output", "att", "att_jsd", "att_entropy", "att_own_object", "own_object_share"):
        ci = mean_ci(frame[s])
        assert t.loc[0, s] == pytest.approx(frame[s].mean())
        assert (t.loc[0, f"{s}_low"], t.loc[0, f"{s}_high"]) == pytest.approx((max(ci.low, 0), min(ci.high, 1 if s.startswith("att_") or "own" in s else 2)))
    assert t.loc[0, "metric"] == pytest.approx(frame["metric"].iloc[0]) and t.loc[0, "metric_name"] == "miou"
    assert "ctrl_att" not in t  # all NaN in the result set: left out
    assert (t.loc[0, "variant"], t.loc[0, "step"], t.loc[0, "block"]) == ("embedded_gaussian", 100, "layer1.1")


def test_seeds_are_pooled_hierarchically():
    frame = labelled_frame(variants=("embedded_gaussian", "gc"), seeds=(0, 1, 2), steps=(100,), images=4)
    t = summarise(frame).set_index("variant")
    eg = frame[frame.variant == "embedded_gaussian"]
    ci = hierarchical_mean_ci(eg["att"], eg["seed"])
    assert t.loc["embedded_gaussian", "att"] == pytest.approx(eg.groupby("seed")["att"].mean().mean())
    assert (t.loc["embedded_gaussian", "att_low"], t.loc["embedded_gaussian", "att_high"]) == pytest.approx((max(ci.low, 0), ci.high))
    assert t.loc["embedded_gaussian", "seeds"] == 3 and t.loc["embedded_gaussian", "images"] == 4
    assert t.loc["embedded_gaussian", "rows"] == 12 and t.loc["embedded_gaussian", "runs"] == 3
    assert "3 seed means" in t.loc["embedded_gaussian", "ci"]
    assert t.loc["gc", "att"] == 0 and t.loc["gc", "query_independent"]
    metric = eg.groupby("seed")["metric"].first()
    assert t.loc["embedded_gaussian", "metric"] == pytest.approx(metric.mean())


def test_steps_final_steps_and_order():
    frame = labelled_frame(steps=(100, 0, 50), seeds=(0,))
    t = summarise(frame)
    assert list(zip(t.variant, t.step)) == [("embedded_gaussian", 0), ("embedded_gaussian", 50), ("embedded_gaussian", 100),
                                            ("gc", 0), ("gc", 50), ("gc", 100)]  # fmt: skip
    final = final_steps(frame)
    assert set(final["step"]) == {100}
    unknown = frame.assign(step=np.nan, label="x")
    assert "step" not in summarise(unknown) and len(final_steps(unknown)) == len(unknown)


def test_a_bare_metrics_table_works():
    frame = labelled_frame(seeds=(0,), steps=(1,)).drop(columns=["label", "seed", "step", "metric", "metric_name"])
    t = summarise(frame, by=("variant",))
    assert list(t["variant"]) == ["embedded_gaussian", "gc"] and "metric" not in t and t["seeds"].isna().all()
    with pytest.raises(ValueError, match="no metrics rows"):
        summarise(frame.iloc[:0])


def test_formatted_table_markdown_latex_and_csv(tmp_path):
    frame = labelled_frame(steps=(100,), blocks=("backbone.layer1.1.nonlocal_block",))
    t = summarise(frame)
    f = format_table(t)
    assert list(f.columns[:6]) == ["variant", "step", "block", "mode", "images", "seeds"] and "mIoU" in f.columns
    row = f.iloc[0]
    assert row["input"] == f"{t.loc[0, 'input']:.3f} [{t.loc[0, 'input_low']:.3f}, {t.loc[0, 'input_high']:.3f}]"
    assert f.loc[1, "block"].endswith("†") and f.loc[1, "att"] == "0 [0, 0]"
    cap = caption(t)
    assert "1 − cos" in cap and "i = j included" in cap and "seed means" in cap and "Uniform attention" in cap and "†" in cap
    md = to_markdown(f, cap)
    assert md.splitlines()[1].startswith("|:---|---:|:---|:---|") and cap in md
    tex = to_latex(f, cap)
    assert r"\toprule" in tex and r"layer1.1.nonlocal\_block $^\dagger$" in tex and "1 $-$ cos" in tex
    paths = write_table(t, tmp_path / "t1", cap)
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    back = pd.read_csv(paths[0])
    np.testing.assert_allclose(back["att"], t["att"], rtol=1e-5)
    assert math.isclose(back.loc[0, "input_low"], t.loc[0, "input_low"], rel_tol=1e-5)


def test_short_block_names():
    assert short_block_names(["backbone.layer1.0.context_block", "backbone.layer2.0.nonlocal_block"]) == {
        "backbone.layer1.0.context_block": "layer1.0.context_block", "backbone.layer2.0.nonlocal_block": "layer2.0.nonlocal_block"}  # fmt: skip
    assert short_block_names(["a.b", "a.b"]) == {"a.b": "a.b"}
    assert short_block_names(["x.nl", "x.y.nl"]) == {"x.nl": "nl", "x.y.nl": "y.nl"}
