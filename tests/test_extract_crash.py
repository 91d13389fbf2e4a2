"""An image whose decoder kills (or hangs) the process reading it: counted once, skipped after a second death, and
the run finishes with every other image's rows as a run without it."""
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch

from extract_inputs import cli_error, images_extract_args, photos_and_checkpoint, write_photos
from nlanalysis.cli import main
from nlanalysis.extract import load_run, merge_runs

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

BAD = "photo_002.jpg"

#: extract in a process whose decoder dies on one file (CRASH_ON): SIGKILL, as a segfault in a C decoder or the OOM
#: killer would, a sleep that never ends (CRASH_HOW=hang), or a valid image read slowly (CRASH_HOW=slow: SLOW seconds,
#: after touching the file READING, if given); DataLoader workers forked from it inherit the patch
CRASHING = """
import os, signal, sys, time
from pathlib import Path
import nlanalysis.extract.loading as loading
from nlanalysis.cli import main

original = loading.load_image

def load_image(path, *args, **kwargs):
    if Path(path).name == os.environ["CRASH_ON"]:
        if os.environ.get("CRASH_HOW") == "slow":
            if os.environ.get("READING"):
                Path(os.environ["READING"]).touch()
            time.sleep(float(os.environ["SLOW"]))
            return original(path, *args, **kwargs)
        if os.environ.get("CRASH_HOW") == "hang":
            time.sleep(600)
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, *args, **kwargs)

loading.load_image = load_image
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return photos_and_checkpoint(tmp_path_factory.mktemp("crash"), n=4)


@pytest.fixture(scope="module")
def clean(data):
    """A folder of the same images but the bad one, and its run (``clean/run``)."""
    root, ckpt = data
    clean = root / "clean"
    write_photos(clean / "images", n=4, max_side=96)
    (clean / "images" / BAD).unlink()
    assert main(images_extract_args(clean, ckpt, clean / "run")) == 0
    return clean


@pytest.fixture(scope="module")
def without_bad(clean):
    """metrics.csv of a run over the same folder without the bad image."""
    return pd.read_csv(clean / "run" / "metrics.csv")


@pytest.fixture(scope="module")
def with_bad(data):
    """metrics.csv of a run over every image, the "bad" one read as it is (a valid picture)."""
    root, ckpt = data
    assert main(images_extract_args(root, ckpt, root / "full")) == 0
    return pd.read_csv(root / "full" / "metrics.csv")


def _env(how, **more):
    return dict(os.environ, OMP_NUM_THREADS="1", CRASH_ON=BAD, CRASH_HOW=how, **more)


def _crashing(data, out, *extra, how="kill", **env):
    root, ckpt = data
    proc = subprocess.run([sys.executable, "-c", CRASHING, *images_extract_args(root, ckpt, out, *extra)], env=_env(how, **env),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return proc.returncode, proc.stderr


def _sessions(out):
    return json.loads((out / "run.json").read_text())["shards"]["0-of-1"]


def _finished_without_bad(out, without_bad, stderr, why="died twice while decoding this image"):
    failures = pd.read_csv(out / "failures.csv")
    assert failures["file_name"].tolist() == [BAD], stderr
    assert why in failures["reason"][0] and "skipped" in failures["reason"][0], failures["reason"][0]
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), without_bad)
    assert not any("reading" in p.name for p in out.rglob("*")), "markers left in a finished result set"


def test_a_decoder_that_kills_extract_is_skipped_at_its_second_death(data, without_bad, tmp_path):
    out = tmp_path / "run"
    rc, err = _crashing(data, out)
    assert rc == -signal.SIGKILL, err  # the first death: nothing could be written
    assert (out / "shards" / "0-of-1.reading" / "main").read_text().startswith('{"key": "photo_002.jpg')
    rc, err = _crashing(data, out)  # one death does not blame an image (a kill -9 leaves the same trace): read again
    assert rc == -signal.SIGKILL, err
    assert BAD in err and "suspected" in err  # said after the first death
    assert not load_run(out).complete and len(load_run(out).metrics)  # a died run's markers: read past, never merged
    merge_runs([out], tmp_path / "merged")
    assert not any("reading" in p.name for p in (tmp_path / "merged").rglob("*"))
    rc, err = _crashing(data, out)  # the second death is counted: the image is skipped, the run finishes
    assert rc == 1, err
    _finished_without_bad(out, without_bad, err)
    rc, err = _crashing(data, out)  # resumed again: nothing left, the skipped image is not read again
    assert rc == 1, err
    _finished_without_bad(out, without_bad, err)
    sessions = json.loads((out / "run.json").read_text())["shards"]["0-of-1"]
    assert [len(s.get("reader_deaths", [])) for s in sessions] == [0, 1, 1, 0]  # each death once, in the session that found it


def test_a_dead_dataloader_worker_is_replaced_and_its_image_skipped_at_its_second_death(data, without_bad, tmp_path):
    out = tmp_path / "run"
    rc, err = _crashing(data, out, "--workers", "1")
    assert rc == 1, err  # one session: the worker died twice on the image, the rest was read by new workers
    assert "suspected" in err and BAD in err
    _finished_without_bad(out, without_bad, err)


def test_a_hanging_decoder_is_killed_after_the_read_timeout(data, without_bad, tmp_path):
    out = tmp_path / "run"
    rc, err = _crashing(data, out, "--workers", "1", "--read-timeout", "1", how="hang")
    assert rc == 1, err
    _finished_without_bad(out, without_bad, err, why="read for longer than 1 s twice (--read-timeout 1)")


def test_a_marker_that_is_not_a_file_is_named_not_opened(clean, data, tmp_path, capsys):
    out = shutil.copytree(clean / "run", tmp_path / "run")
    (out / "shards" / "0-of-1.reading").mkdir()
    os.mkfifo(out / "shards" / "0-of-1.reading" / "main")  # opening it would wait for a writer
    line = cli_error(capsys, images_extract_args(clean, data[1], out))
    assert f"{out / 'shards' / '0-of-1.reading' / 'main'}: is a named pipe, not a regular file" in line


class _DiesOn(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        if i == 1:
            time.sleep(0.3)  # after item 0 reached the main process
            os.kill(os.getpid(), signal.SIGKILL)
        return i


def test_a_dead_workers_error_comes_from_next_not_from_the_work_between_batches():
    """Torch's SIGCHLD handler raises a worker's death wherever the main process is: inside a forward, extract read it as
    the batch's own failure. Under the guard the work between batches goes on and the next ``next`` raises."""
    from nlanalysis.extract.readers import _WorkerErrorsInNext

    it = iter(torch.utils.data.DataLoader(_DiesOn(), batch_size=None, num_workers=1))
    try:
        with _WorkerErrorsInNext() as guard:
            assert guard.next(it) == 0
            time.sleep(1.0)  # the work on batch 0, while the worker dies on item 1
            with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid \d+\) is killed by signal"):
                guard.next(it)
    finally:
        del it


def _no_markers(out):
    return not any("reading" in p.name for p in out.rglob("*"))


@pytest.mark.parametrize("sig, workers, kills", [(signal.SIGTERM, "0", 2), (signal.SIGHUP, "1", 1)])
def test_a_polite_kill_while_an_image_is_read_counts_no_death_of_it(data, with_bad, tmp_path, sig, workers, kills):
    """scancel, docker stop, systemd, `timeout`, a dropped ssh session: SIGTERM or SIGHUP while a valid image is read. No
    death is counted (two such kills skipped the image for good): the markers go, the session is finalised."""
    root, ckpt = data
    out, reading = tmp_path / "run", tmp_path / "reading"
    for _ in range(kills):
        reading.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", CRASHING, *images_extract_args(root, ckpt, out, "--workers", workers)],
                                env=_env("slow", SLOW="2", READING=str(reading)), stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 90
        while not reading.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reading.exists(), proc.communicate(timeout=60)[1]
        time.sleep(0.3)  # in the middle of its read
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1]
        assert _no_markers(out), err
        assert proc.returncode == 128 + sig, err
        assert _sessions(out)[-1]["finished"] is None  # the session was written as ended early
    rc, err = _crashing(data, out, "--workers", workers, how="slow", SLOW="0.5")
    assert rc == 0, err
    assert not any(s.get("reader_deaths") for s in _sessions(out)), err
    assert pd.read_csv(out / "failures.csv").empty and _no_markers(out)
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), with_bad)


def test_exit_on_term_raises_system_exit_and_restores_the_handlers():
    from nlanalysis.extract.termination import exit_on_term

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: an ignored SIGHUP stays ignored
    try:
        term = signal.getsignal(signal.SIGTERM)
        with pytest.raises(SystemExit) as exited, exit_on_term():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert exited.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is term and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        with pytest.raises(SystemExit) as exited, exit_on_term() as held:
            held.hold()  # finalising: the signal waits for the block's end
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            finalised = True
        assert finalised and exited.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_slow_image_past_the_read_timeout_is_skipped_only_under_that_timeout(data, with_bad, tmp_path):
    """A valid image read for longer than --read-timeout twice is a timeout, not a crash: skipped while the limit is no
    larger, read again by a resume without it."""
    out = tmp_path / "run"
    rc, err = _crashing(data, out, "--workers", "1", "--read-timeout", "1", how="slow", SLOW="5")
    assert rc == 1, err
    reason = pd.read_csv(out / "failures.csv")["reason"][0]
    assert "read for longer than 1 s twice (--read-timeout 1)" in reason and "died" not in reason, reason
    deaths = [d for s in _sessions(out) for d in s.get("reader_deaths", [])]
    assert [(d["kind"], d["limit"]) for d in deaths] == [("timeout", 1.0)] * 2, deaths
    rc, err = _crashing(data, out, how="slow", SLOW="2")  # no limit now: read again (and said)
    assert rc == 0, err
    assert BAD in err and "read again" in err
    assert pd.read_csv(out / "failures.csv").empty and _no_markers(out)
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), with_bad)


def _planted(folder, reader, key, pid, host, session="earlier", since=None):
    record = {"key": key, "path": f"/x/{key}", "reader": reader, "pid": pid, "host": host, "session": session,
              "since": time.time() if since is None else since}  # fmt: skip
    (folder / reader).write_text(json.dumps(record) + "\n")


def _store(root, read_timeout=None, deaths=()):
    from nlanalysis.extract.readers import Readers
    from nlanalysis.extract.store import RunStore

    (root / "shards").mkdir(parents=True, exist_ok=True)
    earlier = [{"id": f"s{i}", "reader_deaths": [d]} for i, d in enumerate(deaths)]
    session = {"id": "now"}
    (root / "shards" / "0-of-1.json").write_text(json.dumps({"shard": "0-of-1", "sessions": [*earlier, session]}))
    return Readers(RunStore(root), "0-of-1", session, read_timeout), session


@pytest.mark.parametrize("limit, skipped", [(None, False), (0.5, True), (1, True), (2, False)])
def test_two_timeouts_skip_an_image_only_under_a_limit_no_larger(tmp_path, limit, skipped):
    timeout = {"key": "k", "path": "/x/k.jpg", "how": "read for longer than 1 s", "kind": "timeout", "limit": 1.0}
    readers, _ = _store(tmp_path, limit, [dict(timeout, pid=1), dict(timeout, pid=2)])
    readers.recover()
    assert ("k" in readers.skip) == skipped
    crash = {"key": "k", "path": "/x/k.jpg", "how": "killed by signal: Killed", "kind": "died", "pid": 3}
    readers, _ = _store(tmp_path / "mixed", limit, [dict(timeout, pid=1), crash])  # a crash counts under any limit
    readers.recover()
    assert ("k" in readers.skip) == skipped


def test_a_markers_reader_is_alive_while_it_holds_its_lock_whatever_its_pid(clean, data, tmp_path):
    """A reused pid (a restarted container of the same host name), a thread of this very process: a real death, counted.
    A live reader on another machine sharing the folder (its marker locked): not a death."""
    out = shutil.copytree(clean / "run", tmp_path / "run")
    folder = out / "shards" / "0-of-1.reading"
    folder.mkdir()
    live = subprocess.Popen(["sleep", "60"])
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        _planted(folder, "main", "dead_under_a_live_pid", live.pid, socket.gethostname())
        _planted(folder, "worker-1", "dead_under_a_thread_id", thread.native_id, socket.gethostname())
        _planted(folder, "worker-0", "read_elsewhere", 12345, "another-host")
        with open(folder / "worker-0", "r+") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            assert main(images_extract_args(clean, data[1], out)) == 0
    finally:
        live.kill()
        stop.set()
        thread.join()
    deaths = _sessions(out)[-1].get("reader_deaths", [])
    assert sorted(d["key"] for d in deaths) == ["dead_under_a_live_pid", "dead_under_a_thread_id"], deaths


#: a reader killed while it reads, after forking a DataLoader-like worker (worker_init) that outlives it
FORKS_THEN_DIES = """
import multiprocessing, os, signal, sys, time
from nlanalysis.extract.loading import worker_init
from nlanalysis.extract.readers import ReadMarker
from nlanalysis.extract.sources import ImageItem

def child(ready):
    quiet = os.open(os.devnull, os.O_WRONLY)  # not the pipes of the parent's output: they end when it dies
    os.dup2(quiet, 1), os.dup2(quiet, 2)
    worker_init(0)
    ready.set()
    time.sleep(60)

marker = ReadMarker(sys.argv[1], "earlier")
with marker.reading(ImageItem("a.jpg", "a.jpg", "/x/a.jpg", "a.jpg")):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=child, args=(ready,))
    p.start()
    ready.wait()
    print(p.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_worker_does_not_keep_its_parents_marker_lock(tmp_path):
    readers, session = _store(tmp_path)
    proc = subprocess.run([sys.executable, "-c", FORKS_THEN_DIES, str(readers.folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout)
    try:
        os.kill(child, 0)  # the forked worker lives on, its parent's marker descriptor closed
        readers.recover()
        assert [d["key"] for d in session.get("reader_deaths", [])] == ["a.jpg"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_only_the_current_loaders_workers_markers_count(tmp_path):
    """A marker of this session left by a worker of a loader dropped earlier (terminated mid-read), its pid since taken
    by another process: neither a death at the next error nor a process to kill; it goes when its loader is dropped."""
    readers, session = _store(tmp_path, read_timeout=1.0)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        _planted(readers.folder, "worker-1", "img_b", victim.pid, socket.gethostname(), session="now", since=time.time() - 30)
        assert readers._dead_worker(RuntimeError("DataLoader timed out after 1 seconds")) is False
        time.sleep(0.2)
        assert victim.poll() is None and not session.get("reader_deaths")
        assert list(readers.batches(lambda batches, skip: list(batches), [[0], [1]])) == [[0], [1]]
        assert not (readers.folder / "worker-1").exists()  # dropped with its loader
    finally:
        victim.kill()
