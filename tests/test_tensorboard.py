"""``implicit-snn train --tensorboard``: every epoch's metrics row as TensorBoard scalars, read
back with TensorBoard's own readers; every step once after --resume (a stop mid-epoch included);
the per-layer silent and saturated fractions against spikes counted by hand and against analyze."""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402

import models  # noqa: E402
from implicit_snn import bptt, interrupt  # noqa: E402
from implicit_snn.analysis import layer_activity, spike_census  # noqa: E402
from implicit_snn.app import tensorboard_log  # noqa: E402
from implicit_snn.app.cli import main  # noqa: E402
from implicit_snn.app.report import Report  # noqa: E402
from implicit_snn.metrics import EpochTotals  # noqa: E402
from tests.helpers import SMALL, cli_error, metrics  # noqa: E402

# Two spiking layers, so that layer 2's activity has its own tags.
ARGS = [*SMALL, "--model", "16-8 (F16)"]


def expected_scalars(row: dict) -> dict[str, float]:
    """The tags and values a metrics row must give, spelled out here (not by the module's code)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("epoch", "warnings"):
            continue
        if key in ("firing_rate_per_layer", "silent_per_layer", "saturated_per_layer"):
            name = key.removesuffix("_per_layer")
            out.update({f"activity/layer{n}/{name}": v for n, v in enumerate(value, start=1)})
        elif key == "backward_status":
            out.update({f"backward/status/{status}": count for status, count in value.items()})
        elif key == "forward_status":
            out.update({f"forward_status/{status}": count for status, count in value.items()})
        elif key.startswith("backward_"):
            out["backward/" + key.removeprefix("backward_")] = value
        elif key == "firing_rate":
            out["activity/firing_rate"] = value
        else:
            out[key] = float(value)  # is_best: True → 1.0
    return out


def shown(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar as TensorBoard shows it: (step, value) per tag, its purges applied."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def written(folder: Path) -> dict[str, list[int]]:
    """The steps of every scalar as written in the event files, duplicates included (no purge)."""
    steps: dict[str, list[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def assert_board_equals_metrics(run: Path, board: Path) -> None:
    """Every epoch's row is in TensorBoard at its epoch, once per tag, equal to metrics.jsonl in float32."""
    rows = metrics(run)
    scalars = shown(board)
    wanted = {tag for row in rows for tag in expected_scalars(row)}
    assert set(scalars) == wanted
    for tag, points in scalars.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), (tag, steps)
    for row in rows:
        for tag, value in expected_scalars(row).items():
            [got] = [v for step, v in scalars[tag] if step == row["epoch"]]
            if math.isnan(value):
                assert math.isnan(got), tag
            else:
                assert got == pytest.approx(value, rel=1e-6, abs=1e-30), (tag, row["epoch"])


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A finished two-epoch run with --tensorboard (copy it before continuing it)."""
    run = tmp_path_factory.mktemp("board") / "run"
    assert main(["train", *ARGS, "--epochs", "2", "--out", str(run), "--tensorboard"]) == 0
    return run


def test_every_numeric_field_of_every_epoch_is_a_scalar_at_its_epoch(two_epochs):
    board = two_epochs / "tensorboard"  # the default folder
    assert_board_equals_metrics(two_epochs, board)
    rows = metrics(two_epochs)
    assert [row["epoch"] for row in rows] == [1, 2]
    tags = set(shown(board))
    # The names the docs promise: the backward's VJPs, residual and converged fraction grouped,
    # two layers' activity, the status counts flattened, a boolean as 0/1.
    assert {"train_loss", "train_acc", "val_acc", "test_acc", "lr", "backward/evals_mean",
            "backward/rel_residual_mean", "backward/converged_fraction", "activity/firing_rate",
            "activity/layer1/firing_rate", "activity/layer1/silent", "activity/layer1/saturated",
            "activity/layer2/firing_rate", "activity/layer2/silent", "activity/layer2/saturated",
            "is_best"} <= tags
    assert any(tag.startswith("backward/status/") for tag in tags)
    assert not {"epoch", "warnings"} & tags
    assert dict(shown(board)["is_best"]) == {row["epoch"]: 1.0 for row in rows if row.get("is_best")}
    for row in rows:
        assert len(row["silent_per_layer"]) == len(row["saturated_per_layer"]) == 2
        # The network's mean firing rate is the mean of its layers' over the same batches.
        assert row["firing_rate"] == pytest.approx(sum(row["firing_rate_per_layer"]) / 2, rel=1e-6)  # float32 per batch
    written_steps = written(board)
    assert all(sorted(steps) == [1, 2] for steps in written_steps.values())


def test_resume_continues_the_same_curves_with_every_step_once(two_epochs, tmp_path, capsys):
    run = shutil.copytree(two_epochs, tmp_path / "run")
    board = run / "tensorboard"
    assert main(["train", "--threads", "1", "--epochs", "4", "--out", str(run), "--resume", "--tensorboard"]) == 0
    assert "written from" not in capsys.readouterr().out  # nothing was missing
    assert [row["epoch"] for row in metrics(run)] == [1, 2, 3, 4]
    assert_board_equals_metrics(run, board)
    # Not even in the raw files is a step written twice: the resumed session wrote epochs 3 and 4 only.
    assert all(sorted(steps) == [1, 2, 3, 4] for steps in written(board).values())
    assert len(list(board.glob("events.out.tfevents.*"))) == 2  # the same folder, one file per session


def test_a_run_stopped_mid_epoch_and_resumed_logs_that_epoch_once(two_epochs, tmp_path, monkeypatch, capsys):
    run = shutil.copytree(two_epochs, tmp_path / "run")
    board = run / "tensorboard"
    original = Report.batch

    def stop_at_batch_3(self, trainer):
        original(self, trainer)
        if trainer.epoch == 2 and trainer.batch == 3:
            interrupt.request_stop()

    monkeypatch.setattr(Report, "batch", stop_at_batch_3)
    argv = ["train", "--threads", "1", "--epochs", "4", "--out", str(run), "--resume", "--tensorboard"]
    assert main(argv) == 130
    assert "interrupted: stopped at epoch 3, batch 3" in capsys.readouterr().out
    assert all(sorted(steps) == [1, 2] for steps in written(board).values())  # epoch 3 is not finished
    monkeypatch.undo()
    assert main(argv) == 0
    assert [row["epoch"] for row in metrics(run)] == [1, 2, 3, 4]
    assert_board_equals_metrics(run, board)
    assert all(sorted(steps) == [1, 2, 3, 4] for steps in written(board).values())


def test_epochs_trained_without_tensorboard_are_filled_in_from_the_metrics(two_epochs, tmp_path, capsys):
    """A session without --tensorboard (or a crash after the checkpoint, before the event file):
    the next one with it writes the missing epochs from metrics.jsonl, then goes on."""
    run = shutil.copytree(two_epochs, tmp_path / "run")
    board = run / "tensorboard"
    assert main(["train", "--threads", "1", "--epochs", "3", "--out", str(run), "--resume"]) == 0
    assert all(sorted(steps) == [1, 2] for steps in written(board).values())
    capsys.readouterr()
    assert main(["train", "--threads", "1", "--epochs", "4", "--out", str(run), "--resume", "--tensorboard"]) == 0
    assert "tensorboard: epoch 3 written from metrics.jsonl" in capsys.readouterr().out
    assert_board_equals_metrics(run, board)
    assert all(sorted(steps) == [1, 2, 3, 4] for steps in written(board).values())


def test_epochs_after_the_checkpoint_a_resume_continues_from_are_shown_once(tmp_path, capsys):
    """A resume from an earlier checkpoint than the event files' last epoch (the best checkpoint
    where the last is damaged): the writer purges the later steps and the retrained ones are shown."""
    run = tmp_path / "run"
    board = run / "tensorboard"
    assert main(["train", *ARGS, "--epochs", "1", "--out", str(run), "--tensorboard"]) == 0
    first = (run / "checkpoint-last.pt").read_bytes()
    argv = ["train", "--threads", "1", "--out", str(run), "--resume", "--tensorboard"]
    assert main([*argv, "--epochs", "2"]) == 0
    old = dict(shown(board)["train_loss"])
    (run / "checkpoint-last.pt").write_bytes(first)  # the run is back after epoch 1
    (run / "checkpoint-best.pt").unlink()
    capsys.readouterr()
    assert main([*argv, "--epochs", "3"]) == 0
    assert "at epoch 2, batch 0" in capsys.readouterr().out
    assert_board_equals_metrics(run, board)
    assert sorted(written(board)["train_loss"]) == [1, 2, 2, 3]  # the old epoch 2 stays in its file, hidden
    new = dict(shown(board)["train_loss"])
    assert new[1] == old[1] and new[2] == pytest.approx(metrics(run)[1]["train_loss"], rel=1e-6)


def test_without_the_package_the_flag_is_one_line_before_anything_is_made(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now fails
    run = tmp_path / "run"
    message = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(run), "--tensorboard"], capsys)
    assert message == "error: " + tensorboard_log.MISSING
    assert "pip install 'implicit-snn[tensorboard]'" in message
    assert not run.exists()


def test_a_new_run_is_not_written_into_another_runs_event_files(tmp_path, capsys):
    board = tmp_path / "board"
    board.mkdir()
    (board / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    run = tmp_path / "run"
    message = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(run), "--tensorboard", str(board)], capsys)
    assert message.startswith(f"error: --tensorboard: {board} already holds event files")
    assert "--overwrite to start afresh" in message and not run.exists()
    tensorboard_log.clear(board)  # what --overwrite does there: the event files only
    assert list(board.iterdir()) == []


# -- the per-layer activity the forward reports ------------------------------------------------------


def tiny(producer: str, **options):
    torch.manual_seed(0)
    producer_options = dict(time_steps=5, **options)
    if producer == "lif":
        producer_options["leak"] = 0.9
    model = models.from_spec("12-10 (F12)", (6,), 3, vth=1.0, producer=producer,
                             producer_options=producer_options).eval()
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)) * 3
    return model, x


@pytest.mark.parametrize("producer, options", [("lif", {}), ("if", {}), ("lif", {"sim_precision": "bf16"})])
def test_silent_and_saturated_fractions_are_those_of_the_recorded_spikes(producer, options):
    model, x = tiny(producer, **options)
    with torch.no_grad():
        stats = model.producer(model.network, x).stats
        recorded = dataclasses.replace(model.producer, record="spikes")(model.network, x)
    steps = model.producer.time_steps
    silent, saturated = [], []
    for trains in recorded.extras["spikes"]:  # [B, T, *shape] per layer
        counts = trains.sum(dim=1)
        pairs = counts.numel()
        silent.append(int((counts == 0).sum()) / pairs)
        saturated.append(int((counts == steps).sum()) / pairs)
        assert torch.equal(trains, trains.round()) and int(trains.sum()) > 0
    assert [float(v) for v in stats["silent_per_layer"]] == pytest.approx(silent, abs=1e-7)
    assert [float(v) for v in stats["saturated_per_layer"]] == pytest.approx(saturated, abs=1e-7)
    # A test that means something: each layer has some silent and some saturated neurons, not all.
    assert all(0 < s < 1 for s in silent + saturated)
    # analyze's census of the same batch: the same definitions.
    activity = layer_activity(spike_census(model, [(x, None)]))
    assert [a.silent for a in activity] == pytest.approx(silent, abs=1e-12)
    assert [a.saturated for a in activity] == pytest.approx(saturated, abs=1e-12)
    assert [a.firing_rate for a in activity] == pytest.approx([float(v) for v in stats["firing_rate_per_layer"]],
                                                               rel=1e-6)


@pytest.mark.parametrize("producer", ["lif", "if"])
def test_bptt_reports_the_producers_activity(producer):
    model, x = tiny(producer)
    with torch.no_grad():
        stats = model.producer(model.network, x).stats
    unrolled = bptt.unroll(model.network, x, time_steps=5, leak=model.producer.leak)
    for name in ("silent_per_layer", "saturated_per_layer", "firing_rate_per_layer"):
        assert [float(v) for v in unrolled.stats[name]] == [float(v) for v in stats[name]]


class _Forward(torch.nn.Module):
    def __init__(self, **stats):
        super().__init__()
        self.last_forward = {key: [torch.tensor(v) for v in values] for key, values in stats.items()}
        self.last_forward["firing_rate"] = torch.tensor(sum(stats["firing_rate_per_layer"]) / 2)


def test_an_epochs_activity_is_the_mean_over_its_batches():
    totals = EpochTotals()
    totals.add_forward(_Forward(firing_rate_per_layer=[0.25, 0.5], silent_per_layer=[0.5, 0.0],
                                saturated_per_layer=[0.0, 0.25]))
    totals.add_forward(_Forward(firing_rate_per_layer=[0.75, 0.5], silent_per_layer=[0.0, 0.5],
                                saturated_per_layer=[0.5, 0.75]))
    out = totals.forward_metrics()
    assert out["firing_rate_per_layer"] == [0.5, 0.5]
    assert out["silent_per_layer"] == [0.25, 0.25]
    assert out["saturated_per_layer"] == [0.25, 0.5]
    assert out["firing_rate"] == 0.5
    # A checkpoint's totals carry the sums on (a resumed epoch adds up the same).
    assert EpochTotals(**dataclasses.asdict(totals)).forward_metrics() == out
