"""``nlanalysis extract`` end to end on real photos: the result set, padding, batching, failures, bad input."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import nlanalysis
from extract_inputs import tiny_checkpoint, write_coco, write_photos
from helpers import excluded_queries
from naive import mean_cos_dist_all_pairs
from nlanalysis.checkpoints import load_checkpoint
from nlanalysis.cli import main
from nlanalysis.data import load_image, prepare_image
from nlanalysis.extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunSpec, load_analysis, load_run, run_extract
from nlanalysis.extract.store import RunStore

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


NL = "backbone.layer2.0.nonlocal_block"
GC = "backbone.layer1.0.context_block"
NUMERIC = ["n_query", "n_key", "input", "output", "att", "att_entropy", "att_max", "att_zero_rows", "att_own_object", "own_object_share"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    photos = write_photos(root / "images", n=6, max_side=200)
    write_coco(root / "ann.json", photos)
    ckpt = tiny_checkpoint(root / "tiny.pth")
    return root, ckpt


def _args(root, ckpt, out, *extra):
    return ["extract", "--ckpt", str(ckpt), "--coco-ann", str(root / "ann.json"), "--coco-images", str(root / "images"),
            "--out", str(out), "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def run(data):
    root, ckpt = data
    out = root / "run"
    assert main(_args(root, ckpt, out, "--save-maps", "--jsd-pairs", "64")) == 0
    return out


def test_result_set(run, data):
    root, ckpt = data
    frame = pd.read_csv(run / "metrics.csv")
    required = ["image_id", "file_name", "block", "height", "width", "n_query", "n_key", "input", "output", "att",
                "att_jsd", "att_entropy", "att_max", "att_zero_rows", "att_own_object", "own_object_share"]  # fmt: skip
    assert set(required) <= set(frame.columns)
    assert len(frame) == 6 * 2 and frame["image_id"].tolist() == [i for i in range(1, 7) for _ in range(2)]
    assert frame["block"].tolist() == [GC, NL] * 6
    gc, nl = frame[frame.block == GC], frame[frame.block == NL]
    assert (gc["att"] == 0).all() and (gc["att_jsd"] == 0).all()  # one map for every query: 0 by construction
    assert (nl["att"] > 0.01).all() and (nl["input"] > 0.1).all()
    # own-object statistics where the image has objects (image 4 has no annotation at all)
    assert frame.loc[frame.image_id == 4, ["att_own_object", "own_object_share"]].isna().all().all()
    assert frame.loc[frame.image_id != 4, "own_object_share"].between(0, 1).all()

    info = json.loads((run / "run.json").read_text())
    assert info["command"][:4] == ["nlanalysis", "extract", "--ckpt", str(ckpt)] and "--save-maps" in info["command"]
    assert info["checkpoint"]["path"] == str(ckpt.resolve()) and len(info["checkpoint"]["sha256"]) == 64
    assert info["checkpoint"]["format"] == "nlanalysis native" and info["checkpoint"]["arch"]["prefix"] == "backbone."
    assert info["preprocess"]["scale"] == [96, 64] and {"torch", "numpy", "pycocotools"} <= set(info["versions"])
    assert info["counts"] == {"total": 6, "done": 6, "failed": 0, "pending": 0} and info["complete"]
    assert info["started"] <= info["finished"]

    res = nlanalysis.load_run(run)
    pd.testing.assert_frame_equal(res.metrics, frame)
    assert res.complete and len(res.failures) == 0 and len(res.maps) == 6
    assert list(res.summary().index) == [GC, NL]

    maps = res.maps[1]  # lazy: read on first touch
    assert maps._data is None
    assert maps.blocks == [GC, NL]
    k = len(maps.query_label)
    assert k == 3 and maps.query_label[-1] == 0  # objects:2 (default for COCO) + background
    assert maps.maps(NL).shape == (k, 12, 8) and maps["maps_1"].dtype == np.float16
    original = tuple(maps["original_size"])
    assert original == load_image(root / "images" / "photo_000.jpg").shape[:2]
    assert maps.overlay(NL, 0).shape == original
    np.testing.assert_allclose(maps.query_yx_original, maps.query_yx / maps["scale"], rtol=1e-6)
    # each saved map is the row of its query cell, and sums to one over all keys
    np.testing.assert_allclose(maps.maps(NL).sum(axis=(1, 2)), 1.0, atol=2e-3)


def test_padding_is_excluded(run, data):
    """Image 1 (a portrait photo) is padded at the bottom: statistics use only its valid cells."""
    root, ckpt = data
    loaded = load_checkpoint(ckpt)
    prep = prepare_image(load_image(root / "images" / "photo_000.jpg"), loaded.preprocess)
    assert prep.size[0] < prep.tensor.shape[1]  # really padded
    seen = {}
    block = dict(loaded.model.named_modules())[NL]
    handle = block.register_forward_hook(lambda m, a, o: seen.update(x=a[0].clone(), z=o.clone()))
    with torch.no_grad():
        loaded.model(prep.tensor[None])
        maps = block.attention_maps(seen["x"])[0]
    handle.remove()
    gh, gw = seen["x"].shape[-2:]
    stride = prep.tensor.shape[1] / gh
    rows_ok = (np.arange(gh) + 0.5) * stride < prep.size[0]
    cols_ok = (np.arange(gw) + 0.5) * stride < prep.size[1]
    valid = (rows_ok[:, None] & cols_ok[None, :]).ravel()
    assert 0 < valid.sum() < valid.size

    row = pd.read_csv(run / "metrics.csv").query("image_id == 1 and block == @NL").iloc[0]
    x = seen["x"][0].flatten(1).T.double().numpy()
    ctx = (seen["z"] - seen["x"])[0].flatten(1).T.double().numpy()
    att = maps.double().numpy()[valid][:, valid]  # valid queries, valid keys only
    assert row["n_query"] == row["n_key"] == valid.sum()
    assert row["input"] == pytest.approx(mean_cos_dist_all_pairs(x[valid]), abs=1e-7)
    assert row["output"] == pytest.approx(mean_cos_dist_all_pairs(ctx[valid]), abs=1e-6)
    assert row["att"] == pytest.approx(mean_cos_dist_all_pairs(att), abs=1e-6)
    assert row["input"] != pytest.approx(mean_cos_dist_all_pairs(x), abs=1e-4)  # padding would have changed it

    saved = nlanalysis.load_run(run).maps[1]  # the saved maps are the rows of the queries' cells
    cells = saved["cells_1"]
    np.testing.assert_array_equal(cells, np.floor(saved.query_yx / stride).astype(int))
    expected = maps.numpy()[cells[:, 0] * gw + cells[:, 1]].reshape(-1, gh, gw)
    np.testing.assert_allclose(saved.maps(NL), expected, atol=1e-3)  # float16


def test_saved_queries_avoid_cells_excluded_as_padding(data, tmp_path, monkeypatch):
    """The portrait photo (75 x 64 in a 96 x 64 input) has image rows in the bottom cells of each
    block whose centre is padding; saved queries keep to cells both blocks' statistics keep."""
    root, ckpt = data
    spec = RunSpec(ModelSpec(ckpt), DataSpec(coco_ann=root / "ann.json", coco_images=root / "images", image_ids=[1, 2, 3]),
                   OutputSpec(tmp_path / "run", save_maps=True, queries="random:60"), MeasureSpec(jsd_pairs=0))  # fmt: skip
    run = load_run(run_extract(spec, progress=False).path)
    assert run.complete and all(excluded_queries(run.maps[i]) == 0 for i in (1, 2, 3))
    assert run.maps[1]["input_size"].tolist() == [96, 64] and run.maps[1]["size"].tolist() == [75, 64]
    analysis = load_analysis(ckpt)
    monkeypatch.setattr(type(analysis), "query_grids", lambda self, shape: [])  # points anywhere on the image
    old = load_run(run_extract(spec.evolve(model=ModelSpec(analysis), output={"out": tmp_path / "image-only"}), progress=False).path)
    assert excluded_queries(old.maps[1]) > 0


def test_query_grid_probe_runs_on_the_meta_device(data):
    """The tiny checkpoint has a GC block before its NL block: the probe still needs no real forward."""
    from nlanalysis.extract.analysis_nl import _probe_grids

    _, ckpt = data
    analysis = load_analysis(ckpt)
    devices = []
    stem = next(m for m in analysis.model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = stem.register_forward_pre_hook(lambda m, args: devices.append(args[0].device.type))
    try:
        grids = _probe_grids(analysis.model, analysis.blocks, (96, 64))
    finally:
        handle.remove()
    assert devices == ["meta"] and grids == [(24, 16), (12, 8)]


def test_a_failing_query_grid_probe_fails_only_its_images(data, tmp_path, monkeypatch):
    import nlanalysis.extract.analysis_nl as analysis_nl

    root, ckpt = data
    probes = []

    def broken(model, blocks, shape):
        probes.append(shape)
        raise TypeError("no grid here")

    monkeypatch.setattr(analysis_nl, "_probe_grids", broken)
    spec = RunSpec(ModelSpec(ckpt), DataSpec(coco_ann=root / "ann.json", coco_images=root / "images", image_ids=[1, 3]),
                   OutputSpec(tmp_path / "run", save_maps=True), MeasureSpec(jsd_pairs=0))  # fmt: skip
    report = run_extract(spec, progress=False)
    assert report.failed == 2 and len(probes) == len(set(probes))  # each shape probed once, then remembered
    reasons = load_run(report.path).failures["reason"].tolist()
    assert all("query grids" in r and "TypeError: no grid here" in r for r in reasons)


def test_runs_with_the_old_query_placement_do_not_resume(data, tmp_path):
    """Result sets written before saved queries kept to the statistics' cells have no query_placement: resuming
    one with --save-maps would mix placements, so it is refused with a message naming the setting."""
    root, ckpt = data
    spec = RunSpec(ModelSpec(ckpt), DataSpec(coco_ann=root / "ann.json", coco_images=root / "images", image_ids=[1]),
                   OutputSpec(tmp_path / "run", save_maps=True), MeasureSpec(jsd_pairs=0))  # fmt: skip
    out = run_extract(spec, progress=False).path
    info = json.loads((out / "run.json").read_text())
    assert info["settings"]["query_placement"] == "kept-cells"
    del info["settings"]["query_placement"]
    (out / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="query_placement"):
        run_extract(spec, progress=False)


def test_batch_of_two_equals_batch_of_one(run, data, tmp_path):
    """Only equal input shapes share a batch, so batching leaves every input as it is."""
    root, ckpt = data
    out = tmp_path / "b2"
    assert main(_args(root, ckpt, out, "--save-maps", "--jsd-pairs", "64", "--batch-size", "2", "--workers", "1")) == 0
    one, two = pd.read_csv(run / "metrics.csv"), pd.read_csv(out / "metrics.csv")
    assert one[["image_id", "block"]].equals(two[["image_id", "block"]])
    np.testing.assert_allclose(two[NUMERIC].to_numpy(float), one[NUMERIC].to_numpy(float), rtol=1e-5, atol=1e-6)
    # JSD pairs are drawn once per forward: equal within the sampling error
    nl1, nl2 = one[one.block == NL], two[two.block == NL]
    assert (abs(nl1.att_jsd.to_numpy() - nl2.att_jsd.to_numpy()) < 6 * (nl1.att_jsd_stderr.to_numpy() + nl2.att_jsd_stderr.to_numpy())).all()
    a, b = nlanalysis.load_run(run).maps[2], nlanalysis.load_run(out).maps[2]
    np.testing.assert_allclose(a.maps(NL), b.maps(NL), atol=1e-3)


def test_unreadable_images_are_recorded_and_retried(data, tmp_path, capsys):
    root, ckpt = data
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    (images / "photo_001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "photo_004.jpg").unlink()
    args = ["extract", "--ckpt", str(ckpt), "--coco-ann", str(root / "ann.json"), "--coco-images", str(images),
            "--out", str(tmp_path / "r"), "--jsd-pairs", "0", "--image-ids", "1", "2", "5"]  # fmt: skip
    assert main(args) == 1  # some images failed
    out = capsys.readouterr().out
    assert "1 done, 2 failed" in out and "failures.csv" in out and "mean per block" in out
    failures = pd.read_csv(tmp_path / "r" / "failures.csv")
    assert failures["image_id"].tolist() == [2, 5]
    assert "cannot decode image" in failures["reason"][0] and "no such image file" in failures["reason"][1]
    assert pd.read_csv(tmp_path / "r" / "metrics.csv")["image_id"].unique().tolist() == [1]

    shutil.copy(root / "images" / "photo_001.jpg", images)  # fixed: a rerun retries the failed images only
    assert main(args + ["--quiet"]) == 1
    assert pd.read_csv(tmp_path / "r" / "failures.csv")["image_id"].tolist() == [5]
    assert pd.read_csv(tmp_path / "r" / "metrics.csv")["image_id"].unique().tolist() == [1, 2]


def _error(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlanalysis extract: error: "), err
    return err[0]


def test_bad_inputs_give_one_clear_line(data, tmp_path, capsys):
    root, ckpt = data
    base = ["extract", "--ckpt", str(ckpt), "--out", str(tmp_path / "r"), "--quiet"]
    assert "--coco-ann " in _error(capsys, base + ["--coco-ann", str(tmp_path / "no.json"), "--coco-images", str(root)])
    assert "no such annotation file" in _error(capsys, base + ["--coco-ann", str(tmp_path / "no.json"), "--coco-images", str(root)])
    (tmp_path / "empty").mkdir()
    assert "the folder holds no image files" in _error(capsys, base + ["--images", str(tmp_path / "empty")])
    assert "--limit 0 selects no images" in _error(capsys, base + ["--images", str(root / "images"), "--limit", "0"])
    assert "needs annotated images" in _error(capsys, base + ["--images", str(root / "images"), "--queries", "objects:3"])
    assert "--blocks nothing* matches none" in _error(capsys, base + ["--images", str(root / "images"), "--blocks", "nothing*"])
    assert "give either --coco-ann" in _error(capsys, base)
    if not torch.cuda.is_available():
        line = _error(capsys, base + ["--images", str(root / "images"), "--device", "cuda"])
        assert "--device cuda was asked for, but torch sees no CUDA GPU" in line and "use --device cpu" in line
    assert not (tmp_path / "r").exists()  # nothing written by a refused command


def test_resume_refuses_other_settings(run, data, capsys):
    root, ckpt = data
    line = _error(capsys, _args(root, ckpt, run, "--save-maps", "--jsd-pairs", "64", "--seed", "5"))
    assert "holds a run with other settings" in line and "seed" in line
    assert main(_args(root, ckpt, run, "--save-maps", "--jsd-pairs", "64")) == 0  # the same command: all skipped


def test_file_images_without_annotations(data, tmp_path):
    root, ckpt = data
    spec = RunSpec(ModelSpec(ckpt), DataSpec(images=[str(root / "images" / "*.jpg")], limit=2),
                   OutputSpec(tmp_path / "f", save_maps=True, queries="grid:2"), MeasureSpec(jsd_pairs=0, controls=True))  # fmt: skip
    report = nlanalysis.extract.run_extract(spec, progress=False)
    res = nlanalysis.load_run(tmp_path / "f")
    assert report.done == 2 and res.metrics[["att_own_object", "own_object_share"]].isna().all().all()
    first = res.metrics["image_id"].iloc[0]
    assert isinstance(first, str) and first.startswith("photo_") and res.maps[first].query_yx.shape == (4, 2)
    assert math.isnan(res.metrics["att_jsd"].iloc[1])  # --jsd-pairs 0: off
    nl = res.metrics[res.metrics.block == NL]
    assert nl["ctrl_att"].notna().all() and nl["ctrl_temperature"].gt(0).all()  # the random-projection control


def test_the_recorded_image_hash_is_of_the_bytes_decoded(data, tmp_path, monkeypatch, capsys):
    """An image file replaced after the run decoded it (another picture under its name, between its decoding and the
    writing of its results): the run records the sha256 of the bytes it measured, not that of the file now there, and a
    resume over the replaced files refuses them as other pictures."""
    import hashlib

    from PIL import Image

    import nlanalysis.data.images as reader

    root, ckpt = data
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    measured = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in images.glob("*.jpg")}
    decode = reader._decode

    def decode_then_replace(f, path, orient):
        pixels = decode(f, path, orient)
        Image.fromarray(255 - pixels).save(path, quality=90)  # the same size, other content
        return pixels

    monkeypatch.setattr(reader, "_decode", decode_then_replace)
    args = ["extract", "--ckpt", str(ckpt), "--coco-ann", str(root / "ann.json"), "--coco-images", str(images),
            "--out", str(tmp_path / "r"), "--jsd-pairs", "0", "--image-ids", "1", "2", "--save-maps", "--quiet"]  # fmt: skip
    assert main(args) == 0
    run = nlanalysis.load_run(tmp_path / "r")
    done = RunStore(tmp_path / "r").images()
    assert done["image_id"].tolist() == [1, 2]
    for key, image_id, name in done.itertuples(index=False):
        assert hashlib.sha256((images / name).read_bytes()).hexdigest() != measured[name]  # replaced
        check = json.loads((tmp_path / "r" / "checks" / f"{key}.json").read_text())["image file"]
        assert check == {"size": len((root / "images" / name).read_bytes()), "sha256": measured[name]}
        assert run.maps[image_id].file_sha256 == measured[name]
    monkeypatch.undo()
    assert "were measured on other files than those now under their names" in _error(capsys, args)
