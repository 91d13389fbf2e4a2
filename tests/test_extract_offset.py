"""Where the image lies in the model input: a centred pad (ViT) or a centre crop moves it from the
top left. Object maps, query points and saved maps must follow; checked against the photo's own
pixel pipeline (a mask pushed through the same preprocessing as the photo)."""
import io

import numpy as np
import pytest
import torch

from nlanalysis.capture import valid_cells
from nlanalysis.data import sample_photos
from nlanalysis.data.transforms import image_region
from nlanalysis.extract import ImageMaps, parse_queries, query_region, select_queries
from nlanalysis.extract.maps import save_image_maps
from nlanalysis.extract.objects import object_map
from nlanalysis.data.vit_preprocess import IMAGENET_MEAN, IMAGENET_STD, prepare_vit_image, preprocess_image


def _photo(name):
    return sample_photos([name])[name]


def _ellipse_annotation(h, w, cy, cx, ry, rx, ann_id=7):
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).ravel().tolist()
    return {"id": ann_id, "category_id": 1, "iscrowd": 0, "bbox": [cx - rx, cy - ry, 2 * rx, 2 * ry], "segmentation": [poly]}


def _through_pipeline(mask, size, mode):
    """``mask`` [h, w] bool as the model sees it: preprocessed like a photo, thresholded."""
    x, valid = preprocess_image(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, 2), size, mode)
    pixel = x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to 0..1
    return (pixel.numpy() > 0.5) & valid.numpy()


@pytest.mark.parametrize("name", ["grace_hopper", "coffee"])  # portrait (left/right pad), landscape (top/bottom)
@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_object_map_and_points_follow_the_photo(name, mode):
    from pycocotools import mask as mask_utils

    image = _photo(name)
    h, w = image.shape[:2]
    prep = prepare_vit_image(image, 224, mode)
    assert prep.offset != (0, 0)  # none of these lands at the top left
    ann = _ellipse_annotation(h, w, 0.45 * h, 0.4 * w, 0.3 * h, 0.25 * w)
    rle = mask_utils.frPyObjects(ann["segmentation"], h, w)
    want = _through_pipeline(mask_utils.decode(mask_utils.merge(rle)).astype(bool), 224, mode)
    objects = object_map([ann], prep.original_size, prep.size, (224, 224), prep.offset)
    got = objects.labels == 1
    assert (got == want).mean() > 0.99 and (got & want).sum() > 0.9 * want.sum()
    y0, y1, x0, x1 = prep.region
    assert not objects.labels[:y0].any() and not objects.labels[y1:].any()  # nothing on the padding
    assert not objects.labels[:, :x0].any() and not objects.labels[:, x1:].any()
    points = select_queries(parse_queries("objects:1"), prep.size, np.random.default_rng(0), objects, prep.scale,
                            prep.offset, (224, 224))  # fmt: skip
    (oy, ox), (by, bx) = points.yx.astype(int)
    assert points.label.tolist() == [7, 0]
    assert want[oy, ox] and not want[by, bx] and prep.valid[by, bx]  # object point on it, background on image


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("kind", ["grid:3", "random:20"])
def test_grid_and_random_points_lie_on_the_seen_image(mode, kind):
    prep = prepare_vit_image(_photo("coffee"), 224, mode)
    pts = select_queries(parse_queries(kind), prep.size, np.random.default_rng(3), None, prep.scale, prep.offset, (224, 224))
    assert ((pts.yx >= 0) & (pts.yx < 224)).all()  # numpy would wrap a negative index onto the image
    cells = pts.yx.astype(int)
    assert prep.valid[cells[:, 0], cells[:, 1]].all()
    y0, y1, x0, x1 = prep.region  # pad: the photo; crop: the whole input
    for (lo, hi), axis in (((y0, y1), 0), ((x0, x1), 1)):  # spread over the seen photo, not bunched
        assert pts.yx[:, axis].min() < lo + 0.4 * (hi - lo) and pts.yx[:, axis].max() > hi - 0.4 * (hi - lo)


def _excluded(yx, valid, grid):
    """How many points fall in a cell of ``grid`` that the statistics exclude (``valid_cells``)."""
    keep = valid_cells(torch.as_tensor(np.asarray(valid))[None], grid)[0].numpy()
    h, w = np.asarray(valid).shape
    rows = np.minimum(np.floor(yx[:, 0] * grid[0] / h), grid[0] - 1).astype(int)
    cols = np.minimum(np.floor(yx[:, 1] * grid[1] / w), grid[1] - 1).astype(int)
    return int((~keep[rows, cols]).sum())


@pytest.mark.parametrize("kind", ["grid:20", "random:200", "objects:3"])
def test_points_avoid_patches_excluded_as_padding(kind):
    """The coffee photo padded to 224 lies at rows [37, 186): patches 2 and 13 hold photo rows but
    their centres (rows 35, 189) are padding, so the statistics drop them; no saved point may be there."""
    prep = prepare_vit_image(_photo("coffee"), 224, "pad")
    grid = (16, 16)
    objects = None
    if kind.startswith("objects"):  # an object and the background reaching into the edge patches
        h, w = prep.original_size
        anns = [_ellipse_annotation(h, w, 0.95 * h, 0.5 * w, 0.2 * h, 0.45 * w), _ellipse_annotation(h, w, 0.1 * h, 0.5 * w, 0.12 * h, 0.2 * w, 8)]
        objects = object_map(anns, prep.original_size, prep.size, (224, 224), prep.offset)
    args = (parse_queries(kind), prep.size, np.random.default_rng(0), objects, prep.scale, prep.offset, (224, 224))
    if kind.startswith("random"):  # what the reviewer saw: points on the photo, in patches dropped as padding
        assert _excluded(select_queries(*args).yx, prep.valid, grid) > 0
    pts = select_queries(*args, grids=[grid])
    assert _excluded(pts.yx, prep.valid, grid) == 0 and prep.valid[tuple(pts.yx.astype(int).T)].all()
    y0, y1, x0, x1 = query_region(prep.size, prep.offset, (224, 224), [grid])
    assert (y0, y1, x0, x1) == (42, 182, 0, 224)  # patches 3..12: rows [42, 182)
    if kind.startswith("random"):
        assert pts.yx[:, 0].min() < 50 and pts.yx[:, 0].max() > 174  # still spread up to the kept edge
    if kind.startswith("objects"):
        assert pts.label.tolist() == [7, 8, 0]


@pytest.mark.parametrize("kind", ["grid:9", "random:300"])
def test_nl_points_avoid_cells_excluded_at_the_bottom_right_pad(kind):
    """An NL input pads at the bottom/right: a 50 x 70 image in a 64 x 96 input has stride-16 cells
    rows 0..3, cols 0..5; row 3 (centre 56) and col 4 (centre 72) hold image pixels but are dropped."""
    valid = np.zeros((64, 96), dtype=bool)
    valid[:50, :70] = True
    grids = [(8, 12), (4, 6)]  # two blocks, strides 8 and 16: the region keeps to cells both keep
    args = (parse_queries(kind), (50, 70), np.random.default_rng(0), None, (1.0, 1.0), (0, 0), (64, 96))
    if kind.startswith("random"):
        assert _excluded(select_queries(*args).yx, valid, grids[1]) > 0
    pts = select_queries(*args, grids=grids)
    assert all(_excluded(pts.yx, valid, g) == 0 for g in grids)
    assert query_region((50, 70), (0, 0), (64, 96), grids) == (0, 48, 0, 64)


def test_box_only_objects_are_placed_with_the_offset():
    prep = prepare_vit_image(_photo("coffee"), 224, "pad")  # 400 x 600 -> 149 x 224 at (37, 0)
    ann = {"id": 3, "category_id": 1, "iscrowd": 0, "bbox": [300, 100, 100, 200]}  # x, y, w, h: centre (200, 350)
    objects = object_map([ann], prep.original_size, prep.size, (224, 224), prep.offset)
    pts = select_queries(parse_queries("objects:1"), prep.size, np.random.default_rng(0), objects, prep.scale, prep.offset, (224, 224))
    sy, sx = prep.scale
    assert np.allclose(pts.yx[0], (200 * sy + 37, 350 * sx), atol=1e-9)
    assert objects.labels[int(pts.yx[0, 0]), int(pts.yx[0, 1])] == 1


def test_image_region_clips_a_crop():
    assert image_region((149, 224), (37, 0), (224, 224)) == (37, 186, 0, 224)
    assert image_region((256, 384), (-16, -80), (224, 224)) == (0, 224, 0, 224)
    assert image_region((60, 100)) == (0, 60, 0, 100)


def _maps_file(offset, size, original_size, scale, input_size=(224, 224), heads=None, drop_offset=False):
    grid = (16, 16)
    shape = (1, heads + 1, *grid) if heads else (1, *grid)
    maps = np.zeros(shape, dtype=np.float32)
    maps[..., 8, 8] = 1.0  # the key covering input pixels [112, 126) x [112, 126)
    if heads:
        maps[0, 0] = 0.0
        maps[0, 0, 0, 0] = 1.0  # head 0 looks elsewhere
    buf = io.BytesIO()
    save_image_maps(buf, image_id=1, blocks=["blocks.0.attn"], maps=[maps], cells=[np.array([[8, 8]])], query_shapes=[grid],
                    key_shapes=[grid], query_yx=np.array([[119.5, 119.5]]), query_label=np.array([-1]), scale=scale,
                    size=size, original_size=original_size, input_size=input_size, offset=offset)  # fmt: skip
    if drop_offset:
        buf.seek(0)
        with np.load(buf) as z:
            arrays = {k: z[k] for k in z.files if k != "offset"}
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_saved_maps_overlay_follows_pad_and_crop(tmp_path):
    # pad: a 400 x 600 photo shown as 149 x 224 at (37, 0)
    path = tmp_path / "pad.npz"
    path.write_bytes(_maps_file((37, 0), (149, 224), (400, 600), (149 / 400, 224 / 600)))
    m = ImageMaps(path)
    assert m.offset == (37, 0) and m.region == (37, 186, 0, 224)
    assert np.allclose(m.query_yx_original, [[(119.5 - 37) * 400 / 149, 119.5 * 600 / 224]], atol=1e-3)
    over = m.overlay(0, 0)
    r, c = np.unravel_index(np.argmax(over), over.shape)
    assert abs(r - (119 - 37) * 400 / 149) < 25 and abs(c - 119 * 600 / 224) < 25  # the hot key sits on its photo pixels
    # crop: 256 x 384 resized, the centre 224 x 224 cut at (-16, -80); the rest of the photo is NaN
    path = tmp_path / "crop.npz"
    path.write_bytes(_maps_file((-16, -80), (256, 384), (400, 600), (256 / 400, 384 / 600), heads=2))
    m = ImageMaps(path)
    assert m.num_heads(0) == 2 and m.maps(0).shape == (1, 16, 16) and m.maps(0, head=0)[0, 0, 0] == 1.0
    over = m.overlay(0, 0)
    seen = ~np.isnan(over)
    rows, cols = np.nonzero(seen)
    assert (rows.min(), rows.max() + 1) == (25, 375) and (cols.min(), cols.max() + 1) == (125, 475)  # 16/0.64 .. 240/0.64
    r, c = np.unravel_index(np.nanargmax(over), over.shape)
    assert abs(r - (119 + 16) / 0.64) < 25 and abs(c - (119 + 80) / 0.64) < 25
    with pytest.raises(IndexError, match="heads 0..1"):
        m.maps(0, head=5)


def test_maps_files_without_offset_read_as_top_left(tmp_path):
    path = tmp_path / "old.npz"
    path.write_bytes(_maps_file((0, 0), (149, 224), (400, 600), (149 / 400, 224 / 600), drop_offset=True))
    m = ImageMaps(path)
    assert "offset" not in m.keys() and m.offset == (0, 0) and m.region == (0, 149, 0, 224)
    assert m.overlay(0, 0).shape == (400, 600) and not np.isnan(m.overlay(0, 0)).any()
    with pytest.raises(ValueError, match="not a multi-head layer"):
        m.maps(0, head=0)
