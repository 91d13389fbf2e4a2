"""Query points: objects:K points really lie on the chosen objects; grid/random stay on the image."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from extract_inputs import write_coco, write_photos
from nlanalysis.checkpoints import Preprocess
from nlanalysis.data import load_image, prepare_image
from nlanalysis.extract import coco_images, parse_queries, select_queries
from nlanalysis.extract.objects import object_map

# pycocotools' decoder warns under numpy 2 (its __array__ lacks copy=); not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    photos = write_photos(root / "images", n=4, max_side=200)
    write_coco(root / "ann.json", photos)
    return coco_images(root / "ann.json", root / "images")


def _coco_mask(ann, h, w):
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
    if isinstance(seg, dict) and isinstance(seg["counts"], list):
        return mask_utils.decode(mask_utils.frPyObjects(seg, h, w)).astype(bool)
    rle = dict(seg, counts=seg["counts"].encode())
    return mask_utils.decode(rle).astype(bool)


@pytest.mark.parametrize("scale", [(96, 64), (333, 200)])
def test_object_points_lie_on_their_objects(annotated, scale):
    pre = Preprocess(scale=scale)
    seen_mask = seen_box = seen_background = 0
    for item in annotated:
        prep = prepare_image(load_image(item.path), pre)
        h, w = prep.original_size
        objects = object_map(item.annotations, prep.original_size, prep.size, tuple(prep.tensor.shape[1:]))
        pts = select_queries(parse_queries("objects:5"), prep.size, np.random.default_rng(0), objects, prep.scale)
        by_id = {a["id"]: a for a in item.annotations}
        ids = pts.label.tolist()
        assert len(set(ids)) == len(ids)  # different objects
        assert all(not by_id[i].get("iscrowd") for i in ids if i)  # crowds are not objects
        for (y, x), ann_id in zip(pts.yx, ids):
            assert 0 <= y < prep.size[0] and 0 <= x < prep.size[1]  # on the image, not on padding
            oy, ox = int(y / prep.scale[0]), int(x / prep.scale[1])  # the original pixel sampled there
            if ann_id == 0:
                assert not any(_coco_mask(a, h, w)[oy, ox] for a in item.annotations if a.get("segmentation") and not a.get("iscrowd"))
                seen_background += 1
            elif by_id[ann_id].get("segmentation"):
                assert _coco_mask(by_id[ann_id], h, w)[oy, ox], f"point {(y, x)} is off annotation {ann_id}"
                seen_mask += 1
            else:  # box only: its centre
                bx, by, bw, bh = by_id[ann_id]["bbox"]
                np.testing.assert_allclose([y / prep.scale[0], x / prep.scale[1]], [by + bh / 2, bx + bw / 2], atol=1e-6)
                seen_box += 1
    assert seen_mask >= 4 and seen_box >= 1 and seen_background >= 4


def test_object_map_draws_small_objects_on_top_and_skips_crowds(annotated):
    item = annotated[2]  # pattern 2: a polygon strip on top, a crowd region on the bottom half
    prep = prepare_image(load_image(item.path), Preprocess(scale=(96, 64)))
    objects = object_map(item.annotations, prep.original_size, prep.size, tuple(prep.tensor.shape[1:]))
    assert objects.labels.shape == tuple(prep.tensor.shape[1:]) and objects.labels.dtype == np.int64
    assert len(objects.ann_ids) == 1 and objects.has_mask == [True]
    h, w = prep.size
    assert (objects.labels[: h // 5, :w] == 1).all()
    crowd = objects.labels[h // 2 + 1 : h - 1, 1 : w - 1]  # the crowd region: neither an object nor background
    assert crowd.size and (crowd == -1).all() and set(np.unique(objects.labels[:h, :w])) == {-1, 0, 1}
    points = select_queries(parse_queries("objects:2"), prep.size, np.random.default_rng(0), objects, prep.scale)
    background = points.yx[points.label == 0][0].astype(int)
    assert objects.labels[background[0], background[1]] == 0  # the background point is not in the crowd
    assert (objects.labels[h:, :] == 0).all() and (objects.labels[:, w:] == 0).all()  # padding has no object

    # a small object inside a large one stays visible
    big = {"id": 1, "bbox": [0, 0, 40, 40], "iscrowd": 0}
    small = {"id": 2, "bbox": [10, 10, 10, 10], "iscrowd": 0}
    m = object_map([small, big], (40, 40), (40, 40), (64, 64))
    assert m.labels[15, 15] == 1 and m.labels[5, 5] == 2 and m.ann_ids == [2, 1] and m.has_mask == [False, False]


def test_a_box_objects_point_is_on_it_where_a_smaller_object_covers_its_centre():
    from nlanalysis.extract.queries import _object_points

    whole = {"id": 10, "bbox": [0, 0, 60, 60], "iscrowd": 0}  # box only, the whole image
    middle = {"id": 20, "bbox": [20, 20, 20, 20], "iscrowd": 0, "segmentation": [[20, 20, 40, 20, 40, 40, 20, 40]]}
    m = object_map([whole, middle], (60, 60), (60, 60), (60, 60))
    points = _object_points(2, m, (0, 60, 0, 60), (1.0, 1.0), (0, 0))
    for (y, x), ann in zip(points.yx, points.label):  # each point on the object it is recorded for
        assert m.ann_ids[m.labels[int(y), int(x)] - 1] == ann
    assert sorted(points.label) == [10, 20]
    alone = object_map([whole], (60, 60), (60, 60), (60, 60))  # unoccluded: the box centre, as before
    np.testing.assert_array_equal(_object_points(1, alone, (0, 60, 0, 60), (1.0, 1.0), (0, 0)).yx, [[30.0, 30.0]])


def test_grid_and_random_points():
    size = (50, 70)
    grid = select_queries(parse_queries("grid:3"), size, np.random.default_rng(0))
    assert grid.yx.shape == (9, 2) and (grid.label == -1).all()
    np.testing.assert_allclose(grid.yx[4], [25, 35])
    a = select_queries(parse_queries("random:6"), size, np.random.default_rng(1))
    b = select_queries(parse_queries("random:6"), size, np.random.default_rng(1))
    np.testing.assert_array_equal(a.yx, b.yx)
    assert ((a.yx >= 0.5) & (a.yx < np.array(size))).all()
    with pytest.raises(ValueError, match="needs annotated images"):
        select_queries(parse_queries("objects:2"), size, np.random.default_rng(0), None)
    for bad in ("grid", "grid:0", "blobs:3", "random:-1"):
        with pytest.raises(ValueError, match="expected grid:K, random:K or objects:K"):
            parse_queries(bad)


def test_every_query_is_capped_silently_an_oversized_grid_with_a_warning():
    """``save_maps="all"`` (a grid of EVERY_QUERY) from Python warned about a ``--queries`` nobody gave; a user's
    oversized grid still hears of its cap."""
    import warnings

    from nlanalysis.extract.queries import EVERY_QUERY, QuerySpec, select_queries

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        every = select_queries(QuerySpec("grid", EVERY_QUERY), (112, 112), rng, input_size=(112, 112), grids=[(14, 14)])
    assert len(every.yx) == 14 * 14
    with pytest.warns(UserWarning, match="more points than the query grids"):
        big = select_queries(QuerySpec("grid", 1000), (112, 112), rng, input_size=(112, 112), grids=[(14, 14)])
    assert len(big.yx) == 14 * 14
