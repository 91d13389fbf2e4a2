"""The processes that read images (extract itself, or its DataLoader workers), and the images that kill or hang them.

A decoder that crashes (a segfault in C, the OOM killer) takes its process with it, before any failure can be
written: the image would be read again on every resume, and the run never finish. So each reading process marks the
image it is reading in a small file of the result set, ``shards/I-of-N.reading/READER`` (``main`` or ``worker-N``: the
image's key, the process, the session), put back to an empty line once the image is decoded (:class:`ReadMarker`).
The reader holds an exclusive ``flock`` on its marker while it reads; the kernel lets it go when the process dies, so
a marker that names an image while nobody holds its lock was left by a reader that died on it. (The pid and host in a
marker only inform: a pid can be reused by another process, or be a thread's, and another machine's cannot be asked;
a lock is held by the live reader alone, and over NFS it is seen from every machine.) A marker left by a reader that
is gone names the image it died on:

* found on resume (:meth:`Readers.recover`): extract died while it, or one of its workers, read that image (a
  worker's counts too: an OOM killer that takes a whole container takes extract with it);
* found while running (:meth:`Readers.batches`): a DataLoader worker died (the DataLoader raises a RuntimeError, only
  ever inside ``next``: :class:`_WorkerErrorsInNext`) or, with ``--read-timeout``, has read one image for longer (it is
  killed); the loader is made again for the batches not yet measured.

One death does not blame an image (a power loss or a ``kill -9`` of extract also leaves a marker): it is recorded in
the session (``shards/I-of-N.json``, ``reader_deaths``, synced: the count survives the next crash) and named on
stderr; the image is read again. At its second death the image fails (``failures.csv``, with why) and is not read
again, on this or any later resume: its batch mates are measured as beside an image that cannot be read. A kill after
``--read-timeout L`` is a death of its own kind (``timeout``, with its ``limit``): a valid image may be slow, so it
counts only in a session whose limit is set and no larger than ``L``; a resume without ``--read-timeout``, or with a
larger one, reads the image again (and says so).

A polite kill (SIGTERM or SIGHUP: scancel, docker stop, systemd, ``timeout``, a dropped ssh session) is no death: while
a session runs (:func:`~nlanalysis.extract.termination.exit_on_term`) it raises SystemExit (status 128 + the signal) in
extract, which removes the markers and finalises the session on its way out; once one is handled, a second such
signal, or SIGKILL, ends it at once (leaving its marker). The handler runs when extract's main thread runs Python code:
without workers, a decoder hung in C code holds it off.

A marker is written without ``fsync`` (a ``flock``, one ``pwrite`` before an image and one after, an unlock: ~20
microseconds an image, the lock ~2.5 of them, on ext4 and tmpfs alike): a killed
process's writes stay in the page cache, and a power loss, which is no image's fault, may lose it. Markers go when a
session ends alive; merge and the readers of a result set never look at them.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # not POSIX: no flock; a marker's reader is told alive by its pid and host, as before the locks
    fcntl = None  # type: ignore[assignment]

from ..files import file_kind
from .sources import ImageItem
from .store import RunStore, _read_json, _running, is_run_file, now
from .termination import default_term_handling

__all__ = ["ReadMarker", "Readers", "in_forked_worker"]

#: the first words of the DataLoader's errors when one of its workers is gone (torch 1.x-2.x)
_WORKER_DIED = "DataLoader worker (pid"
_MAIN = "main"
#: the kinds of a death: the reader died (a crash, the OOM killer, a kill), or was killed after --read-timeout
_DIED, _TIMEOUT = "died", "timeout"
#: the marker descriptors open in this process or inherited by it, and the process that opened each
_OPEN: dict[int, int] = {}


class ReadMarker:
    """The marker of the image this process reads, in ``folder`` (one file per reader; picklable: a DataLoader worker
    opens its own file the first time it reads)."""

    def __init__(self, folder: str | os.PathLike[str], session: str) -> None:
        self.folder, self.session = Path(folder), session
        self._fd: int | None = None
        self._pid, self._reader, self._host = 0, _MAIN, ""  # (of the process that opened _fd)

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "session": self.session}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @contextlib.contextmanager
    def reading(self, item: ImageItem) -> Iterator[None]:
        """Mark ``item`` as being read by this process for the block, its marker locked; an empty line again, and
        unlocked, when it ends (a Python error is the image's failure, not a death)."""
        fd = self._open()
        _flock(fd, _LOCK_EX)  # (waits only on a liveness test, which holds it for a read of the file)
        try:
            record = {"key": item.key, "path": str(item.path), "reader": self._reader, "pid": self._pid, "host": self._host,
                      "session": self.session, "since": time.time()}  # fmt: skip
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)  # one write: a killed process leaves it whole or unread
            try:
                yield
            finally:
                os.pwrite(fd, b"\n", 0)  # only the first line is read: what follows it is an older record's tail
        finally:
            _flock(fd, _LOCK_UN)

    def _open(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker: the descriptor is the parent's file
            release_inherited_markers()
            self._reader, self._host = _reader(), socket.gethostname()
            path = self.folder / self._reader
            is_run_file(path)  # a directory or a named pipe there is named, not opened
            self._fd, self._pid = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644), os.getpid()
            _OPEN[self._fd] = self._pid
        return self._fd

    def close(self) -> None:
        """Close this process's marker file (it stays)."""
        if self._fd is not None and self._pid == os.getpid():
            _OPEN.pop(self._fd, None)
            os.close(self._fd)
        self._fd = None


def release_inherited_markers() -> None:
    """In a process forked from a reader: close the marker descriptors it inherited. A ``flock`` lasts while any
    descriptor of its open file lives: a worker forked while extract read an image would keep extract's death on it
    hidden for as long as it lives."""
    for fd, pid in list(_OPEN.items()):
        if pid != os.getpid():
            del _OPEN[fd]
            with contextlib.suppress(OSError):
                os.close(fd)


_LOCK_EX, _LOCK_UN = (fcntl.LOCK_EX, fcntl.LOCK_UN) if fcntl is not None else (0, 0)


def _flock(fd: int, op: int) -> None:
    """``flock(fd, op)``; nothing where there is none, or where the file system has no locks (ENOLCK and the like: the
    marker's reader is then told alive by its pid and host)."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, op)


def in_forked_worker() -> None:
    """In a process forked from extract (a DataLoader worker, :func:`~nlanalysis.extract.loading.worker_init`): close
    the marker descriptors inherited (:func:`release_inherited_markers`) and give SIGTERM and SIGHUP back the handling
    extract found (:func:`~nlanalysis.extract.termination.default_term_handling`)."""
    release_inherited_markers()
    default_term_handling()


def _reader() -> str:
    info = torch.utils.data.get_worker_info()
    return _MAIN if info is None else f"worker-{info.id}"


class Readers:
    """The readers of one session of a shard: their markers, the deaths found, the images no longer read (``skip``:
    ``{key: failure reason}``)."""

    def __init__(self, store: RunStore, shard: str, session: dict[str, Any], read_timeout: float | None = None) -> None:
        self.store, self.shard, self.session, self.read_timeout = store, shard, session, read_timeout
        self.folder = store.shards / f"{shard}.reading"
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder}: is {file_kind(self.folder.stat().st_mode, 'a folder')}, not a folder; the result "
                             "set is damaged")  # fmt: skip
        self.folder.mkdir(exist_ok=True)
        self.marker = ReadMarker(self.folder, session["id"])
        self.skip: dict[str, str] = {}
        self._spared: dict[str, list[dict[str, Any]]] = {}

    def recover(self) -> None:
        """Record the deaths the markers left in the folder tell (earlier sessions' readers whose locks nobody holds: the
        shard is this one's; a worker orphaned alive is no death), remove the markers, and set :attr:`skip` from every
        death recorded in the run."""
        deaths, markers = [], self._markers()
        for _, record, held in markers:
            if record is not None and record["session"] != self.session["id"] and not _alive(held, record):
                who = "extract" if record["reader"] == _MAIN else f"extract's DataLoader {record['reader']}"
                deaths.append(_death(record, f"{who}, pid {record['pid']}, signal unknown"))
        self._record(deaths, "an earlier extract died while reading it")
        for marker, *_ in markers:
            marker.unlink(missing_ok=True)  # (a live orphan writes on in the file it has open: the next reader makes a new one)
        self._set_skip()
        limit = f"--read-timeout {self.read_timeout:g}" if self.read_timeout else "no --read-timeout"
        for ds in self._spared.values():
            slow = [d for d in ds if d.get("kind") == _TIMEOUT]
            print(f"nlanalysis extract: note: {ds[0]['path']}: read for longer than {_slow_words(slow)} by earlier sessions; read "
                  f"again: this session has {limit}, and such a kill counts against an image only under a limit no larger",
                  file=sys.stderr)  # fmt: skip

    def batches(self, make_loader: Callable[[Sequence[list[int]], Mapping[str, str]], Any], todo: Sequence[list[int]]
                ) -> Generator[list[Any], None, None]:  # fmt: skip
        """The loader's batches of ``todo`` (``make_loader(batches, skip)``), the loader made again for the batches left
        where a worker died reading an image or, after ``read_timeout`` seconds on one, was killed. Only the markers of
        the current loader's workers are looked at; a dropped loader's go with it (:meth:`_drop_worker_markers`)."""
        start = 0
        while start < len(todo):
            it = iter(make_loader(todo[start:], dict(self.skip)))  # (torch sets its SIGCHLD handler at the first)
            workers = _workers_of(it)
            with _WorkerErrorsInNext() as guard:
                try:
                    while True:
                        try:
                            batch = guard.next(it)
                        except StopIteration:
                            return
                        except RuntimeError as err:
                            if self._dead_worker(err, workers):
                                break  # recorded: a new loader for the batches left
                            continue  # a timeout with no image read for that long: wait on
                        start += 1
                        yield batch
                finally:
                    getattr(it, "_shutdown_workers", lambda: None)()  # (torch's, as at its last reference: joined, or terminated)
                    it = workers = None  # a killed worker's signal raising nowhere
                    self._drop_worker_markers()

    def close(self) -> None:
        """Remove the markers (the session ends alive: no reader died in it unrecorded); what is not a file stays, to be
        named by the next session."""
        self.marker.close()
        for path in self.folder.iterdir():
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    def _drop_worker_markers(self) -> None:
        """Remove the workers' markers as their loader is dropped: a worker terminated at its loader's shutdown while it
        read is no death, nor, at a later error, a worker to blame or kill; the next loader's workers make new files (a
        worker of the old one still alive writes on in its removed file)."""
        for path in self.folder.iterdir():
            if path.name != _MAIN and not path.name.startswith(".") and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)

    # -- deaths --------------------------------------------------------------------------------------------------
    def _dead_worker(self, err: RuntimeError, workers: Mapping[int, Any] | None = None) -> bool:
        """Record a death of one of ``workers`` (the current loader's processes by pid; or kill one hung) that ``err``
        tells of; ``False``: a timeout before any image was read for ``read_timeout`` seconds (wait on). Raises ``err``
        where no marker explains it. Markers of other processes (a dropped loader's, a pid reused) are not looked at."""
        workers = workers or {}
        marks = [(m, r, held) for m, r, held in self._markers() if r is not None and r["session"] == self.session["id"]
                 and r["reader"] != _MAIN and r["pid"] in workers]  # fmt: skip
        dead = [(m, r) for m, r, held in marks if not (held if held is not None else workers[r["pid"]].is_alive())]
        if dead:
            cause = err.__cause__ if str(err.__cause__).startswith(_WORKER_DIED) else err  # "killed by signal: ...", if torch said
            self._record([_death(r, str(cause).strip().rstrip(".")) for _, r in dead], "the DataLoader worker reading it died")
            for m, _ in dead:
                m.unlink(missing_ok=True)
            return True
        if self.read_timeout and "timed out" in str(err):
            hung = [(m, r) for m, r, _ in marks if time.time() - r["since"] > self.read_timeout]
            for _, r in hung:
                with contextlib.suppress(OSError, ValueError):
                    workers[r["pid"]].kill()  # (our child, not yet reaped: never another process under its pid)
            limit = f"{self.read_timeout:g}"
            how = f"read for longer than {limit} s (--read-timeout {limit}): its DataLoader worker was killed"
            self._record([_death(r, how, _TIMEOUT, self.read_timeout) for _, r in hung], "")
            for m, _ in hung:
                m.unlink(missing_ok=True)
            return bool(hung)
        if str(err).startswith(_WORKER_DIED):
            raise RuntimeError(f"{err}; it was reading no image (none is suspected): rerun the same command to resume") from err
        raise err

    def _record(self, deaths: list[dict[str, Any]], what: str) -> None:
        """Add new ``deaths`` to the session (on the disk, synced, before their markers go), name each image on stderr,
        and skip every image that died twice."""
        known = {_identity(d) for d in self._recorded()}
        new = [d for d in deaths if _identity(d) not in known]
        if not new:
            return
        self.session.setdefault("reader_deaths", []).extend(new)
        self.store.write_session(self.shard, self.session)
        skipped, said = self._set_skip(), set()
        for d in new:
            if d["key"] in skipped:
                if d["key"] not in said:
                    print(f"nlanalysis extract: warning: {skipped[d['key']]} (recorded in failures.csv)", file=sys.stderr)
                said.add(d["key"])
            elif d.get("kind") == _TIMEOUT:
                print(f"nlanalysis extract: warning: {d['path']}: {d['how']}; suspected of hanging its decoder: it is read again, "
                      "and if it is read for that long again it is recorded in failures.csv and skipped", file=sys.stderr)  # fmt: skip
            else:
                print(f"nlanalysis extract: warning: {d['path']}: {what} ({d['how']}); suspected of crashing its decoder: it is "
                      "read again, and if its reader dies on it again it is recorded in failures.csv and skipped",
                      file=sys.stderr)  # fmt: skip

    def _set_skip(self) -> dict[str, str]:
        """:attr:`skip`: the images with two deaths that count in this session (every session of the run's), with their
        failure reason: a crash counts always, a kill after ``--read-timeout L`` only while this session's limit is set
        and no larger than ``L`` (a slow image is read again without a limit or with a larger one). The images with two
        deaths that do not all count: ``_spared``."""
        by_key: dict[str, list[dict[str, Any]]] = {}
        seen = set()
        for d in self._recorded():
            if _identity(d) not in seen:
                seen.add(_identity(d))
                by_key.setdefault(d["key"], []).append(d)
        self.skip, self._spared = {}, {}
        for key, ds in by_key.items():
            counted = [d for d in ds if _counts(d, self.read_timeout)]
            if len(counted) >= 2:
                self.skip[key] = _skip_reason(counted, ds)
            elif len(ds) >= 2:
                self._spared[key] = ds
        return self.skip

    def _recorded(self) -> list[dict[str, Any]]:
        """The deaths every session of the run recorded (this one's as in memory)."""
        out = []
        for path in sorted(self.store.shards.glob("*.json")):
            if not path.name.startswith("."):
                for s in _read_json(path).get("sessions") or []:
                    if isinstance(s, dict) and s.get("id") != self.session["id"]:
                        out += s.get("reader_deaths") or []
        out += self.session.get("reader_deaths") or []
        return [d for d in out if isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("key", "path", "how"))]

    def _markers(self) -> list[tuple[Path, dict[str, Any] | None, bool | None]]:
        """The marker files, what each holds (``None``: an idle reader, or a record cut short by its writer's death) and
        whether its lock is held (by a live reader; ``None``: cannot be told here, no flock)."""
        out = []
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith("."):
                continue
            is_run_file(path)  # a pipe or a folder is named, not opened
            out.append((path, *_probe(path)))
        return out


def _workers_of(it: Any) -> dict[int, Any]:
    """The worker processes of DataLoader iterator ``it`` by pid (torch's ``_workers``; without it, the children alive as
    the loader starts)."""
    procs = getattr(it, "_workers", None)
    return {p.pid: p for p in (multiprocessing.active_children() if procs is None else procs) if p.pid is not None}


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line) if line else None
    except ValueError:
        return None
    fields = {"key": str, "path": str, "reader": str, "pid": int, "host": str, "session": str, "since": (int, float)}
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in fields.items()):
        return None
    return record


def _probe(path: Path) -> tuple[dict[str, Any] | None, bool | None]:
    """What marker ``path`` holds, and whether its lock is held (``None``: cannot be told: no flock here, or none on its
    file system). A free lock is taken while the marker is read: its reader cannot begin an image meanwhile."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # (an exclusive lock over NFS needs a file open for writing)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        held = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
            except OSError:  # ENOLCK, EBADF: no lock to test
                pass
        first = os.pread(fd, 1 << 16, 0).split(b"\n", 1)[0]
    finally:
        os.close(fd)  # (our lock with it)
    return _parse(first.decode(errors="replace").strip()), held


def _alive(held: bool | None, record: dict[str, Any]) -> bool:
    """Whether the reader of a marker whose lock is ``held`` (:func:`_probe`) lives. Where the lock cannot tell (no
    flock), the pid and host do, less surely: a reused pid (a restarted container of the same host name) hides a death,
    and another machine's reader, alive or not, cannot be seen (it is taken as dead)."""
    if held is not None:
        return held
    return record["host"] == socket.gethostname() and _running(str(record["pid"]))


def _death(record: dict[str, Any], how: str, kind: str = _DIED, limit: float | None = None) -> dict[str, Any]:
    """A death of ``record``'s reader: ``kind`` ``died`` (a crash, the OOM killer, a kill) or ``timeout`` (killed after
    reading for longer than ``limit`` seconds, ``--read-timeout``)."""
    since = _dt.datetime.fromtimestamp(record["since"], _dt.timezone.utc).astimezone().isoformat(timespec="seconds")
    return {"key": record["key"], "path": record["path"], "reader": record["reader"], "pid": record["pid"], "host": record["host"],
            "session": record["session"], "reading_since": since, "found": now(), "how": how, "kind": kind,
            **({"limit": limit} if limit is not None else {})}  # fmt: skip


def _counts(death: dict[str, Any], limit: float | None) -> bool:
    """Whether ``death`` counts against its image in a session whose ``--read-timeout`` is ``limit``."""
    if death.get("kind") != _TIMEOUT:
        return True
    return limit is not None and isinstance(death.get("limit"), (int, float)) and limit <= death["limit"]


def _slow_words(slow: list[dict[str, Any]]) -> str:
    """``"1 s twice (--read-timeout 1)"``: the kills ``slow`` after a read timeout, in words."""
    limits = sorted({float(d["limit"]) for d in slow if isinstance(d.get("limit"), (int, float))}) or [float("nan")]
    times = {1: "once", 2: "twice"}.get(len(slow), f"{len(slow)} times")
    return f"{limits[0]:g} s {times} (--read-timeout {', '.join(f'{x:g}' for x in limits)})"


def _skip_reason(counted: list[dict[str, Any]], deaths: list[dict[str, Any]]) -> str:
    """The failure reason of an image skipped for its ``counted`` deaths (of all its ``deaths``)."""
    path, died = counted[0]["path"], [d for d in counted if d.get("kind") != _TIMEOUT]
    slow = [d for d in counted if d.get("kind") == _TIMEOUT]
    if len(died) >= 2 or not slow:
        return (f"{path}: the reading process died twice while decoding this image ({'; '.join(d['how'] for d in died)}); skipped "
                "(a crash of its decoder, or the OOM killer, most likely): it is not read again on resume")  # fmt: skip
    # the largest --read-timeout under which it is still skipped: a resume without one, or with a larger one, reads it again
    limits = sorted((d["limit"] for d in deaths if d.get("kind") == _TIMEOUT and isinstance(d.get("limit"), (int, float))),
                    reverse=True)  # fmt: skip
    still = limits[min(1 - len(died), len(limits) - 1)]
    again = f"a resume without --read-timeout, or with one above {still:g} s, reads it again"
    if not died:
        return f"{path}: read for longer than {_slow_words(slow)}; skipped (a hung or very slow decoder): {again}"
    return (f"{path}: the reading process died while decoding this image ({'; '.join(d['how'] for d in died)}) and it was read "
            f"for longer than {_slow_words(slow)}; skipped (a crash or a hang of its decoder, most likely): {again}")  # fmt: skip


def _identity(death: dict[str, Any]) -> tuple[Any, ...]:
    """One death, however often it is found (a session killed between recording it and removing its marker)."""
    return tuple(str(death.get(k)) for k in ("session", "host", "pid", "key"))


class _WorkerErrorsInNext:
    """Torch's SIGCHLD handler raises a dead worker's RuntimeError wherever the main process is (inside a forward it
    would read as that batch's failure; inside a write, leave a batch half written): while installed, it raises only
    inside :meth:`next` (at once if the signal came during other work). Nothing changes where torch set no handler."""

    def __enter__(self) -> _WorkerErrorsInNext:
        self.torch = signal.getsignal(signal.SIGCHLD)
        self.waiting = self.pending = False
        self.installed = callable(self.torch) and threading.current_thread() is threading.main_thread()
        if self.installed:
            signal.signal(signal.SIGCHLD, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGCHLD, self.torch)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.waiting:
            self.torch(signum, frame)
        else:
            self.pending = True

    def next(self, it: Iterator[Any]) -> Any:
        self.waiting = True
        try:
            if self.pending:
                self.pending = False
                self.torch(signal.SIGCHLD, None)
            return next(it)
        finally:
            self.waiting = False
