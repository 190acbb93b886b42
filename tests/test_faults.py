"""Fault injection: a training process killed outright (SIGKILL, no chance to save) resumes from its
last checkpoint to the same metrics as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from implicit_snn.app.cli import main
from tests.helpers import SMALL, comparable, metrics

ARGS = [*SMALL, "--epochs", "3"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    assert main(["train", *ARGS, "--out", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "implicit_snn", "train", *ARGS, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill once the first epoch's checkpoint exists: the process is somewhere in epoch 2 or 3.
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint-last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    done = len(metrics(killed))
    assert 1 <= done < 3 and not (killed / "summary.json").exists()
    assert main(["train", "--resume", "--out", str(killed)]) == 0
    assert comparable(metrics(killed)) == comparable(metrics(tmp_path / "whole"))
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert json.loads((killed / "summary.json").read_text())["final_test_acc"] == whole["final_test_acc"]


def test_a_non_contractive_map_is_reported_not_hidden():
    import torch

    from implicit_snn import implicit_grad

    weight = torch.nn.Parameter(1.5 * torch.eye(4, dtype=torch.float64))  # ‖J‖ = 1.5: no adjoint series converges
    x = torch.randn(3, 4, dtype=torch.float64)
    results = []
    a = implicit_grad(lambda a, x: a @ weight.T + x, torch.zeros(3, 4, dtype=torch.float64), x,
                      b_solver="fixed_point", b_max_iter=200, b_tol=1e-8, on_backward=results.append)
    a.sum().backward()
    (result,) = results
    assert not result.converged.any() and result.status.name == "DIVERGED"
    assert result.summary()["converged_fraction"] == 0.0


def test_analyze_says_when_the_feedback_breaks_the_convergence_condition(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--vth", "0.05", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--samples", "32", "--time-steps", "2", "--b_solver", "broyden",
                 "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "‖W‖₂/Vth = 20.00" in text and "≥ 1: the convergence condition does not hold" in text
