"""Careless and hostile input to result sets (issue 14): no lost file, no aborted run, no silent wrong number."""
import json

import pytest

from extract_inputs import cli_error, copy_committed_run, images_extract_args, tiny_checkpoint, write_coco, write_photos
from nlanalysis.cli import main

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    photos = write_photos(root / "images", n=3, max_side=96)
    write_coco(root / "ann.json", photos)
    return root, tiny_checkpoint(root / "tiny.pth")


def _args(data, out, *extra):
    return images_extract_args(*data, out, *extra)


_error = cli_error


# -- 1. no lost data -----------------------------------------------------------------------------


def test_extract_refuses_a_folder_with_files_it_did_not_write(data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.csv").write_text("my,own\n1,2\n")
    line = _error(capsys, _args(data, out))
    assert f"--out {out} is not empty and not a result set of `nlanalysis extract` (it holds metrics.csv, but no run.json)" in line
    assert (out / "metrics.csv").read_text() == "my,own\n1,2\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]  # nothing created beside it


def test_extract_refuses_a_foreign_run_json(data, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": "someone-else", "settings": {}}))
    assert "its run.json is not one `nlanalysis extract` wrote" in _error(capsys, _args(data, out))
    (out / "run.json").write_text("{not json")
    assert f"{out / 'run.json'}: not valid JSON" in _error(capsys, _args(data, out))


def test_extract_writes_into_an_empty_folder_and_resumes_its_own(data, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(_args(data, out)) == 0
    first = (out / "metrics.csv").read_text()
    assert main(_args(data, out)) == 0  # its own result set: resumed, nothing redone
    assert (out / "metrics.csv").read_text() == first and len(first.splitlines()) == 1 + 3 * 2


# -- 2. every per-image failure is a failures.csv row ---------------------------------------------


def test_any_error_of_one_image_is_its_failure_row(data, tmp_path, monkeypatch, capsys):
    import nlanalysis.extract.loading as loading
    import nlanalysis.extract.runner as runner

    real_load, real_queries = loading.load_image, runner.select_queries

    def load(path, **options):
        if str(path).endswith("photo_001.jpg"):
            raise KeyError("a reader bug")
        return real_load(path, **options)

    calls = []

    def queries(*args):
        calls.append(1)
        if len(calls) == 1:  # the first image (photo_000) only
            raise IndexError("query bug")
        return real_queries(*args)

    monkeypatch.setattr(loading, "load_image", load)  # images are read in DataLoader work (extract/loading.py)
    monkeypatch.setattr(runner, "select_queries", queries)
    out = tmp_path / "r"
    assert main(_args(data, out, "--save-maps", "--queries", "grid:2")) == 1
    import pandas as pd

    failures = pd.read_csv(out / "failures.csv").set_index("image_id")["reason"]
    root = data[0] / "images"
    assert failures.to_dict() == {
        "photo_000.jpg": f"{root / 'photo_000.jpg'}: queries: IndexError: query bug",
        "photo_001.jpg": f"{root / 'photo_001.jpg'}: KeyError: 'a reader bug'",
    }
    assert pd.read_csv(out / "metrics.csv")["image_id"].unique().tolist() == ["photo_002.jpg"]


def test_a_decompression_bomb_fails_alone(data, tmp_path, monkeypatch):
    import pandas as pd
    from PIL import Image

    images = tmp_path / "images"
    write_photos(images, n=2, max_side=96)
    Image.new("RGB", (400, 400), (90, 120, 30)).save(images / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 400 x 400 is over twice this: PIL refuses it as a bomb
    out = tmp_path / "r"
    args = ["extract", "--ckpt", str(data[1]), "--images", str(images), "--out", str(out), "--jsd-pairs", "0", "--quiet"]
    assert main(args) == 1
    failures = pd.read_csv(out / "failures.csv")
    assert failures["image_id"].tolist() == ["bomb.png"] and str(images / "bomb.png") in failures["reason"][0]
    assert pd.read_csv(out / "metrics.csv")["image_id"].unique().tolist() == ["photo_000.jpg", "photo_001.jpg"]
    assert main(args) == 1  # a rerun retries it, and fails it again, without aborting


def test_coco_string_image_ids_are_refused_before_any_image(data, tmp_path, capsys):
    """They used to fail only after every image was analysed, leaving parts but no metrics.csv: the
    COCO reader (nlanalysis.extract.coco) now refuses them up front, in one line naming the file."""
    root, ckpt = data
    coco = json.loads((root / "ann.json").read_text())
    names = {im["id"]: f"img-{im['id']}" for im in coco["images"]}
    for im in coco["images"]:
        im["id"] = names[im["id"]]
    for ann in coco["annotations"]:
        ann["image_id"] = names[ann["image_id"]]
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "r"
    line = _error(capsys, ["extract", "--ckpt", str(ckpt), "--coco-ann", str(tmp_path / "ann.json"), "--coco-images",
                           str(root / "images"), "--out", str(out), "--jsd-pairs", "0", "--quiet"])  # fmt: skip
    assert str(tmp_path / "ann.json") in line and "img-1" in line
    assert not out.exists()


# -- 3. resume verifies what it keeps -----------------------------------------------------------


@pytest.fixture(scope="module")
def with_maps(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps") / "run"
    assert main(_args(data, out, "--save-maps")) == 0
    return out


def _copy(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


def _sessions(out):
    return [s for ss in json.loads((out / "run.json").read_text())["shards"].values() for s in ss]


@pytest.mark.parametrize("legacy", [False, True], ids=["checked", "written-before-checks"])
def test_resume_redoes_a_truncated_maps_file(data, with_maps, tmp_path, capsys, legacy):
    import numpy as np

    from nlanalysis.extract import load_run

    out = _copy(with_maps, tmp_path)
    npz = sorted((out / "maps").glob("*.npz"))[1]
    key = npz.stem
    npz.write_bytes(npz.read_bytes()[:200])
    if legacy:
        import shutil

        shutil.rmtree(out / "checks")
    with pytest.raises(ValueError, match=f"{npz}: a damaged maps file .*rerun extract with the same arguments"):
        load_run(out).maps[load_run(out).images.set_index("key").loc[key, "image_id"]].blocks
    capsys.readouterr()
    assert main(_args(data, out, "--save-maps")) == 0
    err = capsys.readouterr().err
    assert f"warning: redoing a damaged image: {npz}" in err
    assert [r["key"] for r in _sessions(out)[-1]["redone_damaged"]] == [key]
    assert _sessions(out)[-1]["done"] == 1 and _sessions(out)[-1]["skipped"] == 2
    assert (out / "metrics.csv").read_text() == (with_maps / "metrics.csv").read_text()
    with np.load(npz) as z, np.load(with_maps / "maps" / npz.name) as ref:
        assert z.files == ref.files and all(np.array_equal(z[k], ref[k]) for k in z.files)


def test_resume_redoes_a_changed_part(data, with_maps, tmp_path, capsys):
    out = _copy(with_maps, tmp_path)
    part = sorted((out / "parts").glob("*.csv"))[0]
    text = part.read_text()
    part.write_text(text.replace("nonlocal_block", "nonlocal_blocc", 1))  # same size, other bytes
    assert main(_args(data, out, "--save-maps")) == 0
    assert f"{part}: its sha256 differs from the one recorded" in capsys.readouterr().err
    assert part.read_text() == text and (out / "metrics.csv").read_text() == (with_maps / "metrics.csv").read_text()


def test_a_damaged_part_is_named_not_its_neighbour(with_maps, tmp_path):
    from nlanalysis.extract.store import RunStore

    out = _copy(with_maps, tmp_path)
    store = RunStore(out)
    keys = store.keys()
    first, second = store.part_path(keys[0]), store.part_path(keys[1])
    good = first.read_text()
    first.write_text("garbage" + good[7:])  # its header
    with pytest.raises(ValueError, match=f"^{first}: not a part like the others"):
        store.read_metrics_text(keys)
    first.write_text(good)
    second.write_text(second.read_text() + '1,2,"three\n')  # a torn line: the tokenizer would blame no file
    with pytest.raises(ValueError, match=f"^{second}: not a part like the others"):
        store.read_metrics_text(keys)


def test_write_errors_name_the_file(tmp_path):
    import errno

    from nlanalysis.extract.store import atomic_write

    with pytest.raises(OSError, match=f"No space left on device \\(writing {tmp_path / 'metrics.csv'}\\)"):
        with atomic_write(tmp_path / "metrics.csv") as f:
            f.write("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_csv_read_errors_name_the_file(tmp_path):
    from nlanalysis.extract.store import frame_from_csv

    with pytest.raises(ValueError, match="^runs/x/metrics.csv: cannot be read as CSV"):
        frame_from_csv('a,b\n1,2\n3,"4\n5,6,7,8\n', "int", "runs/x/metrics.csv")


# -- 4. report: never half-written, never an impossible number --------------------------------------

DEMO_RUN = "reports/demo/runs/gc"  # a committed result set: metrics.csv, run.json, images.csv, no parts/


def _demo_copy(tmp_path):
    return copy_committed_run(DEMO_RUN, tmp_path / "gc")


def _rerecord(run, name):
    """Record ``run/name``'s size and sha256 in run.json, as extract does when it assembles the file."""
    import hashlib
    import json

    info = json.loads((run / "run.json").read_text())
    data = (run / name).read_bytes()
    info.setdefault("assembled_files", {})[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (run / "run.json").write_text(json.dumps(info))


def test_report_reads_a_result_set_copied_without_its_parts(tmp_path, capsys):
    import pandas as pd

    from nlanalysis.extract import load_run

    run = _demo_copy(tmp_path)
    res = load_run(run)
    assert res.complete and len(res.metrics) == 120 and res.metrics_source == str(run / "metrics.csv")
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--formats", "png"]) == 0
    table = pd.read_csv(tmp_path / "report" / "tables" / "table1.csv")
    metrics = pd.read_csv(run / "metrics.csv")
    assert table["images"].tolist() == [120] and table["input"][0] == pytest.approx(metrics["input"].mean(), rel=1e-5)


def test_report_refuses_an_impossible_value(tmp_path, capsys):
    import pandas as pd

    run = _demo_copy(tmp_path)
    metrics = pd.read_csv(run / "metrics.csv")
    metrics.loc[5, "att"] = 99.0
    metrics.to_csv(run / "metrics.csv", index=False)
    _rerecord(run, "metrics.csv")  # an edit run.json agrees with: only the value is wrong
    line = _error(capsys, ["report", str(run), "--out", str(tmp_path / "report")], "report")
    assert f"{run / 'metrics.csv'}: row 5 (CSV line 7), column 'att' = 99.0 lies outside [0.0, 2.0]" in line
    assert not (tmp_path / "report").exists()


def test_a_failed_report_leaves_the_earlier_one_whole(with_maps, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["report", str(with_maps), "--out", str(out), "--formats", "png"]
    assert main(args) == 0
    (out / "make.sh").write_text("nlanalysis report ...\n")  # a user's file in the report folder
    (out / "figures" / "stale.png").write_bytes(b"from an older report")  # listed as the last report's: replaced
    listed = json.loads((out / ".nlanalysis-report.json").read_text())
    (out / ".nlanalysis-report.json").write_text(json.dumps({**listed, "files": [*listed["files"], "figures/stale.png"]}))
    (out / "figures" / "mine.png").write_bytes(b"a user's figure")  # not listed: kept
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run = _copy(with_maps, tmp_path)
    npz = sorted((run / "maps").glob("*.npz"))[0]
    npz.write_bytes(npz.read_bytes()[:300])
    line = _error(capsys, ["report", str(run), "--out", str(out), "--formats", "png"], "report")
    assert f"{npz}: a damaged maps file" in line
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "run"]  # no temporary folder left
    assert main(args) == 0  # a complete new report replaces the old one; the user's file stays
    assert (out / "make.sh").read_text() == "nlanalysis report ...\n" and not (out / "figures" / "stale.png").exists()
    assert (out / "figures" / "mine.png").read_bytes() == b"a user's figure"
    assert (out / "index.md").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["report", "run"]


# -- 5. small ones ---------------------------------------------------------------------------------


def test_bad_numbers_and_devices_are_one_line(data, tmp_path, capsys):
    out = tmp_path / "r"
    assert _error(capsys, _args(data, out, "--jsd-pairs", "-5")).endswith(
        "--jsd-pairs -5: give 0 (att_jsd off) or a positive number of query pairs")
    assert _error(capsys, _args(data, out, "--device", "tpu")).endswith(
        "--device tpu: not a device torch knows; valid devices: cpu, cuda, cuda:N")
    assert _error(capsys, _args(data, out, "--device", "meta")).endswith("--device meta: not supported; valid devices: cpu, cuda, cuda:N")
    assert not out.exists()


def test_merge_refusal_says_what_to_do_for_a_merge(data, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_args(data, a, "--shard", "0/2")) == 0
    assert main(_args(data, b, "--shard", "1/2", "--seed", "1")) == 0
    line = _error(capsys, ["merge", str(a), str(b), "--out", str(tmp_path / "m")], "merge")
    assert "holds a run with other settings (seed: 0 vs 1" in line
    assert line.endswith("merge only shards of one run (the same extract arguments but --shard); merge the others separately")
    assert "to resume" not in line


def test_a_second_identical_extract_is_refused_while_the_first_runs(data, tmp_path, capsys):
    from nlanalysis.extract.resume import claim_shard
    from nlanalysis.extract.store import RunStore

    out = tmp_path / "r"
    assert main(_args(data, out, "--shard", "0/2")) == 0
    with claim_shard(RunStore(out), "1-of-2"):  # the first command, still running shard 1/2
        line = _error(capsys, _args(data, out, "--shard", "1/2"))
        assert f"--out {out}: shard 1-of-2 of this run is being analysed by pid " in line and "wait for it to finish" in line
        assert main(_args(data, out, "--shard", "0/2")) == 0  # another shard may share the folder
    assert main(_args(data, out, "--shard", "1/2")) == 0  # released: it runs
    assert json.loads((out / "run.json").read_text())["counts"] == {"total": 3, "done": 3, "failed": 0, "pending": 0}


# -- an image too small for the model's grid -------------------------------------------------------


def test_an_image_too_small_for_the_grid_is_a_failure_row_not_nan_rows(data, tmp_path):
    """A 3 x 200 photo resizes to one row, and no query cell of the block's grid lies on it: its
    statistics would all be NaN. It is a failure with the reason, and the report counts only real
    images; a 1 x 200 photo, which resizes to no row at all, is refused by the preprocessing."""
    import numpy as np
    from PIL import Image

    from nlanalysis.extract import load_run

    root, ckpt = data
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((root / "images").iterdir())[:1]:
        (images / p.name).write_bytes(p.read_bytes())
    Image.fromarray(np.full((3, 200, 3), 128, np.uint8)).save(images / "thin.png")
    Image.fromarray(np.full((1, 200, 3), 128, np.uint8)).save(images / "thinner.png")
    out = tmp_path / "run"
    assert main(["extract", "--ckpt", str(ckpt), "--images", str(images), "--out", str(out), "--jsd-pairs", "16", "--quiet"]) == 1  # some failed
    run = load_run(out)
    reasons = dict(zip(run.failures["image_id"], run.failures["reason"]))
    assert sorted(reasons) == ["thin.png", "thinner.png"]
    assert str(images / "thin.png") in reasons["thin.png"] and "(3x200 pixels" in reasons["thin.png"]
    assert "is too small for" in reasons["thin.png"] and "query grid lies on the image" in reasons["thin.png"]
    assert "(1x200 pixels) is too small or too thin for the preprocessing: it resizes to 0x" in reasons["thinner.png"]
    assert run.metrics["image_id"].unique().tolist() == [p.name for p in sorted((root / "images").iterdir())[:1]]
    assert run.metrics["n_query"].gt(0).all()
    assert not run.metrics[["input", "att"]].isna().any().any()


# -- found by a review of extract (2026-12-05) ------------------------------------------------------


def test_images_named_like_missing_values_keep_their_names(data, tmp_path):
    from nlanalysis.extract import load_run

    root, _ = data
    photos = sorted((root / "images").glob("*.jpg"))
    named = [f"{name}={path}" for name, path in zip(("NA", "null", "ok"), photos)]
    args = _args(data, tmp_path / "r", "--image-ids", "NA", "null", "ok")
    args[args.index("--images") : args.index("--images") + 2] = ["--photos", *named]
    assert main(args) == 0
    run = load_run(tmp_path / "r")
    rows = run.metrics.groupby("image_id", dropna=False).size().to_dict()
    assert rows == dict.fromkeys(("NA", "null", "ok"), run.metrics["block"].nunique())  # not one NaN id for two images
    assert sorted(set(run.metrics["file_name"])) == sorted(p.name for p in photos)


def test_maps_of_an_image_that_is_not_done_are_not_the_runs(data, with_maps, tmp_path):
    """A process killed after an image's maps but before its part leaves the maps; when the image then fails, they
    are removed, and load_run never serves maps of an image without rows."""
    import shutil

    from nlanalysis.extract import load_run

    root, _ = data
    images = shutil.copytree(root / "images", tmp_path / "images")
    out = _copy(with_maps, tmp_path)
    first = load_run(out).images.iloc[0]
    key = first["key"]
    (out / "parts" / f"{key}.csv").unlink()  # the state of a kill right after maps/KEY.npz
    (out / "checks" / f"{key}.json").unlink()
    assert first["image_id"] not in load_run(out).maps  # not done: not served
    (images / first["file_name"]).write_bytes(b"not an image")  # and on resume it fails
    args = _args(data, out, "--save-maps")
    args[args.index("--images") + 1] = str(images)
    assert main(args) == 1  # an image failed
    run = load_run(out)
    assert run.failures["image_id"].tolist() == [first["image_id"]] and first["image_id"] not in run.maps
    assert not (out / "maps" / f"{key}.npz").exists()


def test_metrics_csv_is_trusted_only_for_the_parts_it_holds(with_maps, tmp_path, monkeypatch):
    """Another shard may finish an image while one assembles: metrics.csv then lacks a part that run.json's counts
    have; load_run reads the parts instead of missing that image."""
    import shutil

    from nlanalysis.extract import load_run
    from nlanalysis.extract.store import RunStore

    out = _copy(with_maps, tmp_path)
    late = load_run(out).images.iloc[-1]["key"]
    held = tmp_path / "held"
    held.mkdir()
    for sub, ext in (("parts", "csv"), ("checks", "json"), ("maps", "npz")):
        shutil.move(out / sub / f"{late}.{ext}", held / f"{sub}.{ext}")
    read = RunStore.read_metrics_text

    def other_shard_finishes_meanwhile(self, keys, got=None):
        text = read(self, keys, got)
        for sub, ext in (("maps", "npz"), ("checks", "json"), ("parts", "csv")):
            shutil.move(held / f"{sub}.{ext}", out / sub / f"{late}.{ext}")
        return text

    monkeypatch.setattr(RunStore, "read_metrics_text", other_shard_finishes_meanwhile)
    info = RunStore(out).assemble()
    monkeypatch.undo()
    assert info["counts"]["done"] == 3 and info["assembled_parts"] == 2
    run = load_run(out)
    assert run.metrics_source.startswith(str(out / "parts")) and run.metrics["image_id"].nunique() == 3


def test_a_run_another_shard_is_creating_or_a_killed_open_left_is_taken(data, tmp_path, capsys):
    """A folder extract made (its .lock) holding only what an open writes before run.json (images.csv, temporary
    files of a killed or running open) is taken under the lock; without .lock such files are someone else's."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "images.csv").write_text("key,image_id,file_name\n")
    line = _error(capsys, _args(data, out))
    assert "is not empty and not a result set" in line and "images.csv" in line and not (out / ".lock").exists()
    (out / ".lock").touch()
    (out / ".images.csv.4242.tmp").write_text("key,image")
    (out / "parts").mkdir()
    assert main(_args(data, out)) == 0
    assert json.loads((out / "run.json").read_text())["counts"]["done"] == 3 and not list(out.glob(".*.tmp"))


def test_a_part_of_other_columns_that_matches_its_checks_is_redone(data, with_maps, tmp_path, capsys):
    """A part written with other columns (another version) but matching its checks made every rerun fail the same
    way ("rerun extract to redo it", and the rerun kept it); now the resume redoes it."""
    import hashlib

    import pandas as pd

    out = _copy(with_maps, tmp_path)
    part = sorted((out / "parts").glob("*.csv"))[1]
    data_bytes = pd.read_csv(part).drop(columns=["att_jsd"]).to_csv(index=False).encode()
    part.write_bytes(data_bytes)
    check = out / "checks" / f"{part.stem}.json"
    checks = json.loads(check.read_text())
    checks[f"parts/{part.name}"] = {"size": len(data_bytes), "sha256": hashlib.sha256(data_bytes).hexdigest()}
    check.write_text(json.dumps(checks))
    assert main(_args(data, out, "--save-maps")) == 0
    assert f"redoing a damaged image: {part}: its columns are not this run's" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == (with_maps / "metrics.csv").read_text()
    assert _sessions(out)[-1]["done"] == 1 and _sessions(out)[-1]["skipped"] == 2  # the intact parts are kept


def test_a_forked_worker_does_not_keep_the_shard_of_a_killed_extract(tmp_path):
    """DataLoader workers are forked while the shard is claimed; a flock lives while any descriptor of its file does,
    so a worker orphaned by a killed extract held the shard and every rerun was refused naming the dead process.
    Workers close what they inherited (release_inherited_claims, in the workers' init)."""
    import os
    import signal
    import subprocess
    import sys

    from nlanalysis.extract.resume import claim_shard
    from nlanalysis.extract.store import RunStore

    script = """
import os, sys
from nlanalysis.extract.resume import claim_shard, release_inherited_claims
from nlanalysis.extract.store import RunStore
store = RunStore(sys.argv[1]); store.shards.mkdir(parents=True)
ready_r, ready_w = os.pipe()
with claim_shard(store, "0-of-1"):
    child = os.fork()
    if child == 0:  # a worker: what its init does, then it hangs on as an orphan
        release_inherited_claims()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)  # the test reads the parent's output to its end
        os.write(ready_w, b"x")
        while True:
            os.pause() if hasattr(os, "pause") else __import__("signal").pause()
    os.read(ready_r, 1)
    print(child, flush=True)
    os._exit(0)  # killed while holding the shard: nothing released by this process
"""
    got = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    child = int(got.stdout.split()[0])
    try:
        with claim_shard(RunStore(tmp_path / "run"), "0-of-1"):  # refused before: the orphan held the lock
            pass
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_of_other_start_methods_run(data, tmp_path, method):
    """Under forkserver (Python 3.14's default on Linux) a worker's parent is the server, not extract: it must not take
    that for a dead extract and quit (this case failed). Under spawn extract is the parent, as under fork."""
    import subprocess
    import sys

    root, ckpt = data
    script = f"""
import multiprocessing, sys
if __name__ == "__main__":
    multiprocessing.set_start_method({method!r}, force=True)
    from nlanalysis.cli import main
    sys.exit(main(sys.argv[1:]))
"""
    args = [*_args(data, tmp_path / "r"), "--workers", "2"]
    got = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["counts"]["done"] == 3


def test_a_coco_run_made_before_the_crowd_and_frame_rules_does_not_resume_under_them(data, tmp_path, capsys):
    """Crowd regions left out and images read in their stored frame first change the rows of COCO runs with crowds or
    turned photos: such a run made before (its settings without these keys) is refused by name, not resumed or merged
    with rows made after; a run with neither keeps its settings (the committed demo runs resume)."""
    import shutil

    import numpy as np
    from PIL import Image

    root, ckpt = data
    images = shutil.copytree(root / "images", tmp_path / "images")
    raw = np.asarray(Image.open(images / "photo_000.jpg").convert("RGB"))
    img = Image.fromarray(raw)
    exif = img.getexif()
    exif[0x0112] = 3  # a half turn: the size cannot tell the frames apart
    img.save(images / "photo_000.jpg", exif=exif)

    def args(out, ids):
        return ["extract", "--ckpt", str(ckpt), "--coco-ann", str(root / "ann.json"), "--coco-images", str(images),
                "--out", str(out), "--jsd-pairs", "16", "--quiet", "--image-ids", *ids]  # fmt: skip

    assert main(args(tmp_path / "r", ["1", "3"])) == 0  # image 3 holds a crowd region (write_coco's third pattern)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert {k: info["settings"]["selection"].get(k) for k in ("crowd", "frame")} == {"crowd": "left-out", "frame": "stored-first"}
    for key in ("crowd", "frame"):
        del info["settings"]["selection"][key]
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    assert "holds a run with other settings (selection.crowd: null vs \"left-out\"" in _error(capsys, args(tmp_path / "r", ["1", "3"]))
    assert main(args(tmp_path / "plain", ["2"])) == 0  # neither: no keys
    assert not {"crowd", "frame"} & set(json.loads((tmp_path / "plain" / "run.json").read_text())["settings"]["selection"])


# -- 4. an assembled file cut short or changed is not read as a smaller run ----------------------------


@pytest.mark.parametrize("parts", [True, False], ids=["with-parts", "copied-without-parts"])
def test_a_metrics_csv_cut_short_is_not_read_as_fewer_or_other_numbers(data, with_maps, tmp_path, parts):
    import shutil

    from nlanalysis.extract import load_run

    out = _copy(with_maps, tmp_path)
    full = load_run(out).metrics
    if not parts:
        shutil.rmtree(out / "parts")
    metrics = out / "metrics.csv"
    text = metrics.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    metrics.write_text(text[: len(text) - len(last) // 2 - 1])  # the last row ends in the middle of a number
    if parts:  # the parts hold the run: read from them, every number as extract wrote it
        run = load_run(out)
        assert str(out / "parts") in run.metrics_source
        assert run.metrics.equals(full)
    else:  # pandas alone would fill the row's last fields with NaN and keep the cut number
        with pytest.raises(ValueError, match=f"{metrics}: [0-9,]+ bytes, not the [0-9,]+ bytes .* its run.json recorded: cut short"):
            load_run(out)
    metrics.write_text(text)
    assert load_run(out).metrics.equals(full)


def test_a_damaged_failure_record_is_named_when_the_run_is_read(data, tmp_path):
    from nlanalysis.extract import load_run
    from nlanalysis.extract.store import RunStore

    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    store = RunStore(out)
    key = store.keys()[0]
    store.part_path(key).unlink()
    store.failure_path(key).parent.mkdir(exist_ok=True)
    store.failure_path(key).write_text('{"image_id": "x", "rea')
    with pytest.raises(ValueError, match=f"{store.failure_path(key)}: not valid JSON"):
        load_run(out)


def test_numpy_image_ids_select_the_images_and_keys_plain_ints_do(data):
    import numpy as np

    from nlanalysis.extract.sources import coco_images
    from nlanalysis.extract.spec import DataSpec, ModelSpec, OutputSpec, RunSpec

    root, ckpt = data
    plain = coco_images(root / "ann.json", root / "images", image_ids=[2, 1])
    given = coco_images(root / "ann.json", root / "images", image_ids=[np.int64(2), np.int32(1)])
    assert [(it.image_id, it.key) for it in given] == [(it.image_id, it.key) for it in plain] == [(1, "000000000001"), (2, "000000000002")]
    assert all(type(it.image_id) is int for it in given)
    spec = RunSpec(ModelSpec(ckpt), DataSpec(coco_ann=root / "ann.json", coco_images=root / "images", image_ids=(np.int64(2), np.int64(1))),
                   OutputSpec(root / "unused"))  # fmt: skip
    written = json.loads(json.dumps(spec.to_dict()))  # as run.json holds it: numbers, not their text
    assert written["data"]["image_ids"] == [2, 1]


def test_a_file_name_that_is_not_utf8_is_one_image_not_a_stopped_run(data, tmp_path):
    import os
    import shutil

    from nlanalysis.extract import load_run

    root, ckpt = data
    folder = tmp_path / "images"
    folder.mkdir()
    first = sorted((root / "images").iterdir())[0]
    shutil.copy(first, folder / "ok.png")
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # latin-1, as old archives hold them
    shutil.copy(first, raw)
    out = tmp_path / "run"
    assert main(["extract", "--ckpt", str(ckpt), "--images", str(folder), "--out", str(out), "--jsd-pairs", "16", "--quiet"]) == 0
    run = load_run(out)
    assert sorted(run.metrics["image_id"].unique()) == ["caf\\xe9.png", "ok.png"]  # the odd byte written out, not dropped
    a, b = (run.metrics.loc[run.metrics["image_id"] == i, ["block", "input", "output", "att"]].reset_index(drop=True)
            for i in ("caf\\xe9.png", "ok.png"))  # fmt: skip
    assert a.equals(b)  # the same picture, read from its own file (the sampled JSD pairs differ by image)


def test_a_saved_query_outside_the_saved_ones_is_named(with_maps):
    from nlanalysis.extract import load_run

    run = load_run(with_maps)
    maps = run.maps[run.metrics["image_id"].iloc[0]]
    k = len(maps.maps(maps.blocks[0]))
    assert maps.overlay(maps.blocks[0], k - 1).ndim == 2
    for query in (k, -1):
        with pytest.raises(IndexError, match=f"{maps.path}: query {query} of block .*saved queries are 0..{k - 1}"):
            maps.overlay(maps.blocks[0], query)


def test_resuming_on_other_pictures_under_the_same_names_is_refused(data, tmp_path, capsys):
    import shutil

    from PIL import Image

    from nlanalysis.extract.store import RunStore

    root, ckpt = data
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(root / "images", first)
    shutil.copytree(root / "images", second)
    for p in sorted(second.iterdir()):  # the same names, other pictures
        with Image.open(p) as img:
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p)
    out = tmp_path / "run"
    args = ["extract", "--ckpt", str(ckpt), "--out", str(out), "--jsd-pairs", "16", "--quiet", "--images"]
    assert main([*args, str(first)]) == 0
    store = RunStore(out)
    store.part_path(store.keys()[-1]).unlink()  # as if killed before its last image
    line = _error(capsys, [*args, str(second)])
    assert f"{out}: 2 of its 2 done images were measured on other files than those now under their names, first {second}" in line
    assert main([*args, str(first)]) == 0  # the pictures it measured: resumed


def test_a_resume_removes_temporary_files_of_dead_writers_only(data, tmp_path):
    """A run of another shard plan over the same images may be writing beside this one: its temporary files are its own
    (removing them stopped it at its rename); those of a killed process go."""
    import subprocess
    import sys

    from nlanalysis.extract.store import RunStore

    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    store = RunStore(out)
    key = store.keys()[0]
    writer = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
        live_tmp, dead_tmp = (store.parts / f".{key}.csv.{pid}.tmp" for pid in (writer.pid, dead))
        odd = store.parts / ".notes.tmp"  # not one of ours: no key, extension and pid
        for p in (live_tmp, dead_tmp, odd):
            p.write_text("half")
        store.clean_temporary({key})
        assert live_tmp.exists() and not dead_tmp.exists() and odd.exists()
    finally:
        writer.communicate()


def test_a_done_image_unreadable_at_resume_is_not_read_again(data, tmp_path, monkeypatch):
    """Comparing a done image with the picture it measured must not stop a resume when the file cannot be read now
    (permissions, I/O; it is done: nothing needs it). It stopped the run with a bare EACCES."""
    import shutil

    import nlanalysis.extract.resume as resume
    from nlanalysis.extract.store import RunStore

    root, ckpt = data
    folder = tmp_path / "a"
    shutil.copytree(root / "images", folder)
    out = tmp_path / "run"
    args = ["extract", "--ckpt", str(ckpt), "--out", str(out), "--jsd-pairs", "16", "--quiet", "--images", str(folder)]
    assert main(args) == 0
    store = RunStore(out)
    store.part_path(store.keys()[-1]).unlink()
    real, refused = resume.sha256_file, []

    def unreadable(path):  # as for a user without the right to read it (root reads every file)
        if str(path).endswith(sorted(p.name for p in folder.iterdir())[0]):
            refused.append(path)
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(resume, "sha256_file", unreadable)
    assert main(args) == 0 and refused
