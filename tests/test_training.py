"""The trainer and the train/eval commands: exact resume, checkpoints, metrics, clear errors."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import models

from implicit_snn.app.cli import main
from implicit_snn.app.build import model_from_config
from implicit_snn.app.config import RunConfig, read_config_file, resolve
from implicit_snn.training import step_schedule
from tests.helpers import SMALL, cli_error, comparable, metrics, write_nmnist


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    # A run made before a setting existed resumes: the missing setting reads as its default.
    saved_path = tmp_path / "split" / "config.json"
    saved = json.loads(saved_path.read_text())
    saved_path.write_text(json.dumps({k: v for k, v in saved.items() if k not in ("bn_momentum", "alpha_init")}))
    with pytest.raises(SystemExit, match="settings that differ from the run's: {'bn_momentum': \\(0.1, 0.5\\)}"):
        main(["train", *SMALL, "--epochs", "3", "--out", str(tmp_path / "split"), "--resume", "--bn-momentum", "0.5"])
    # --resume takes the run's own settings: only the run directory and what may change are needed.
    assert main(["train", "--epochs", "3", "--threads", "1", "--out", str(tmp_path / "split"), "--resume"]) == 0
    full, split = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert len(full) == len(split) == 3
    assert comparable(full) == comparable(split)
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint-last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_validation_split_is_a_tenth_of_a_small_training_set(tmp_path):
    from implicit_snn.data import load_dataset

    n_train = len(load_dataset("synthetic", "train"))
    small = [a for a in SMALL if a not in ("--val-size", "64")]
    assert main(["train", *small, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["val_size"] == n_train // 10 < 5000
    # The validation accuracy logged is the checkpoint's on those n_train // 10 held-out samples.
    report = tmp_path / "val.json"
    assert main(["eval", str(tmp_path / "run"), "--split", "val", "--json", str(report)]) == 0
    evaluated = json.loads(report.read_text())
    assert evaluated["samples"] == n_train // 10
    assert evaluated["results"][0]["acc"] == metrics(tmp_path / "run")[0]["val_acc"]
    from implicit_snn.app.build import default_val_size

    assert resolve({}, {}).val_size is None  # resolved against the data
    assert [default_val_size(n) for n in (60000, 50000, 20000, 512)] == [5000, 5000, 2000, 51]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_resume_in_the_middle_of_an_epoch_after_ctrl_c(tmp_path, monkeypatch, capsys, sig):
    """A real SIGINT (Ctrl-C) or SIGTERM (a scheduler's, or torchrun's shutdown) stops after the current
    step with a checkpoint; --resume then matches an uninterrupted run."""
    original_step = torch.optim.SGD.step
    previous = signal.getsignal(sig)
    calls = []

    def step_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), sig)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_interrupt)
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(tmp_path / "cut")]) == 130
    assert "continue with --resume" in capsys.readouterr().out
    monkeypatch.setattr(torch.optim.SGD, "step", original_step)
    ckpt = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["batch"]) == (0, 5)
    assert signal.getsignal(sig) is previous  # the handler was put back
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    assert comparable(metrics(tmp_path / "cut")) == comparable(metrics(tmp_path / "whole"))


def test_run_directory_contents_and_summary(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out)]) == 0
    for name in ("config.json", "metrics.jsonl", "checkpoint-last.pt", "checkpoint-best.pt", "summary.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "f400" and config["time_steps"] == 3 and config["leak"] == 0.95
    rows = metrics(out)
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "backward_evals_mean",
                "backward_converged_fraction", "backward_status", "firing_rate", "train_images_per_s", "peak_memory_mib"):
        assert key in rows[0], key
    assert 0 < rows[0]["firing_rate"] < 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert summary["best_epoch_test_acc"] == max(r["test_acc"] for r in rows)


def test_existing_run_is_not_overwritten_without_asking(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    first = metrics(out)
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["train", *SMALL, "--epochs", "1", "--out", str(out)])
    assert (out / "metrics.jsonl").read_text() == before
    with pytest.raises(SystemExit, match="differ from the run's"):
        main(["train", *SMALL, "--epochs", "2", "--lr", "0.1", "--out", str(out), "--resume"])
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert comparable(metrics(out)) == comparable(first)  # the same run again, from scratch: one epoch, not two


def test_eval_with_another_producer_and_a_sweep_over_time_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    trained = metrics(out)[-1]
    capsys.readouterr()
    report = tmp_path / "sweep.json"
    assert main(["eval", str(out / "checkpoint-last.pt"), "--time-steps", "3", "1", "--json", str(report)]) == 0
    assert "producer lif" in capsys.readouterr().out
    rows = json.loads(report.read_text())["results"]
    assert [r["time_steps"] for r in rows] == [3, 1]
    # At the training T the checkpoint scores exactly what the trainer logged for that epoch.
    assert rows[0]["acc"] == trained["test_acc"] and rows[0]["loss"] == pytest.approx(trained["test_loss"])
    assert rows[1]["firing_rate"] != rows[0]["firing_rate"]
    assert main(["eval", str(out), "--time-steps", "8", "--producer", "if", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["producer"] == "if" and [r["time_steps"] for r in result["results"]] == [8]
    assert main(["eval", str(out / "checkpoint-last.pt"), "--producer", "analytic", "--f-max-iter", "1",
                 "--split", "val", "--batch-size", "16", "--json", str(report)]) == 0
    (row,) = json.loads(report.read_text())["results"]
    assert row["time_steps"] is None and row["forward_status"] == {"MAX_ITER": 4}  # 64 samples, 16 per batch
    with pytest.raises(SystemExit, match="--time-steps does not apply to the analytic producer"):
        main(["eval", str(out), "--producer", "analytic", "--time-steps", "4"])
    with pytest.raises(SystemExit, match="^error: --leak does not apply to the if producer, which takes --time-steps, --sim-precision$"):
        main(["eval", str(out), "--producer", "if", "--leak", "0.9"])


def test_config_file_with_flag_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "f400"\nlr = 0.01\ntime-steps = 7\nmilestones = [5]\n')
    values = read_config_file(path)
    config = resolve(values, {"lr": 0.2})
    assert config.lr == 0.2 and config.time_steps == 7 and config.milestones == [5] and config.leak == 0.95
    path.write_text('lrr = 0.01\n')
    with pytest.raises(ValueError, match="unknown setting"):
        read_config_file(path)
    json_path = tmp_path / "run.json"
    json_path.write_text('{"model": "alexnet_f"}')
    config = resolve(read_config_file(json_path), {})
    assert config.dataset == "cifar10" and config.milestones == [50, 75] and config.warmup_iters == 400


@pytest.mark.parametrize("text, message", [
    ("lr = -1", "setting `lr` must be a number in (0, 10], got -1"),
    ('lr = "abc"', "setting `lr` must be a number in (0, 10]"),
    ("milestones = 5", "setting `milestones` must be a list of distinct integers >= 0 (epochs) in increasing order, got 5"),
    ("val_size = -3", "setting `val_size` must be an integer >= 0"),
    ("download = 1", "setting `download` must be true or false"),
    ("leak = 1.0", "setting `leak` must be a number in (0, 1)"),
    ("b_stop_mode = 'max'", "setting `b_stop_mode` must be 'rel' or 'abs'"),
    ("bn_momentum = 0", "setting `bn_momentum` must be a number in (0, 1]"),
    ("alpha_init = 'one'", "setting `alpha_init` must be 'bound' or 'norm'"),
    ("lr = = 2", "config file run.toml is not valid TOML"),
])
def test_config_file_values_are_checked_with_the_setting_named(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as error:
        resolve(read_config_file(path), {})
    assert message in str(error.value)


def test_reference_quirk_settings_reach_the_model():
    """``bn_momentum`` and ``alpha_init`` from the run settings land in every batch norm and in α."""
    model = model_from_config(resolve({}, {"model": "f64c5", "bn_momentum": 0.19, "alpha_init": "norm"}), 10)
    momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert momenta == {0.19}
    assert model.network.feedback.spectral.alpha.item() > 1.0  # ‖W_init‖₂ = 1.14 for F64C5, above the clip
    default = model_from_config(resolve({}, {"model": "f64c5"}), 10)
    assert default.network.feedback.spectral.alpha.item() == 1.0
    assert {m.momentum for m in default.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {0.1}


def test_yaml_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: f400\nlr: 0.01\ntime-steps: 7\nb_options: {memory: 10}\n")
    config = resolve(read_config_file(path), {"epochs": 3})
    assert (config.lr, config.time_steps, config.b_options, config.epochs) == (0.01, 7, {"memory": 10}, 3)
    path.write_text("a: [1\n")
    with pytest.raises(ValueError, match="run.yaml is not valid YAML"):
        read_config_file(path)


def test_paper_defaults_per_model():
    assert resolve({}, {}).to_dict() | {} == RunConfig(dataset="fashion-mnist", producer="lif", time_steps=5,
                                                         leak=0.95, b_solver="phantom",
                                                         b_options={"steps": 5}).to_dict()
    assert resolve({}, {"b_solver": "broyden"}).b_options == {}  # the paper's backward: one flag away
    nmnist = resolve({}, {"model": "f64c5_nmnist"})
    assert nmnist.b_solver == "fixed_point" and nmnist.b_options == {"damping": 0.5}
    assert resolve({}, {"model": "f64c5_nmnist", "b_solver": "broyden"}).b_options == {}


@pytest.mark.parametrize("name", models.available_models())
def test_run_settings_and_model_builders_read_one_preset_table(name):
    preset = models.get_preset(name)
    config = resolve({}, {"model": name})
    model = model_from_config(config, num_classes=10, in_shape=preset.in_shape)
    direct = models.build_model(name)
    assert (config.dataset, config.time_steps, config.leak) == (preset.dataset, preset.time_steps, preset.leak)
    for built in (model, direct):
        assert (built.producer.time_steps, built.producer.leak) == (preset.time_steps, preset.leak)
        assert type(built.adjoint.solver).__name__ == {"fixed_point": "FixedPoint", "phantom": "Phantom",
                                                      None: "Broyden"}[preset.b_solver]
    assert config.milestones == preset.schedule.get("milestones", [30, 60, 90])


def test_schedule_warmup_and_milestones():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = step_schedule(optimizer, iters_per_epoch=10, milestones=[2, 3], gamma=0.1, warmup_iters=4)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs[19] == pytest.approx(1.0) and lrs[20] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01)


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "mnist", "--data-root", "/nonexistent", "--epochs", "1"], "looked"),
    (["train", "--b-solver", "broydn"], "invalid choice"),
    (["train", "--leak", "1.5"], "--leak: must be a number in (0, 1) (no leak: producer 'if'), got '1.5'"),
    (["train", "--producer", "if", "--leak", "0.9"], "--leak does not apply to the if producer, which takes --time-steps"),
    (["train", "--producer", "analytic", "--time-steps", "3"], "--time-steps does not apply to the analytic producer"),
    (["train", "--producer", "lif", "--f_tol", "1e-3", "--f_options", "memory=3"],
     "--f_tol, --f_options do not apply to the lif producer, which takes --time-steps, --leak"),
    (["train", "--model", "alexnet_f", "--dataset", "cifar100"], "no data folder was given"),
    (["train", "--seed", "x"], "--seed: must be an integer, got 'x'"),
    (["train", "--bn-momentum", "1.5"], "--bn-momentum: must be a number in (0, 1], got '1.5'"),
    (["train", "--lr", "inf"], "--lr: must be a number in (0, 10], got 'inf'"),
    (["train", "--milestones", "5", "x"], "--milestones: must be an integer >= 0, got 'x'"),
    (["train", "--model", "f4000"], "unknown model"),
    (["train", "--dataset", "synthetic", "--val-size", "64", "--batch-size", "1"],
     "--batch-size 1 is too small: batch norm needs at least 2 samples in each process's part of a batch; use at least 2"),
    (["eval", "/nonexistent/run"], "no checkpoint"),
])
def test_bad_input_is_one_clear_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "x")] if argv[0] == "train" else []
    assert message in cli_error([*argv, *out], capsys)
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.slow
def test_the_entry_point_prints_one_line_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "implicit_snn", "train", "--lr", "inf", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "implicit-snn train: error: argument --lr: must be a number in (0, 10], got 'inf'"
    proc = subprocess.run([sys.executable, "-m", "implicit_snn", "train", "--model", "f4000", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown model 'f4000'")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_eval_sweep_over_time_steps_rebins_spike_datasets(tmp_path):
    write_nmnist(tmp_path / "NMNIST")
    out, report = tmp_path / "run", tmp_path / "sweep.json"
    assert main(["train", "--dataset", "nmnist", "--data-root", str(tmp_path), "--model", "8 (F8)", "--val-size", "0",
                 "--epochs", "1", "--batch-size", "2", "--time-steps", "4", "--threads", "1", "--out", str(out)]) == 0
    assert main(["eval", str(out), "--time-steps", "4", "6", "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["results"]
    assert [r["time_steps"] for r in rows] == [4, 6]
    assert rows[0]["acc"] == metrics(out)[-1]["test_acc"]
    assert all(0 <= r["firing_rate"] <= 1 for r in rows)


def test_a_bad_setting_writes_nothing_and_deletes_nothing(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit, match="`memory` must be"):
        main(["train", *SMALL, "--b_solver", "broyden", "--b-options", "memory=0", "--out", str(fresh)])
    assert not fresh.exists()
    with pytest.raises(SystemExit, match="leaves nothing to train on"):
        main(["train", "--dataset", "synthetic", "--val-size", "512", "--out", str(fresh)])
    assert not fresh.exists()
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(SystemExit, match="`memory` must be"):
        main(["train", *SMALL, "--b_solver", "broyden", "--b-options", "memory=0", "--out", str(run), "--overwrite"])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_backward_time_per_step_is_logged_within_the_step_time(tmp_path):
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    (row,) = metrics(tmp_path / "run")
    steps = math.ceil((512 - 64) / 32)  # the synthetic training split less validation, in batches of 32
    assert 0 < row["backward_ms_mean"] * steps / 1e3 < row["train_seconds"]
