"""Heat map of the pairwise cosine distances between the query maps of one image."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from PIL import Image

from nlanalysis.plots import plot_query_distances, query_distance_matrix, save_figure
from nlanalysis.plots.query_distances import all_pair_distances, valid_keys
from nlanalysis.plots.style import DPI
from plot_inputs import hot_key_maps


def _cos_dist(a, b):
    return 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def test_matrix_is_the_cosine_distance_over_image_keys(tmp_path):
    # 60 x 100 image in a 64 x 128 input: key row 7 and columns 12-15 have their centres on padding
    maps = hot_key_maps(tmp_path / "m.npz", hot=[(1, 2), (1, 2), (3, 5), (7, 0)])
    valid = valid_keys(maps, "block")
    assert valid.shape == (8, 16) and valid[:7, :12].all() and not valid[7].any() and not valid[:, 12:].any()
    d = query_distance_matrix(maps, "block")
    rows = maps.maps("block").reshape(4, -1)[:, valid.ravel()].astype(np.float64)
    assert d[0, 1] == pytest.approx(0) and d[0, 2] == pytest.approx(_cos_dist(rows[0], rows[2])) == pytest.approx(1)
    assert np.isnan(d[3]).all() and np.isnan(d[:, 3]).all()  # all its weight on padding: no direction
    assert np.allclose(np.diag(d)[:3], 0) and np.allclose(d[:3, :3], d[:3, :3].T)
    half = query_distance_matrix(maps, "block", [0, 2], convention="(1-cos)/2")
    assert half[0, 1] == pytest.approx(d[0, 2] / 2)
    with pytest.raises(ValueError, match="convention"):
        query_distance_matrix(maps, "block", convention="cos")


def test_sub_sampled_keys_drop_pooled_padding(tmp_path):
    maps = hot_key_maps(tmp_path / "m.npz", original_size=(50, 90), sub_sample=True, hot=[(0, 0), (1, 1)])
    # 64 x 96 input, query grid 8 x 12 with image cells rows 0-5, cols 0-10; a 2 x 2-pooled key
    # counts only when all four of its cells are image
    valid = valid_keys(maps, "block")
    assert valid.shape == (4, 6) and valid[:3, :5].all() and not valid[3].any() and not valid[:, 5].any()
    assert query_distance_matrix(maps, "block")[0, 1] == pytest.approx(1)
    with pytest.raises(KeyError, match="no maps of block 'nope'"):  # names the file's blocks, not a list.index error
        valid_keys(maps, "nope")


@pytest.mark.parametrize("k", [1, 3])
def test_heat_map_file(tmp_path, k):
    maps = hot_key_maps(tmp_path / "m.npz", hot=[(1, 2), (1, 2), (2, 2)][:k], query_label=[3, 4, 0][:k])
    fig = plot_query_distances(maps, title="a run label long enough to need wrapping " * 3)
    ax, hist = fig.axes[0], fig.axes[1]
    assert ax.images[0].get_array().shape == (k, k) and (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0, 1)
    assert len(ax.texts) == k * k and "mean over query pairs i ≠ j" in ax.get_title()
    # independent: the off-diagonal mean of 1 - cos over the image keys (0, 1, 1 for k = 3: 2/3, not
    # the 4/9 of all ordered pairs with the zero diagonal)
    rows = maps.maps("block").reshape(k, -1)[:, valid_keys(maps, "block").ravel()].astype(np.float64)
    pairs = [_cos_dist(rows[i], rows[j]) for i in range(k) for j in range(k) if i != j]
    want = f"{np.mean(pairs):.3f}" if pairs else "nan"
    assert ax.get_title().endswith(f": {want}") and hist.get_title().endswith(f": {want}")
    assert sum(p.get_height() for p in hist.patches) == len(pairs) // 2  # the histogram counts every pair i < j
    if k == 3:
        assert want == "0.667"
    fig.canvas.draw()  # the title, wrapped, lies inside the figure
    assert all(fig.bbox.contains(*corner) for corner in fig._suptitle.get_window_extent().corners())
    (png, _pdf) = save_figure(fig, tmp_path / "d")
    with Image.open(png) as img:
        assert img.size == tuple(round(v) for v in fig.get_size_inches() * DPI)
    with pytest.raises(ValueError, match="no query points"):
        plot_query_distances(maps, queries=[])


def test_histogram_counts_every_pair_of_a_whole_grid_of_8_bit_maps(tmp_path):
    # 84 queries, one per cell (stored 8-bit above 64): each pair is at 0 (same hot key) or 1
    rng = np.random.default_rng(0)
    cells = [(r, c) for r in range(7) for c in range(12)]
    hot = [(int(rng.integers(0, 2)), int(rng.integers(0, 3))) for _ in cells]
    maps = hot_key_maps(tmp_path / "m.npz", hot=hot, query_yx=[(r * 8 + 4, c * 8 + 4) for r, c in cells])
    assert maps.quantised("block")
    vals, n = all_pair_distances(maps, "block")
    want = [float(hot[i] != hot[j]) for i in range(84) for j in range(i + 1, 84)]
    assert n == 84 and len(vals) == 84 * 83 // 2 and np.allclose(np.sort(vals), np.sort(want), atol=1e-6)
