"""Image selection for ``extract``: COCO (pycocotools) and files/folders/globs, each bad input's message."""
import json

import pytest

from extract_inputs import write_coco
from nlanalysis.extract import coco_images, file_images
from nlanalysis.extract.sources import shard_of


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    images = root / "images"
    images.mkdir()
    paths = []
    for i in range(10):  # tiny valid JPEGs; only their sizes matter here
        from PIL import Image

        p = images / f"im{i}.jpg"
        Image.new("RGB", (40 + i, 30)).save(p)
        paths.append(p)
    write_coco(root / "ann.json", paths, first_id=11)  # ids 11..20; patterns cycle over 4
    return root / "ann.json", images


def test_coco_selection_ids_categories_limit_seed(coco):
    ann, images = coco
    every = coco_images(ann, images)
    assert [it.image_id for it in every] == list(range(11, 21))
    assert every[0].key == "000000000011" and every[0].path == str(images / "im0.jpg")
    assert (every[0].height, every[0].width) == (30, 40) and len(every[0].annotations) == 2
    assert every[3].annotations == []  # pattern 3: no annotation

    assert [it.image_id for it in coco_images(ann, images, image_ids=[15, 12])] == [12, 15]
    # category 3 (box only) is on pattern-0 images: 11, 15, 19; category 2 on patterns 1 and 2
    assert [it.image_id for it in coco_images(ann, images, cat_ids=[3])] == [11, 15, 19]
    assert [it.image_id for it in coco_images(ann, images, cat_ids=[3, 2])] == [11, 12, 13, 15, 16, 17, 19, 20]

    a = coco_images(ann, images, limit=4, seed=7)
    b = coco_images(ann, images, limit=4, seed=7)
    c = coco_images(ann, images, limit=4, seed=8)
    assert [it.image_id for it in a] == [it.image_id for it in b]  # reproducible
    assert [it.image_id for it in a] == sorted(it.image_id for it in a) and len(a) == 4
    assert [it.image_id for it in a] != [it.image_id for it in c]
    assert len(coco_images(ann, images, limit=100)) == 10


def test_coco_errors(coco, tmp_path):
    ann, images = coco
    with pytest.raises(FileNotFoundError, match=r"--coco-ann .*missing.json: no such annotation file"):
        coco_images(tmp_path / "missing.json", images)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        coco_images(tmp_path / "bad.json", images)
    (tmp_path / "other.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        coco_images(tmp_path / "other.json", images)
    with pytest.raises(FileNotFoundError, match="--coco-images .*: no such folder"):
        coco_images(ann, tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"--image-ids: 99, 100 not in"):
        coco_images(ann, images, image_ids=[11, 99, 100])
    with pytest.raises(ValueError, match=r"--cat-ids: 42 not in .*categories: 1, 2, 3"):
        coco_images(ann, images, cat_ids=[42])
    with pytest.raises(ValueError, match="--limit 0 selects no images"):
        coco_images(ann, images, limit=0)
    data = json.loads(ann.read_text())
    a0 = data["annotations"][0]
    for bad, message in ((1.2, r"category_id 1.2 is not an integer"), (42, r"category_id 42 is not in the file's 'categories' \(ids 1, 2, 3\)")):
        (tmp_path / "cat.json").write_text(json.dumps({**data, "annotations": [{**a0, "category_id": bad}]}))
        with pytest.raises(ValueError, match=message):
            coco_images(tmp_path / "cat.json", images)
    no_list = {k: v for k, v in data.items() if k != "categories"}  # without a list, ids are still integers: 1.2, 1.7 and
    (tmp_path / "cat.json").write_text(json.dumps({**no_list, "annotations": [{**a0, "category_id": "1"}]}))  # "1" were one
    with pytest.raises(ValueError, match=r"category_id '1' is not an integer"):
        coco_images(tmp_path / "cat.json", images)


def test_files_folders_globs(tmp_path):
    from PIL import Image

    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/x.jpg", "a/sub/y.PNG", "a/notes.txt", "b.jpg"):
        p = tmp_path / name
        Image.new("RGB", (8, 8)).save(p, format="PNG") if not name.endswith(".txt") else p.write_text("hi")
    items = file_images([tmp_path / "a", str(tmp_path / "*.jpg")])
    assert [it.image_id for it in items] == ["a/sub/y.PNG", "a/x.jpg", "b.jpg"]  # relative to the common folder
    assert len({it.key for it in items}) == 3 and all("/" not in it.key for it in items)
    assert items[0].annotations is None
    assert [it.image_id for it in file_images([tmp_path / "a"], image_ids=["x.jpg"])] == ["x.jpg"]
    assert len(file_images([tmp_path / "a", tmp_path / "b.jpg"], limit=2, seed=1)) == 2

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--images .*empty: the folder holds no image files"):
        file_images([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match=r"--images .*\*.gif: the pattern matches no image files"):
        file_images([str(tmp_path / "*.gif")])
    with pytest.raises(FileNotFoundError, match=r"--images .*nothing.jpg: no such file or folder"):
        file_images([tmp_path / "nothing.jpg"])
    with pytest.raises(ValueError, match="--limit 0 selects no images"):
        file_images([tmp_path / "a"], limit=0)


def test_shards_partition_the_list(coco):
    items = coco_images(*coco)
    shards = [shard_of(items, i, 3) for i in range(3)]
    assert sorted(it.image_id for s in shards for it in s) == [it.image_id for it in items]
    assert [it.image_id for it in shards[1]] == [12, 15, 18]
    with pytest.raises(ValueError, match="0 <= I < N"):
        shard_of(items, 3, 3)


def test_a_recursive_glob_enters_each_folder_once_and_matches_as_glob_does(tmp_path, monkeypatch):
    """glob follows linked folders: a link to its own folder made ``**`` list paths without end (2^40 here). The walk
    enters each real folder once and otherwise selects what ``glob.glob(..., recursive=True)`` selects."""
    import glob
    import os

    from nlanalysis.extract.sources import _glob

    for name in ("x.png", "a/y.png", "a/b/z.png", "a/.hidden.png", "a/.h/q.png", "c/w.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "c" / "link").symlink_to(tmp_path / "a")  # a link to another folder: followed, as glob does
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "latest").symlink_to(tmp_path / "a" / "b")  # reached through a hidden folder first, maybe
    monkeypatch.chdir(tmp_path)
    patterns = ("**/*.png", "a/**/*.png", "**/*", "c/**/*.png", "**/.h/*.png", f"{tmp_path}/**/*.png", "*.png", "*/**",
                "a/**", "**/b/**", "**/.*", "**")  # fmt: skip
    for pattern in patterns:
        got = sorted(str(p) for p in _glob(pattern) if os.path.isfile(p))
        assert got == sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)), pattern
    (tmp_path / "a" / "self").symlink_to(".")  # now a loop
    assert {it.image_id for it in file_images(["**/*.png"])} == {"x.png", "a/y.png", "a/b/z.png"}


def test_the_walk_enters_a_folder_only_where_a_match_can_pass_through():
    """``_leads`` against brute force: a folder leads somewhere when some path below it matches (glob's ** does not
    enter hidden folders; a diamond of links inside one took 17 s, each level doubling)."""
    import itertools

    from nlanalysis.extract.sources import _leads, _matches

    names = ("a", "b", ".h", "x.png")
    below = [p for n in range(1, 4) for p in itertools.product(names, repeat=n)]  # something inside the folder
    patterns = (("**", "*.png"), ("a", "**"), ("**", ".h", "*"), ("*", "b", "*.png"), ("**", "b", "**"), (".*", "**"), ("a", "*.png"))
    for pattern in patterns:
        for folder in itertools.product(names[:3], repeat=2):
            want = any(_matches((*folder, *rest), pattern) for rest in below)
            assert _leads(folder, pattern) == want, (folder, pattern)
