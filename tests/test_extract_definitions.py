"""Column definitions (``schema.DEFINITIONS``, ``run.json``'s ``settings.measure.definitions``): a run is resumed and
merged only with rows of its own definitions, refused in words that say why and what to do; a finished run of any
definitions (or none recorded) is still read and reported."""
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from extract_inputs import cli_error, copy_committed_run, images_extract_args, photos_and_checkpoint
from nlanalysis import schema
from nlanalysis.cli import main
from nlanalysis.extract import load_run, merge_runs

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[1]
DEMO_RUN = ROOT / "reports/demo/runs/gc"  # committed: metrics.csv, failures.csv, run.json, images.csv, no parts/


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return photos_and_checkpoint(tmp_path_factory.mktemp("definitions"), n=3)


@pytest.fixture(scope="module")
def finished(data):
    out = data[0] / "finished"
    assert main(_args(data, out)) == 0
    return out


def _args(data, out, *extra):
    return images_extract_args(*data, out, *extra)


def _error(capsys, args, command="extract"):
    return cli_error(capsys, args, command).removeprefix(f"nlanalysis {command}: error: ")


def _set_definitions(run, value="absent"):
    """Rewrite ``run``'s recorded definitions: ``"absent"`` drops the key (a run written before it was recorded)."""
    info = json.loads((run / "run.json").read_text())
    if value == "absent":
        del info["settings"]["measure"]["definitions"]
    else:
        info["settings"]["measure"]["definitions"] = value
    (run / "run.json").write_text(json.dumps(info))


def _partial(finished, tmp_path):
    """A copy of ``finished`` with one image not done yet (a run killed before it)."""
    run = shutil.copytree(finished, tmp_path / "run")
    sorted((run / "parts").glob("*.csv"))[0].unlink()
    return run


def test_history_has_a_line_for_each_version_from_1_to_the_current_one():
    assert schema.DEFINITIONS == max(schema.DEFINITIONS_HISTORY) and sorted(schema.DEFINITIONS_HISTORY) == list(range(1, schema.DEFINITIONS + 1))
    for line in schema.DEFINITIONS_HISTORY.values():  # the date first: the refusals read it
        assert pd.to_datetime(line.split(":", 1)[0], format="%Y-%m-%d") is not None
    assert schema.DEFINITIONS_HISTORY[1].startswith("2026-12-06: ")


def test_a_run_records_the_definitions_that_wrote_it(finished):
    assert json.loads((finished / "run.json").read_text())["settings"]["measure"]["definitions"] == schema.DEFINITIONS


@pytest.mark.parametrize(("recorded", "there"), [
    ("absent", "none recorded there: before 2026-12-06"),
    (0, "0 there: not a version any nlanalysis wrote"),
    (True, "true there: not a version any nlanalysis wrote"),  # not 1
])  # fmt: skip
def test_resume_across_definitions_is_refused_saying_why(data, finished, tmp_path, capsys, recorded, there):
    run = _partial(finished, tmp_path)
    _set_definitions(run, recorded)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    line = _error(capsys, _args(data, run))
    assert line == (f"{run}: written by an nlanalysis whose column definitions differ (definitions {schema.DEFINITIONS} here, "
                    f"{there}); its rows cannot be mixed with this version's: use another --out (or remove {run} to start it again)")  # fmt: skip
    assert "same arguments" not in line and "other settings" not in line
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k.name != ".lock"}  # nothing done, nothing rewritten
    # other settings differing too: the definitions are named (the same arguments would be refused again)
    assert "column definitions differ" in _error(capsys, _args(data, run, "--seed", "7"))


def test_a_run_of_a_newer_nlanalysis_is_refused_and_left_to_it(data, finished, tmp_path, capsys):
    run = _partial(finished, tmp_path)
    _set_definitions(run, schema.DEFINITIONS + 1)
    line = _error(capsys, _args(data, run))
    assert f"(definitions {schema.DEFINITIONS} here, {schema.DEFINITIONS + 1} there: a newer nlanalysis than this one)" in line
    assert line.endswith(f"(or remove {run} to start it again, or finish it with the newer nlanalysis that wrote it)")


def test_resume_of_the_same_definitions_goes_on(data, finished, tmp_path):
    run = _partial(finished, tmp_path)
    assert main(_args(data, run)) == 0
    assert (run / "metrics.csv").read_bytes() == (finished / "metrics.csv").read_bytes()
    assert json.loads((run / "run.json").read_text())["counts"]["done"] == 3


@pytest.fixture(scope="module")
def shards(data):
    out = [data[0] / "shard0", data[0] / "shard1"]
    for i, s in enumerate(out):
        assert main(_args(data, s, "--shard", f"{i}/2")) == 0
    return out


def test_merge_across_definitions_is_refused_saying_why(shards, tmp_path, capsys):
    a, b = (shutil.copytree(s, tmp_path / s.name) for s in shards)
    _set_definitions(b)
    d = schema.DEFINITIONS
    line = _error(capsys, ["merge", str(a), str(b), "--out", str(tmp_path / "m")], "merge")
    assert line == (f"{b} (against {a}): written by nlanalysis versions whose column definitions differ (definitions {d} in {a}, "
                    f"none recorded in {b}: before 2026-12-06); their rows cannot be mixed in one run: merge only shards written "
                    f"with the same definitions: extract again, with this nlanalysis (definitions {d}) and each into a new --out, "
                    "every shard written with other definitions, then merge")  # fmt: skip
    assert "other settings" not in line and not (tmp_path / "m").exists()
    _set_definitions(a)  # the other way round: the first shard written before they were recorded
    _set_definitions(b, d)
    with pytest.raises(ValueError, match=re.escape(f"(definitions none recorded in {a}: before 2026-12-06, {d} in {b});")):
        merge_runs([a, b], tmp_path / "m")
    _set_definitions(b, 0)
    with pytest.raises(ValueError, match=re.escape(f"none recorded in {a}: before 2026-12-06, 0 in {b}: not a version")):
        merge_runs([a, b], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_merge_of_one_definitions_goes_on(data, finished, shards, tmp_path):
    info = merge_runs(shards, tmp_path / "m")
    assert info["settings"]["measure"]["definitions"] == schema.DEFINITIONS
    assert (tmp_path / "m" / "metrics.csv").read_bytes() == (finished / "metrics.csv").read_bytes()
    # shards written before the definitions were recorded merge with each other (merge computes nothing): the merged run
    # is one of theirs, with none recorded, so it is not resumed by this version
    old = [shutil.copytree(s, tmp_path / f"old_{s.name}") for s in shards]
    for s in old:
        _set_definitions(s)
    assert "definitions" not in merge_runs(old, tmp_path / "m_old")["settings"]["measure"]
    (tmp_path / "m_old" / "parts" / sorted(p.name for p in (tmp_path / "m_old" / "parts").glob("*.csv"))[0]).unlink()
    assert main(_args(data, tmp_path / "m_old")) == 2


def _old_demo_copy(tmp_path, name="old"):
    run = copy_committed_run(DEMO_RUN, tmp_path / name)
    info = json.loads((run / "run.json").read_text())
    info["settings"]["measure"].pop("definitions", None)  # as the committed runs written before 2026-12-06's record
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_a_finished_run_without_definitions_is_read_and_reported(tmp_path):
    run = _old_demo_copy(tmp_path)
    res = load_run(run)
    assert res.complete and len(res.metrics) == 120
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--formats", "png", "--no-explore"]) == 0
    assert pd.read_csv(tmp_path / "report" / "tables" / "table1.csv")["images"].tolist() == [120]
    assert "column definitions" not in (tmp_path / "report" / "index.md").read_text()  # one run: nothing is mixed


def test_a_report_of_runs_of_different_definitions_says_so_once(tmp_path):
    from nlanalysis.report.meta import load_runs

    old = _old_demo_copy(tmp_path)
    new = shutil.copytree(old, tmp_path / "new")
    _set_definitions(new, schema.DEFINITIONS)
    runs = load_runs([old, new], labels={"old": old, "new": new})
    mixed = [n for n in runs.notes if "column definitions differ" in n]
    assert mixed == [f"the runs were written by nlanalysis versions whose column definitions differ (definitions none recorded "
                     f"(before 2026-12-06): `old`; definitions {schema.DEFINITIONS}: `new`; this nlanalysis writes {schema.DEFINITIONS}): "
                     "a column's values of runs of two versions may differ for the same model and image (extract the older ones "
                     "again to compare like with like)"]  # fmt: skip
    # the same checkpoint and settings: an image extracted again under other definitions is still one image, counted once
    assert len(runs.frame) == 120 and any("`new`: 120 image(s) measured by `old` first" in n for n in runs.notes)
    assert not [n for n in load_runs([new]).notes if "definitions" in n]
    assert main(["report", "--label", f"old={old}", "--label", f"new={new}", "--out", str(tmp_path / "report"), "--formats", "png",
                 "--no-explore"]) == 0  # fmt: skip
    assert mixed[0] in (tmp_path / "report" / "index.md").read_text()  # a note, not an error
