"""Training jobs after a review: one folder holds one job (checked before anything trains), a killed run's snapshots
do not outlive it, another --source gets its own data folders, bad numbers are one-line errors, and shipping copies
this job's variants."""
import json
import os
import stat

import pytest

from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.train import TrainConfig, load_scene_set
from nlanalysis.train.compare import load_results
from nlanalysis.train.run import TrainJob, _drawn, run_training, ship_checkpoints

TINY = TrainConfig(epochs=1, batch_size=8, snapshots=(0.5, 1.0))


@pytest.fixture(scope="module")
def tiny():
    data = load_scene_set(*demo_scenes_path(), limit=24)
    return data.subset(slice(0, 16)), data.subset(slice(16, 24))


@pytest.fixture
def job(tmp_path, monkeypatch, tiny):
    train, val = tiny
    monkeypatch.setattr("nlanalysis.train.run._train_set", lambda job: train)
    monkeypatch.setattr("nlanalysis.train.run._val_set", lambda job: val)
    return lambda **kw: TrainJob(out=tmp_path, **{"variants": ("gc",), "seeds": (0,), "config": TINY, "progress": False, **kw})


def test_a_changed_setting_is_refused_before_any_run_trains(job, tmp_path):
    run_training(job())
    longer = TrainConfig(**{**vars(TINY), "epochs": 2})
    with pytest.raises(ValueError, match="gc_s0.json: this run was trained with other settings"):
        run_training(job(variants=("baseline", "gc"), config=longer))  # baseline first: it used to train and be recorded
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["gc_s0.json"]
    with pytest.raises(ValueError, match=r"trained with other settings than gc_s0.json|other settings than this job"):
        run_training(job(variants=("baseline",), config=longer))  # a new run beside others of another job
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["gc_s0.json"]


def test_records_of_two_jobs_in_one_folder_are_not_compared(job, tmp_path):
    run_training(job())
    run_training(job(seeds=(1,)))
    assert len(load_results(tmp_path)) == 2  # two seeds of one job
    record = json.loads((tmp_path / "runs" / "gc_s1.json").read_text())
    record["data"]["train"] = "another design's scenes"
    (tmp_path / "runs" / "gc_s1.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="gc_s1.json: trained with other scenes than .*gc_s0.json"):
        load_results(tmp_path)


def test_a_killed_runs_snapshots_are_removed_when_it_trains_again(job, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / "gc_s0_step160.pth"  # left by a run killed after its first snapshot
    stale.write_bytes(b"old")
    other = tmp_path / "checkpoints" / "baseline_s0_step160.pth"
    other.write_bytes(b"another run's")
    torn = [tmp_path / "checkpoints" / f".gc_s0{end}.pth.k3x9q.tmp" for end in ("", "_step160")]  # killed inside torch.save
    kept = tmp_path / "checkpoints" / ".gc_s01.pth.k3x9q.tmp"  # seed 01 is another run's (not this one's)
    for path in (*torn, kept):
        path.write_bytes(b"half")
    run_training(job())
    assert not stale.exists() and other.read_bytes() == b"another run's"
    assert not any(p.exists() for p in torn) and kept.exists()
    assert not list(tmp_path.glob(".*.tmp"))  # training.csv, summary.csv and .json went through temporary files
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("gc_s0*")) == ["gc_s0.pth", "gc_s0_step1.pth"]


def test_another_source_gets_its_own_data_folders(tmp_path):
    assert _drawn(TrainJob(out=tmp_path))[0] == "shared"  # the default keeps its name (existing folders are reused)
    mine, theirs = (_drawn(TrainJob(out=tmp_path, source=str(tmp_path / s)))[0] for s in ("a", "b"))
    assert mine.startswith("shared_src") and mine != theirs


@pytest.mark.parametrize(("kw", "message"), [
    (dict(batch_size=0), "batch_size must be at least 1"), (dict(epochs=0), "epochs must be at least 1"),
    (dict(snapshots=(2.0, -1.0)), r"snapshots are fractions of training in \[0, 1\], got \[2.0, -1.0\]"),
    (dict(lr=-1.0), "lr must be positive")])  # fmt: skip
def test_bad_numbers_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


def test_bad_job_sizes_and_a_damaged_record_are_named(job, tmp_path):
    with pytest.raises(ValueError, match="val_scenes must be at least 1"):
        TrainJob(out=tmp_path, val_scenes=-1)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "gc_s0.json").write_text("")
    with pytest.raises(ValueError, match="gc_s0.json: not a finished-run record"):
        run_training(job())


def test_shipping_copies_this_jobs_variants_readable_by_others(job, tmp_path):
    run_training(job(variants=("gc", "baseline")))
    shipped = ship_checkpoints(tmp_path / "checkpoints", tmp_path / "ship", variants=("gc",))
    assert [p.name for p in shipped] == ["gc.pth"]
    umask = os.umask(0o022)
    try:
        (again,) = ship_checkpoints(tmp_path / "checkpoints", tmp_path / "ship2", variants=("gc",))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(again.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_other_settings_name_the_entry_that_differs_and_mark_a_cut():
    from nlanalysis.extract.store import check_same_settings

    old = {"selection": {"images": 10, "source": "coco"}, "arch": {"widths": list(range(60))}}
    new = {"selection": {"images": 4, "source": "coco"}, "arch": {"widths": list(range(61))}}
    with pytest.raises(ValueError, match="selection.images: 10 vs 4") as err:
        check_same_settings(old, new, "RUN")
    assert "arch.widths: [0, 1" in str(err.value) and "…" in str(err.value)


def test_a_given_nl_mode_over_the_checkpoints_own_is_noted():
    from nlanalysis.checkpoints import load_checkpoint
    from nlanalysis.train.run import shipped_checkpoints

    path = shipped_checkpoints()["embedded_gaussian"]
    loaded = load_checkpoint(path, overrides={"nl_mode": "dot_product"})
    assert "layer1.1: mode dot_product (given; the checkpoint's own is embedded_gaussian)" in loaded.notes
    assert load_checkpoint(path, overrides={"nl_mode": "embedded_gaussian"}).notes == []


def test_demo_refuses_no_scenes_in_its_own_words(tmp_path):
    from nlanalysis.demo import run_demo

    with pytest.raises(ValueError, match="--scenes 0: give at least 1 demo scene"):
        run_demo(tmp_path, scenes=0)
