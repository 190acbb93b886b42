"""Atomic writes: all or nothing, and the permissions a plain open() would give."""

import os
import stat

import pytest

from implicit_snn.files import atomic_file, atomic_write_text
from implicit_snn.app.cli import main


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
    assert files == ["checkpoint-best.pt", "checkpoint-last.pt", "config.json", "metrics.jsonl", "summary.json"]
    assert {p.name: mode(p) for p in out.iterdir()} == dict.fromkeys(files, 0o640)
