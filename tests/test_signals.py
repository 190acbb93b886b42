"""Ctrl-C and SIGTERM: the first stops inside a long simulation or evaluation and saves the last
completed step's state (resumed bit-exactly); a second one outside a save ends the process at
once with one line; a metrics file cut short is dealt with on --resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import implicit_snn.bptt as bptt
import implicit_snn.producers._spiking as spiking
from implicit_snn import training
from implicit_snn.app.cli import main
from implicit_snn.app.rundir import RunDir, load_checkpoint
from tests.helpers import SMALL, cli_error, comparable, intercept_writes, metrics, temporary_files

# Dropout draws masks from torch's RNG in every forward: a stop that left the RNG moved shows.
ARGS = [*SMALL, "--epochs", "2", "--dropout", "0.2"]
BPTT = [*ARGS, "--method", "bptt"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Uninterrupted runs, IDE and BPTT, that the stopped-and-resumed ones must equal exactly."""
    base = tmp_path_factory.mktemp("whole")
    assert main(["train", *ARGS, "--out", str(base / "ide")]) == 0
    assert main(["train", *BPTT, "--out", str(base / "bptt")]) == 0
    return base


def _same_run(a, b):
    assert comparable(metrics(a)) == comparable(metrics(b))
    ma, mb = (torch.load(run / "checkpoint-last.pt", weights_only=False)["model"] for run in (a, b))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


class SignalInside:
    """Wraps ``module.name`` (a function the time loop calls every step) to send SIGINT at its
    ``nth`` call among those ``when()`` allows; counts the calls made after that."""

    def __init__(self, monkeypatch, module, name, nth, when=lambda: True):
        self.original, self.nth, self.when = getattr(module, name), nth, when
        self.counted, self.after = 0, 0
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        if self.counted >= self.nth:
            self.after += 1
        elif self.when():
            self.counted += 1
            if self.counted == self.nth:
                os.kill(os.getpid(), signal.SIGINT)
        return self.original(*args, **kwargs)


# -- the first signal: a stop inside the step or the evaluation, resumed exactly -----------------------

@pytest.mark.parametrize("method, module, name", [("ide", spiking, "fire_unleaked_"), ("bptt", bptt, "neuron_step")])
def test_a_stop_inside_the_simulation_of_a_step_resumes_bit_exactly(whole, tmp_path, monkeypatch, capsys, method,
                                                                    module, name):
    """SIGINT in the first time step of the 6th training step (T = 3): the time loop's next check
    abandons the step; its batch-norm statistics, power-iteration vectors and dropout draws are
    undone, so the checkpoint is the state after step 5 and --resume equals the whole run."""
    run = tmp_path / "cut"
    inside = SignalInside(monkeypatch, module, name, nth=5 * 3 + 1)
    assert main(["train", *(ARGS if method == "ide" else BPTT), "--out", str(run)]) == 130
    assert "interrupted: stopped at epoch 1, batch 5; checkpoint saved to" in capsys.readouterr().out
    assert inside.after == 0  # not one more time step was simulated
    checkpoint = load_checkpoint(run / "checkpoint-last.pt")
    assert (checkpoint["epoch"], checkpoint["batch"]) == (0, 5)
    monkeypatch.undo()
    assert main(["train", "--resume", "--threads", "1", "--out", str(run)]) == 0
    _same_run(run, whole / method)


def test_a_stop_during_the_end_of_epoch_evaluation_is_prompt_and_resume_redoes_it_exactly(whole, tmp_path,
                                                                                          monkeypatch, capsys):
    evaluating = []
    original_evaluate = training.evaluate

    def evaluate(*args, **kwargs):
        evaluating.append(1)
        return original_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate)
    inside = SignalInside(monkeypatch, spiking, "fire_unleaked_", nth=2, when=lambda: bool(evaluating))
    run = tmp_path / "cut"
    assert main(["train", *ARGS, "--out", str(run)]) == 130
    assert ("interrupted: stopped during the evaluation at the end of epoch 1 (its batches are trained; --resume "
            "evaluates it again)") in capsys.readouterr().out
    assert inside.after == 0 and len(evaluating) == 1  # stopped inside the first evaluation, at once
    checkpoint = load_checkpoint(run / "checkpoint-last.pt")
    assert (checkpoint["epoch"], checkpoint["batch"]) == (0, 14)  # all 14 batches of epoch 1, not evaluated
    assert metrics(run) == [] and not (run / "checkpoint-best.pt").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", "--threads", "1", "--out", str(run)]) == 0
    _same_run(run, whole / "ide")


def test_evaluate_checks_for_a_stop_between_batches_and_restores_the_mode():
    """Between batches too: a producer without a time loop (analytic), or several processes."""
    from implicit_snn.data import load_dataset
    from implicit_snn.interrupt import StopRequested

    data = load_dataset("synthetic", "test")
    forwards = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    model.register_forward_hook(lambda *args: forwards.append(1))
    model.train()
    with pytest.raises(StopRequested):
        training.evaluate(model, data, batch_size=32, device=torch.device("cpu"), should_stop=lambda: len(forwards) == 3)
    assert len(forwards) == 3 and model.training
    assert training.evaluate(model, data, batch_size=32, device=torch.device("cpu"), should_stop=lambda: False)["acc"] >= 0
    assert len(forwards) == 3 + len(data) // 32


def test_a_signal_while_an_epoch_is_saved_stops_once_its_files_are_complete(whole, tmp_path, monkeypatch, capsys):
    """The epoch's checkpoint is the stop's: no step of the next epoch is started."""
    steps = []
    original_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        steps.append(1)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    intercept_writes(monkeypatch, "checkpoint-last.pt", on_write=lambda n: n == 2 and os.kill(os.getpid(),
                                                                                               signal.SIGTERM))
    run = tmp_path / "cut"
    assert main(["train", *ARGS, "--out", str(run)]) == 130
    assert "interrupted: stopped at the end of epoch 1; checkpoint saved to" in capsys.readouterr().out
    assert len(steps) == 14 and load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 1
    assert temporary_files(run) == [] and [row["epoch"] for row in metrics(run)] == [1]
    monkeypatch.undo()
    assert main(["train", "--resume", "--threads", "1", "--out", str(run)]) == 0
    _same_run(run, whole / "ide")


# -- real signals to a real training process ----------------------------------------------------------

# About a minute per training step: a signal lands in the middle of a simulation of T = 10,000.
LONG = ["--dataset", "synthetic", "--val-size", "64", "--batch-size", "32", "--threads", "1",
        "--model", "2000 (F2000)", "--time-steps", "10000", "--epochs", "1"]


def _start(argv, cwd, *, code=None) -> subprocess.Popen:
    command = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "implicit_snn", *argv]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 60) -> list[str]:
    """Read the process's output lines until one contains ``text``; returns them."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    proc.kill()
    pytest.fail(f"the process never printed {text!r}: {''.join(lines)}{proc.stderr.read()}")


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str, str, float]:
    """Send ``sig``; the exit status, the rest of stdout, stderr and the seconds it took to end."""
    sent = time.monotonic()
    os.kill(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err, time.monotonic() - sent


def _training_began(proc: subprocess.Popen, metrics_file, before=None, timeout: float = 60) -> None:
    """Wait until ``TrainingRun.fit`` has begun: its first act is to (re)write the metrics file,
    which atomically replaces it (a new inode, where ``before`` is the old one's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if os.stat(metrics_file).st_ino != before:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"training never began: {proc.communicate()}")


@pytest.mark.slow
def test_one_sigterm_stops_a_long_simulation_at_once_with_a_checkpoint_that_resume_continues(tmp_path):
    run = tmp_path / "run"
    proc = _start(["train", *LONG, "--out", str(run)], tmp_path)
    _training_began(proc, run / "metrics.jsonl")
    time.sleep(1.0)  # well inside the first step's simulation (a minute long)
    code, out, err, seconds = _stop(proc, signal.SIGTERM)
    assert code == 130 and "Traceback" not in err and err == "", err
    assert seconds < 10  # within a time step and a save, not at the end of the step's 10,000
    assert f"interrupted: stopped at epoch 1, batch 0; checkpoint saved to {run / 'checkpoint-last.pt'}; continue " \
           "with --resume" in out
    checkpoint = load_checkpoint(run / "checkpoint-last.pt")
    assert (checkpoint["epoch"], checkpoint["batch"]) == (0, 0)
    assert not (run / RunDir.LOCK).exists() and temporary_files(run) == []
    # --resume continues from it (and a Ctrl-C stops that one as promptly).
    before = os.stat(run / "metrics.jsonl").st_ino
    proc = _start(["train", "--resume", "--out", str(run)], tmp_path)
    _training_began(proc, run / "metrics.jsonl", before)
    code, out, err, seconds = _stop(proc, signal.SIGINT)
    assert code == 130 and err == "" and seconds < 10
    assert f"resumed from {run / 'checkpoint-last.pt'} at epoch 1, batch 0" in out
    assert "interrupted: stopped at epoch 1, batch 0" in out


# Training whose 16th optimizer step (the second of epoch 2) takes a minute: a stretch of a step
# with no time loop to check (as a long backward solve), where only the second signal can end it.
SLOW_STEP = textwrap.dedent("""
    import sys, time, torch
    from implicit_snn.app.cli import main
    original, calls = torch.optim.SGD.step, []
    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 16:
            print("slow step", flush=True)
            time.sleep(60)
        return original(self, *args, **kwargs)
    torch.optim.SGD.step = step
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)])
def test_a_second_signal_outside_a_save_exits_at_once_in_one_line(whole, tmp_path, first, second):
    run = tmp_path / "run"
    proc = _start(["train", *ARGS, "--out", str(run)], tmp_path, code=SLOW_STEP)
    _wait_for(proc, "slow step")
    os.kill(proc.pid, first)
    time.sleep(0.5)
    assert proc.poll() is None  # the first waits for the step to end
    code, out, err, seconds = _stop(proc, second)
    assert code == 130 and seconds < 5
    assert err == f"interrupted again: exiting now; the last checkpoint {run / 'checkpoint-last.pt'} is whole; " \
                  "continue with --resume\n"
    assert load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 1  # whole: its digest checks
    assert not (run / RunDir.LOCK).exists() and temporary_files(run) == []
    assert main(["train", "--resume", "--threads", "1", "--out", str(run)]) == 0
    _same_run(run, whole / "ide")


SLOW_SETUP = textwrap.dedent("""
    import sys, time
    import implicit_snn.app.build as build
    original = build.make_trainer
    def make_trainer(*args, **kwargs):
        print("building", flush=True)
        time.sleep(60)  # as loading a large dataset
        return original(*args, **kwargs)
    build.make_trainer = make_trainer
    from implicit_snn.app.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_signal_before_training_starts_exits_at_once_in_one_line(tmp_path):
    run = tmp_path / "run"
    proc = _start(["train", *ARGS, "--out", str(run)], tmp_path, code=SLOW_SETUP)
    _wait_for(proc, "building")
    code, out, err, seconds = _stop(proc, signal.SIGTERM)
    assert code == 130 and seconds < 5
    assert err == "interrupted before training started: exiting now; no checkpoint was saved yet\n"
    assert not run.exists()  # nothing was written: the folder the lock made is gone with it


# -- a metrics file cut short --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", *ARGS, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_a_torn_last_metrics_line_after_the_checkpoints_epochs_is_dropped_with_a_warning(whole, one_epoch, tmp_path,
                                                                                        capsys):
    run = shutil.copytree(one_epoch, tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 2, "lr": 0.0')  # a row the checkpoint (epoch 1) has not trained, cut short
    assert main(["train", "--resume", "--epochs", "2", "--threads", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert (f"warning: {run / 'metrics.jsonl'} line 2 is cut short (the row of epoch 2, after the 1 epoch(s) the "
            "checkpoint has trained); dropped") in out
    _same_run(run, whole / "ide")


@pytest.mark.parametrize("text, message", [
    ('{"epoch": 1, "lr": 0.0', "line 1 is not a metrics row (cut short or edited); the metrics of epoch(s) 1, "
                               "which the checkpoint has trained, are not in the lines before it"),
    ('{"epoch": 1, "lr": 0.0\n{"epoch": 2}\n', "line 1 is not a metrics row (cut short or edited)"),
])
def test_a_torn_metrics_line_the_checkpoint_needs_is_one_line_naming_the_file_and_line(one_epoch, tmp_path, capsys,
                                                                                      text, message):
    run = shutil.copytree(one_epoch, tmp_path / "run")
    (run / "metrics.jsonl").write_text(text)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    error = cli_error(["train", "--resume", "--epochs", "2", "--out", str(run)], capsys)
    assert error.startswith(f"error: --resume: {run / 'metrics.jsonl'} {message}")
    assert error.endswith(": restore the file, or start afresh with --overwrite")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing was written
