"""The ``query-specific-v4`` scene design (nlanalysis/data/scenes_v4.py), and that adding it left the other designs'
scenes as they were."""
from __future__ import annotations

import colorsys
import hashlib
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

import nlanalysis.data.scenes_v4 as v4
from nlanalysis.cli import main
from nlanalysis.data.fashion_mnist import DEFAULT_SOURCE, load_fashion_mnist
from nlanalysis.data.scenes import LOOKALIKES, SceneParams, make_scene, scene_annotations, write_scenes
from nlanalysis.train.run import TrainJob, _val_set
from test_data_scenes import check_coco_set, source, tiny_items  # noqa: F401  (source is a fixture)

V4 = "query-specific-v4"
ITEMS = SceneParams(num_items=(4, 10))  # v2's drawing: groups of 2..5 items


def _items() -> tuple[np.ndarray, np.ndarray]:
    items, labels = tiny_items()
    return items, labels.astype(np.int64)


def _hue_gap(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def test_the_pair_is_one_of_the_lookalike_pairs():
    assert any(set(v4.PAIR) <= set(family) for family in LOOKALIKES) and v4.PAIR[0] != v4.PAIR[1]
    assert v4.group_sizes((4, 10)) == (2, 5) and v4.group_sizes((3, 6)) == (2, 3) and v4.group_sizes((1, 2)) == (2, 2)
    assert v4.group_sizes((5, 9)) == (3, 4)


def test_every_scene_holds_the_pair_in_two_equal_groups_with_their_own_tint():
    items, labels = _items()
    sizes, first_class = [], []
    for i in range(200):
        scene = make_scene(np.random.default_rng([3, i]), items, labels, V4, ITEMS)
        groups, classes = scene.groups, scene.labels
        assert sorted(set(classes.tolist())) == sorted(v4.PAIR), f"scene {i}: classes {set(classes.tolist())}"
        count = np.bincount(groups, minlength=2)
        assert len(count) == 2 and count[0] == count[1] and 2 <= count[0] <= 5, f"scene {i}: group sizes {count}"
        per_group = [set(classes[groups == g].tolist()) for g in (0, 1)]
        assert all(len(c) == 1 for c in per_group) and per_group[0] != per_group[1], f"scene {i}: {per_group}"
        assert _hue_gap(*scene.hues) >= 1 / 3 - 1e-9
        for k, mask in enumerate(scene.masks):  # every visible item pixel carries its group's hue
            mean = scene.image[mask].astype(float).mean(0) / 255
            assert _hue_gap(colorsys.rgb_to_hsv(*mean)[0], scene.hues[groups[k]]) < 0.05, f"scene {i}: item {k}"
        assert scene.masks.sum(0).max() <= 1 and scene.masks.any(axis=(1, 2)).all()
        sizes.append(int(count[0]))
        first_class.append(next(iter(per_group[0])))
    assert set(sizes) == {2, 3, 4, 5}  # every group size occurs
    share = np.mean(np.array(first_class) == v4.PAIR[0])
    assert 0.35 < share < 0.65, f"group 0 holds {v4.PAIR[0]} in {share:.0%} of the scenes"  # both assignments, ~half each


@pytest.mark.skipif(not DEFAULT_SOURCE.is_dir(), reason="dataset-fashion-mnist (Debian) not installed")
def test_real_items_keep_the_pair_in_equal_groups():
    items, labels = load_fashion_mnist("test")
    for i in range(30):  # as write_scenes draws the val split's scene i, seed 0
        scene = make_scene(np.random.default_rng([0, i]), items, labels.astype(np.int64), V4, ITEMS)
        count = np.bincount(scene.groups, minlength=2)
        assert sorted(set(scene.labels.tolist())) == sorted(v4.PAIR) and count[0] == count[1] >= 2


def test_same_generator_state_same_scene_and_another_seed_another():
    items, labels = _items()
    a, b = (make_scene(np.random.default_rng([5, 1]), items, labels, V4, ITEMS) for _ in range(2))
    for field in ("image", "masks", "labels", "item_ids", "groups", "noise"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert a.hues == b.hues
    assert not np.array_equal(a.image, make_scene(np.random.default_rng([5, 2]), items, labels, V4, ITEMS).image)


def test_a_lost_item_redraws_the_scene_and_groups_stay_equal(monkeypatch):
    """On a crowded canvas items fail placement (or end under ``min_pixels``): the kept scene is a redraw, never a
    scene with one group short; where no draw fits 2k items, k shrinks; where not even 2 + 2 fit, ValueError."""
    items, labels = _items()
    draws = []
    compose = v4._compose

    def counting(*args, **kw):
        draws.append(1)
        return compose(*args, **kw)

    monkeypatch.setattr(v4, "_compose", counting)
    crowded = SceneParams(size=72, num_items=(10, 10), item_side=(24, 36))
    redrawn = 0
    for i in range(20):
        draws.clear()
        scene = make_scene(np.random.default_rng(i), items, labels, V4, crowded)
        count = np.bincount(scene.groups, minlength=2)
        assert count[0] == count[1] >= 2 and len(scene.labels) == 2 * count[0]
        redrawn += len(draws) > 1
    assert redrawn >= 5  # the crowded canvas does lose items, so the redraw was exercised
    with pytest.raises(ValueError, match="no draw kept two equal groups"):
        make_scene(np.random.default_rng(0), items, labels, V4, SceneParams(size=40, num_items=(4, 4), item_side=(40, 40)))
    with pytest.raises(ValueError, match="need items of classes"):
        keep = ~np.isin(labels, v4.PAIR[:1])
        make_scene(np.random.default_rng(0), items[keep], labels[keep], V4)


def test_written_set_is_valid_coco_and_the_cli_and_train_accept_the_design(tmp_path, source, capsys):  # noqa: F811
    path = write_scenes(tmp_path / "w", "val", 10, 2, V4, source=source, params=ITEMS)
    coco = check_coco_set(path, tmp_path / "w/images", V4)
    assert coco.dataset["info"]["design"] == V4 and "--design query-specific-v4" in coco.dataset["info"]["command"]
    for image_id, info in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert {a["category_id"] for a in anns} == {c + 1 for c in v4.PAIR} and len(info["group_hues"]) == 2
        assert sum(a["group"] == 0 for a in anns) == sum(a["group"] == 1 for a in anns)
    out = tmp_path / "cli"
    args = ["demo-data", "--out", str(out), "--split", "train", "--num", "3", "--design", V4, "--num-items", "4", "10",
            "--source", str(source)]  # fmt: skip
    assert main(args) == 0 and f"wrote 3 {V4} scenes" in capsys.readouterr().out
    assert len(COCO(str(out / "instances.json")).imgs) == 3
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "t"), "--design", "nonsense"])
    assert V4 in capsys.readouterr().err  # among --design's choices
    job = TrainJob.quick(tmp_path / "t", design=V4, source=str(source), val_scenes=4, num_items=(4, 10), progress=False)
    val = _val_set(job)  # not shipped: its 300 val scenes are written to OUT/data
    assert "val_query-specific-v4_items4-10_src" in val.source and len(val) == 4


#: sha256 (first 16 hex digits) of 4 scenes per (design, num_items), drawn from default_rng([7, i]) over tiny_items(),
#: recorded with the code of main at c298ac4, before query-specific-v4 was added (scenes._compose split off make_scene)
BEFORE_V4 = {
    ("shared", None): "01af294403f5cd75",
    ("independent", None): "494ee6ff5947452f",
    ("query-specific", None): "9a58527497d92e28",
    ("query-specific", (4, 10)): "fbd939d42156b5e9",
}


@pytest.mark.parametrize(("design", "num_items"), list(BEFORE_V4))
def test_the_other_designs_draw_the_same_scenes_as_before(design, num_items):
    items, labels = _items()
    params = SceneParams(num_items=num_items) if num_items else None
    digest = hashlib.sha256()
    for i in range(4):
        scene = make_scene(np.random.default_rng([7, i]), items, labels, design, params)
        for array in (scene.image, np.packbits(scene.masks), scene.labels, scene.item_ids):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"none" if scene.groups is None else scene.groups.tobytes())
        digest.update(repr(scene.hues).encode())
        digest.update(json.dumps(scene_annotations(scene, i + 1, 1), sort_keys=True).encode())
    assert digest.hexdigest()[:16] == BEFORE_V4[design, num_items]
