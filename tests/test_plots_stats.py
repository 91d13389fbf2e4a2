"""Distributions across images and statistics over training, from labelled metrics frames."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nlanalysis.plots import plot_distributions, plot_over_training, save_figure
from nlanalysis.plots.style import DPI
from plot_inputs import labelled_frame


def _png_size(fig, tmp_path, name):
    png, pdf = save_figure(fig, tmp_path / name)
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    with Image.open(png) as img:
        assert np.asarray(img.convert("L")).std() > 5
        return img.size


def _dots(ax):
    return np.concatenate([line.get_ydata() for line in ax.lines if line.get_marker() == "o"] or [np.zeros(0)])


def test_distributions_one_box_per_variant_and_block_seeds_pooled(tmp_path):
    frame = labelled_frame(steps=(100,), blocks=("backbone.layer1.1.nl", "backbone.layer2.1.nl"))
    fig = plot_distributions(frame, "input")
    (ax,) = fig.axes
    variants = list(dict.fromkeys(frame["variant"]))
    assert [t.get_text() for t in ax.get_xticklabels()] == variants
    assert len(ax.patches) == len(variants) * 2  # a box per (variant, block): the seeds are pooled
    assert sorted(_dots(ax)) == pytest.approx(sorted(frame["input"]))  # one dot per image row, nothing lost
    assert "4 runs pooled by variant" in fig.get_suptitle()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["layer1.1.nl", "layer2.1.nl"]  # no "0 †" note: input is never 0 by construction
    att = plot_distributions(frame, "att")
    marks = [(t.get_text(), t.xy[0]) for t in att.axes[0].texts]  # "0 †" on the GC boxes only
    gc = variants.index("gc")
    assert len(marks) == 2 and all(t == "0 †" and round(x) == gc for t, x in marks)
    assert "one map for all queries" in [t.get_text() for t in att.legends[0].get_texts()][-1]
    assert _png_size(fig, tmp_path, "dist") == tuple(round(v) for v in fig.get_size_inches() * DPI)


def test_distributions_draw_the_control_beside_each_box_and_signed_maps_apart(tmp_path):
    frame = labelled_frame(variants=("embedded_gaussian", "gc", "dot_product"), seeds=(0, 1, 2), steps=(1,), images=4)
    rng = np.random.default_rng(1)
    frame["ctrl_att"] = np.where(frame["variant"] == "embedded_gaussian", 0.5 + rng.normal(0, 0.02, len(frame)), np.nan)
    frame.loc[frame["variant"] == "dot_product", ["att_entropy", "att_jsd"]] = np.nan
    fig = plot_distributions(frame, "att")
    main, signed = fig.axes
    assert [t.get_text() for t in main.get_xticklabels()] == ["embedded_gaussian", "gc"]
    assert [t.get_text() for t in signed.get_xticklabels()] == ["dot_product"] and "signed" in signed.get_title()
    eg = frame[frame["variant"] == "embedded_gaussian"]
    dots = sorted(_dots(main))  # att of both variants and the control of embedded_gaussian
    assert dots == pytest.approx(sorted([*eg["att"], *frame.loc[frame.variant == "gc", "att"], *eg["ctrl_att"]]))
    assert sorted(_dots(signed)) == pytest.approx(sorted(frame.loc[frame.variant == "dot_product", "att"]))
    hatched = [p for p in main.patches if p.get_hatch()]
    assert len(hatched) == 1  # one control box, right of its variant's att box
    att_box = next(p for p in main.patches if not p.get_hatch() and p.get_path().vertices[:, 0].max() < 0.5)
    assert hatched[0].get_path().vertices[:, 0].min() > att_box.get_path().vertices[:, 0].max()
    assert any("control (ctrl_att)" in t.get_text() for t in fig.legends[0].get_texts())
    # output is not a map: no control column, no signed panel
    assert len(plot_distributions(frame, "output").axes) == 1
    _png_size(fig, tmp_path, "ctrl")


def test_distributions_single_run_single_block(tmp_path):
    frame = labelled_frame(variants=("embedded_gaussian",), seeds=(0,), steps=(1,), images=1)
    fig = plot_distributions(frame, "att", by="variant")
    assert len(fig.axes) == 1 and not fig.legends
    _png_size(fig, tmp_path, "one")
    with pytest.raises(ValueError, match="no values of 'nope'"):
        plot_distributions(frame, "nope")


def test_over_training_lines_follow_the_steps(tmp_path):
    frame = labelled_frame(variants=("embedded_gaussian", "gc", "dot_product"), steps=(100, 0, 50))
    fig = plot_over_training(frame)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["input", "output", "att (symlog)", "task metric (mIoU)"]
    assert axes[2].get_yscale() == "symlog" and axes[0].get_yscale() == "linear"
    assert list(axes[0].get_xticks()) == [0, 50, 100]  # ticks at the snapshot steps
    att = {line.get_label(): line for line in axes[2].lines if not line.get_label().startswith("_")}
    assert set(att) == {"embedded_gaussian", "gc", "dot_product"}
    seeds = [line for line in axes[2].lines if line.get_gid() == "seed"]
    assert len(seeds) == 3 * 2  # a thin line per variant and seed
    s1 = frame[(frame.variant == "gc") & (frame.seed == 1)].groupby("step")["att"].mean()
    assert any(list(line.get_ydata()) == pytest.approx(list(s1)) for line in seeds)
    x, y = att["embedded_gaussian"].get_data()
    assert list(x) == [0, 50, 100]  # ordered by step whatever order the runs came in
    eg = frame[frame.variant == "embedded_gaussian"]
    expected = [eg[eg.step == s].groupby("seed")["att"].mean().mean() for s in (0, 50, 100)]
    assert list(y) == pytest.approx(expected)  # mean of the seed means
    assert list(att["gc"].get_ydata()) == [0, 0, 0]
    assert len(axes[2].collections) == 3  # a CI band per line (two seeds)
    assert not [line for line in axes[3].lines if line.get_gid() == "baseline"]
    _png_size(fig, tmp_path, "train")


def test_over_training_baseline_and_block_colours():
    frame = labelled_frame(variants=("embedded_gaussian_x2",), seeds=(0,), blocks=("layer1.1", "layer2.1"))
    base = labelled_frame(variants=("baseline",), seeds=(0, 1), steps=(100,)).assign(metric=[0.5, 0.6] * 5)
    axes = plot_over_training(pd.concat([frame, base])).axes
    mean_lines = [line for line in axes[2].lines if not line.get_label().startswith("_")]
    assert len(mean_lines) == 2 and mean_lines[0].get_color() != mean_lines[1].get_color()
    assert not [line for line in axes[2].lines if line.get_gid() == "seed"]  # one seed: no seed lines
    (baseline,) = [line for line in axes[3].lines if line.get_gid() == "baseline"]
    assert list(baseline.get_ydata()) == [pytest.approx(0.55)] * 2  # baseline rows: a line, not a variant


def test_over_training_needs_steps():
    frame = labelled_frame(steps=(0,)).assign(step=np.nan)
    with pytest.raises(ValueError, match="no training step"):
        plot_over_training(frame)


def test_figures_are_byte_identical_when_redrawn(tmp_path):
    frame = labelled_frame(seeds=(0,), images=3)
    a = save_figure(plot_over_training(frame), tmp_path / "a")
    b = save_figure(plot_over_training(frame), tmp_path / "b")
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()


def test_distributions_draw_the_form_control_as_a_second_box_and_for_signed_maps(tmp_path):
    frame = labelled_frame(variants=("embedded_gaussian", "dot_product"), seeds=(0,), steps=(1,), images=5)
    rng = np.random.default_rng(2)
    eg = frame["variant"] == "embedded_gaussian"
    frame["ctrl_att"] = np.where(eg, 0.5 + rng.normal(0, 0.02, len(frame)), np.nan)  # softmax control: NL softmax maps only
    frame["ctrl_form_att"] = 0.7 + rng.normal(0, 0.02, len(frame))  # the form control: every map (signed too)
    frame.loc[~eg, ["att_entropy", "att_jsd"]] = np.nan
    fig = plot_distributions(frame, "att")
    main, signed = fig.axes
    assert sorted(_dots(main)) == pytest.approx(sorted([*frame.loc[eg, "att"], *frame.loc[eg, "ctrl_att"], *frame.loc[eg, "ctrl_form_att"]]))
    assert sorted(_dots(signed)) == pytest.approx(sorted([*frame.loc[~eg, "att"], *frame.loc[~eg, "ctrl_form_att"]]))
    hatches = [p.get_hatch() for p in main.patches if p.get_hatch()]
    assert hatches == ["////", "...."]  # softmax control, then the form control, right of the att box
    xs = [p.get_path().vertices[:, 0].mean() for p in main.patches]
    assert xs == sorted(xs)
    assert [p.get_hatch() for p in signed.patches if p.get_hatch()] == ["...."]  # no "no control" where the form one exists
    assert not [t for t in signed.texts if "no" in t.get_text()]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("control (ctrl_form_att)" in t for t in labels) and any("control (ctrl_att)" in t for t in labels)
    _png_size(fig, tmp_path, "form")
