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
