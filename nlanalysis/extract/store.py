"""A run's result set on disk: atomic per-image parts, resumable, shardable, mergeable.

Layout of ``RUN_DIR``::

    run.json          settings, checkpoint (path, sha256, format, architecture, blocks),
                      preprocessing, package versions, start/end times, counts, sessions
    images.csv        the whole selection (all shards) in run order: key, image_id, file_name
    metrics.csv       one row per (image, block), assembled from parts/ in run order
    failures.csv      images that could not be analysed: image_id, file_name, path, reason
    parts/KEY.csv     the rows of one image (its existence means: this image is done)
    checks/KEY.json   size and sha256 of the image's part and maps, written just before its part
    failed/KEY.json   why one image failed (removed if a later session analyses it)
    maps/KEY.npz      the image's query maps (``--save-maps``; see ``nlanalysis.extract.maps``)
    shards/I-of-N.json  the sessions of one shard (start, end, device, command, counts, readers that died)
    shards/I-of-N.reading/READER  the image a reading process is on (``nlanalysis.extract.readers``; gone when a
                      session ends alive, never merged)

Every file is written to a temporary name in its folder and renamed (:func:`nlanalysis.files.atomic_write`), so a
process killed at any point leaves each file either complete or absent; ``maps/KEY.npz`` is
written before ``checks/KEY.json``, and that before ``parts/KEY.csv``. Each file is also synced before its rename and
its folder after (``fsync``: after a power loss no empty file stands under a name) but a done image's three files,
which resume and merge check (a power loss that empties one makes its image redone, not wrong): two ``fsync`` calls a
file would cost an image more than ten milliseconds. An image counts as done iff
its part exists and its files match their checks (:func:`~nlanalysis.extract.resume.verify_done`, on resume: a damaged one
is redone and named in the session), so a rerun skips it, and ``metrics.csv`` (re-)assembled from
the parts holds exactly the rows of an uninterrupted run. Leftover temporary files
(``.NAME.PID.tmp``) are ignored.

Several processes (shards, torchrun ranks) may share one ``RUN_DIR``: they write disjoint parts,
and assembly runs under an exclusive ``flock`` on ``RUN_DIR/.lock``. One process at a time holds a
shard (``flock`` on ``shards/I-of-N.lock``, :func:`~nlanalysis.extract.resume.claim_shard`): a second identical command is
refused, naming the first's pid and host.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import hashlib
import io
import json
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..files import atomic_write as _atomic_write
from ..files import broken_link, file_kind
from .definitions import check_same_definitions
from .sources import ImageItem

__all__ = ["FORMAT", "RunStore", "atomic_write", "file_check", "frame_from_csv", "is_run_file", "now", "parts_digest", "read_csv",
           "sha256_file"]

FORMAT = "nlanalysis-run"
FORMAT_VERSION = 1
FAILURE_COLUMNS = ["image_id", "file_name", "path", "reason"]


def now() -> str:
    """The current time, ISO 8601 with time zone."""
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


#: the entry of ``checks/KEY.json`` for the image file a done image was measured on (not a file of the run)
IMAGE_CHECK = "image file"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", sync: bool = True) -> Iterator[Any]:
    """A file of the result set written through :func:`nlanalysis.files.atomic_write` (``.NAME.PID.tmp``, synced unless
    ``sync=False``, renamed onto ``path``); ValueError, naming it, where a directory or a named pipe stands under its name
    (:func:`is_run_file`; the rename failed with a bare errno, or replaced the pipe without a word)."""
    is_run_file(Path(path))
    with _atomic_write(path, mode, sync=sync) as f:
        yield f


def _running(pid: str) -> bool:
    """Whether process ``pid`` (a temporary file's writer, :func:`atomic_write`) runs on this machine (not this one)."""
    if not pid.isdigit() or int(pid) == os.getpid() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_json(path: Path, data: dict[str, Any], sync: bool = True) -> None:
    with atomic_write(path, sync=sync) as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def is_run_file(path: Path) -> bool:
    """Whether a file of a result set is there (``False``: missing); ValueError naming it where something else stands under
    its name (a directory, a named pipe: opening a pipe would wait for a writer; a broken symbolic link: none of them is
    read as missing, e.g. a failures.csv as no failures)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        link = broken_link(path)
        if link is not None:
            raise ValueError(f"{path}: is {link}, not a regular file; the result set is damaged") from None
        return False
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: is {file_kind(mode)}, not a regular file; the result set is damaged")
    return True


def _read_json(path: Path) -> dict[str, Any]:
    is_run_file(path)  # a named pipe is refused unopened (a missing file: FileNotFoundError from open)
    with open(path) as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err}); the file is damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object; the file is damaged")
    return data


class RunStore:
    """Reads and writes the files of one ``RUN_DIR`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.failed = self.root / "failed"
        self.maps = self.root / "maps"
        self.shards = self.root / "shards"
        self.checks = self.root / "checks"

    # -- paths ---------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def part_path(self, key: str) -> Path:
        return self.parts / f"{key}.csv"

    def maps_path(self, key: str) -> Path:
        return self.maps / f"{key}.npz"

    def check_path(self, key: str) -> Path:
        return self.checks / f"{key}.json"

    def failure_path(self, key: str) -> Path:
        return self.failed / f"{key}.json"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on the run directory (between processes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- opening ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return is_run_file(self.run_json)

    def info(self) -> dict[str, Any]:
        if not self.exists():
            raise FileNotFoundError(f"{self.root}: not a result set of `nlanalysis extract` (no run.json)")
        info = _read_json(self.run_json)
        selection = (info.get("settings") or {}).get("selection") if isinstance(info.get("settings"), dict) else None
        if info.get("format") == FORMAT and not (isinstance(selection, dict) and isinstance(selection.get("id_type"), str)):
            # (how every id is read back; another program's run.json is refused by its format, where it is opened)
            raise ValueError(f"{self.run_json}: not an extract run.json (no settings.selection.id_type); the file is damaged")
        return info

    def images(self) -> pd.DataFrame:
        """``images.csv``: ``key``, ``image_id`` (typed as ``run.json`` says), ``file_name``."""
        id_type = self.info()["settings"]["selection"]["id_type"]
        is_run_file(self.root / "images.csv")
        return read_csv(self.root / "images.csv", dtype={"image_id": id_type, "key": str, "file_name": str}, keep_default_na=False)

    def keys(self) -> list[str]:
        """The selection's image keys in run order (from ``images.csv``, every column read as text)."""
        is_run_file(self.root / "images.csv")
        return read_csv(self.root / "images.csv", dtype=str, keep_default_na=False)["key"].tolist()

    def open(self, info: dict[str, Any], items: Sequence[ImageItem]) -> None:
        """Create the run directory for ``info`` (a new ``run.json``), or check that the existing
        one holds a run with the same settings (then it is resumed). Refuses a folder that holds
        other files (nothing is created in it)."""
        if self.root.is_dir() and not self.exists() and not (self.root / ".lock").exists():  # .lock: made by extract
            self._refuse_foreign()
        with self.lock():  # another shard may be creating the run: after it, run.json exists
            for d in (self.parts, self.failed, self.maps, self.shards, self.checks):
                d.mkdir(parents=True, exist_ok=True)
            if self.exists():
                old = self.info()
                if old.get("format") != FORMAT:
                    raise ValueError(f"--out {self.root}: its run.json is not one `nlanalysis extract` wrote; give a new or empty folder")
                check_same_definitions(old["settings"], self.root)  # first: its own words (the same arguments would not do)
                check_same_settings(old["settings"], info["settings"], self.root)
                for name in ("images.csv", "metrics.csv", "failures.csv"):  # before any work, not at assembly
                    is_run_file(self.root / name)
                return
            self._refuse_foreign(opening=True)
            for p in self.root.glob(".*.tmp"):  # a killed open's (a running one would hold the lock)
                p.unlink(missing_ok=True)
            table = pd.DataFrame(
                {"key": [it.key for it in items], "image_id": [it.image_id for it in items], "file_name": [it.file_name for it in items]}
            )
            with atomic_write(self.root / "images.csv") as f:
                table.to_csv(f, index=False)
            _write_json(self.run_json, info)

    def _refuse_foreign(self, opening: bool = False) -> None:
        """Raise unless the folder (without ``run.json``) is empty but for what :meth:`open` made:
        extract writes only into a new or empty folder or its own result set, never over other files.
        ``opening`` (under the lock, in a folder extract made): also ``images.csv`` and temporary files an open
        killed before its ``run.json`` left (they are written again)."""
        own = {".lock", *(d.name for d in (self.parts, self.failed, self.maps, self.shards, self.checks))}
        if opening:
            own |= {"images.csv", *(p.name for p in self.root.glob(".*.tmp"))}
        foreign = sorted(p.name for p in self.root.iterdir() if p.name not in own or (p.is_dir() and any(p.iterdir())))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ValueError(f"--out {self.root} is not empty and not a result set of `nlanalysis extract` (it holds {shown}, "
                             "but no run.json); give a new or empty folder")  # fmt: skip

    # -- per image -------------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        return {p.name[:-4] for p in self.parts.glob("*.csv") if not p.name.startswith(".")}

    def failed_keys(self) -> set[str]:
        return {p.name[:-5] for p in self.failed.glob("*.json") if not p.name.startswith(".")}

    def clean_temporary(self, keys: set[str]) -> None:
        """Remove temporary files a killed process left for ``keys`` (only this shard's keys; a file of a process still
        running here, such as a run of another shard plan over the same images, is its own: left alone)."""
        for folder in (self.parts, self.maps, self.failed, self.checks):
            for p in folder.glob(".*.tmp"):
                parts = p.name[1:].rsplit(".", 3)  # KEY, extension, writer's pid, "tmp"
                if len(parts) == 4 and parts[0] in keys and not _running(parts[2]):
                    p.unlink(missing_ok=True)

    def write_done(self, key: str, rows: pd.DataFrame, save: Callable[[Any, str | None], None] | None = None,
                   image: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Write one done image: its maps (``save(file, image_sha256)`` writes the npz into an open binary file), the
        checks of its files (and ``image``, the :func:`file_check` of the image file's bytes that were decoded and
        measured, not of the file read again: a resume on other pictures under the same names is refused,
        :func:`~nlanalysis.extract.resume.plan_shard`), then its part (which marks it done). None is synced (module
        docstring): a file a power loss empties fails its check, on resume and merge, and its image is redone."""
        checks: dict[str, Any] = {}
        if image is not None:
            checks[IMAGE_CHECK] = dict(image)
        if save is not None:
            with atomic_write(self.maps_path(key), "wb", sync=False) as f:
                save(f, checks[IMAGE_CHECK]["sha256"] if IMAGE_CHECK in checks else None)
            checks[f"maps/{key}.npz"] = file_check(self.maps_path(key).read_bytes())
        data = rows.to_csv(index=False).encode()
        checks[f"parts/{key}.csv"] = file_check(data)
        _write_json(self.check_path(key), checks, sync=False)
        with atomic_write(self.part_path(key), "wb", sync=False) as f:
            f.write(data)
        self.failure_path(key).unlink(missing_ok=True)

    def write_failure(self, item: ImageItem, reason: str) -> None:
        """Record why ``item`` failed; maps and checks an earlier, killed attempt left for it go (they are not the run's)."""
        row = {"image_id": item.image_id, "file_name": item.file_name, "path": item.path, "reason": reason}
        _write_json(self.failure_path(item.key), row)
        if not is_run_file(self.part_path(item.key)):
            for p in (self.maps_path(item.key), self.check_path(item.key)):
                p.unlink(missing_ok=True)

    def write_session(self, shard: str, session: dict[str, Any]) -> None:
        """Append (or update, by ``session['id']``) one session of ``shard``."""
        path = self.shards / f"{shard}.json"
        with self.lock():
            sessions = _read_json(path)["sessions"] if is_run_file(path) else []
            sessions = [s for s in sessions if s.get("id") != session["id"]] + [session]
            _write_json(path, {"shard": shard, "sessions": sessions})

    # -- assembly ----------------------------------------------------------------------------
    def read_metrics_text(self, keys: Sequence[str], read: list[str] | None = None) -> str:
        """The CSV text of all parts of ``keys`` (in that order), one header; ``read`` gets the keys whose parts it holds.

        Each part must have the header most parts have and that many fields on every line; a
        part that does not is named (not the next good one)."""
        texts = {}
        for key in keys:
            if not is_run_file(self.part_path(key)):
                continue
            try:
                texts[key] = self.part_path(key).read_bytes().decode()
            except FileNotFoundError:
                continue
            except UnicodeDecodeError:
                raise ValueError(f"{self.part_path(key)}: not text (a damaged part); rerun extract with the same arguments to redo it") from None
        if read is not None:
            read.extend(texts)
        if not texts:
            return ""
        header = Counter(t.partition("\n")[0] for t in texts.values()).most_common(1)[0][0]
        width = len(next(csv.reader([header])))
        for key, text in texts.items():
            first, _, rest = text.partition("\n")
            bad = first != header or any(len(row) != width for row in csv.reader(io.StringIO(rest)) if row)
            if bad:
                raise ValueError(f"{self.part_path(key)}: not a part like the others of {self.root} (other columns or a damaged "
                                 "line); rerun extract with the same arguments to redo it")  # fmt: skip
        return header + "\n" + "".join(t.partition("\n")[2] for t in texts.values())

    def counts(self, keys: Sequence[str]) -> dict[str, int]:
        done, failed = self.done_keys(), self.failed_keys() - self.done_keys()
        n_done = sum(k in done for k in keys)
        n_failed = sum(k in failed for k in keys)
        return {"total": len(keys), "done": n_done, "failed": n_failed, "pending": len(keys) - n_done - n_failed}

    def assemble(self) -> dict[str, Any]:
        """Write ``metrics.csv``, ``failures.csv`` and ``run.json`` from what is on disk; return run.json."""
        with self.lock():
            info = self.info()
            keys = self.keys()  # not typed ids: assembly must not fail on an id, whatever the selection held
            read: list[str] = []  # the parts metrics.csv holds (another shard may add one meanwhile: it is not counted)
            metrics = self.read_metrics_text(keys, read)
            with atomic_write(self.root / "metrics.csv") as f:
                f.write(metrics)
            failed = self.failed_keys() - self.done_keys()
            rows = [_read_json(self.failure_path(k)) for k in keys if k in failed]
            failures = pd.DataFrame(rows, columns=FAILURE_COLUMNS).to_csv(index=False)
            with atomic_write(self.root / "failures.csv") as f:
                f.write(failures)
            counts = self.counts(keys)
            shards = {p.stem: _read_json(p)["sessions"] for p in sorted(self.shards.glob("*.json")) if not p.name.startswith(".")}
            sessions = [s for ss in shards.values() for s in ss]
            info.update(
                counts=counts,
                complete=counts["pending"] == 0,
                started=min((s["started"] for s in sessions), default=info.get("started")),
                finished=max((s.get("finished") or "" for s in sessions), default=None) if counts["pending"] == 0 else None,
                shards=shards,
                assembled_parts=len(read),
                assembled_keys=parts_digest(read),
                assembled_files={"metrics.csv": file_check(metrics.encode()), "failures.csv": file_check(failures.encode())},
            )
            _write_json(self.run_json, info)
            return info


def assembled_text(root: Path, name: str, info: dict[str, Any]) -> str:
    """The text of ``metrics.csv`` or ``failures.csv`` in ``root``, checked against the size and sha256 that ``run.json``
    recorded when it was assembled (``assembled_files``; older run.json: unchecked): a copy cut short or edited since
    would otherwise read as fewer images or other numbers (ValueError naming the file)."""
    path = root / name
    is_run_file(path)
    data = path.read_bytes()
    want = (info.get("assembled_files") or {}).get(name)
    if want is not None and file_check(data) != want:
        raise ValueError(f"{path}: {len(data):,} bytes, not the {want['size']:,} bytes (sha256 {want['sha256'][:12]}...) its run.json "
                         "recorded: cut short or changed since it was written; copy the result set again, or rerun extract with the "
                         "same arguments where its parts/ are")  # fmt: skip
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not text (a damaged file)") from None


def parts_digest(keys: Iterable[str]) -> str:
    """The sha256 of a set of image keys (``run.json``'s ``assembled_keys``: which parts ``metrics.csv`` holds)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def file_check(data: bytes) -> dict[str, Any]:
    """The size and sha256 of a file's bytes, as ``checks/KEY.json`` and ``run.json`` record them."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


RESUME_HINT = "use another --out, or the same arguments to resume"


def check_same_settings(old: dict[str, Any], new: dict[str, Any], where: Path | str, hint: str = RESUME_HINT) -> None:
    """Raise if two runs' settings differ, naming the first settings that do; ``hint``: what to do."""
    diff = _differences(old, new)
    if diff:
        shown = "; ".join(f"{k}: {_short(a)} vs {_short(b)}" for k, a, b in diff[:3])
        raise ValueError(f"{where} holds a run with other settings ({shown}); {hint}")


def _differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of each entry that differs, down into mappings (the run's value, not its
    whole section, is what a reader needs)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [(path or "settings", old, new)]
    out = []
    for k in sorted(set(old) | set(new), key=str):
        out += _differences(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
    return out


def _short(value: Any, limit: int = 120) -> str:
    """``value`` as JSON, cut to ``limit`` characters with a mark where cut (a cut 10 must not read as 1)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_csv(source: str | os.PathLike[str] | io.StringIO, *, where: Any = None, **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` whose errors (tokenizer, dtype) name the file (``where``, default ``source``)."""
    try:
        return pd.read_csv(source, **kwargs)
    except (ValueError, pd.errors.ParserError) as err:  # ParserError is a ValueError; named for the reader
        raise ValueError(f"{where if where is not None else source}: cannot be read as CSV ({err})") from None


def frame_from_csv(text: str, id_type: str, where: Any = "metrics") -> pd.DataFrame:
    """A metrics (or failures) table from CSV text (empty table for empty text); errors name ``where``.

    ``image_id`` (typed ``id_type``) and ``file_name`` are read as written: a photo or file called ``NA``, ``null`` or
    ``nan`` keeps its name (pandas would read it as missing, and two such images as one NaN id)."""
    if not text.strip():
        return pd.DataFrame()
    frame = read_csv(io.StringIO(text), where=where, dtype={"image_id": id_type, "file_name": str})
    names = [c for c in ("image_id", "file_name") if c in frame and not pd.api.types.is_integer_dtype(frame[c])]
    if names:  # the text columns again, with no value taken for missing
        kept = read_csv(io.StringIO(text), where=where, usecols=names, dtype=str, keep_default_na=False)
        frame[names] = kept[names]
    return frame
