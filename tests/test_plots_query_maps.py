"""GCNet Figure 2 form: overlay geometry, one colour scale per image, edge cases, file size."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from PIL import Image

from nlanalysis.plots import plot_query_maps, save_figure
from nlanalysis.plots.style import DPI
from plot_inputs import hot_key_maps, key_region

# (original size, scale, sub-sampled keys, hot key): non-square, padded, resized, half-resolution keys
GEOMETRIES = [
    ((60, 100), 1.0, False, (1, 2)),  # 64 x 128 input: padding at the bottom
    ((100, 60), 1.0, True, (2, 1)),  # portrait, keys at half resolution
    ((45, 90), 1.5, False, (7, 15)),  # resized (68 x 135 inside 96 x 160), last valid key row
    ((90, 120), 0.5, True, (0, 3)),  # shrunk, sub-sampled, top edge
]


@pytest.mark.parametrize("size,scale,sub,key", GEOMETRIES)
def test_overlay_puts_a_hot_key_on_its_pixels(tmp_path, size, scale, sub, key):
    maps = hot_key_maps(tmp_path / "m.npz", original_size=size, scale=scale, sub_sample=sub, hot=[key])
    overlay = maps.overlay("block", 0)
    assert overlay.shape == size  # padding removed, original image size
    y0, y1, x0, x1 = key_region(maps, "block", key)
    yy, xx = np.unravel_index(np.argmax(overlay), overlay.shape)
    assert y0 - 1 <= yy + 0.5 <= y1 + 1 and x0 - 1 <= xx + 0.5 <= x1 + 1
    # most of the drawn weight is on the key's own pixels
    inside = overlay[max(0, int(y0)) : int(np.ceil(y1)), max(0, int(x0)) : int(np.ceil(x1))].sum()
    assert inside > 0.3 * overlay.sum()


def _hottest_drawn_pixel(fig, ax):
    """Data coordinates of the brightest yellow pixel the figure shows inside ``ax``."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba()).astype(int)
    x0, y0, x1, y1 = (int(round(v)) for v in ax.get_window_extent().extents)
    height = rgba.shape[0]
    crop = rgba[height - y1 : height - y0, x0:x1]
    score = crop[..., 0] + crop[..., 1] - crop[..., 2]  # inferno's top end is light yellow
    r, c = np.unravel_index(np.argmax(score), score.shape)
    display = (x0 + c + 0.5, y1 - r - 0.5)
    return ax.transData.inverted().transform(display)


@pytest.mark.parametrize("size,scale,sub,key", GEOMETRIES[:3])
def test_the_figure_draws_the_hot_key_over_its_pixels(tmp_path, size, scale, sub, key):
    maps = hot_key_maps(tmp_path / "m.npz", original_size=size, scale=scale, sub_sample=sub, hot=[key],
                        query_yx=[(2.0, 2.0)])  # fmt: skip
    grey = np.full((*size, 3), 128, np.uint8)
    fig = plot_query_maps([maps], "block", images=[grey], alpha=1.0)
    ax = fig.axes[1]  # the map of the only query
    x, y = _hottest_drawn_pixel(fig, ax)
    y0, y1, x0, x1 = key_region(maps, "block", key)
    tol_y, tol_x = 0.25 * (y1 - y0), 0.25 * (x1 - x0)
    assert y0 - tol_y <= y <= y1 + tol_y and x0 - tol_x <= x <= x1 + tol_x
    assert ax.get_xlim() == (0, size[1]) and ax.get_ylim() == (size[0], 0)  # whole image, no padding


def test_one_colour_scale_per_image(tmp_path):
    a = hot_key_maps(tmp_path / "a.npz", hot=[(1, 2), (1, 2), (3, 5)], query_label=[7, 8, 0])
    b = hot_key_maps(tmp_path / "b.npz", original_size=(80, 80), hot=[(0, 0)], image_id="b")
    fig = plot_query_maps([a, b], "block", images=[np.zeros((60, 100, 3), np.uint8), None], title="ckpt")
    row_a = [ax.images[-1] for ax in fig.axes[1:4]]
    norms = {(im.norm.vmin, im.norm.vmax) for im in row_a}
    assert len(norms) == 1 and norms.pop()[0] == 0.0  # one scale for the row, from 0
    np.testing.assert_array_equal(row_a[0].get_array(), row_a[1].get_array())  # identical maps drawn identically
    assert [ax.get_title() for ax in fig.axes[1:4]] == ["q1 · object 7", "q2 · object 8", "q3 · background"]
    assert "block block" in fig._suptitle.get_text() and "ckpt" in fig._suptitle.get_text()
    assert any("not found" in t.get_text() for t in fig.axes[5].texts)  # image b: drawn on grey, said so


def test_signed_maps_get_a_diverging_scale_centred_on_zero(tmp_path):
    maps = hot_key_maps(tmp_path / "m.npz", hot=[(1, 1), (2, 3)], signed=True)
    fig = plot_query_maps([maps], "block")
    im = fig.axes[1].images[-1]
    assert im.norm.vmin == -im.norm.vmax and im.get_cmap().name == "RdBu_r"


@pytest.mark.parametrize("k", [1, 2, 4])
def test_figure_file_has_the_expected_size(tmp_path, k):
    maps = hot_key_maps(tmp_path / "m.npz", original_size=(50, 90), sub_sample=True, hot=[(0, 0)] * k)
    assert maps["maps_0"].dtype == np.float16
    fig = plot_query_maps([maps, maps], "block")
    paths = save_figure(fig, tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)
    w, h = fig.get_size_inches() * DPI
    with Image.open(paths[0]) as img:
        assert img.size == (round(w), round(h))
        assert np.asarray(img.convert("L")).std() > 5  # not blank
    assert len(fig.axes) == 2 * (k + 1) + 2  # panels + a colour bar per row


def test_bad_input_says_what(tmp_path):
    maps = hot_key_maps(tmp_path / "m.npz")
    with pytest.raises(KeyError, match="no maps of block 'nope'"):
        plot_query_maps([maps], "nope")
    with pytest.raises(ValueError, match="no queries"):
        plot_query_maps([maps], "block", queries=[3])
    with pytest.raises(ValueError, match="does not match"):
        plot_query_maps([maps], "block", images=[np.zeros((10, 10, 3), np.uint8)])


def test_a_subsampled_key_grid_is_laid_over_the_cells_it_pools():
    """``sub_sample`` max-pools the keys 2x2 with floor: an odd 9 x 7 query grid (stride 16: a 144 x 112 input) has 4 x 3
    keys over its first 8 x 6 cells. The last key's centre is the centre of cells 6-7 x 4-5, pixel (112, 80): a one-hot
    map there peaks there (stretched over the whole input it peaked at (126, 93)); the uncovered last row and column
    of cells are not drawn."""
    from nlanalysis.extract.maps import grid_overlay, key_cover

    assert key_cover((9, 7), (4, 3)) == (8 / 9, 6 / 7) and key_cover((8, 6), (4, 3)) == (1.0, 1.0)
    assert key_cover((16, 16), (16, 16)) == (1.0, 1.0)
    one = np.zeros((4, 3), dtype=np.float32)
    one[3, 2] = 1.0
    over = grid_overlay(one, (144, 112), (144, 112), cover=key_cover((9, 7), (4, 3)))
    assert over.shape == (144, 112) and np.isnan(over[128:]).all() and np.isnan(over[:, 96:]).all()
    assert not np.isnan(over[:128, :96]).any()
    peak = np.unravel_index(np.nanargmax(over), over.shape)
    assert tuple(peak) == (112, 80)  # bilinear, align_corners=False: 1 from the key's centre to the covered edge
    stretched = grid_overlay(one, (144, 112), (144, 112))
    peak = np.unravel_index(np.argmax(stretched), stretched.shape)
    assert tuple(peak) == (126, 93)  # the old placement, about a cell off at the far corner
