"""What a report pools: runs are seeds of one variant only where their checkpoints' meta says so, a table row never
pools different models, and an image of one checkpoint and input is one image whatever statistics were measured of it.

Built from copies of the committed demo runs (real result sets, no extraction), edited as the cases need."""
import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

from extract_inputs import copy_committed_run
from nlanalysis.report.meta import load_runs
from nlanalysis.tables import summarise

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _run(tmp_path, demo, name, *, ckpt=None, sha=None, meta="keep", settings=None, metrics=None):
    """A copy of ``reports/demo/runs/<demo>`` at ``tmp_path/name``: its checkpoint path ``ckpt`` (a file that is gone;
    by default one named as the demo's where its meta is dropped, ``meta=None``, so that the shipped file's is not read)
    and sha256 ``sha``, its meta dropped or replaced, ``settings(info["settings"])`` and ``metrics(frame)`` applied."""
    run = copy_committed_run(f"reports/demo/runs/{demo}", tmp_path / name)
    info = json.loads((run / "run.json").read_text())
    if ckpt is None and meta is None:
        ckpt = f"gone/{demo}.pth"
    if ckpt is not None:
        info["checkpoint"]["path"] = str(tmp_path / ckpt)
    if sha is not None:
        info["checkpoint"]["sha256"] = info["settings"]["checkpoint_sha256"] = sha
    if meta is None:
        info["checkpoint"].pop("meta", None)
    elif meta != "keep":
        info["checkpoint"]["meta"] = meta
    if settings is not None:
        settings(info["settings"])
    if metrics is not None:
        data = metrics(pd.read_csv(run / "metrics.csv")).to_csv(index=False).encode()
        (run / "metrics.csv").write_bytes(data)
        info["assembled_files"]["metrics.csv"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_two_models_whose_checkpoints_share_a_file_name_are_two_variants(tmp_path):
    """expA/model.pth and expB/model.pth (mmdetection's latest.pth) without meta were one variant `model`: an embedded
    Gaussian and a Gaussian block pooled as two seeds, the row's mode the first's. Each is its own variant now."""
    a = _run(tmp_path, "embedded_gaussian", "expA", ckpt="expA/model.pth", meta=None)
    b = _run(tmp_path, "gaussian", "expB", ckpt="expB/model.pth", meta=None)
    runs = load_runs([a, b])
    assert [m.variant for m in runs.meta] == [m.label for m in runs.meta] == ["model (expA)", "model (expB)"]
    table = summarise(runs.frame, by=("variant",))
    assert table["variant"].tolist() == ["model (expA)", "model (expB)"] and table["mode"].tolist() == ["embedded_gaussian", "gaussian"]
    assert table["runs"].tolist() == [1, 1] and set(table["ci"]) == {"95% t over images"}
    for (_, row), run in zip(table.iterrows(), (a, b)):  # each row is its run's alone
        assert row["att"] == pytest.approx(summarise(load_runs([run]).frame, by=("variant",))["att"].iloc[0], rel=1e-12)
    # a stated variant still pools: two seeds of one model whose checkpoints share a file name
    seeds = [_run(tmp_path, "gaussian", f"seed{s}", ckpt=f"seed{s}/latest.pth", meta={"variant": "gaussian", "seed": s},
                  sha=str(s) * 64) for s in (0, 1)]  # fmt: skip
    pooled = summarise(load_runs(seeds).frame, by=("variant",))
    assert pooled["variant"].tolist() == ["gaussian"] and pooled["runs"].tolist() == [2]
    # nor is a run whose checkpoint states no variant one of a stated namesake's: gaussian.pth without meta, beside them
    bare = _run(tmp_path, "gaussian", "bare", ckpt="bare/gaussian.pth", meta=None, sha="2" * 64)
    runs = load_runs([*seeds, bare])
    assert [m.variant for m in runs.meta] == ["gaussian", "gaussian", "gaussian (bare)"]
    assert summarise(runs.frame, by=("variant",))["runs"].tolist() == [2, 1]


def test_runs_one_meta_calls_one_variant_but_of_different_blocks_are_refused(tmp_path):
    """Checkpoints whose meta states one variant for two different models: refused, naming the runs and what differs
    (split rows would carry one variant name twice)."""
    meta = {"variant": "nl", "seed": 0}
    a = _run(tmp_path, "embedded_gaussian", "a", meta=meta)
    b = _run(tmp_path, "gaussian", "b", meta={**meta, "seed": 1})
    with pytest.raises(ValueError, match=rf"`embedded_gaussian` \(folder {re.escape(str(a))}\) and `gaussian` \(folder "
                                         rf"{re.escape(str(b))}\) are both of variant 'nl'.*"
                                         r"architecture\.blocks\.0\.options\.mode: 'embedded_gaussian' in `embedded_gaussian`, "
                                         r"'gaussian' in `gaussian`"):  # fmt: skip
        load_runs([a, b])


def test_the_refusal_names_each_run_s_folder_where_the_labels_look_alike(tmp_path):
    """Two runs whose checkpoints share a file stem, in folders of one name: labels `x (x)` and `x (x) #2`, which alone
    do not say which run is which; the refusal gives each run's folder."""
    a = _run(tmp_path / "v2", "embedded_gaussian", "x", ckpt="v2/x.pth", meta={"variant": "nl", "seed": 0}, sha="a" * 64)
    b = _run(tmp_path / "v3", "gaussian", "x", ckpt="v3/x.pth", meta={"variant": "nl", "seed": 1}, sha="b" * 64)
    with pytest.raises(ValueError, match=rf"`x \(x\)` \(folder {re.escape(str(a))}\) and `x \(x\) #2` \(folder "
                                         rf"{re.escape(str(b))}\) are both of variant 'nl'"):  # fmt: skip
        load_runs([a, b])


def test_two_checkpoints_one_meta_calls_the_same_seed_and_step_are_refused(tmp_path):
    """A planted block and its random twin, each saved with its source's meta (variant, seed 0, step): pooled as one seed
    they gave one row of 2 runs, 1 seed. Refused, naming both folders and checkpoints; the same checkpoint twice is still
    one seed."""
    meta = {"variant": "embedded_gaussian", "seed": 0, "step": 1128}
    planted = _run(tmp_path, "embedded_gaussian", "planted_s0", ckpt="planted.pth", meta=meta, sha="1" * 64)
    twin = _run(tmp_path, "embedded_gaussian", "twin_s0", ckpt="twin.pth", meta=meta, sha="2" * 64)
    with pytest.raises(ValueError, match=rf"`planted` \(folder {re.escape(str(planted))}\) and `twin` \(folder "
                                         rf"{re.escape(str(twin))}\) are both seed 0 at step 1128 of variant 'embedded_gaussian'"
                                         r".* different checkpoints \(sha256 111111111111\.\.\. and 222222222222\.\.\.\)"):  # fmt: skip
        load_runs([planted, twin])
    # another step of the seed (a snapshot), or another seed, is pooled as before
    later = _run(tmp_path, "embedded_gaussian", "planted_s0_late", ckpt="late.pth", meta={**meta, "step": 2256}, sha="3" * 64)
    seed1 = _run(tmp_path, "embedded_gaussian", "planted_s1", ckpt="s1.pth", meta={**meta, "seed": 1}, sha="4" * 64)
    assert [m.label for m in load_runs([planted, later, seed1]).meta] == ["planted", "late", "s1"]
    again = _run(tmp_path, "embedded_gaussian", "planted_s0_again", ckpt="planted.pth", meta=meta, sha="1" * 64)
    table = summarise(load_runs([planted, again]).frame, by=("variant",))
    assert table["runs"].tolist() == [1] and table["seeds"].tolist() == [1]


def test_a_table_row_of_different_block_modes_is_refused():
    """A labelled frame built by other means (no run.json to compare): the row refuses, naming runs and modes, instead of
    showing the first run's mode over both."""
    rows = [{"label": label, "variant": "v", "block": "b", "image_id": i, "mode": mode, "family": "nl", "att": 0.1 * i}
            for label, mode in (("one", "embedded_gaussian"), ("two", "gaussian")) for i in range(3)]  # fmt: skip
    with pytest.raises(ValueError, match=r"\(variant `v`, block `b`\) would pool runs of different block modes: "
                                         r"'embedded_gaussian' in `one`; 'gaussian' in `two`"):  # fmt: skip
        summarise(pd.DataFrame(rows), by=("variant",))


def _jsd(st, pairs=64):
    st["measure"]["jsd_pairs"] = pairs


def test_an_image_measured_again_with_other_statistic_settings_is_counted_once(tmp_path):
    """eg2 and eg2jsd: one checkpoint, one input, other JSD pairs. Counted twice they narrowed every interval (40 rows
    for 20 images); now the first run's rows count, and the note says which run, how many images and what differs."""
    eg2 = _run(tmp_path, "embedded_gaussian_x2", "eg2")
    jsd = _run(tmp_path, "embedded_gaussian_x2", "eg2jsd", settings=_jsd, metrics=lambda f: f.assign(att_jsd=f["att_jsd"] * 0.9))
    alone, both = load_runs([eg2]), load_runs([eg2, jsd], labels={"eg2": eg2, "eg2jsd": jsd})
    pd.testing.assert_frame_equal(both.frame.drop(columns="label"), alone.frame.drop(columns="label"))
    assert both.notes == ["`eg2jsd`: 120 image(s) measured by `eg2` first (the same checkpoint and input; other settings: "
                          "measure.jsd_pairs) are counted once, from there: its rows of them are left out of the tables"]  # fmt: skip
    t_alone, t_both = summarise(alone.frame, by=("variant",)), summarise(both.frame, by=("variant",))
    assert t_both[["att_low", "att_high", "images", "rows"]].equals(t_alone[["att_low", "att_high", "images", "rows"]])


def test_the_note_names_the_columns_a_later_run_measured_and_the_first_did_not(tmp_path):
    first = _run(tmp_path, "embedded_gaussian_x2", "first", settings=lambda st: st["measure"].update(query_dependence="off"),
                 metrics=lambda f: f.assign(qk_nmi=np.nan))  # fmt: skip
    later = _run(tmp_path, "embedded_gaussian_x2", "later")
    runs = load_runs([first, later], labels={"first": first, "later": later})
    assert len(runs.notes) == 1 and runs.notes[0].endswith(", but for the values the first lacks, taken from it: qk_nmi (120 image(s))")
    assert "other settings: measure.query_dependence" in runs.notes[0]
    pd.testing.assert_series_equal(runs.frame["qk_nmi"], load_runs([later]).frame["qk_nmi"])


def test_an_image_measured_again_takes_each_value_the_first_lacks_from_the_next_run_that_has_it(tmp_path):
    """The first run's row of a repeated image was kept whole: a column it lacks for some images (NaN there) or has not
    at all stayed empty though a later run measured it, and the note named a column only when every first row lacked it.
    Now each value is the first non-null in run order, per block and image; the image still counts once."""
    def half(f):  # the first 60 images
        return f["image_id"].isin(sorted(f["image_id"].unique())[:60])

    first = _run(tmp_path, "embedded_gaussian_x2", "first",
                 metrics=lambda f: f.drop(columns="att_jsd").assign(own_object_share=f["own_object_share"].mask(half(f))))  # fmt: skip
    middle = _run(tmp_path, "embedded_gaussian_x2", "middle", metrics=lambda f: f.assign(att_jsd=f["att_jsd"] * 0.5, own_object_share=np.nan))
    last = _run(tmp_path, "embedded_gaussian_x2", "last", metrics=lambda f: f.assign(att_jsd=f["att_jsd"] * 0.25, own_object_share=f["own_object_share"] * 0.9))
    runs = load_runs([first, middle, last], labels={"first": first, "middle": middle, "last": last})
    whole = load_runs([_run(tmp_path, "embedded_gaussian_x2", "whole")]).frame
    assert len(runs.frame) == len(whole) and set(runs.frame["label"]) == {"first"}
    pd.testing.assert_series_equal(runs.frame["att_jsd"], whole["att_jsd"] * 0.5)  # the middle run's: the first with it
    share = whole["own_object_share"].where(~half(whole), whole["own_object_share"] * 0.9)  # the first's, else the last's
    pd.testing.assert_series_equal(runs.frame["own_object_share"], share)
    assert runs.notes[0].endswith("left out of the tables, but for the values the first lacks, taken from it: att_jsd (120 image(s))")
    assert runs.notes[1].endswith("left out of the tables, but for the values the first lacks, taken from it: own_object_share (60 image(s))")
    table = summarise(runs.frame, by=("variant",))
    assert table["images"].tolist() == [120, 120] and table["rows"].tolist() == [120, 120] and table["runs"].tolist() == [1, 1]


def _scale(st):
    st["preprocess"]["scale"] = [224, 224]


def _half(st):
    st["measure"]["convention"] = "(1-cos)/2"


@pytest.mark.parametrize("change, what", [(_scale, r"preprocess\.scale\.0: 112 in `eg2`, 224 in `eg2big`"),
                                          (_half, r"convention: '1-cos' in `eg2`, '\(1-cos\)/2' in `eg2big`")])  # fmt: skip
def test_one_checkpoint_on_another_input_or_convention_is_another_measurement(tmp_path, change, what):
    """Another resolution (another input) or distance convention (another meaning of every distance column) is not the
    same image measured again: kept, as the rows of two variants where no meta names one, refused where one would pool
    them (and a report of two conventions is refused by `report` as before)."""
    eg2 = _run(tmp_path, "embedded_gaussian_x2", "eg2", meta=None)
    big = _run(tmp_path, "embedded_gaussian_x2", "eg2big", meta=None, settings=change)
    runs = load_runs([eg2, big], labels={"eg2": eg2, "eg2big": big})
    assert runs.notes == [] and len(runs.frame) == 2 * len(load_runs([eg2]).frame)
    assert runs.frame["variant"].unique().tolist() == ["eg2", "eg2big"]
    eg2s = _run(tmp_path, "embedded_gaussian_x2", "eg2s")
    bigs = _run(tmp_path, "embedded_gaussian_x2", "eg2bigs", settings=change)
    with pytest.raises(ValueError, match=r"both of variant 'embedded_gaussian_x2'.*" + what):
        load_runs([eg2s, bigs], labels={"eg2": eg2s, "eg2big": bigs})


def _locality(sigma, reduction=2):
    def change(st):
        st["arch"]["blocks"][0].update(type="SpatialGaussian2d", options={"sigma": sigma, "reduction": reduction})
    return change


def test_seeds_of_a_locality_twin_differ_in_sigma_and_are_pooled(tmp_path):
    """The locality twin's sigma is fitted to each model (matched to its trained block's row entropy), as weights are:
    its seeds were refused as different architectures (planted-v3l). A fitted option is left out of the comparison; an
    option chosen with the architecture (``reduction``) still refuses, and the refusal names it alone."""
    seeds = [_run(tmp_path, "embedded_gaussian", f"loc_s{s}", ckpt=f"loc_s{s}.pth", meta={"variant": "loc", "seed": s},
                  sha=str(s) * 64, settings=_locality(sigma)) for s, sigma in ((0, 3.23), (1, 3.34))]  # fmt: skip
    table = summarise(load_runs(seeds).frame, by=("variant",))
    assert table["variant"].tolist() == ["loc"] and table["runs"].tolist() == [2] and table["seeds"].tolist() == [2]
    other = _run(tmp_path, "embedded_gaussian", "loc_s2", ckpt="loc_s2.pth", meta={"variant": "loc", "seed": 2},
                 sha="2" * 64, settings=_locality(3.3, reduction=4))  # fmt: skip
    with pytest.raises(ValueError, match=r"cannot pool: architecture\.blocks\.0\.options\.reduction: 2 in `loc_s0`, "
                                         r"4 in `loc_s2`\. Report"):  # fmt: skip
        load_runs([*seeds, other])
