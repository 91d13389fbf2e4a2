"""The ``query-specific`` scene design (issue 16's positive control): groups, classes, tints, corruption, COCO."""
from __future__ import annotations

import colorsys
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from nlanalysis.cli import main
from nlanalysis.data.scenes import LOOKALIKES, SceneParams, make_scene, semantic_mask, write_scenes
from test_data_scenes import source, tiny_items  # noqa: F401  (source is a fixture)

FAMILY = {c: i for i, family in enumerate(LOOKALIKES) for c in family}


def _hue(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(rgb / 255.0))[0]


def _hue_gap(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def test_two_groups_of_lookalike_classes_with_their_own_tint():
    items, labels = tiny_items()
    params = SceneParams(size=96, item_side=(16, 28), occlude_prob=0.0, noise_prob=0.0)
    sizes = []
    for i in range(30):
        scene = make_scene(np.random.default_rng(i), items, labels.astype(np.int64), "query-specific", params)
        groups, classes = scene.groups, scene.labels
        assert groups is not None and set(groups.tolist()) <= {0, 1} and len(groups) == len(classes)
        per_group = {g: set(classes[groups == g].tolist()) for g in (0, 1)}
        assert all(len(c) <= 1 for c in per_group.values()), f"scene {i}: a group mixes classes {per_group}"
        if all(per_group.values()):
            (a,), (b,) = per_group.values()
            assert a != b and FAMILY[a] == FAMILY[b], f"scene {i}: classes {a}, {b} are not two look-alikes"
        assert _hue_gap(*scene.hues) >= 1 / 3 - 1e-9
        for k, mask in enumerate(scene.masks):  # every visible item pixel carries its group's hue
            pixels = scene.image[mask].astype(float)
            assert np.ptp(pixels, axis=1).mean() > 10, f"scene {i}: item {k} is not tinted"
            assert _hue_gap(_hue(pixels.mean(0)), scene.hues[groups[k]]) < 0.05
        sizes += [int((groups == g).sum()) for g in (0, 1)]
    assert np.mean(np.array(sizes) >= 2) > 0.8  # most groups keep a mate to learn from


def test_corruption_is_the_other_designs_and_stays_untinted():
    items, labels = tiny_items()
    params = SceneParams(size=96, item_side=(16, 28), occlude_prob=1.0, occlude_level=(0.5, 0.5), noise_prob=0.0,
                         clutter=0.0, background=(0.0, 0.0))  # fmt: skip
    for i in range(10):
        scene = make_scene(np.random.default_rng(i), items, labels.astype(np.int64), "query-specific", params)
        patch = (scene.image == 128).all(-1)  # the flat gray occluders, R = G = B
        assert patch.any() and not (patch & scene.masks.any(0)).any()  # labelled background, not tinted
    shared = [make_scene(np.random.default_rng(i), items, labels.astype(np.int64), "shared", params) for i in range(3)]
    assert all(np.array_equal(s.image[..., 0], s.image[..., 1]) and s.groups is None for s in shared)


def test_written_set_is_valid_coco_with_groups(tmp_path, source):  # noqa: F811
    path = write_scenes(tmp_path, "val", 8, 5, "query-specific", size=96, source=source)
    coco = COCO(str(path))
    assert coco.dataset["info"]["design"] == "query-specific"
    assert "--design query-specific" in coco.dataset["info"]["command"]
    for image_id, info in coco.imgs.items():
        image = np.asarray(Image.open(tmp_path / "images" / info["file_name"]))
        assert image.shape == (96, 96, 3) and len(info["group_hues"]) == 2
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        assert masks.sum(0).max() <= 1 and masks.any(axis=(1, 2)).all()
        for group in (0, 1):
            assert len({a["category_id"] for a in anns if a["group"] == group}) <= 1
        sem = semantic_mask(coco, image_id)
        assert set(np.unique(sem).tolist()) == {0} | {a["category_id"] for a in anns}
    items, labels = tiny_items()
    with pytest.raises(ValueError, match="need items of classes"):
        make_scene(np.random.default_rng(0), items[labels != 5], labels[labels != 5], "query-specific")


def test_cli_and_train_accept_the_design(tmp_path, source, capsys):  # noqa: F811
    out = tmp_path / "qs"
    args = ["demo-data", "--out", str(out), "--split", "train", "--num", "3", "--design", "query-specific", "--source", str(source)]
    assert main(args) == 0
    assert "wrote 3 query-specific scenes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "t"), "--design", "nonsense"])
    assert "query-specific" in capsys.readouterr().err
