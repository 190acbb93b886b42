"""Atomic writes: all or nothing, the permissions a plain open() would give, and a failure that
names the file asked for."""

import errno
import os
import stat

import pytest

from implicit_snn.app.rundir import RunDir
from implicit_snn.files import WriteError, atomic_file, atomic_write_text, check_writable
from implicit_snn.app.cli import main
from tests.helpers import intercept_writes


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path, umask_027):
    path = atomic_write_text(tmp_path / "sub" / "a.json", "{}\n")
    assert path.read_text() == "{}\n" and mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_every_file_of_a_run_is_group_readable(tmp_path, umask_027):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--val-size", "64", "--batch-size", "32", "--time-steps", "3",
                 "--threads", "1", "--epochs", "1", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(RunDir.RUN_FILES)  # every run file, the data-files record included
    assert {p.name: mode(p) for p in out.iterdir()} == dict.fromkeys(files, 0o640)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_full_disk_names_the_file_and_leaves_the_old_one_whole(tmp_path, monkeypatch, where):
    path = atomic_write_text(tmp_path / "a.json", "old")
    if where == "write":
        intercept_writes(monkeypatch, "a.json", room=3)
    else:
        monkeypatch.setattr(os, where, _enospc)
    with pytest.raises(WriteError) as info:
        atomic_write_text(path, "the new contents")
    assert str(info.value) == f"cannot write {path}: No space left on device"
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(path))
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file


def test_an_error_of_the_block_itself_is_not_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_file(tmp_path / "copy") as handle:
            handle.write((tmp_path / "missing").read_bytes())
    assert list(tmp_path.iterdir()) == []


def test_a_folder_in_the_way_names_the_path_given(tmp_path):
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path}: it is a folder$"):
        atomic_write_text(tmp_path, "{}")
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path}: it is a folder$"):
        check_writable(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path / 'file'}: it is a file, not a folder$"):
        check_writable(tmp_path / "file", folder=True)
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file"):
        check_writable(tmp_path / "file" / "run", folder=True)
    check_writable(tmp_path / "new" / "deeper", folder=True)
    check_writable(tmp_path / "new" / "a.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # checking created nothing




def test_an_unwritable_place_is_named_as_given(unwritable):
    target = unwritable / "sub" / "a.json"
    with pytest.raises(WriteError, match=f"^cannot write {target}: {unwritable}: "):
        check_writable(target)
    with pytest.raises(WriteError, match=f"^cannot write {target}: "):
        atomic_write_text(target, "{}")
