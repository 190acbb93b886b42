"""Checkpoints that say when they are damaged, the other one used in their place, writes that fail
cleanly on a full disk, Ctrl-C held back while the run's files are written, and run directories
that are never written over unasked."""

import json
import os
import shutil
import signal
import zipfile

import pytest
import torch

from implicit_snn.app.cli import main
from implicit_snn.app.config import RunConfig
from implicit_snn.app.rundir import CheckpointError, RunDir, load_checkpoint
from implicit_snn.files import atomic_torch_save, verify_torch_file
from tests.helpers import SMALL, cli_error, comparable, intercept_writes, metrics, temporary_files


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A finished two-epoch run: what the runs below are compared with (copy it before changing it)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out)]) == 0
    return out


def copy_of(run, tmp_path, name="run"):
    return shutil.copytree(run, tmp_path / name)


def _flip(offset):
    def damage(data):
        data = bytearray(data)
        data[offset(data)] ^= 0x01
        return bytes(data)
    return damage


def _tensor_offset(data):
    """Where the first tensor's bytes start in a torch zip archive (the record archive/data/0)."""
    import io
    import struct

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len + 7


DAMAGE = {
    "empty": lambda data: b"",
    "truncated to half": lambda data: data[:len(data) // 2],
    "one byte short": lambda data: data[:-1],
    "ten bytes more": lambda data: data + bytes(10),
    "random bytes": lambda data: os.urandom(len(data)),
    "a bit of a tensor": _flip(_tensor_offset),  # torch.load alone loads this without a word
    "a bit of the pickle": _flip(lambda data: 60),
    "a bit of the digest": _flip(lambda data: len(data) - 3),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, damage):
    path = atomic_torch_save({"version": 1, "config": {}, "w": torch.arange(100.0)}, tmp_path / "c.pt")
    assert verify_torch_file(path) is True and torch.equal(torch.load(path)["w"], torch.arange(100.0))
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert any(word in message for word in ("empty", "damaged", "not a whole zip archive")), message


def test_a_checkpoint_saved_without_a_digest_is_checked_by_its_crc32s(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"version": 1, "config": {}, "w": torch.arange(100.0)}, path)  # as checkpoints were written before
    assert verify_torch_file(path) is False and torch.equal(load_checkpoint(path)["w"], torch.arange(100.0))
    path.write_bytes(DAMAGE["a bit of a tensor"](path.read_bytes()))
    with pytest.raises(CheckpointError, match="old.pt is damaged: its record .*data/0 fails its CRC32 check"):
        load_checkpoint(path)


def _damage(path, how="truncated to half"):
    path.write_bytes(DAMAGE[how](path.read_bytes()))


def test_eval_and_analyze_use_the_last_checkpoint_when_the_best_is_damaged(reference, tmp_path, capsys):
    run = copy_of(reference, tmp_path)
    best, last = run / "checkpoint-best.pt", run / "checkpoint-last.pt"
    _damage(best)
    report = tmp_path / "eval.json"
    assert main(["eval", str(run), "--json", str(report)]) == 0
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: checkpoint {best} is not a whole zip archive") and "\n" not in warning
    assert warning.endswith(f"; using {last} instead")
    result = json.loads(report.read_text())
    assert result["checkpoint"] == str(last) and result["results"][0]["acc"] == metrics(run)[-1]["test_acc"]
    assert main(["analyze", str(run), "--samples", "16", "--time-steps", "1", "--b-solver", "fixed_point",
                 "--repeats", "1", "--json", str(report)]) == 0
    assert capsys.readouterr().err.strip() == warning
    assert json.loads(report.read_text())["checkpoint"] == str(last)
    # Both damaged: one line naming both; a damaged file named itself: one line naming it.
    _damage(last, "random bytes")
    message = cli_error(["eval", str(run)], capsys)
    assert str(best) in message and str(last) in message
    assert cli_error(["eval", str(last)], capsys) == f"error: checkpoint {last} is not a whole zip archive as " \
                                                     "torch.save writes (truncated, or another kind of file)"


def test_resume_from_the_best_checkpoint_when_the_last_is_damaged(reference, tmp_path, capsys):
    """The best checkpoint is an earlier epoch's: training continues from it, the later epochs'
    metrics rows are dropped, and the run ends as the uninterrupted one did."""
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    after_one = tmp_path / "after-one.pt"
    shutil.copy(run / "checkpoint-last.pt", after_one)
    assert main(["train", "--epochs", "2", "--threads", "1", "--out", str(run), "--resume"]) == 0
    shutil.copy(after_one, run / "checkpoint-best.pt")  # as if epoch 1 had been the best
    _damage(run / "checkpoint-last.pt", "a bit of a tensor")
    config_before = (run / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--epochs", "2", "--threads", "1", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert (f"warning: checkpoint {run / 'checkpoint-last.pt'} is damaged: its bytes do not match the SHA-256 it was "
            f"saved with; resuming from {run / 'checkpoint-best.pt'} instead, saved after epoch 1: the epochs after "
            "it are trained again and their metrics rows dropped") in out
    assert f"resumed from {run / 'checkpoint-best.pt'} at epoch 2, batch 0" in out
    assert [row["epoch"] for row in metrics(run)] == [1, 2]
    assert comparable(metrics(run)) == comparable(metrics(reference))
    assert load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 2
    assert (run / "config.json").read_text() == config_before
    # Neither usable: one line naming both, and nothing written.
    _damage(run / "checkpoint-last.pt", "empty")
    _damage(run / "checkpoint-best.pt", "empty")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    message = cli_error(["train", "--epochs", "3", "--threads", "1", "--out", str(run), "--resume"], capsys)
    assert message == (f"error: checkpoint {run / 'checkpoint-last.pt'} is empty; "
                       f"checkpoint {run / 'checkpoint-best.pt'} is empty")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# -- a full disk ------------------------------------------------------------------------------------

def test_a_full_disk_while_copying_the_best_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    intercept_writes(monkeypatch, "checkpoint-best.pt", room=1000)
    message = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(run)], capsys)
    assert message == f"error: cannot write {run / 'checkpoint-best.pt'}: No space left on device"
    assert temporary_files(run) == [] and not (run / "checkpoint-best.pt").exists()
    assert load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 1  # the last checkpoint is whole


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_the_run_resumes(reference, tmp_path,
                                                                                    monkeypatch, capsys):
    run = tmp_path / "run"
    intercept_writes(monkeypatch, "checkpoint-last.pt", nth=2, room=5000)  # the second epoch's checkpoint
    message = cli_error(["train", *SMALL, "--epochs", "2", "--out", str(run)], capsys)
    assert message == f"error: cannot write {run / 'checkpoint-last.pt'}: No space left on device"
    assert temporary_files(run) == []
    assert load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 1
    assert len(metrics(run)) == 2  # written before the checkpoint; --resume drops the second row
    monkeypatch.undo()
    assert main(["train", "--epochs", "2", "--threads", "1", "--out", str(run), "--resume"]) == 0
    assert comparable(metrics(run)) == comparable(metrics(reference))


@pytest.mark.parametrize("name, nth, before", [("config.json", 1, None), ("metrics.jsonl", 2, ""),
                                              ("summary.json", 1, None)])
def test_a_full_disk_on_any_run_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys, name, nth, before):
    run = tmp_path / "run"
    intercept_writes(monkeypatch, name, nth=nth, room=10)  # metrics.jsonl is first written empty
    message = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(run)], capsys)
    assert message == f"error: cannot write {run / name}: No space left on device"
    assert temporary_files(run) == []
    assert ((run / name).read_text() if (run / name).exists() else None) == before


def test_a_full_disk_writing_the_eval_report_keeps_the_old_one(reference, tmp_path, monkeypatch, capsys):
    report = tmp_path / "eval.json"
    report.write_text("old")
    intercept_writes(monkeypatch, "eval.json", room=10)
    message = cli_error(["eval", str(reference), "--json", str(report)], capsys)
    assert message == f"error: cannot write {report}: No space left on device"
    assert report.read_text() == "old" and temporary_files(tmp_path) == []


# -- Ctrl-C while saving ------------------------------------------------------------------------------

def train_with_signals(argv) -> int:
    """``main(argv)``, where a KeyboardInterrupt (which would end the whole test session) fails the test."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("a signal interrupted the save with KeyboardInterrupt instead of waiting for it to complete")


def test_a_second_ctrl_c_while_saving_waits_for_the_checkpoint(reference, tmp_path, monkeypatch, capsys):
    """Ctrl-C at step 5 stops the run, and a second one in the middle of writing its checkpoint
    interrupts only once the file is complete."""
    original_step = torch.optim.SGD.step
    steps = []

    def step_then_interrupt(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_interrupt)
    sent = []

    def interrupt_again(writes):
        if writes == 3:
            sent.append(writes)
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    intercept_writes(monkeypatch, "checkpoint-last.pt", on_write=interrupt_again)
    assert train_with_signals(["train", *SMALL, "--epochs", "2", "--out", str(run)]) == 130
    assert sent == [3]
    assert "interrupted while saving, at epoch 1, batch 5, once the files were complete" in capsys.readouterr().out
    ckpt = load_checkpoint(run / "checkpoint-last.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (0, 5) and temporary_files(run) == []
    monkeypatch.undo()
    assert main(["train", "--epochs", "2", "--threads", "1", "--out", str(run), "--resume"]) == 0
    assert comparable(metrics(run)) == comparable(metrics(reference))


def test_two_signals_while_saving_an_epoch_stop_once_its_files_are_complete(tmp_path, monkeypatch, capsys):
    def interrupt_twice(writes):
        if writes in (2, 4):
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    intercept_writes(monkeypatch, "checkpoint-last.pt", on_write=interrupt_twice)
    previous = signal.getsignal(signal.SIGTERM)
    assert train_with_signals(["train", *SMALL, "--epochs", "2", "--out", str(run)]) == 130
    assert "interrupted while saving, at the end of epoch 1" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is previous
    assert load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 1
    assert load_checkpoint(run / "checkpoint-best.pt")["epoch"] == 1  # the best copy was made too
    assert [row["epoch"] for row in metrics(run)] == [1] and temporary_files(run) == []


# -- run directories ------------------------------------------------------------------------------------

def test_a_folder_with_files_of_the_run_names_but_no_checkpoint_is_not_written_over(tmp_path, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    mine = {"config.json": '{"my": "settings"}\n', "summary.json": "[1, 2]\n", "notes.txt": "keep me\n"}
    for name, text in mine.items():
        (run / name).write_text(text)
    message = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(run)], capsys)
    assert message == (f"error: {run} already holds config.json, summary.json but no checkpoint (a run stopped before "
                       "its first epoch ended, or files of your own): there is nothing to resume; pass --overwrite to "
                       "start afresh (it deletes those files), or --out for another directory")
    message = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(run), "--resume"], capsys)
    assert message == (f"error: --resume: {run} has no checkpoint (the run stopped before its first epoch ended); "
                       "there is nothing to resume: start it afresh with --overwrite")
    assert {p.name: p.read_text() for p in run.iterdir()} == mine
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "keep me\n"  # --overwrite deletes the run's files only
    assert json.loads((run / "config.json").read_text())["epochs"] == 1 and len(metrics(run)) == 1


def test_a_run_killed_before_its_first_checkpoint_restarts_with_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    RunDir(run).write_config(RunConfig(dataset="synthetic", epochs=1).to_dict())
    (run / ".checkpoint-last.pt.x1y2.tmp").write_bytes(b"PK\x03\x04 half")  # killed mid-save
    message = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(run)], capsys)
    assert "already holds config.json but no checkpoint" in message and "pass --overwrite" in message
    assert "nothing to resume: start it afresh with --overwrite" in cli_error(
        ["train", "--out", str(run), "--resume"], capsys)
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert temporary_files(run) == []
    assert sorted(p.name for p in run.iterdir()) == sorted(RunDir.RUN_FILES)


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if a command gets as far as building the model and data."""
    import implicit_snn.app.build as build

    def refuse(*args, **kwargs):
        raise AssertionError("the output was checked only after the data and model were built")

    monkeypatch.setattr(build, "make_trainer", refuse)
    monkeypatch.setattr(build, "load_split", refuse)


def test_an_out_that_cannot_take_a_run_is_refused_before_anything_is_built(tmp_path, capsys, no_build, unwritable):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli_error(["train", *SMALL, "--out", str(a_file)], capsys) == \
        f"error: cannot write {a_file}: it is a file, not a folder"
    assert cli_error(["train", *SMALL, "--out", str(a_file / "run")], capsys) == \
        f"error: cannot write {a_file / 'run'}: {a_file} is a file, not a folder"
    assert cli_error(["train", *SMALL, "--out", str(unwritable / "run")], capsys).startswith(
        f"error: cannot write {unwritable / 'run'}: {unwritable}: ")
    assert a_file.read_text() == "x"


def test_a_json_report_that_cannot_be_written_is_refused_before_the_work(reference, tmp_path, capsys, no_build,
                                                                        unwritable):
    for command in (["eval", str(reference)], ["analyze", str(reference)]):
        assert cli_error([*command, "--json", str(tmp_path)], capsys) == f"error: cannot write {tmp_path}: it is a folder"
        target = unwritable / "report.json"
        assert cli_error([*command, "--json", str(target)], capsys).startswith(f"error: cannot write {target}: ")
