"""Every file a result set (and a report) holds reaches the disk before the rename that puts it under its name, and
the rename reaches it after: a power loss leaves the old file or the new one, never an empty one under the name."""
import errno
import os
from pathlib import Path

import pandas as pd
import pytest

from nlanalysis.files import atomic_write


def _inode(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.fixture
def disk(monkeypatch):
    """The ``fsync`` and ``os.replace``/``os.rename`` calls, in order: ``("fsync", (device, inode))`` of the descriptor
    synced, ``("replace", name)`` of the file renamed onto."""
    events = []
    fsync, replace, rename = os.fsync, os.replace, os.rename

    def spy_fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino)))
        fsync(fd)

    def spy_replace(src, dst, **kwargs):
        events.append(("replace", Path(dst).name))
        replace(src, dst, **kwargs)

    def spy_rename(src, dst, **kwargs):
        events.append(("replace", Path(dst).name))
        rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "rename", spy_rename)
    return events


def _synced(path):
    """The events of one durable write of ``path``: the file, its rename, its folder."""
    return [("fsync", _inode(path)), ("replace", path.name), ("fsync", _inode(path.parent))]


def test_a_result_file_is_synced_before_its_rename_and_its_folder_after(tmp_path, disk):
    from nlanalysis.extract.store import atomic_write

    with atomic_write(tmp_path / "metrics.csv") as f:
        f.write("image_id,att\n1,0.5\n")
    assert disk == _synced(tmp_path / "metrics.csv")  # the descriptor synced is the file's: it keeps its inode when renamed
    assert (tmp_path / "metrics.csv").read_text() == "image_id,att\n1,0.5\n" and len(list(tmp_path.iterdir())) == 1


def test_a_done_images_files_are_not_synced_a_failure_record_is(tmp_path, disk):
    """Maps, checks, part: renamed unsynced (their checks catch what a power loss empties, next test): no ``fsync`` an
    image, where two a file cost extract ~24 ms an image on this machine's disk. A failure record is synced."""
    from nlanalysis.extract.sources import ImageItem
    from nlanalysis.extract.store import RunStore

    store = RunStore(tmp_path / "run")
    for d in (store.parts, store.maps, store.checks, store.failed):
        d.mkdir(parents=True)
    store.write_done("k1", pd.DataFrame({"image_id": [1], "att": [0.5]}), lambda f, sha: f.write(b"maps"), {"size": 3, "sha256": "ab"})
    assert disk == [("replace", "k1.npz"), ("replace", "k1.json"), ("replace", "k1.csv")]
    disk.clear()
    store.write_failure(ImageItem(key="k2", image_id=2, file_name="b.jpg", path="b.jpg"), "cannot decode image")
    assert disk == _synced(store.failure_path("k2"))


@pytest.mark.parametrize("emptied", ["parts/KEY.csv", "checks/KEY.json", "maps/KEY.npz"])
def test_what_a_power_loss_empties_of_a_done_image_is_redone(tmp_path, emptied, capsys):
    """A done image's file that a power loss left empty under its name (renamed, its bytes never written): the resume
    finds it against its check, or the check itself unreadable, and measures the image again."""
    from extract_inputs import images_extract_args, one_thread, tiny_checkpoint, write_photos
    from nlanalysis.cli import main

    write_photos(tmp_path / "images", n=2, max_side=96)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "run"
    args = images_extract_args(tmp_path, ckpt, out, "--jsd-pairs", "0", "--save-maps")
    with one_thread():
        assert main(args) == 0
        whole = (out / "metrics.csv").read_text()
        key = sorted(p.stem for p in (out / "parts").glob("*.csv"))[0]
        (out / emptied.replace("KEY", key)).write_bytes(b"")
        capsys.readouterr()
        assert main(args) == 0
    assert "warning: redoing a damaged image" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == whole


def test_every_writer_of_a_file_goes_through_the_one_atomic_write():
    """No module renames a file it wrote but :func:`nlanalysis.files.atomic_write` (folders: merge and report staging, and
    the staging's recovery of a killed report, which renames files back; a compiled kernel: the compiler writes it, a
    cache rebuilt when it does not load)."""
    root = Path(__file__).resolve().parents[1] / "nlanalysis"
    renaming = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                      if any(call in p.read_text() for call in ("os.replace(", "os.rename(", "tmp.replace(", "tmp.rename(")))  # fmt: skip
    assert renaming == ["extract/merge.py", "files.py", "kernels/__init__.py", "report/staging.py", "report/staging_leftovers.py"]


def test_a_staged_report_folder_is_synced_before_it_is_renamed_in(tmp_path, disk):
    from nlanalysis.report.staging import staged_folder

    with staged_folder(tmp_path / "report", frozenset({"index.md"})) as work:
        (work / "tables").mkdir()
        (work / "index.md").write_text("# report\n")
        (work / "tables" / "t.csv").write_text("a\n1\n")
    out = tmp_path / "report"
    synced = [e[1] for e in disk[: disk.index(("replace", "report"))]]
    assert {_inode(out / "index.md"), _inode(out / "tables" / "t.csv"), _inode(out / "tables"), _inode(out)} <= set(synced)
    assert disk[disk.index(("replace", "report")) + 1 :] == [("fsync", _inode(tmp_path))]


def test_a_folder_that_cannot_be_synced_is_skipped_an_io_error_is_not(tmp_path, monkeypatch):
    from nlanalysis import files

    def no_folders(path, flags, *args):
        raise PermissionError(errno.EACCES, "Access is denied", str(path))  # Windows opens no folder

    with monkeypatch.context() as m:
        m.setattr(os, "open", no_folders)
        files.fsync_folder(tmp_path)

    def fails(code):
        def fsync(fd):
            raise OSError(code, os.strerror(code))

        return fsync

    monkeypatch.setattr(os, "fsync", fails(errno.EINVAL))  # a file system without folder sync
    files.fsync_folder(tmp_path)
    monkeypatch.setattr(os, "fsync", fails(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        files.fsync_folder(tmp_path)


def test_a_merged_run_is_synced_before_it_is_renamed_in(tmp_path, disk):
    """Merge copies the shards' files into a folder beside ``--out`` (copies that no atomic write synced): all of them
    reach the disk before the folder is renamed in, the rename after."""
    from extract_inputs import images_extract_args, one_thread, tiny_checkpoint, write_photos
    from nlanalysis.cli import main
    from nlanalysis.extract import merge_runs

    write_photos(tmp_path / "images", n=2, max_side=96)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    shards = [tmp_path / f"s{i}" for i in range(2)]
    with one_thread():
        for i, out in enumerate(shards):
            assert main(images_extract_args(tmp_path, ckpt, out, "--shard", f"{i}/2", "--jsd-pairs", "0")) == 0
    disk.clear()
    merge_runs(shards, tmp_path / "merged")
    out = tmp_path / "merged"
    renamed = disk.index(("replace", "merged"))
    entries = [out, *out.rglob("*")]  # parts, checks, maps, shards, failed, run.json, metrics.csv, ... and the folders
    assert len(entries) > 10 and {_inode(p) for p in entries} <= {e[1] for e in disk[:renamed]}
    assert disk[renamed + 1 :] == [("fsync", _inode(tmp_path))]


def test_a_failed_write_names_the_file_written_not_its_hidden_temporary(tmp_path):
    """A missing folder was reported as '.../nodir/.x.csv.PID.tmp' (a name the user never gave), and an OSError with no
    errno as '[Errno None] ...'; another file's error keeps its own name."""
    target = tmp_path / "nodir" / "x.csv"
    with pytest.raises(FileNotFoundError) as info:
        with atomic_write(target) as f:
            f.write("a")
    assert info.value.filename == str(target) and ".tmp" not in str(info.value)
    with pytest.raises(OSError) as info:
        with atomic_write(tmp_path / "y.csv") as f:
            raise OSError("custom message")
    assert str(info.value) == f"custom message (writing {tmp_path / 'y.csv'})"
    other = tmp_path / "elsewhere.bin"
    with pytest.raises(PermissionError) as info:
        with atomic_write(tmp_path / "z.csv") as f:
            raise PermissionError(13, "Permission denied", str(other))
    assert info.value.filename == str(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no temporary file is left"
