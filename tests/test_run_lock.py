"""One train per run directory: an exclusive lock taken atomically before the folder is checked,
held for the whole run, released on every way out, a stale one taken over with a warning; eval
reads a folder while it is held."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from implicit_snn.app.cli import main
from implicit_snn.app.rundir import RunDir
from implicit_snn.app.runlock import RunDirInUse, RunLock
from implicit_snn.training import Trainer
from tests.helpers import SMALL, cli_error, metrics

LOCK = RunDir.LOCK
TINY = [*SMALL, "--model", "16 (F16)", "--epochs", "1"]  # a fraction of a second of training


# -- the primitive: many processes racing for one lock ------------------------------------------------

def _racer(folders, start, tried, results):
    """Take each round's lock at the same moment as the others; hold it until all have tried."""
    for folder in folders:
        start.wait()
        lock = RunLock(folder)
        try:
            lock.acquire()
            won = True
        except RunDirInUse as error:
            won = False
            results.put((str(folder), os.getpid(), False, str(error)))
        if won:
            results.put((str(folder), os.getpid(), True, ""))
        tried.wait()  # the winner still holds it while every other process tries
        if won:
            lock.release()


def test_exactly_one_of_many_racing_processes_takes_the_lock(tmp_path):
    rounds, racers = 20, 4
    folders = [tmp_path / f"round-{k}" for k in range(rounds)]
    context = multiprocessing.get_context("fork")
    start, tried, results = context.Barrier(racers), context.Barrier(racers), context.Queue()
    processes = [context.Process(target=_racer, args=(folders, start, tried, results)) for _ in range(racers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in range(rounds * racers)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for folder in folders:
        this_round = [o for o in outcomes if o[0] == str(folder)]
        winners = [pid for _, pid, won, _ in this_round if won]
        assert len(this_round) == racers and len(winners) == 1, this_round
        for _, _, won, message in this_round:  # every loser names the winner
            assert won or f"process {winners[0]} on {socket.gethostname()}" in message, message
        # Released. The folder goes with it when the winner made it; a loser that made it cannot
        # remove it under the winner's lock, and then an empty folder stays.
        assert not (folder / LOCK).exists() and (not folder.exists() or not any(folder.iterdir()))


def _hammer(folder, holders, violations, rounds):
    """Take and release ``folder``'s lock ``rounds`` times, counting the times another held it too."""
    done = 0
    while done < rounds:
        lock = RunLock(folder)
        try:
            lock.acquire()
        except RunDirInUse:
            continue
        with holders.get_lock():
            holders.value += 1
            if holders.value > 1:
                violations.value += 1
        time.sleep(0.0005)
        with holders.get_lock():
            holders.value -= 1
        lock.release()  # removes the file another process may have just opened: it must not take that one
        done += 1


def test_taking_and_releasing_in_a_tight_loop_never_gives_two_holders(tmp_path, monkeypatch):
    context = multiprocessing.get_context("fork")
    holders, violations = context.Value("i", 0), context.Value("i", 0)
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(RunLock, "OWNER_WAIT_S", 0)  # the losers here need not wait for the owner's name
    processes = [context.Process(target=_hammer, args=(tmp_path / "run", holders, violations, 150)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert violations.value == 0
    assert not (tmp_path / "run" / LOCK).exists()


# -- two real train commands started together --------------------------------------------------------

# Imports first, then waits for the go of each round: the two processes enter `main` together.
LAUNCHER = textwrap.dedent("""
    import os, sys, time
    from implicit_snn.app.cli import main
    base, rounds, tail = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    for k in range(rounds):
        open(os.path.join(base, f"ready-{k}-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(base, f"go-{k}")):
            time.sleep(0.0002)
        extra = ["--overwrite"] if k % 2 else []
        try:
            code = main(["train", *tail, *extra, "--out", os.path.join(base, f"run-{k}")])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        print(f"round {k}: {code}", file=sys.stderr, flush=True)
""")


def test_two_train_commands_started_together_into_one_folder_one_trains_the_other_is_refused(tmp_path):
    rounds = 6
    logs = [tmp_path / f"log-{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path), str(rounds), *TINY],
                              stdout=subprocess.DEVNULL, stderr=log.open("w")) for log in logs]
    try:
        for k in range(rounds):
            deadline = time.monotonic() + 60
            while len(list(tmp_path.glob(f"ready-{k}-*"))) < 2:
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a launcher died"
                time.sleep(0.01)
            (tmp_path / f"go-{k}").touch()
        for proc in procs:
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    texts = [log.read_text() for log in logs]
    pids = [proc.pid for proc in procs]
    for k in range(rounds):
        codes = [int(text.split(f"round {k}: ")[1].split("\n")[0]) for text in texts]
        assert sorted(codes) == [0, 2], (k, codes, texts)
        run = tmp_path / f"run-{k}"
        assert len(metrics(run)) == 1 and json.loads((run / "summary.json").read_text())["epochs"] == 1
        assert sorted(p.name for p in run.iterdir()) == sorted(RunDir.RUN_FILES)  # the lock is gone
    for text, other in zip(texts, reversed(pids)):
        assert "Traceback" not in text, text
        refusals = [line for line in text.splitlines() if line.startswith("error:")]
        assert all(f"is in use by another training run (process {other} on " in line for line in refusals), text
    assert sum(len([ln for ln in t.splitlines() if ln.startswith("error:")]) for t in texts) == rounds


# -- refusals while the lock is held, and reading beside it ------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from implicit_snn.app.runlock import RunLock
    lock = RunLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _hold(folder: Path, seconds: float = 60) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (it has printed "held" once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_train_into_a_locked_folder_overwrite_included_is_one_line_naming_the_owner(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    holder = _hold(run)
    try:
        owner = f"is in use by another training run (process {holder.pid} on {socket.gethostname()}, started "
        for extra in (["--overwrite"], ["--resume", "--epochs", "2"], []):
            message = cli_error(["train", *TINY, *extra, "--out", str(run)], capsys)
            assert message.startswith(f"error: {run} {owner}") and "pass --out for another directory" in message
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK} == before  # nothing deleted
        # eval and analyze-style reads go on beside the lock, and leave it as it was.
        lock_text = (run / LOCK).read_text()
        report = tmp_path / "eval.json"
        assert main(["eval", str(run), "--json", str(report)]) == 0
        assert json.loads(report.read_text())["results"][0]["acc"] == metrics(run)[0]["test_acc"]
        assert (run / LOCK).read_text() == lock_text and holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_under_torchrun_rank_0_takes_the_lock_and_a_locked_folder_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "implicit_snn", "train", *TINY, "--device", "cpu", "--out", str(run)]
    holder = _hold(run)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and f"is in use by another training run (process {holder.pid} on " in ours[0]
    assert sorted(p.name for p in run.iterdir()) == [LOCK]  # the holder's, left as a SIGKILL leaves it
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{run / LOCK} was left by process {holder.pid}" in proc.stdout  # rank 0 alone took it over
    assert sorted(p.name for p in run.iterdir()) == sorted(RunDir.RUN_FILES) and len(metrics(run)) == 1


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold(run)
    os.kill(holder.pid, signal.SIGKILL)  # no chance to remove its lock file
    holder.wait()
    assert json.loads((run / LOCK).read_text())["pid"] == holder.pid
    assert main(["train", *TINY, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {run / LOCK} was left by process {holder.pid} on {socket.gethostname()}" in out
    assert "ended without removing it (killed?); taking the run directory over" in out
    assert not (run / LOCK).exists() and len(metrics(run)) == 1


def test_a_lock_is_reported_by_whoever_holds_it_not_by_a_stale_name(tmp_path):
    """A refused process waits for the new holder to replace a dead owner's name in the file."""
    lock = RunLock(tmp_path / "run")
    lock.acquire()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        (tmp_path / "run" / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                         "started": "then"}))
        other = RunLock(tmp_path / "run")
        other.OWNER_WAIT_S = 0.2
        with pytest.raises(RunDirInUse, match=f"its lock {tmp_path / 'run' / LOCK} names no owner yet"):
            other.acquire()
    finally:
        lock.release()
    assert not (tmp_path / "run").exists()


# -- released on every way out ----------------------------------------------------------------------

def _interrupt_at_step(monkeypatch, times):
    """SIGINT ``times`` times inside the fifth optimizer step."""
    original, calls = torch.optim.SGD.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)


def _bug(monkeypatch):
    def end_epoch(self, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Trainer, "end_epoch", end_epoch)


@pytest.mark.parametrize("way", ["finished", "usage error", "refused setting", "interrupted", "interrupted twice",
                                 "bug"])
def test_the_lock_is_released_on_every_way_out(tmp_path, monkeypatch, capfd, way):
    capsys = capfd  # the line of a second signal is written straight to the file descriptor
    run = tmp_path / "run"
    argv = ["train", *TINY, "--epochs", "2", "--out", str(run)]
    if way == "finished":
        assert main(argv) == 0
    elif way == "usage error":  # refused after the lock was taken: the folder it made goes too
        assert "--batch-size 1 is too small" in cli_error([*argv, "--batch-size", "1"], capsys)
        assert not run.exists()
    elif way == "refused setting":
        assert main(argv) == 0
        assert "differ from the run's" in cli_error([*argv, "--resume", "--lr", "0.2"], capsys)
    elif way == "interrupted":
        _interrupt_at_step(monkeypatch, 1)
        assert main(argv) == 130
    elif way == "interrupted twice":  # the second signal, outside a save, ends the command at once
        _interrupt_at_step(monkeypatch, 2)
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 130
        assert capsys.readouterr().err == "interrupted again: exiting now; no checkpoint was saved yet\n"
    else:
        _bug(monkeypatch)
        with pytest.raises(RuntimeError, match="a bug"):
            main(argv)
    assert not (run / LOCK).exists()
    again = RunLock(run)
    again.acquire()  # free, and nothing stale to warn about
    assert again.warning is None
    again.release()
