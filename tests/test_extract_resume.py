"""Result sets survive SIGKILL, split into shards and merge back: always the rows of one uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from extract_inputs import tiny_checkpoint, write_coco, write_photos
from nlanalysis.cli import main
from nlanalysis.extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunSpec, merge_runs, run_extract

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


N = 40  # enough that a run killed after a few images is surely still running


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    photos = write_photos(root / "images", n=N, max_side=160)
    write_coco(root / "ann.json", photos)
    return root, tiny_checkpoint(root / "tiny.pth")


def _args(data, out, *extra):
    root, ckpt = data
    return ["extract", "--ckpt", str(ckpt), "--coco-ann", str(root / "ann.json"), "--coco-images", str(root / "images"),
            "--out", str(out), "--save-maps", "--jsd-pairs", "64", "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(data):
    out = data[0] / "reference"
    assert main(_args(data, out)) == 0
    return out


def _parts(out):
    return len(list((out / "parts").glob("*.csv"))) if (out / "parts").is_dir() else 0


def _start_and_kill(data, out, when):
    """Run ``python -m nlanalysis extract`` and SIGKILL it as soon as ``when()`` holds."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "nlanalysis", *_args(data, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while not when():
            if proc.poll() is not None:
                pytest.fail(f"extract ended (rc {proc.returncode}) before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "extract made no progress in 120 s"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_killed_twice_then_resumed_equals_uninterrupted(data, reference, tmp_path):
    out = tmp_path / "killed"
    _start_and_kill(data, out, lambda: (out / "run.json").is_file())  # early: during set-up or the first image
    first = _parts(out)
    _start_and_kill(data, out, lambda: _parts(out) >= first + 3)  # mid-run, between or inside image writes
    killed_at = _parts(out)
    assert first + 3 <= killed_at < N
    info = json.loads((out / "run.json").read_text())
    assert not info.get("complete")  # nothing claims to be finished

    assert main(_args(data, out)) == 0  # the same command resumes
    assert (out / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert sorted(p.name for p in (out / "maps").iterdir()) == sorted(p.name for p in (reference / "maps").iterdir())
    info = json.loads((out / "run.json").read_text())
    assert info["complete"] and info["counts"]["done"] == N
    sessions = info["shards"]["0-of-1"]
    # the first kill may come before its session is recorded
    assert len(sessions) in (2, 3) and sessions[-1]["skipped"] == killed_at
    assert all(s["finished"] is None for s in sessions[:-1]) and sessions[-1]["finished"]


def test_shards_merge_to_one_run(data, reference, tmp_path, capsys):
    root, ckpt = data
    shards = [tmp_path / f"s{i}" for i in range(3)]
    for i, out in enumerate(shards):
        assert main(_args(data, out, "--shard", f"{i}/3")) == 0
        assert not json.loads((out / "run.json").read_text())["complete"]
    assert main(["merge", *map(str, shards[:2]), "--out", str(tmp_path / "partial")]) == 1  # a shard missing: not 0
    assert "not complete" in capsys.readouterr().out
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    assert f"{N} of {N} images done" in capsys.readouterr().out
    assert (tmp_path / "merged" / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert len(list((tmp_path / "merged" / "maps").iterdir())) == N

    with pytest.raises(ValueError, match="overlap"):
        merge_runs([shards[0], reference], tmp_path / "m2")
    capsys.readouterr()
    assert main(["merge", str(shards[0]), str(reference), "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nlanalysis merge: error: ") and "overlap" in err
    other = tmp_path / "other-seed"
    assert main(_args(data, other, "--shard", "1/3", "--seed", "1")) == 0
    with pytest.raises(ValueError, match="other settings.*seed"):
        merge_runs([shards[0], other], tmp_path / "m3")
    with pytest.raises(ValueError, match="not empty"):
        merge_runs(shards, tmp_path / "merged")


def test_merge_refuses_what_it_cannot_read_whole_and_leaves_no_half_merge(data, tmp_path):
    """A damaged part (cut at a line end: still CSV), a result set copied without its parts, or inputs holding no
    image: refused naming the input file, and --out stays as it was (the merge is built beside it, then renamed)."""
    import shutil

    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, out in enumerate(shards):
        assert main(_args(data, out, "--shard", f"{i}/2")) == 0
    part = sorted((shards[1] / "parts").glob("*.csv"))[0]
    whole = part.read_text()
    part.write_text(whole.rsplit("\n", 2)[0] + "\n")  # the last row gone, a line boundary kept
    with pytest.raises(ValueError, match=f"{part}: .* bytes, .* were written .*rerun extract with that folder's arguments"):
        merge_runs(shards, tmp_path / "m")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.merging.*"))
    part.write_text(whole)
    copy = tmp_path / "copied"
    copy.mkdir()
    for name in ("metrics.csv", "failures.csv", "run.json", "images.csv"):
        shutil.copy2(shards[1] / name, copy / name)
    with pytest.raises(ValueError, match=f"{copy} holds no parts/"):
        merge_runs([shards[0], copy], tmp_path / "m")
    empty = tmp_path / "empty"
    shutil.copytree(shards[1], empty)
    for sub in ("parts", "checks", "maps", "failed"):
        shutil.rmtree(empty / sub)
        (empty / sub).mkdir()
    with pytest.raises(ValueError, match="holds an analysed or failed image; nothing to merge"):
        merge_runs([empty], tmp_path / "m")
    (tmp_path / "m").mkdir()  # an empty --out is taken
    assert merge_runs(shards, tmp_path / "m")["counts"]["pending"] == 0
    assert not list(tmp_path.glob(".m.merging.*"))
    (tmp_path / "empty_out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty_out")  # a link to an empty folder: merged through it
    assert merge_runs(shards, tmp_path / "link")["counts"]["pending"] == 0 and (tmp_path / "empty_out" / "metrics.csv").is_file()


def test_torchrun_ranks_share_one_folder(data, reference, tmp_path, monkeypatch):
    """Under torchrun each rank takes its shard from RANK/WORLD_SIZE and writes into the same --out."""
    root, ckpt = data
    out = tmp_path / "ddp"
    spec = RunSpec(ModelSpec(ckpt), DataSpec(coco_ann=root / "ann.json", coco_images=root / "images"),
                   OutputSpec(out, save_maps=True), MeasureSpec(jsd_pairs=64))  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    reports = []
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        reports.append(run_extract(spec, progress=False))
    assert [r.shard for r in reports] == [(1, 2), (0, 2)] and [r.done for r in reports] == [N // 2, N // 2]
    assert not reports[0].complete and reports[1].complete
    assert (out / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
