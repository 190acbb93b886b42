"""Settings checked before anything is written: a setting that cannot run is one line (exit status 2)
and leaves no run folder; the smaller messages say what is accepted, and accept what they say."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from implicit_snn.app.build import _check_val_size, backward_unknowns, check_exact_size, model_from_config
from implicit_snn.app.cli import _option, build_parser, main
from implicit_snn.app.commands import cli_settings
from implicit_snn.app.config import MAX_TIME_STEPS, resolve
from implicit_snn.app.errors import UsageError
from tests.helpers import SMALL

# A coupled backward of 256 × 32 = 8,192 unknowns: twice exact's default max_size of 4,096.
EXACT_TOO_BIG = ["--model", "32-32 (F32)", "--b_solver", "exact", "--batch-size", "256"]


def refused(argv: list[str], capsys) -> str:
    """Run the command line on settings it must refuse before doing anything: exit status 2 and
    exactly one line on stderr, starting "error: ", without a traceback. Returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def no_run_left(out) -> bool:
    """Nothing of a run at ``out``: no folder, or one without the files a run starts with."""
    return not out.exists() or not any((out / name).exists() for name in ("config.json", "metrics.jsonl"))


def train_args(out, *extra: str) -> list[str]:
    return ["train", *SMALL, "--epochs", "1", *extra, "--out", str(out)]


# -- settings that used to fail at the first step, after the run folder was written ------------------

def test_exact_above_its_size_on_a_coupled_batch_is_refused_before_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    message = refused(train_args(out, *EXACT_TOO_BIG), capsys)
    assert message == (
        "error: --b_solver exact: the backward is one system of 8,192 unknowns (256 samples × 32 last-layer neurons, "
        "coupled by batch norm's batch statistics), above exact's max_size 4,096; use a --batch-size of at most 128, "
        "--bn-backward simulated (samples not coupled), another --b_solver, or --b_options max_size=8192 (a dense "
        "8,192² Jacobian)")
    assert not out.exists()
    # The same with a max_size given as a solver option: it is that limit that counts.
    message = refused(train_args(out, *EXACT_TOO_BIG, "--b_options", "max_size=8191"), capsys)
    assert "above exact's max_size 8,191;" in message and not out.exists()


def test_the_exact_size_check_counts_what_the_backward_solves():
    config = resolve({}, {"model": "32-32 (F32)", "dataset": "synthetic", "b_solver": "exact"})
    model = model_from_config(config, 10, (1, 28, 28))
    rng, state = torch.get_rng_state(), {k: v.clone() for k, v in model.state_dict().items()}
    assert backward_unknowns(model, (1, 28, 28), 256) == (8192, 32, True)  # batch norm couples the batch
    # The probe leaves the run as it was: the same random stream, the same weights and statistics.
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    check_exact_size(model, (1, 28, 28), 128)  # 4,096 unknowns: the limit itself is accepted
    with pytest.raises(UsageError, match="one system of 4,128 unknowns"):
        check_exact_size(model, (1, 28, 28), 129)
    settings = {"model": "32-32 (F32)", "dataset": "synthetic", "b_solver": "exact", "bn_backward": "simulated"}
    simulated = model_from_config(resolve({}, settings), 10, (1, 28, 28))
    assert backward_unknowns(simulated, (1, 28, 28), 256) == (32, 32, False)  # running statistics: per sample
    check_exact_size(simulated, (1, 28, 28), 256)
    wide = model_from_config(resolve({}, {"model": "5000 (F5000)", "dataset": "synthetic", "b_solver": "exact",
                                    "bn_backward": "simulated"}), 10, (1, 28, 28))
    with pytest.raises(UsageError, match=r"^--b_solver exact: the backward has 5,000 unknowns per sample \(the last "
                                         r"layer's neurons\), above exact's max_size 4,096; use another --b_solver, "
                                         r"or --b_options max_size=5000"):
        check_exact_size(wide, (1, 28, 28), 2)
    bptt = model_from_config(resolve({}, {"model": "32-32 (F32)", "dataset": "synthetic", "method": "bptt"}), 10, (1, 28, 28))
    assert backward_unknowns(bptt, (1, 28, 28), 256) is None  # no implicit backward to size


def test_phantom_steps_beyond_the_backward_budget_are_refused_before_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    message = refused(train_args(out, "--b_solver", "phantom", "--b_options", "steps=10", "--b_max_iter", "5"), capsys)
    assert "steps" in message and "10" in message and "5" in message
    assert not out.exists()


def test_a_preset_on_a_dataset_of_another_input_shape_is_refused_before_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    # fashion-mnist need not be on this machine: the shapes are compared before any data are read.
    message = refused(["train", "--model", "alexnet_f", "--dataset", "fashion-mnist", "--out", str(out)], capsys)
    assert message == ("error: model alexnet_f takes 3x32x32 inputs, but the fashion-mnist dataset's are 1x28x28; "
                       "use --dataset cifar10 or cifar100, or for fashion-mnist the presets f400, f64c5 or a spec "
                       "such as '400 (F400)' (built for the dataset's shape)")
    assert not out.exists()
    message = refused(["train", *SMALL, "--model", "f64c5_nmnist", "--out", str(out)], capsys)
    assert message.startswith("error: model f64c5_nmnist takes 2x34x34 inputs, but the synthetic dataset's are "
                              "1x28x28; use --dataset nmnist, or for synthetic the presets f400, f64c5 or ")
    assert not out.exists()
    # eval and analyze build the model through the same function, with the loaded data's shape.
    with pytest.raises(UsageError, match="^model alexnet_f takes 3x32x32 inputs, but the synthetic dataset's are"):
        model_from_config(resolve({}, {"model": "alexnet_f", "dataset": "synthetic"}), 10, (1, 28, 28))


@pytest.mark.slow
def test_the_entry_point_refuses_an_oversized_exact_backward_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "implicit_snn", "train", *SMALL, *EXACT_TOO_BIG, "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --b_solver exact: the backward is one "
                                                                   "system of 8,192 unknowns")
    assert no_run_left(out)


# -- time steps ------------------------------------------------------------------------------------

def test_time_steps_above_the_bound_are_refused_by_flag_and_by_settings_file(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["train", "--time-steps", "100000000", "--out", str(out)])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("implicit-snn train: error: argument --time_steps/--time-steps: "
                                                        "must be an integer from 1 to 10,000, got '100000000'")
    settings = tmp_path / "run.toml"
    settings.write_text("time_steps = 10001\n")
    message = refused(["train", "--config", str(settings), "--out", str(out)], capsys)
    assert message == "error: setting --time-steps must be an integer from 1 to 10,000, got 10001"
    assert not out.exists()
    assert MAX_TIME_STEPS == 10_000 and resolve({}, {"time_steps": 10_000}).time_steps == 10_000
    # Every default T of the commands stays valid.
    analyze = build_parser().parse_args(["analyze", "x"])
    assert analyze.time_steps == [1, 2, 5, 10, 30, 100]
    assert build_parser().parse_args(["eval", "x", "--time-steps", "1", "1000", "10000"]).time_steps == [1, 1000, 10000]


# -- the smaller ones ------------------------------------------------------------------------------

def test_a_config_folder_is_called_a_folder(tmp_path, capsys):
    folder, out = tmp_path / "settings", tmp_path / "run"
    folder.mkdir()
    message = refused(["train", "--config", str(folder), "--out", str(out)], capsys)
    assert message == f"error: config file {str(folder)!r} is a folder; give a settings file (.toml, .yaml/.yml or .json)"
    missing = tmp_path / "missing.toml"
    assert refused(["train", "--config", str(missing), "--out", str(out)], capsys) == \
        f"error: config file {str(missing)!r} does not exist"
    assert not out.exists()


def test_the_validation_size_advice_is_what_is_accepted(tmp_path, capsys):
    base = ["train", "--dataset", "synthetic", "--batch-size", "32", "--time-steps", "3", "--threads", "1",
            "--epochs", "1"]
    out = tmp_path / "run"
    message = refused([*base, "--val-size", "600", "--out", str(out)], capsys)
    assert message == ("error: --val-size 600 leaves nothing to train on: the synthetic training set has 512 samples "
                       "and training needs at least 2 (batch statistics); use at most 510, or 0 for no validation split")
    assert refused([*base, "--val-size", "511", "--out", str(out)], capsys).startswith(
        "error: --val-size 511 leaves only 1 sample to train on: ")
    assert not out.exists()
    assert main([*base, "--val-size", "510", "--out", str(out)]) == 0  # the advice holds
    assert json.loads((out / "config.json").read_text())["val_size"] == 510
    # Two processes need 2 samples each (make_trainer checks with 2 × world size): the advice follows.
    with pytest.raises(ValueError, match=r"leaves only 3 samples to train on: .* at least 4 \(batch statistics\); "
                                         r"use at most 508, or 0 for no validation split$"):
        _check_val_size(resolve({}, {"dataset": "synthetic", "val_size": 509}), 512, 4)


@pytest.mark.parametrize("text, expected", [
    ("return_best=true", ("return_best", True)), ("throw=FALSE", ("throw", False)), ("throw = Yes", ("throw", True)),
    ("return_best=no", ("return_best", False)), ("return_best=True", ("return_best", True)),
    ("memory=5", ("memory", 5)), ("damping=0.5", ("damping", 0.5)), ("method=fast", ("method", "fast")),
])
def test_solver_options_read_true_false_yes_no_in_any_case_as_bools(text, expected):
    assert _option(text) == expected
    assert type(_option(text)[1]) is type(expected[1])


def test_a_lowercase_bool_option_reaches_the_backward():
    args = build_parser().parse_args(["train", "--b_solver", "broyden", "--b_options", "return_best=true",
                                      "--b_options", "throw=no"])
    model = model_from_config(resolve({}, cli_settings(args)), 10)
    assert model.adjoint.call_options["return_best"] is True and model.adjoint.call_options["throw"] is False


@pytest.mark.parametrize("argv", [
    ["--b_options", "memory=4", "check_every=2"],  # several pairs after one flag
    ["--b-options", "memory=4", "--b_options", "check_every=2"],  # the flag repeated, in either spelling
])
def test_solver_options_take_several_pairs_and_repeat(argv):
    args = build_parser().parse_args(["train", "--b_solver", "anderson", *argv, "--f_options", "memory=3", "tol_hint=1"])
    settings = cli_settings(args)
    assert settings["b_options"] == {"memory": 4, "check_every": 2}
    assert settings["f_options"] == {"memory": 3, "tol_hint": 1}
    model = model_from_config(resolve({}, {**settings, "f_options": None}), 10)
    assert (model.adjoint.solver.memory, model.adjoint.call_options) == (4, {"check_every": 2})


@pytest.mark.parametrize("old", ["--b_option", "--b-option", "--f_option", "--f-option"])
def test_the_old_singular_option_flags_are_gone(old, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", old, "memory=3"])
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.fixture(scope="module")
def spec_runs(tmp_path_factory):
    """Two one-epoch runs of the same spec-string network (no preset, so no producer is set),
    one with another threshold: the same parameters, another model."""
    base = tmp_path_factory.mktemp("preflight")
    runs = {}
    for name, extra in (("mine", []), ("other", ["--vth", "1.5"])):
        runs[name] = base / name
        assert main(["train", *SMALL, "--model", "8 (F8)", "--epochs", "1", *extra, "--out", str(runs[name])]) == 0
    return runs


def test_eval_names_the_producer_of_a_spec_string_model(spec_runs, tmp_path, capsys):
    assert json.loads((spec_runs["mine"] / "config.json").read_text())["producer"] is None
    report = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["eval", str(spec_runs["mine"]), "--json", str(report)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith(", producer lif") and "None" not in header
    data = json.loads(report.read_text())
    assert (data["producer"], data["leak"]) == ("lif", 0.95)


def test_eval_and_analyze_refuse_a_run_folder_holding_another_models_checkpoint(spec_runs, tmp_path, capsys):
    run = shutil.copytree(spec_runs["mine"], tmp_path / "mixed")
    for name in ("checkpoint-best.pt", "checkpoint-last.pt"):
        shutil.copy(spec_runs["other"] / name, run / name)
    message = refused(["eval", str(run)], capsys)
    assert message == (f"error: {run / 'config.json'} disagrees with the run's checkpoint {run / 'checkpoint-best.pt'} "
                       "in {'vth': (2.0, 1.5)} (config.json, checkpoint): the checkpoint holds another model; give the "
                       "checkpoint file itself to evaluate it as what it is, or put the run's own checkpoint back")
    assert refused(["analyze", str(run), "--no-plots"], capsys) == message
    assert not (run / "analysis.json").exists()
    # A checkpoint file has no config.json to disagree with: it is evaluated as what it is.
    assert main(["eval", str(run / "checkpoint-best.pt")]) == 0
    assert main(["eval", str(spec_runs["mine"])]) == 0  # the run's own checkpoint, as ever
