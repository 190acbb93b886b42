"""Run settings held to what runs: resume trusts the checkpoint, config files read as written, limits on values."""

from __future__ import annotations

import json

import pytest

from implicit_snn.app.cli import main
from tests.helpers import SMALL, cli_error


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_a_hand_edited_config_is_refused_naming_the_keys(finished_run, capsys):
    path = finished_run / "config.json"
    original = path.read_text()
    edited = {**json.loads(original), "lr": 0.5, "batch_size": 16}
    path.write_text(json.dumps(edited))
    try:
        message = cli_error(["train", "--resume", "--epochs", "3", "--out", str(finished_run)], capsys)
    finally:
        path.write_text(original)
    assert "disagrees with the run's checkpoint" in message
    assert "'batch_size': (16, 32)" in message and "'lr': (0.5, 0.05)" in message


def test_resume_cannot_shrink_the_epochs_done(finished_run, capsys):
    before = (finished_run / "config.json").read_text()
    message = cli_error(["train", "--resume", "--epochs", "1", "--out", str(finished_run)], capsys)
    assert message == "error: --resume --epochs 1: the run has already trained 2 epochs; give at least 2"
    assert (finished_run / "config.json").read_text() == before  # nothing rewritten


def test_config_files_name_themselves_and_read_numbers_as_numbers(tmp_path):
    from implicit_snn.app.config import read_config_file

    (tmp_path / "run.yaml").write_text("lr: 1e-3\nweight-decay: 5E-4\nseed: 3\nmodel: f400\n")
    assert read_config_file(tmp_path / "run.yaml") == {"lr": 0.001, "weight_decay": 0.0005, "seed": 3, "model": "f400"}
    (tmp_path / "twice.toml").write_text("time-steps = 3\ntime_steps = 4\n")
    with pytest.raises(ValueError, match=r"^config file twice.toml sets `time_steps` twice \(as 'time-steps' and "
                                         r"'time_steps'\); keep one$"):
        read_config_file(tmp_path / "twice.toml")
    (tmp_path / "latin1.toml").write_bytes("lr = 0.1\n# réglage\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"^config file latin1.toml is not UTF-8 text \(byte 12\); save it as UTF-8$"):
        read_config_file(tmp_path / "latin1.toml")


def test_throw_from_the_command_line_stops_training_with_one_line(tmp_path, capsys):
    argv = ["train", *SMALL, "--epochs", "1", "--b_option", "throw=True", "--b_max_iter", "1", "--b_tol", "1e-12",
            "--out", str(tmp_path / "run")]
    message = cli_error(argv, capsys)
    assert message.startswith("error: a backward solve did not converge and throw=True was set, so training stopped "
                              "at epoch 1, batch 1: ")
    assert message.endswith("no epoch finished, so there is no checkpoint") and "did not converge (worst rel" in message


def test_threads_and_milestones_are_held_to_what_makes_sense(tmp_path, capsys):
    import os

    cores = os.cpu_count()
    out = ["--out", str(tmp_path / "x")]
    assert cli_error(["train", "--threads", str(cores + 1), *out], capsys).endswith(
        f"--threads: must be an integer from 1 to this machine's {cores} cores, got '{cores + 1}'")
    assert "distinct integers >= 0 (epochs) in increasing order" in cli_error(
        ["train", "--milestones", "30", "30", "60", *out], capsys)


def test_the_saved_settings_hold_the_t_that_ran(tmp_path):
    out = tmp_path / "spec"
    no_t = [arg for arg in SMALL if arg not in ("--time-steps", "3")]
    assert main(["train", *no_t, "--model", "6 (F6)", "--epochs", "1", "--out", str(out)]) == 0
    from implicit_snn.producers import producer_defaults

    saved = json.loads((out / "config.json").read_text())
    assert saved["time_steps"] == producer_defaults("lif")["time_steps"] == 30 and saved["leak"] == 0.95


def test_a_runs_config_json_is_a_settings_file_for_the_next_run(finished_run, tmp_path):
    again = tmp_path / "again"
    assert main(["train", "--config", str(finished_run / "config.json"), "--out", str(again)]) == 0
    first, second = (json.loads((d / "config.json").read_text()) for d in (finished_run, again))
    assert {**first, "out": None} == {**second, "out": None}
    assert json.loads((again / "data-files.json").read_text()) == []  # the synthetic dataset reads no files


def test_gamma_is_a_decay(tmp_path, capsys):
    message = cli_error(["train", "--gamma", "10", "--out", str(tmp_path / "x")], capsys)
    assert message.endswith("--gamma: must be a number in (0, 1] (the factor lr is multiplied by), got '10'")
