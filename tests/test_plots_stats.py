"""Distributions across images and statistics over training, from labelled metrics frames."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
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


def test_distributions_one_box_per_run_and_block(tmp_path):
    frame = labelled_frame(steps=(100,), blocks=("backbone.layer1.1.nl", "backbone.layer2.1.nl"))
    fig = plot_distributions(frame)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["input", "output", "att"]
    runs = list(dict.fromkeys(frame["label"]))
    assert [t.get_text() for t in axes[0].get_xticklabels()] == runs
    assert len(axes[0].patches) == len(runs) * 2  # a box per (run, block)
    points = np.concatenate([line.get_ydata() for line in axes[0].lines if line.get_marker() == "o"])
    assert sorted(points) == pytest.approx(sorted(frame["input"]))  # one dot per image row, nothing lost
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["layer1.1.nl", "layer2.1.nl"] and "one map for all queries" in legend[2]
    marks = [(t.get_text(), t.xy[0]) for t in axes[2].texts]  # "0 †" on the GC runs' boxes only
    gc_runs = [i for i, r in enumerate(runs) if r.startswith("gc")]
    assert len(marks) == 2 * len(gc_runs) and all(t == "0 †" and round(x) in gc_runs for t, x in marks)
    assert _png_size(fig, tmp_path, "dist") == tuple(round(v) for v in fig.get_size_inches() * DPI)


def test_distributions_single_run_single_block(tmp_path):
    frame = labelled_frame(variants=("embedded_gaussian",), seeds=(0,), steps=(1,), images=1)
    fig = plot_distributions(frame, stats=("att",), by="variant")
    assert len(fig.axes) == 1 and not fig.legends
    _png_size(fig, tmp_path, "one")
    with pytest.raises(ValueError, match="none of the statistics"):
        plot_distributions(frame, stats=("nope",))


def test_over_training_lines_follow_the_steps(tmp_path):
    frame = labelled_frame(variants=("embedded_gaussian", "gc", "dot_product"), steps=(100, 0, 50))
    fig = plot_over_training(frame)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["input", "output", "att", "task metric (mIoU)"]
    att = {line.get_label(): line for line in axes[2].lines}
    assert set(att) == {"embedded_gaussian", "gc", "dot_product"}
    x, y = att["embedded_gaussian"].get_data()
    assert list(x) == [0, 50, 100]  # ordered by step whatever order the runs came in
    eg = frame[frame.variant == "embedded_gaussian"]
    expected = [eg[eg.step == s].groupby("seed")["att"].mean().mean() for s in (0, 50, 100)]
    assert list(y) == pytest.approx(expected)  # mean of the seed means
    assert list(att["gc"].get_ydata()) == [0, 0, 0]
    assert len(axes[2].collections) == 3  # a CI band per line (two seeds)
    _png_size(fig, tmp_path, "train")


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
