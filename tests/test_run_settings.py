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
    argv = ["train", *SMALL, "--epochs", "1", "--b_solver", "broyden", "--b_options", "throw=True", "--b_max_iter", "1", "--b_tol", "1e-12",
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


# -- old settings: the names before the renames still load (config.translate_legacy) ----------------

def test_old_names_are_translated_and_a_contradiction_is_one_line():
    from implicit_snn.app.config import translate_legacy

    old = {"backward": "spiking", "b_max_iter": 100, "b_options": {"time_steps": 100, "threshold": 0.5}, "lr": 0.1}
    assert translate_legacy(old) == {"b_solver": "spide", "b_max_iter": 100, "b_options": {"threshold": 0.5}, "lr": 0.1}
    assert old["b_options"] == {"time_steps": 100, "threshold": 0.5}  # the input is left as it was
    # Without a b_max_iter the old simulation length becomes it; T None (the old default) was b_max_iter already.
    assert translate_legacy({"b_solver": "spiking", "b_options": {"time_steps": 40}}) == \
        {"b_solver": "spide", "b_options": {}, "b_max_iter": 40}
    assert translate_legacy({"b_solver": "spiking", "b_max_iter": 9, "b_options": {"time_steps": None}}) == \
        {"b_solver": "spide", "b_max_iter": 9, "b_options": {}}
    today = {"b_solver": "phantom", "b_max_iter": 30, "b_options": {"steps": 0}}
    assert translate_legacy(today) == today  # today's names pass unchanged
    with pytest.raises(ValueError, match=r"^run.json: the spiking backward's option time_steps=100 and "
                                         r"b_max_iter=30 disagree; spide runs exactly b_max_iter steps"):
        translate_legacy({"b_solver": "spiking", "b_max_iter": 30, "b_options": {"time_steps": 100}}, "run.json")
    with pytest.raises(ValueError, match=r"`backward` \('anderson', the old name of `b_solver`\) and `b_solver` "
                                         r"\('broyden'\) disagree"):
        translate_legacy({"backward": "anderson", "b_solver": "broyden"})


def test_an_old_settings_file_reads_in_todays_names(tmp_path, capsys):
    from implicit_snn.app.config import read_config_file, resolve

    path = tmp_path / "old.json"
    path.write_text(json.dumps({"backward": "spiking", "b_max_iter": 50, "b_options": {"time_steps": 50}}))
    config = resolve(read_config_file(path), {})
    assert (config.b_solver, config.b_max_iter, config.b_options) == ("spide", 50, {})
    path.write_text(json.dumps({"b_solver": "spiking", "b_max_iter": 30, "b_options": {"time_steps": 50}}))
    message = cli_error(["train", "--config", str(path), "--out", str(tmp_path / "x")], capsys)
    assert message.startswith("error: config file old.json: the spiking backward's option time_steps=50 and "
                              "b_max_iter=30 disagree")
    assert not (tmp_path / "x").exists()


def test_a_zero_backward_budget_is_refused_everywhere(tmp_path, capsys):
    """One switch for the Jacobian-free gradient, phantom with steps=0: a zero b_max_iter is no other way to it."""
    assert cli_error(["train", "--b_max_iter", "0", "--out", str(tmp_path / "x")], capsys).endswith(
        "argument --b_max_iter/--b-max-iter: must be an integer >= 1, got '0'")
    (tmp_path / "zero.toml").write_text("b_max_iter = 0\n")
    message = cli_error(["train", "--config", str(tmp_path / "zero.toml"), "--out", str(tmp_path / "x")], capsys)
    assert message == "error: setting --b_max_iter must be an integer >= 1, got 0"
    assert not (tmp_path / "x").exists()


def test_every_committed_run_config_loads():
    """The config.json files under docs/runs/ and bench/results/ (made before some renames) are settings
    files too: each one resolves, and none holds a solver name that is gone."""
    import glob
    from pathlib import Path

    import solvers
    from implicit_snn.app.config import read_config_file, resolve

    root = Path(__file__).resolve().parent.parent
    paths = sorted({*glob.glob(str(root / "docs/runs/**/config.json"), recursive=True),
                    *glob.glob(str(root / "bench/results/**/config.json"), recursive=True)})
    assert len(paths) > 20
    for path in paths:
        config = resolve(read_config_file(path), {})
        assert config.b_solver in solvers.available_solvers() and config.b_max_iter >= 1, path


def test_a_run_saved_in_old_names_evaluates_and_resumes(tmp_path):
    """A checkpoint's settings cannot be rewritten like a config.json: they are translated when read,
    by eval and by --resume alike."""
    import torch

    from implicit_snn.files import atomic_torch_save

    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--b_solver", "spide", "--b_max_iter", "5", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["b_solver"], config["b_max_iter"], config["b_options"]) == ("spide", 5, {})
    old = {**{k: v for k, v in config.items() if k != "b_solver"}, "backward": "spiking", "b_options": {"time_steps": 5}}
    (out / "config.json").write_text(json.dumps(old))
    for name in ("checkpoint-last.pt", "checkpoint-best.pt"):
        checkpoint = torch.load(out / name, weights_only=False)
        atomic_torch_save({**checkpoint, "config": old}, out / name)
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["results"][0]["acc"] >= 0
    assert main(["train", "--resume", "--epochs", "2", "--out", str(out)]) == 0
    resumed = json.loads((out / "config.json").read_text())
    assert (resumed["b_solver"], resumed["b_max_iter"], resumed["b_options"]) == ("spide", 5, {})
    assert "backward" not in resumed
