"""Property-based fuzzing (hypothesis) of the image loader and the COCO reader (issue 14).

Random bytes, truncations and byte mutations of real files (the demo photos, and one photo
written in each format PIL writes), and random, truncated and structurally mutated COCO files
(built from the demo ``instances.json``). Every case must end in one of two ways:

* the project's own error for the concern (:class:`ImageReadError`, :class:`CocoFileError`) with
  a message naming the file -- never another exception type (the test lets those through);
* a success whose data is right: an image of uint8 ``[H, W, 3]`` pixels (equal to the whole
  file's where only a truncation was made, and for a PNG, whose chunks carry CRCs, whatever
  bytes were changed); COCO items that match an independent reading of
  the JSON (every image once, its own annotations, paths inside the folder), whose objects are
  then drawn or refused per image (``ValueError``, as ``extract`` records a failure).

Runs are derandomized (the same cases every time) with a per-case deadline; an alarm turns a
real hang into a failure. 1,000 cases in all (400 + 150 + 450), about 25 s on 2 shared cores.
"""
import contextlib
import copy
import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nlanalysis
from nlanalysis.data import ImageReadError, load_image
from nlanalysis.extract import coco_images
from nlanalysis.extract.coco import CocoFileError
from nlanalysis.extract.objects import object_map

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # its notes on corrupt files

DEMO = Path(nlanalysis.__file__).parent / "data" / "demo" / "scenes_val"


def fuzz(cases: int) -> settings:
    """Hypothesis settings of one fuzz test: ``cases`` examples, the same ones every run."""
    return settings(max_examples=cases, deadline=5000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail a case that runs ``seconds`` (a hang) instead of waiting for it forever (POSIX only)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(*_):
        raise TimeoutError(f"a fuzz case ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _mutate(draw, data: bytes) -> tuple[str, bytes]:
    """``("truncate", prefix)`` or ``("mutate", bytes with 1-8 changed)``; positions favour the header."""
    if draw(st.booleans()):
        return "truncate", data[: draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, min(len(out), 128) - 1) | st.integers(0, len(out) - 1))
        out[pos] = draw(st.integers(0, 255))
    return "mutate", bytes(out)


# -- images ------------------------------------------------------------------------------------
def _formats() -> dict[str, bytes]:
    """A real photo (32 x 24, colour) in each format PIL writes here, plus two demo photos as they are."""
    from PIL import Image

    from nlanalysis.data import sample_photos

    photo = Image.fromarray(np.ascontiguousarray(sample_photos(["grace_hopper"])["grace_hopper"][::20, ::20][:24, :32]))
    gray = photo.convert("L")
    files = {name: (DEMO / "images" / name).read_bytes() for name in ("000001.png", "000002.png")}
    for name, image, kw in [
        ("photo.jpg", photo, {"quality": 90}), ("photo.png", photo, {}), ("photo.bmp", photo, {}),
        ("photo.gif", photo, {}), ("photo.tif", photo, {}), ("photo_lzw.tif", photo, {"compression": "tiff_lzw"}),
        ("photo.webp", photo, {"lossless": True}), ("photo.ppm", photo, {}),
        ("gray16.png", gray.convert("I;16"), {}), ("gray32f.tif", Image.fromarray(np.asarray(gray, np.float32) / 255), {}),
    ]:  # fmt: skip
        buf = io.BytesIO()
        with contextlib.suppress(KeyError, OSError):  # a format this PIL was built without
            image.save(buf, format=Image.registered_extensions()[Path(name).suffix], **kw)
            files[name] = buf.getvalue()
    return files


@pytest.fixture(scope="module")
def image_seeds(tmp_path_factory):
    """``{name: (bytes, pixels)}`` of the seed files, and a folder for the cases."""
    root = tmp_path_factory.mktemp("fuzz_images")
    seeds = {}
    for name, data in _formats().items():
        (root / name).write_bytes(data)
        seeds[name] = (data, load_image(root / name))
    return seeds, root


def _read(path: Path) -> np.ndarray | None:
    """The pixels of ``path``, or ``None`` when refused with an ImageReadError naming it; other errors propagate."""
    try:
        pixels = load_image(path)
    except ImageReadError as err:
        assert str(path) in str(err), err
        return None
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 1
    return pixels


def test_fuzz_image_loader_on_truncated_and_mutated_files(image_seeds):
    seeds, root = image_seeds
    counts = {"refused": 0, "read": 0}

    @st.composite
    def cases(draw):
        name = draw(st.sampled_from(sorted(seeds)))
        return (name, *_mutate(draw, seeds[name][0]))

    @fuzz(400)
    @given(cases())
    def case(args):
        name, how, data = args
        path = root / f"case{Path(name).suffix}"
        path.write_bytes(data)
        with no_hang():
            pixels = _read(path)
        counts["refused" if pixels is None else "read"] += 1
        if pixels is not None and how == "truncate":  # only bytes after the image were cut
            assert np.array_equal(pixels, seeds[name][1]), f"{name} cut to {len(data)} bytes read as other pixels"
        if pixels is not None and name.endswith(".png"):  # every PNG chunk has a CRC: a changed byte is caught
            assert np.array_equal(pixels, seeds[name][1]), f"{name} with changed bytes read as other pixels"

    case()
    assert counts["refused"] > 0 and counts["read"] > 0  # the cases reach both outcomes


MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP", b"P6\n"]


@fuzz(150)
@given(st.sampled_from(MAGIC), st.binary(max_size=600))
def test_fuzz_image_loader_on_random_bytes(tmp_path_factory, magic, body):
    path = tmp_path_factory.getbasetemp() / "random_bytes.img"
    path.write_bytes(magic + body)
    with no_hang():
        _read(path)


# -- COCO files --------------------------------------------------------------------------------
def _small_coco() -> dict:
    """The demo instances file cut to its first 3 images and their annotations (no info, no licences)."""
    data = json.loads((DEMO / "instances.json").read_text())
    images = data["images"][:3]
    ids = {im["id"] for im in images}
    anns = [a for a in data["annotations"] if a["image_id"] in ids]
    return {"images": images, "annotations": anns, "categories": data["categories"]}


BASE = _small_coco()
BASE_TEXT = json.dumps(BASE).encode()


def _paths(value, prefix=()):
    """Every path (tuple of keys/indices) into a JSON value."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


_ALL = [p for p in _paths(BASE) if p and p[0] in ("images", "annotations", "categories")]
#: where edits go: whole images (repeated: duplicate ids), image fields, annotation fields, anywhere
PATHS = (
    st.sampled_from([p for p in _ALL if p[0] == "images" and len(p) == 2])
    | st.sampled_from([p for p in _ALL if p[0] == "images" and len(p) == 3])
    | st.sampled_from([p for p in _ALL if p[0] == "annotations" and len(p) >= 3])
    | st.sampled_from(_ALL)
)
SPECIAL = st.sampled_from(
    ["../../etc/passwd", "/etc/passwd", "", ".", "000001.png", "sub/../000002.png", "sub/../../x.png", "1", "zzzz", "0PeQ3",
     0, -1, 1, 2, 112, 2**63, 2**31, 1.5, float("nan"), float("inf"), True, [], {}, [0, 0, 1e9, 0, 1e9, 1e9]]
)  # fmt: skip
JSON_VALUES = SPECIAL | st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8) | SPECIAL,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["id", "size", "counts", "file_name", "x"]), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def coco_edits(draw) -> bytes:
    """A COCO file: the small demo one with 1-3 values replaced, keys deleted or images repeated."""
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(PATHS)
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = draw(st.sampled_from(["replace", "replace", "delete", "repeat"]))
            if action == "replace":
                parent[path[-1]] = draw(JSON_VALUES)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, list):  # a copy of the entry, e.g. an image with the same id
                parent.append(copy.deepcopy(parent[path[-1]]))
        except (KeyError, IndexError, TypeError):  # an earlier edit removed or replaced the path
            pass
    return json.dumps(data).encode()


@st.composite
def coco_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["edit", "edit", "edit", "text", "random"]))
    if kind == "edit":
        return draw(coco_edits())
    if kind == "text":
        return _mutate(draw, BASE_TEXT)[1]
    return draw(st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))


def _plain(ann: dict) -> dict:
    return {k: ann[k] for k in ("id", "category_id", "bbox", "segmentation", "iscrowd", "area") if k in ann}


def _check_items(items, data: dict, folder: Path) -> None:
    """``items`` match an independent reading of ``data``: every image once, in id order, with its own annotations."""
    images = data["images"]
    assert [it.image_id for it in items] == sorted(im["id"] for im in images)  # none dropped, none twice
    by_id = {im["id"]: im for im in images}
    for it in items:
        image = by_id[it.image_id]
        assert it.file_name == image["file_name"] and it.path == str(folder / it.file_name)
        assert (it.height, it.width) == (image.get("height"), image.get("width"))
        assert all(v is None or (type(v) is int and v > 0) for v in (it.height, it.width))  # as ImageItem promises
        assert os.path.normpath(it.path).startswith(str(folder) + os.sep)
        assert it.annotations == [_plain(a) for a in data.get("annotations", []) if a["image_id"] == it.image_id]
        try:  # what extract does next with them: draw the objects, or fail this image alone
            object_map(it.annotations, (112, 112), (112, 112), (128, 128))
        except ValueError as err:
            assert str(err).startswith("annotation "), err


def test_fuzz_coco_reader(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_coco")
    ann, folder = root / "instances.json", DEMO / "images"
    counts = {"refused": 0, "read": 0}

    @fuzz(450)
    @given(coco_bytes())
    def case(text):
        ann.write_bytes(text)
        with no_hang():
            try:
                items = coco_images(ann, folder)
            except CocoFileError as err:
                assert str(ann) in str(err), err
                counts["refused"] += 1
                return
            _check_items(items, json.loads(text), folder)
        counts["read"] += 1

    case()
    assert counts["refused"] > 0 and counts["read"] > 0
