"""Hostile and careless input (issue 14): images, COCO files, query points and masks.

Each case asserts the exact outcome: the correct pixels/number, or a refusal whose message
names the file (or the argument) that was wrong.
"""
import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from helpers import randomize_
from nlanalysis import analyze
from nlanalysis.blocks import NonLocal2d
from nlanalysis.data import ImageReadError, load_image, sample_photos
from nlanalysis.extract import file_images


# -- images ------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path, pixels: np.ndarray | None = None, size: tuple[int, int] | None = None) -> None:
    """A PNG written by hand (PIL writes no 16-bit RGB): ``pixels`` uint8/uint16 ``[H, W]`` or
    ``[H, W, 3]``; or only a header declaring ``size = (h, w)`` (8-bit RGB, no pixel data)."""
    if pixels is None:
        (h, w), depth, colour, data = size, 8, 2, None
    else:
        h, w = pixels.shape[:2]
        depth, colour = pixels.dtype.itemsize * 8, 2 if pixels.ndim == 3 else 0
        rows = pixels.astype(f">u{pixels.dtype.itemsize}").reshape(h, -1).view(np.uint8)
        data = zlib.compress(np.concatenate([np.zeros((h, 1), np.uint8), rows], 1).tobytes())
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))]
    parts += [_chunk(b"IDAT", data)] if data is not None else []
    path.write_bytes(b"".join(parts + [_chunk(b"IEND", b"")]))


@pytest.fixture(scope="module")
def photo():
    """A real photo, 8-bit RGB, small: Grace Hopper (matplotlib), every 8th pixel."""
    return np.ascontiguousarray(sample_photos(["grace_hopper"])["grace_hopper"][::8, ::8])


def _att(pixels: np.ndarray) -> float:
    """The ``att`` statistic of one randomised NL block on an image (a stand-in for any analysis)."""
    torch.manual_seed(0)
    model = randomize_(nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), NonLocal2d(8)), std=0.5)
    x = torch.tensor(pixels).permute(2, 0, 1)[None].float() / 255 - 0.5
    return float(analyze(model, x)["att"].iloc[0])


def test_png_writer_is_read_back_by_pil(tmp_path, photo):
    write_png(tmp_path / "p.png", photo)
    assert np.array_equal(load_image(tmp_path / "p.png"), photo)


def test_high_bit_depth_and_float_images_equal_their_8bit_twins(tmp_path, photo):
    from PIL import Image

    gray = np.asarray(Image.fromarray(photo).convert("L"))
    gray3 = np.repeat(gray[..., None], 3, -1)
    write_png(tmp_path / "gray16.png", gray.astype(np.uint16) * 257)  # 255 -> 65535
    write_png(tmp_path / "rgb16.png", photo.astype(np.uint16) * 257)
    Image.fromarray(gray.astype(np.float32) / 255).save(tmp_path / "gray32f.tif")  # PIL mode F, 1.0 white
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.tif")
    Image.fromarray(gray).save(tmp_path / "gray8.png")

    assert np.array_equal(load_image(tmp_path / "gray8.png"), gray3)
    for name in ("gray16.png", "gray32f.tif", "gray16.tif"):
        assert np.array_equal(load_image(tmp_path / name), gray3), name
    assert np.array_equal(load_image(tmp_path / "rgb16.png"), photo)
    # and so the analysis of the twins agrees; the 16-bit one used to be clipped to white
    att8 = _att(gray3)
    assert _att(load_image(tmp_path / "gray16.png")) == att8
    assert _att(load_image(tmp_path / "gray32f.tif")) == att8
    assert _att(load_image(tmp_path / "rgb16.png")) == _att(photo)
    clipped = np.asarray(Image.open(tmp_path / "gray16.png").convert("RGB"))
    assert (clipped == 255).mean() > 0.9 and abs(_att(clipped) - att8) > 1e-3  # what the old reading measured


def test_high_bit_depth_scaling_is_exact_at_the_ends(tmp_path):
    write_png(tmp_path / "ramp.png", np.array([[0, 128, 32767, 65535]], dtype=np.uint16))
    assert load_image(tmp_path / "ramp.png")[0, :, 0].tolist() == [0, 0, 127, 255]  # round(v / 257)


def test_images_of_no_known_range_are_refused_by_name(tmp_path):
    from PIL import Image

    Image.fromarray(np.array([[0.0, 2.5]], dtype=np.float32)).save(tmp_path / "hdr.tif")
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(tmp_path / "nan.tif")
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(ImageReadError, match=r"hdr\.tif: float pixels in \[0, 2\.5\]"):
        load_image(tmp_path / "hdr.tif")
    with pytest.raises(ImageReadError, match=r"nan\.tif: float pixels that are NaN"):
        load_image(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match=r"int32\.tif: PIL mode 'I' \(32-bit integer pixels of no known range\)"):
        load_image(tmp_path / "int32.tif")


def test_decompression_bomb_is_an_image_error_naming_the_file(tmp_path):
    from PIL import Image

    write_png(tmp_path / "bomb.png", size=(30000, 30000))  # a 100-byte header declaring 900 Mpixels
    with pytest.raises(ImageReadError, match=r"bomb\.png: refused, too many pixels .*900000000 pixels.*MAX_IMAGE_PIXELS") as err:
        load_image(tmp_path / "bomb.png")
    assert isinstance(err.value.__cause__, Image.DecompressionBombError)
    # between PIL's limit (89M pixels) and twice it, PIL only warns and decodes (a 12,000 x 12,000 PNG took 2.9 GB)
    write_png(tmp_path / "big.png", size=(10000, 10000))
    with pytest.raises(ImageReadError, match=r"big\.png: refused, too many pixels"):
        load_image(tmp_path / "big.png")


def test_a_fifo_named_like_an_image_is_not_opened(tmp_path):
    """Opening a FIFO waits for a writer: the header reads that COCO runs make of every image first must not."""
    import os

    from nlanalysis.data.images import exif_orientation, image_size

    os.mkfifo(tmp_path / "pipe.png")
    assert exif_orientation(tmp_path / "pipe.png") == 1  # as a missing file: it fails, alone, when it is loaded
    with pytest.raises(ImageReadError, match=r"pipe.png: is not a regular file \(a named pipe\), not an image file"):
        image_size(tmp_path / "pipe.png")
    with pytest.raises(ImageReadError, match=r"pipe.png: is not a regular file \(a named pipe\), not an image file"):
        load_image(tmp_path / "pipe.png")


def test_a_png_whose_pixel_data_fails_its_crc_is_refused(tmp_path, photo):
    from PIL import Image

    pixels = photo[:4, :4]
    rows = np.concatenate([np.zeros((4, 1), np.uint8), pixels.reshape(4, -1)], 1).tobytes()  # filter byte 0 per row
    changed = bytearray(rows)
    changed[5] ^= 0xFF  # one byte of pixel (0, 1) changed after the CRC was made
    stream, was = zlib.compress(bytes(changed)), zlib.compress(rows)
    idat = struct.pack(">I", len(stream)) + b"IDAT" + stream + struct.pack(">I", zlib.crc32(b"IDAT" + was))
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
    (tmp_path / "p.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + idat + _chunk(b"IEND", b""))
    read_by_pil = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert (read_by_pil != pixels).sum() == 1  # PIL alone reads the other pixel without a word
    with pytest.raises(ImageReadError, match=r"p\.png: PNG chunk 'IDAT' at byte 33 fails its CRC check"):
        load_image(tmp_path / "p.png")


def test_undecodable_bytes_name_the_file(tmp_path):
    write_png(tmp_path / "header_only.png", size=(20, 30))  # no pixel data
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("header_only.png", "text.jpg"):
        with pytest.raises(ImageReadError, match=rf"{name}: cannot decode image"):
            load_image(tmp_path / name)


def test_gif_files_are_read_first_frame(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (6, 4)).save(tmp_path / "still.png")
    items = file_images([tmp_path])
    assert [it.image_id for it in items] == ["anim.gif", "still.png"]
    first = load_image(items[0].path)
    assert first.shape == (4, 6, 3) and (first == [255, 0, 0]).all()


def test_a_decompression_bomb_is_one_failure_row_not_an_aborted_run(tmp_path):
    from extract_inputs import one_thread, tiny_checkpoint, write_photos
    from nlanalysis.extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunSpec, load_run, run_extract

    write_photos(tmp_path / "images", n=1, max_side=96)
    write_png(tmp_path / "images" / "bomb.png", size=(30000, 30000))
    with one_thread():
        spec = RunSpec(model=ModelSpec(tiny_checkpoint(tmp_path / "tiny.pth")), data=DataSpec(images=[tmp_path / "images"]),
                       output=OutputSpec(tmp_path / "out"), measure=MeasureSpec(jsd_pairs=0))  # fmt: skip
        report = run_extract(spec, progress=False)
    failures = load_run(report.path).failures
    assert failures["image_id"].tolist() == ["bomb.png"]
    assert "bomb.png: refused, too many pixels" in failures["reason"][0]
    assert load_run(report.path).metrics["image_id"].unique().tolist() == ["photo_000.jpg"]


# -- COCO files --------------------------------------------------------------------------------
@pytest.fixture
def coco(tmp_path):
    """A small instances file over two real photos: ``(path, images folder, its JSON data)``."""
    import json

    from extract_inputs import write_coco, write_photos

    photos = write_photos(tmp_path / "images", n=2, max_side=64)
    write_coco(tmp_path / "ann.json", photos)
    return tmp_path / "ann.json", tmp_path / "images", json.loads((tmp_path / "ann.json").read_text())


def _refused(coco, message: str) -> None:
    """Write the edited data back and assert reading it is refused with ``message`` after the file's name."""
    import json

    from nlanalysis.extract import coco_images
    from nlanalysis.extract.coco import CocoFileError

    ann, images, data = coco
    ann.write_text(json.dumps(data))
    with pytest.raises(CocoFileError, match=r"--coco-ann .*ann\.json: " + message):
        coco_images(ann, images)


def test_duplicate_image_ids_are_refused_naming_both_files(coco):
    images = coco[2]["images"]
    images[1]["id"] = images[0]["id"]
    _refused(coco, rf"image id 1 is listed twice, for '{images[0]['file_name']}' and '{images[1]['file_name']}'")


@pytest.mark.parametrize("bad_id", ["000001", 1.0, True, None])
def test_non_integer_image_ids_are_refused_up_front(coco, bad_id):
    coco[2]["images"][1]["id"] = bad_id
    _refused(coco, rf"images\[1\]: id {bad_id!r} is not an integer")


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "sub/../../outside.jpg", ".", ""])
def test_file_names_that_leave_the_image_folder_are_refused(coco, name):
    coco[2]["images"][0]["file_name"] = name
    _refused(coco, r"images\[0\] \(id 1\): file_name .* (leaves the image folder|is not a file name)")


def test_symbolic_links_inside_the_image_folder_are_followed(coco, tmp_path):
    import json

    from nlanalysis.extract import coco_images

    ann, images, data = coco
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (images / data["images"][0]["file_name"]).rename(elsewhere / "moved.jpg")
    (images / "link.jpg").symlink_to(elsewhere / "moved.jpg")  # a file link
    (images / "dir").symlink_to(elsewhere)  # a folder link
    data["images"][0]["file_name"], data["images"][1]["file_name"] = "link.jpg", "dir/moved.jpg"
    ann.write_text(json.dumps(data))
    items = coco_images(ann, images)
    assert [it.path for it in items] == [str(images / "link.jpg"), str(images / "dir" / "moved.jpg")]
    assert np.array_equal(load_image(items[0].path), load_image(items[1].path))


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("height", 0, r"images\[0\] \('photo_000.jpg'\): height 0 is not a positive 32-bit integer"),
        ("bbox", [1, 2, float("nan"), 4], r"annotations\[0\] \(id 101\): bbox .* is not \[x, y, w, h\]"),
        ("bbox", [1, 2, -3, 4], r"annotations\[0\] \(id 101\): bbox .* w, h >= 0"),
        ("bbox", None, r"annotations\[0\] \(id 101\): bbox None is not \[x, y, w, h\]"),
        ("iscrowd", 2, r"annotations\[0\] \(id 101\): iscrowd 2 is not 0 or 1"),
        ("segmentation", {"counts": "zzzz", "size": [10, 10]}, r"annotations\[0\] \(id 101\): segmentation is neither"),
        ("segmentation", {"counts": [0, 5], "size": [10, 10]}, r"annotations\[0\] \(id 101\): segmentation is neither"),
        ("segmentation", [[0, 0, "a", 1, 2, 2]], r"annotations\[0\] \(id 101\): segmentation is neither"),
        ("image_id", "1", r"annotations\[0\]: image_id '1' is not an integer"),
    ],
)
def test_malformed_entries_are_refused_naming_the_file_and_entry(coco, where, value, message):
    data = coco[2]
    (data["images"][0] if where in ("height", "width") else data["annotations"][0])[where] = value
    _refused(coco, message)


def test_compressed_rle_runs_match_an_independent_run_length_count():
    from pycocotools import mask as mask_utils

    from nlanalysis.extract.objects import rle_counts

    from itertools import groupby

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        mask = rng.random((h, w)) < rng.random()
        flat = mask.T.ravel().tolist()  # COCO runs go down the columns and start with a run of zeros
        runs = ([0] if flat[0] else []) + [len(list(g)) for _, g in groupby(flat)]
        assert rle_counts(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()) == runs


@pytest.mark.parametrize(
    ("seg", "message"),
    [
        ({"counts": "", "size": [4, 6]}, r"annotation 7: RLE runs cover 0 pixels of a 4 x 6 mask \(24\)"),  # pycocotools: garbage
        ({"counts": "zzzz", "size": [4, 6]}, r"annotation 7: compressed RLE counts hold characters outside"),  # likewise
        ({"counts": [0, 24], "size": [400, 600]}, r"annotation 7: RLE size \[400, 600\] on an image of size \[4, 6\]"),
        ([[0, 0, 1e9, 0, 1e9, 1e9]], r"annotation 7: polygon vertices lie far outside the 4 x 6 image"),  # pycocotools: SIGSEGV
    ],
)
def test_object_map_refuses_masks_pycocotools_would_misread(seg, message):
    from nlanalysis.extract.objects import object_map

    with pytest.raises(ValueError, match=message):
        object_map([{"id": 7, "segmentation": seg}], (4, 6), (4, 6), (4, 6))


# -- query points and masks --------------------------------------------------------------------
@pytest.fixture(scope="module")
def nl_model():
    torch.manual_seed(0)
    return randomize_(nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), NonLocal2d(8)), std=0.5).eval()


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        ([(float("nan"), 10.0)], r"query 0 \(nan, 10\) is not finite \(1 such of 1\)"),
        ([(3.0, 4.0), (float("nan"), float("nan"))], r"query 1 \(nan, nan\) is not finite"),
        ([(3.0, float("inf"))], r"query 0 \(3, inf\) is not finite"),
        ([(1.0, 2.0, 3.0)], r"queries must be \(y, x\) pairs, \[K, 2\]; got shape \[1, 3\]"),
        ([(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)], r"got shape \[2, 3\]"),  # 6 numbers: once read as 3 pairs
        ([1.0, 2.0, 3.0, 4.0], r"got shape \[4\]"),
        ([(1.0, 2.0), (3.0,)], r"queries must be \(y, x\) pairs of numbers"),
        ([("a", "b")], r"queries must be \(y, x\) pairs of numbers"),
    ],
)
@pytest.mark.parametrize("space", ["image", "feature"])
def test_malformed_queries_are_a_value_error_saying_which(nl_model, queries, message, space):
    from nlanalysis.capture import Capture

    with pytest.raises(ValueError, match=message):
        Capture(nl_model, queries=queries, query_space=space)


def test_well_formed_queries_still_give_their_cells(nl_model):
    from nlanalysis.capture import Capture

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), Capture(nl_model, queries=(9.5, 30.0)) as cap:  # one pair
        nl_model(x)
    assert cap.records[0].queries.feature_yx.tolist() == [[2, 7]]  # 32 px over 8 cells: 4 px each
    for far in (1e300, -1e300, 2.0**63):  # finite, but no cell: refused before becoming integers
        with torch.no_grad(), Capture(nl_model, queries=[(1.0, far)], query_space="feature") as cap:
            with pytest.raises(ValueError, match=r"query \(row=1, col=.*\) is outside the 8x8 query grid"):
                nl_model(x)
    with torch.no_grad(), Capture(nl_model, queries=[]) as cap:  # none
        nl_model(x)
    assert cap.records[0].queries.maps.shape == (1, 0, 8, 8)


def _entry(name: str):
    """``analyze`` or ``analyze_vit`` (their checks run before any model is looked at)."""
    import importlib

    return getattr(importlib.import_module(f"nlanalysis.{name}"), name)


@pytest.mark.parametrize("entry", ["analyze", "analyze_vit"])
def test_short_or_long_image_ids_are_a_value_error(nl_model, entry):
    with pytest.raises(ValueError, match=rf"{entry}\(image_ids=...\): 1 ids for 2 images"):
        _entry(entry)(nl_model, torch.randn(2, 3, 32, 32), image_ids=["only one"])


@pytest.mark.parametrize("mask", [torch.full((1, 32, 32), 0.3), torch.ones(1, 32, 32, dtype=torch.uint8), np.ones((1, 32, 32), bool)])
@pytest.mark.parametrize("entry", ["analyze", "analyze_vit"])
def test_masks_must_be_bool(nl_model, mask, entry):
    with pytest.raises(TypeError, match=rf"{entry}\(valid=...\): the valid-pixel mask must be a bool tensor .* got a"):
        _entry(entry)(nl_model, torch.randn(1, 3, 32, 32), valid=mask)


def test_capture_set_valid_refuses_a_float_mask_and_keeps_a_bool_one(nl_model):
    from nlanalysis.capture import Capture

    cap = Capture(nl_model)
    with pytest.raises(TypeError, match=r"Capture\.set_valid\(valid\): .* got a torch\.float32 tensor; e\.g\. pass mask > 0\.5"):
        cap.set_valid(torch.full((1, 32, 32), 0.3))
    with pytest.raises(ValueError, match=r"must be \[B, H, W\], got shape \[32, 32\]"):
        cap.set_valid(torch.ones(32, 32, dtype=torch.bool))
    valid = torch.zeros(1, 32, 32, dtype=torch.bool)
    valid[:, :16] = True
    frame = analyze(nl_model, torch.randn(1, 3, 32, 32), valid=valid)
    assert frame["n_query"].tolist() == [4 * 8]  # the top half of the 8 x 8 cells


def test_query_counts_are_capped_at_the_grid(recwarn):
    from nlanalysis.extract.queries import parse_queries, select_queries

    rng = np.random.default_rng(0)
    grid = select_queries(parse_queries("grid:1000"), (224, 224), rng, input_size=(224, 224), grids=[(14, 14), (7, 7)])
    assert len(grid.yx) == 14 * 14
    cells = np.floor(grid.yx / 16).astype(int)  # 16 px per cell of the 14 x 14 grid
    assert len({tuple(c) for c in cells}) == 14 * 14  # one point in every cell
    many = select_queries(parse_queries("random:1000"), (224, 224), rng, input_size=(224, 224), grids=[(14, 14)])
    assert len(many.yx) == 196
    assert len(recwarn) == 2 and all("--queries" in str(w.message) and "at most one point per cell" in str(w.message) for w in recwarn)
    few = select_queries(parse_queries("grid:3"), (224, 224), rng, input_size=(224, 224), grids=[(14, 14)])
    assert len(few.yx) == 9 and len(recwarn) == 2  # no cap, no warning


# -- EXIF orientation and the size a COCO entry states ---------------------------------------------
def _sideways_png(path, raw: np.ndarray, orientation: int = 6) -> None:
    """``raw`` stored as it is, with an EXIF orientation tag (6: shown turned 90 degrees clockwise)."""
    from PIL import Image

    img = Image.fromarray(raw)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)


def test_exif_orientation_turns_the_pixels_as_displayed(tmp_path):
    from nlanalysis.data import image_size

    raw = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    _sideways_png(tmp_path / "side.png", raw)
    shown = load_image(tmp_path / "side.png")
    assert np.array_equal(shown, np.rot90(raw, k=-1))  # orientation 6: the stored rows become columns, turned clockwise
    assert image_size(tmp_path / "side.png") == (70, 40) and image_size(tmp_path / "side.png", orient=False) == (40, 70)
    assert np.array_equal(load_image(tmp_path / "side.png", orient=False), raw)
    cv2 = pytest.importorskip("cv2", reason="OpenCV, to compare with what mmcv's imread gives")
    assert np.array_equal(cv2.imread(str(tmp_path / "side.png"), cv2.IMREAD_COLOR)[..., ::-1], shown)


def test_a_coco_image_is_read_in_the_frame_its_entry_states_or_fails_by_name(coco, tmp_path):
    """An entry whose size is the stored (not the displayed) one is read as stored, its objects where it says;
    an entry of a size the file has neither way is a failure row naming the file and both sizes, not objects drawn
    into the wrong grid."""
    import json

    from extract_inputs import one_thread, tiny_checkpoint
    from nlanalysis.extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunSpec, load_run, run_extract
    from nlanalysis.extract.loading import ImageDataset

    ann, images, data = coco
    first, second = data["images"]
    raw = load_image(images / first["file_name"])
    first["file_name"] = "sideways.png"
    _sideways_png(images / "sideways.png", raw)  # stored as the entry's height x width, shown turned
    second["height"], second["width"] = 2 * second["height"], 2 * second["width"]  # a file of half the stated size
    ann.write_text(json.dumps(data))
    from nlanalysis.extract import coco_images

    items = coco_images(ann, images)
    loaded = ImageDataset(items, lambda image: image, None, objects=False)
    assert np.array_equal(loaded[0].prep, raw) and loaded[0].error is None
    turned = dict(first, file_name="turned.png", height=first["width"], width=first["height"])  # an entry of the displayed size
    flipped = dict(first, id=first["id"] + 100, file_name="flipped.png")  # a flip keeps the size: the stored frame, where COCO's annotators drew
    _sideways_png(images / "turned.png", raw)
    _sideways_png(images / "flipped.png", raw, orientation=2)
    sizeless = {k: v for k, v in dict(first, id=first["id"] + 200).items() if k not in ("height", "width")}  # no size: as stored
    (tmp_path / "frames.json").write_text(json.dumps({**data, "images": [turned, flipped, sizeless], "annotations": []}))
    frames = ImageDataset(coco_images(tmp_path / "frames.json", images), lambda image: image, None, objects=False)
    assert np.array_equal(frames[0].prep, np.rot90(raw, k=-1)) and np.array_equal(frames[1].prep, raw)
    assert np.array_equal(frames[2].prep, raw)  # its annotations were drawn on the stored pixels
    with one_thread():
        spec = RunSpec(model=ModelSpec(tiny_checkpoint(tmp_path / "tiny.pth")), data=DataSpec(coco_ann=ann, coco_images=images),
                       output=OutputSpec(tmp_path / "out"), measure=MeasureSpec(jsd_pairs=0))  # fmt: skip
        run = load_run(run_extract(spec, progress=False).path)
    assert run.failures["image_id"].tolist() == [second["id"]]
    reason = run.failures["reason"][0]
    assert second["file_name"] in reason and f"says {second['height']} x {second['width']}" in reason
    assert run.metrics["image_id"].unique().tolist() == [first["id"]]
