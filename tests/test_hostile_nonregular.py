"""Paths that are there but are not regular files (a folder, a named pipe, a device) where a file is read, and COCO files
whose ids repeat: each is refused with one message that names the path and says what it is, and nothing is opened that
could wait forever (reading a named pipe without a writer blocks: every FIFO call here is guarded, a regression fails).
A broken symbolic link (one to nothing) under a file's name is named too, where reading it as absent would change a number."""
import json
import os
import threading
from pathlib import Path

import pytest

from extract_inputs import copy_committed_run, one_thread, tiny_checkpoint, write_coco, write_photos
from nlanalysis.cli import main
from nlanalysis.data import ImageReadError, image_size, load_image

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def unopened(fifo, call, *args, **kwargs):
    """``call(*args, **kwargs)``'s exception (``None`` if it returns), failing instead of hanging where it opens ``fifo``:
    a reader left waiting for a writer is let go by a writer that closes at once (end of file), then the test fails."""
    got = {}

    def run():
        try:
            got["value"] = call(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001  (returned to the test, which asserts on it)
            got["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets end of file
        thread.join(30)
        pytest.fail(f"{getattr(call, '__name__', call)} opened the named pipe {fifo} and waited for a writer")
    return got.get("error")


def put_odd(path, kind):
    """Put a directory, a named pipe or a broken symbolic link (to a file that is not there) under ``path``; what it is, as
    the readers' messages say it after "is " ("a folder" for a directory: the checkpoint readers' word)."""
    if kind == "broken link":
        target = path.parent / "moved-away" / path.name
        path.symlink_to(target)
        return f"a broken symbolic link (to {str(target)!r})"
    (os.mkdir if kind == "directory" else os.mkfifo)(path)
    return f"a {kind}"


@pytest.fixture
def odd(tmp_path):
    """A folder and a named pipe, each named like an image."""
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")
    return tmp_path / "folder.jpg", tmp_path / "pipe.jpg"


# -- images --------------------------------------------------------------------------------------
@pytest.mark.parametrize("read", [load_image, image_size], ids=["load_image", "image_size"])
def test_an_image_path_that_is_a_folder_or_a_fifo_says_so_unopened(odd, read):
    folder, fifo = odd
    with pytest.raises(ImageReadError) as err:
        read(folder)
    assert str(err.value) == f"{folder}: is a directory, not an image file"
    err = unopened(fifo, read, fifo)
    assert isinstance(err, ImageReadError) and str(err) == f"{fifo}: is not a regular file (a named pipe), not an image file"
    with pytest.raises(ImageReadError, match="gone.jpg: no such image file$"):
        read(folder.parent / "gone.jpg")


@pytest.mark.parametrize("read", [load_image, image_size], ids=["load_image", "image_size"])
@pytest.mark.parametrize("kind", ["directory", "named pipe"])
def test_an_image_swapped_for_a_folder_or_a_fifo_after_its_check_is_refused_on_the_open_file(tmp_path, monkeypatch, read, kind):
    """A regular file when checked by name, something else when opened (the stat-then-open race): PIL opened the pipe and
    waited for a writer, or said 'cannot decode image (IsADirectoryError ...)'. The opened descriptor is checked."""
    import nlanalysis.data.images as images

    photo = write_photos(tmp_path, n=1, max_side=64)[0]
    checked = images.check_image_file

    def check_then_swap(path):
        checked(path)
        os.unlink(path)
        (os.mkdir if kind == "directory" else os.mkfifo)(path)

    monkeypatch.setattr(images, "check_image_file", check_then_swap)
    err = unopened(photo, read, photo)
    assert isinstance(err, ImageReadError)
    assert str(err) == f"{photo}: is a directory, not an image file" if kind == "directory" else \
        str(err) == f"{photo}: is not a regular file (a named pipe), not an image file"  # fmt: skip


def test_a_device_is_not_an_image_file():
    with pytest.raises(ImageReadError, match="^/dev/null: is not a regular file [(]a character device[)], not an image file$"):
        load_image("/dev/null")


def test_extract_images_given_a_fifo_says_what_it_is(odd, capsys):
    from nlanalysis.extract import file_images

    _, fifo = odd
    err = unopened(fifo, file_images, [str(fifo)])
    assert isinstance(err, ImageReadError) and str(err) == f"{fifo}: is not a regular file (a named pipe), not an image file"


def test_coco_and_photo_images_that_are_a_folder_or_a_fifo_are_failure_rows_naming_them(tmp_path):
    """Every entry point of extract reads its images through load_image / image_size: a COCO image and a ``--photos
    NAME=PATH`` that are not regular files fail alone, the run goes on, and failures.csv says what each one is."""
    import pandas as pd

    images = tmp_path / "images"
    photos = write_photos(images, n=3, max_side=96)
    write_coco(tmp_path / "ann.json", photos)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    for p, make in zip(photos[1:], (os.mkdir, os.mkfifo)):
        p.unlink()
        make(p)
    fifo = photos[2]
    base = ["extract", "--ckpt", str(ckpt), "--jsd-pairs", "0", "--workers", "0", "--quiet"]
    coco = [*base, "--coco-ann", str(tmp_path / "ann.json"), "--coco-images", str(images), "--out", str(tmp_path / "coco")]
    shipped = [*base, "--photos", f"ok={photos[0]}", f"folder={photos[1]}", f"pipe={fifo}", "--out", str(tmp_path / "photos")]
    with one_thread():
        assert unopened(fifo, main, coco) is None
        assert unopened(fifo, main, shipped) is None
    for out in ("coco", "photos"):
        failures = pd.read_csv(tmp_path / out / "failures.csv")
        assert failures["reason"].tolist() == [f"{photos[1]}: is a directory, not an image file",
                                               f"{fifo}: is not a regular file (a named pipe), not an image file"], out  # fmt: skip
        assert len(pd.read_csv(tmp_path / out / "metrics.csv")["image_id"].unique()) == 1, out  # the good image


# -- COCO ids that repeat ------------------------------------------------------------------------
def _instances(tmp_path):
    """A COCO instances file in COCO's own layout (info, licenses, images, annotations, categories; val2017's fields)."""
    polygon = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    ann = {"segmentation": polygon, "area": 400.0, "iscrowd": 0, "bbox": [10.0, 10.0, 20.0, 20.0]}
    return {
        "info": {"description": "hostile", "version": "1.0", "year": 2017, "contributor": "tests", "date_created": "2017/09/01"},
        "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}],
        "images": [{"license": 4, "file_name": f"{i:012d}.jpg", "coco_url": "", "height": 48, "width": 64,
                    "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": i} for i in (139, 285)],
        "annotations": [{**ann, "image_id": 139, "category_id": 1, "id": 1768},
                        {**ann, "image_id": 139, "category_id": 18, "id": 1769},
                        {**ann, "image_id": 285, "category_id": 18, "id": 1770}],
        "categories": [{"supercategory": "person", "id": 1, "name": "person"}, {"supercategory": "animal", "id": 18, "name": "dog"}],
    }  # fmt: skip


@pytest.mark.parametrize("what", ["annotation", "category"])
def test_a_coco_id_listed_twice_is_refused_naming_the_file_and_the_id(tmp_path, capsys, what):
    """pycocotools indexes annotations and categories by id: one listed twice silently replaced the other (an object
    lost from ``coco.anns``, and objects of two images under one id; a category's name lost)."""
    from nlanalysis.extract import coco_images

    data = _instances(tmp_path)
    (tmp_path / "images").mkdir()
    ann = tmp_path / "instances_val2017.json"
    ann.write_text(json.dumps(data))
    assert [it.image_id for it in coco_images(ann, tmp_path / "images")] == [139, 285]  # well-formed as written
    if what == "annotation":
        data["annotations"][2]["id"] = 1768  # another image's object under the first one's id
        expected = "annotation id 1768 is listed twice, annotations[0] and annotations[2]"
    else:
        data["categories"].append({"supercategory": "animal", "id": 18, "name": "cat"})
        expected = "category id 18 is listed twice, categories[1] and categories[2]"
    ann.write_text(json.dumps(data))
    args = ["extract", "--ckpt", str(tmp_path / "none.pth"), "--coco-ann", str(ann), "--coco-images", str(tmp_path / "images"),
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nlanalysis extract: error: --coco-ann {ann}: {expected}: ids must be unique (pycocotools would keep one and drop "
                   "the other)"]  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_the_count_of_repeated_annotation_ids_is_given(tmp_path):
    from nlanalysis.extract.coco import CocoFileError, load_coco

    data = _instances(tmp_path)
    data["annotations"] += [dict(a) for a in data["annotations"]]  # the whole list twice
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(CocoFileError, match=r"a\.json: annotation id 1768 is listed twice, annotations\[0\] and annotations\[3\]; "
                                            r"3 annotations repeat an earlier one's id: ids must be unique"):  # fmt: skip
        load_coco(tmp_path / "a.json")


# -- checkpoints ---------------------------------------------------------------------------------
def _inspect_error(capsys, path, fifo=None):
    """The one-line error of ``inspect --ckpt path`` (guarded: a read of ``fifo`` fails the test, not hangs it)."""
    assert unopened(fifo, main, ["inspect", "--ckpt", str(path)]) is None if fifo else True
    if fifo is None:
        assert main(["inspect", "--ckpt", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlanalysis inspect: error: "), err
    return err[0].removeprefix("nlanalysis inspect: error: ")


def test_a_checkpoint_that_is_a_fifo_or_a_device_says_so_not_empty_file(tmp_path, capsys):
    """A FIFO or a device has size 0: it was 'empty file, not a checkpoint'."""
    for name in ("pipe.pth", "pipe.onnx"):
        os.mkfifo(tmp_path / name)
        assert _inspect_error(capsys, tmp_path / name, tmp_path / name) == f"{tmp_path / name}: not a regular file (a named pipe), not a checkpoint"
    assert _inspect_error(capsys, "/dev/zero") == "/dev/zero: not a regular file (a character device), not a checkpoint"
    (tmp_path / "folder.pth").mkdir()  # already said before: kept
    assert _inspect_error(capsys, tmp_path / "folder.pth").startswith(f"{tmp_path / 'folder.pth'}: a folder, not a checkpoint file (no ")


def test_a_model_folder_whose_weights_are_a_fifo_or_a_folder_says_so(tmp_path, capsys):
    """It was 'no model.safetensors / pytorch_model.bin / model.pth in it', with model.safetensors there."""
    from nlanalysis.checkpoints.vit.models import load_vit

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "num_attention_heads": 2}))
    os.mkfifo(folder / "model.safetensors")
    fifo = folder / "model.safetensors"
    assert _inspect_error(capsys, folder, fifo) == f"{folder}: a Hugging Face model folder whose model.safetensors is a named pipe, not a regular file"
    err = unopened(fifo, load_vit, folder)
    assert str(err) == f"{fifo}: not a regular file (a named pipe), not a checkpoint"
    fifo.unlink()
    (folder / "pytorch_model.bin").mkdir()
    assert _inspect_error(capsys, folder) == f"{folder}: a Hugging Face model folder whose pytorch_model.bin is a folder, not a regular file"


def _hf_folder(folder):
    """A tiny Hugging Face Dinov2 folder (width 384, 12 heads: the width alone would guess 6; eps 1e-5) that states its
    input normalisation (0.5 / 0.5)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("timm")
    config = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=1, num_attention_heads=12, intermediate_size=64,
                                       patch_size=14, image_size=28, layer_norm_eps=1e-5)  # fmt: skip
    transformers.Dinov2Model(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return folder


@pytest.mark.parametrize("kind", ["directory", "named pipe", "broken link"])
@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_a_model_folder_whose_config_is_a_folder_or_a_fifo_says_so(tmp_path, capsys, name, kind):
    """It was read as absent: heads guessed from the width (6 of the 12 config.json states) and layer-norm eps 1e-6, or
    ImageNet's normalisation for the folder's own, without a word (a silent wrong number). A broken link too, until
    the review that found it."""
    from nlanalysis.checkpoints.vit.models import load_vit

    folder = _hf_folder(tmp_path / "hf")
    capsys.readouterr()  # transformers' progress bar
    model = load_vit(folder, img_size=28)
    assert (model.vit_spec.num_heads, model.vit_spec.norm_eps, model.vit_norm) == (12, 1e-5, ((0.5,) * 3, (0.5,) * 3))
    odd = folder / name
    odd.unlink()
    shown = put_odd(odd, kind).replace("a directory", "a folder")
    fifo = odd if kind == "named pipe" else None
    expected = f"{odd}: is {shown}, not a regular file; the Hugging Face model folder's {name} cannot be read"
    for source in (folder, folder / "model.safetensors"):  # the folder, or its weights file (read with the folder's configs)
        err = unopened(fifo, load_vit, source, img_size=28) if fifo else pytest.raises(ValueError, load_vit, source, img_size=28).value
        assert str(err) == expected, source
        assert _inspect_error(capsys, source, fifo) == expected


# -- result sets ---------------------------------------------------------------------------------
DEMO_RUN = Path(__file__).parents[1] / "reports/demo/runs/gc"  # committed: metrics.csv, failures.csv, run.json, images.csv


def _odd_run(tmp_path, name, kind):
    """A copy of the demo result set with ``kind`` (:func:`put_odd`) where its file ``name`` was, and what that is."""
    run = copy_committed_run(DEMO_RUN, tmp_path / "gc")
    (run / name).unlink()
    return run, put_odd(run / name, kind)


@pytest.mark.parametrize("kind", ["directory", "named pipe", "broken link"])
@pytest.mark.parametrize("name", ["metrics.csv", "failures.csv", "run.json", "images.csv"])
def test_a_result_set_file_that_is_a_directory_or_a_fifo_is_named(tmp_path, capsys, name, kind):
    """A metrics.csv or failures.csv that is not a file read as none (0 rows, or no failures: a wrong count without a
    word), a run.json as 'no run.json', an images.csv as a bare IsADirectoryError or, a pipe, a hang; a broken link as
    the file missing (failures.csv: no failures, without a word)."""
    from nlanalysis.extract import load_run

    run, shown = _odd_run(tmp_path, name, kind)
    expected = f"{run / name}: is {shown}, not a regular file; the result set is damaged"
    err = unopened(run / name, load_run, run)
    assert isinstance(err, ValueError) and str(err) == expected
    assert unopened(run / name, main, ["report", str(run), "--out", str(tmp_path / "report"), "--formats", "png"]) is None
    assert capsys.readouterr().err.strip().splitlines() == [f"nlanalysis report: error: {expected}"]
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("kind", ["directory", "named pipe"])
def test_a_part_that_is_a_directory_or_a_fifo_is_named(tmp_path, kind):
    """A run read from its parts (no metrics.csv yet): a part that is not a file was a bare IsADirectoryError, or a hang."""
    from nlanalysis.extract import load_run

    run = copy_committed_run(DEMO_RUN, tmp_path / "gc")
    keys = (run / "images.csv").read_text().splitlines()[1:3]
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (run / "metrics.csv").unlink()
    (run / "parts").mkdir()
    first = keys[0].split(",")[0]
    (run / "parts" / f"{first}.csv").write_text(lines[0] + "".join(line for line in lines[1:] if line.startswith(keys[0].split(",")[1] + ",")))
    odd = run / "parts" / f"{keys[1].split(',')[0]}.csv"
    (os.mkdir if kind == "directory" else os.mkfifo)(odd)
    err = unopened(odd, load_run, run)
    assert isinstance(err, ValueError) and str(err) == f"{odd}: is a {kind}, not a regular file; the result set is damaged"
    odd.rmdir() if kind == "directory" else odd.unlink()
    assert load_run(run).metrics["image_id"].unique().tolist() == [1]  # the good part alone reads
