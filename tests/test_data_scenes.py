"""Fashion-MNIST scenes: the shipped COCO set, the generator's invariants, the IDX reader and ``demo-data``.

Generation tests read tiny IDX files written here, so they need no Debian package; the one test
that regenerates shipped scenes from the real data skips when ``dataset-fashion-mnist`` is absent.
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from nlanalysis.cli import main
from nlanalysis.data.fashion_mnist import (
    CLASS_NAMES,
    DEFAULT_SOURCE,
    FashionMNISTNotFound,
    IdxFormatError,
    load_fashion_mnist,
    read_idx,
)
from nlanalysis.data.scenes import (
    DEMO_COMMAND,
    DESIGNS,
    SceneParams,
    demo_command,
    demo_scenes_path,
    make_scene,
    semantic_mask,
    write_scenes,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 00 00 08 ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def tiny_items(n_per_class: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright rectangles with a class-dependent shape: ``uint8 [10 * n, 28, 28]`` and labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class).astype(np.uint8)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    for img, label in zip(images, labels):
        h, w = 8 + 2 * label, 24 - 2 * label
        y, x = (28 - h) // 2, (28 - w) // 2
        img[y : y + h, x : x + w] = rng.integers(120, 256, size=(h, w))
    return images, labels


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fmnist")
    for prefix, seed in (("train", 0), ("t10k", 1)):
        images, labels = tiny_items(seed=seed)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images), mtime=0))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels), mtime=0))
    return folder


def masks_of(coco: COCO, image_id: int) -> tuple[list[dict], np.ndarray]:
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    return anns, np.stack([coco.annToMask(a).astype(bool) for a in anns])


def check_coco_set(json_path, image_dir, design: str) -> COCO:
    """Everything a COCO consumer relies on, for every image of a written set."""
    coco = COCO(str(json_path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    assert coco.dataset["info"]["design"] == design
    n_classes = []
    for image_id, info in coco.imgs.items():
        image = np.asarray(Image.open(image_dir / info["file_name"]))
        assert image.shape == (info["height"], info["width"], 3) and image.dtype == np.uint8
        anns, masks = masks_of(coco, image_id)
        assert masks.shape[1:] == image.shape[:2] and masks.any(axis=(1, 2)).all()
        assert masks.sum(0).max() <= 1, f"image {image_id}: masks overlap"
        for ann, mask in zip(anns, masks):
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 10
        gray = image.max(-1).astype(float)  # HSV value: the tinted items of query-specific keep their brightness
        fg, bg = gray[masks.any(0)], gray[~masks.any(0)]
        assert np.median(fg) > np.percentile(bg, 75), f"image {image_id}: masks do not sit on the bright items"
        assert fg.mean() > bg.mean() + 40, f"image {image_id}: items not brighter than the background"
        assert np.median(bg) < 80, f"image {image_id}: background not dark"
        n_classes.append(len({a["category_id"] for a in anns}))
        if design.startswith("query-specific"):  # two groups, one class each, different classes: a group is a category
            classes = {g: {a["category_id"] for a in anns if a["group"] == g} for g in (0, 1)}
            assert all(len(c) == 1 for c in classes.values()) and classes[0] != classes[1], f"image {image_id}: {classes}"
    if design == "shared":
        assert set(n_classes) == {1}
    return coco


#: every shipped validation set: each design with the default drawing, and issue 16's v2 (groups of 2-5 items);
#: query-specific-v4's are not shipped yet (tests/test_scenes_v4.py)
SHIPPED = [(d, None) for d in DESIGNS if d != "query-specific-v4"] + [("query-specific", (4, 10))]


@pytest.mark.parametrize(("design", "num_items"), SHIPPED)
def test_shipped_scenes_are_a_valid_coco_set(design, num_items):
    ann, images = demo_scenes_path(design, num_items)
    coco = check_coco_set(ann, images, design)
    assert len(coco.imgs) == 300 and len(list(images.glob("*.png"))) == 300
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.imgs]
    assert min(per_image) >= 2 and np.mean(per_image) > 3.5
    if design != "query-specific":  # that design draws from the look-alike classes only
        assert len({coco.loadAnns(coco.getAnnIds(imgIds=[i]))[0]["category_id"] for i in coco.imgs}) == 10
    info = coco.dataset["info"]
    assert (info["split"], info["seed"], info["num_scenes"], info["design"]) == ("val", 0, 300, design)
    assert info["params"]["size"] == 112
    assert tuple(info["params"]["num_items"]) == (num_items or (3, 6))


def test_semantic_mask_composes_the_instance_masks():
    coco = COCO(str(demo_scenes_path()[0]))
    for image_id in list(coco.imgs)[:20]:
        anns, masks = masks_of(coco, image_id)
        expected = (masks * np.array([a["category_id"] for a in anns])[:, None, None]).sum(0)
        sem = semantic_mask(coco, image_id, (112, 112))
        assert sem.dtype == np.int64 and np.array_equal(sem, expected)
        assert np.array_equal(semantic_mask(coco, image_id), sem)


@pytest.mark.skipif(not DEFAULT_SOURCE.is_dir(), reason="dataset-fashion-mnist (Debian) not installed")
@pytest.mark.parametrize(("design", "num_items"), SHIPPED)
def test_shipped_scenes_regenerate_from_the_debian_package(tmp_path, design, num_items):
    assert f"--num 300 --seed 0 --design {design} --size 112" in demo_command(design, num_items)
    assert demo_command("shared") == DEMO_COMMAND
    args = demo_command(design, num_items).split()[1:]  # the documented command, into a temporary folder
    args[args.index("--out") + 1], args[args.index("--num") + 1] = str(tmp_path), "4"  # a prefix of the shipped 300
    assert main(args) == 0
    json_path = tmp_path / "instances.json"
    shipped_json, shipped_images = demo_scenes_path(design, num_items)
    for name in ("000001.png", "000004.png"):
        assert (tmp_path / "images" / name).read_bytes() == (shipped_images / name).read_bytes()
    ours, shipped = json.loads(json_path.read_text()), json.loads(shipped_json.read_text())
    assert ours["annotations"] == [a for a in shipped["annotations"] if a["image_id"] <= 4]


def test_written_sets_are_valid_for_both_designs(tmp_path, source):
    check_coco_set(write_scenes(tmp_path / "s", "train", 12, 3, "shared", source=source), tmp_path / "s/images", "shared")
    path = write_scenes(tmp_path / "i", "val", 12, 3, "independent", size=96, source=source)
    coco = check_coco_set(path, tmp_path / "i/images", "independent")
    mixed = [len({a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[i]))}) for i in coco.imgs]
    assert np.mean(mixed) > 2 and coco.imgs[1]["height"] == 96


def test_make_scene_invariants():
    items, labels = tiny_items()
    params = SceneParams(size=80, item_side=(16, 30))
    for design in ("shared", "independent"):
        for i in range(10):
            scene = make_scene(np.random.default_rng(i), items, labels.astype(np.int64), design, params)
            assert scene.image.shape == (80, 80, 3) and np.array_equal(scene.image[..., 0], scene.image[..., 2])
            assert scene.masks.shape == (len(scene.labels), 80, 80) and len(scene.labels) >= 1
            assert scene.masks.sum(0).max() <= 1 and scene.masks.any(axis=(1, 2)).all()
            assert np.array_equal(labels[scene.item_ids], scene.labels)
            if design == "shared":
                assert len(set(scene.labels.tolist())) == 1
    with pytest.raises(ValueError, match="unknown scene design"):
        make_scene(np.random.default_rng(0), items, labels, "mixed")
    with pytest.raises(ValueError, match="item_side"):
        SceneParams(size=32, item_side=(20, 40))


def test_scene_noise_is_the_std_of_what_was_added():
    """Scene.noise against the noise in the image itself: the same draws without the noise (noise_prob 0: with one
    item and no occluders no later draw depends on it) leave the image minus the noise."""
    items, labels = tiny_items()
    base = dict(size=96, num_items=(1, 1), item_side=(60, 60), background=(0.5, 0.5), clutter=0.0, contrast=(0.5, 0.5),
                item_floor=1.0, occlude_prob=0.0, item_noise=(0.04, 0.04))  # fmt: skip
    for seed in range(3):
        noisy = make_scene(np.random.default_rng(seed), items, labels.astype(np.int64), "shared", SceneParams(**base, noise_prob=1.0))
        clean = make_scene(np.random.default_rng(seed), items, labels.astype(np.int64), "shared", SceneParams(**base, noise_prob=0.0))
        residual = (noisy.image[..., 0].astype(float) - clean.image[..., 0]) / 255
        box = noisy.noise > 0
        assert np.allclose(noisy.noise[box], 0.04) and box.sum() == 60 * 60 and not clean.noise.any()
        assert np.all(residual[~box] == 0)
        assert abs(residual[box].std() - 0.04) < 0.003  # 3,600 draws of N(0, 0.04), rounded to 1/255
    # two noisy boxes: the variances add where they overlap
    two = dict(base, num_items=(2, 2), item_side=(70, 70), max_overlap=1.0, min_visible=0.0)
    scene = make_scene(np.random.default_rng(0), items, labels.astype(np.int64), "independent", SceneParams(**two, noise_prob=1.0))
    assert np.isclose(scene.noise.max(), 0.04 * np.sqrt(2)) and np.isclose(np.median(scene.noise[scene.noise > 0]), 0.04 * np.sqrt(2))


def test_generation_is_byte_identical_for_a_seed(tmp_path, source):
    def files(folder):
        return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    for name, seed, num in (("a", 7, 6), ("b", 7, 6), ("c", 8, 6), ("d", 7, 3)):
        write_scenes(tmp_path / name, "train", num, seed, source=source)
    a, b, c, d = (files(tmp_path / name) for name in "abcd")
    assert a == b and len(a) == 7
    assert a[next(iter(a))] != c[next(iter(c))]  # another seed, other scenes
    assert all(d[k] == a[k] for k in d if k.suffix == ".png")  # fewer scenes = a prefix


def test_idx_reader_roundtrip_and_errors(tmp_path):
    images, labels = tiny_items(n_per_class=1)
    (tmp_path / "x.idx").write_bytes(idx_bytes(images))
    (tmp_path / "x.idx.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(read_idx(tmp_path / "x.idx"), images) and read_idx(tmp_path / "x.idx").shape == (10, 28, 28)
    assert np.array_equal(read_idx(tmp_path / "x.idx.gz"), images)
    int32 = bytes([0, 0, 0x0C, 1]) + np.asarray([3], ">u4").tobytes() + np.asarray([1, -2, 300], ">i4").tobytes()
    (tmp_path / "i.idx").write_bytes(int32)
    assert read_idx(tmp_path / "i.idx").tolist() == [1, -2, 300]

    cases = {
        "magic.idx": (b"\x08\x03" + idx_bytes(images)[2:], "not an IDX file"),
        "short.idx": (idx_bytes(images)[:-5], r"shape \(10, 28, 28\).*truncated"),
        "bad.gz": (gzip.compress(idx_bytes(images))[:40], "corrupt gzip"),
        "empty.idx": (b"", "not an IDX file"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IdxFormatError, match=message) as err:
            read_idx(tmp_path / name)
        assert name in str(err.value)


def test_load_fashion_mnist(tmp_path, source):
    images, labels = load_fashion_mnist("test", source)
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    with pytest.raises(FashionMNISTNotFound, match="apt-get install -y dataset-fashion-mnist") as err:
        load_fashion_mnist("train", tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(err.value) and str(tmp_path) in str(err.value)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))  # uncompressed works too
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(39, 3, np.uint8))))
    with pytest.raises(IdxFormatError, match="expected 40 labels"):
        load_fashion_mnist("test", tmp_path)
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist("val", source)


def test_cli_writes_a_valid_set(tmp_path, source, capsys):
    out = tmp_path / "scenes"
    args = ["demo-data", "--out", str(out), "--split", "val", "--num", "5", "--seed", "2", "--source", str(source)]
    assert main(args) == 0
    assert "wrote 5 shared scenes" in capsys.readouterr().out
    coco = check_coco_set(out / "instances.json", out / "images", "shared")
    assert coco.dataset["info"]["seed"] == 2 and len(coco.imgs) == 5

    assert main(args) == 2  # refuses to write over a set
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and err[0].startswith("nlanalysis demo-data: error:")
    assert main(args[:-4] + ["--num", "2", "--overwrite", "--source", str(source)]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000001.png", "000002.png"]

    assert main(["demo-data", "--out", str(tmp_path / "x"), "--source", str(tmp_path / "nothing")]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


def test_overwrite_checks_the_inputs_before_clearing_the_old_set(tmp_path, source):
    """A query-specific set needs items of the look-alike classes: with a source that lacks them the call fails, and the
    set already in the folder must still be there (it used to be deleted first)."""
    write_scenes(tmp_path / "s", "val", 4, 0, "shared", source=source)
    before = (tmp_path / "s" / "instances.json").read_bytes()
    poor = tmp_path / "poor"
    poor.mkdir()
    images, labels = tiny_items()
    keep = labels < 2  # two classes only
    for prefix in ("train", "t10k"):
        (poor / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images[keep]), mtime=0))
        (poor / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[keep]), mtime=0))
    with pytest.raises(ValueError):
        write_scenes(tmp_path / "s", "val", 4, 0, "query-specific", source=poor, overwrite=True)
    assert (tmp_path / "s" / "instances.json").read_bytes() == before and len(list((tmp_path / "s" / "images").iterdir())) == 4


def test_the_recorded_command_writes_the_same_set_again(tmp_path, source):
    from nlanalysis.data.scenes import SceneParams

    path = write_scenes(tmp_path / "s", "val", 3, 2, "query-specific", source=source, params=SceneParams(num_items=(4, 10)))
    command = json.loads(path.read_text())["info"]["command"]
    assert command.endswith("--design query-specific --size 112 --num-items 4 10")
