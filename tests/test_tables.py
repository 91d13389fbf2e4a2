"""GCNet's Table 1 form: values equal the metrics they summarise; CIs; CSV, Markdown, LaTeX."""
import math

import numpy as np
import pandas as pd
import pytest

from nlanalysis.metrics import hierarchical_mean_ci, mean_ci
from nlanalysis.tables import (caption, ci_column, ci_text, final_steps, format_ci, format_table, short_block_names, summarise,
                               to_latex, to_markdown, write_table)
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
    odd = to_latex(pd.DataFrame({"att of |map|": ["<0.001"], "x > y": ["1 | 2"]}), "a | b")  # OT1 sets | < > as other glyphs
    assert r"att of \textbar{}map\textbar{}" in odd and r"\textless{}0.001" in odd and r"x \textgreater{} y" in odd
    assert r"\caption{a \textbar{} b}" in odd and "|" not in odd.replace(r"\textbar{}", "")
    paths = write_table(t, tmp_path / "t1", cap)
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    back = pd.read_csv(paths[0])
    np.testing.assert_allclose(back["att"], t["att"], rtol=1e-5)
    assert math.isclose(back.loc[0, "input_low"], t.loc[0, "input_low"], rel_tol=1e-5)


def test_write_table_given_text_formats_and_label(tmp_path):
    t = pd.DataFrame({"layer": [0, 1], "att": [0.1234567, 0.5], "att_low": [0.1, math.nan], "att_high": [0.15, math.nan]})
    # ci_column: the interval where a row has one, the bare number where not (as format_ci / ci_text per row)
    cells = [format_ci(0.1234567, 0.1, 0.15), format_ci(0.5)]
    assert cells[0].startswith("0.123 [0.1") and cells[1].startswith("0.5") and "[" not in cells[1]
    assert ci_column(t, "att") == cells == [ci_text(r, "att") for _, r in t.iterrows()]
    assert ci_column(t.drop(columns=["att_low", "att_high"]), "att") == [format_ci(0.1234567), format_ci(0.5)]
    text = pd.DataFrame({"layer": ["0", "1"], "att": cells})
    paths = write_table(t, tmp_path / "layers", "A caption.", text=text, formats=("csv", "tex"), label="tab:x")
    assert [p.name for p in paths] == ["layers.csv", "layers.tex"] and not (tmp_path / "layers.md").exists()
    assert (tmp_path / "layers.csv").read_text().splitlines()[1] == "0,0.123457,0.1,0.15"
    tex = (tmp_path / "layers.tex").read_text()
    assert r"\label{tab:x}" in tex and f"0 & {cells[0]} \\\\" in tex and r"\caption{A caption.}" in tex
    with pytest.raises(ValueError, match="table formats"):
        write_table(t, tmp_path / "x", formats=("html",))


def test_three_digits_keep_their_zeros_and_a_share_below_one_never_reads_as_one():
    assert format_ci(0.5) == "0.500" and format_ci(0.0899999) == "0.0900" and format_ci(0.00099996) == "0.00100"
    assert format_ci(0.63999) == "0.640" and format_ci(99.96) == "100" and format_ci(12.5) == "12.5"
    assert format_ci(0.9996) == "0.999" and format_ci(-0.9996) == "-0.999"  # rounding would say 1.00
    assert format_ci(1.0) == "1.00" and format_ci(0.9994) == "0.999" and format_ci(5e-5) == "5.0e-05"
    assert format_ci(0.98, 0.95, 0.99951) == "0.980 [0.950, 0.999]"
    # 1 up to float rounding (a shared map's geometric-mean lift) reads as 1; a real shortfall still does not
    assert format_ci(1.0, 0.9999999999999999, 1.0000000000000002) == "1.00 [1.00, 1.00]"
    assert format_ci(1 - 1e-9) == "0.999" and format_ci(-(1 - 2e-16)) == "-1.00"


def test_short_block_names():
    assert short_block_names(["backbone.layer1.0.context_block", "backbone.layer2.0.nonlocal_block"]) == {
        "backbone.layer1.0.context_block": "layer1.0.context_block", "backbone.layer2.0.nonlocal_block": "layer2.0.nonlocal_block"}  # fmt: skip
    assert short_block_names(["a.b", "a.b"]) == {"a.b": "a.b"}
    assert short_block_names(["x.nl", "x.y.nl"]) == {"x.nl": "nl", "x.y.nl": "y.nl"}


def test_the_caption_describes_only_the_columns_the_table_has():
    import pandas as pd

    from nlanalysis.tables import caption

    only_max = pd.DataFrame({"variant": ["v"], "att_max": [0.1], "att_max_low": [0.05], "att_max_high": [0.15]})
    text = caption(only_max)
    assert "max weight: the largest weight" in text and "entropy" not in text and "zero rows" not in text
    only_entropy = only_max.rename(columns=lambda c: c.replace("att_max", "att_entropy"))
    assert "entropy: of each query's map" in caption(only_entropy) and "max weight" not in caption(only_entropy)
