"""Non-finite numbers in training (a NaN sample, a NaN gradient, a NaN weight): stop or skip,
with exact counts and an exact resume; checkpoints holding NaN are refused; a stuck firing rate
is a warning; learning rates that can only overflow are refused."""

import math
import os
import signal

import pytest
import torch

from implicit_snn.app import build
from implicit_snn.app.cli import main
from implicit_snn.data import ArrayDataset, load_dataset
from implicit_snn.nonfinite import NonFiniteError
from implicit_snn.training import Trainer
from tests.helpers import SMALL, cli_error, comparable, metrics

NAN = float("nan")


# -- the library: a tiny model, 64 samples, 8 batches of 8 per epoch ---------------------------------

def tiny_data(nan_samples=()):
    data = load_dataset("synthetic", "train", num_train=64, shape=(6,))
    inputs = data.inputs.clone()
    inputs[list(nan_samples)] = NAN
    return ArrayDataset(inputs, data.labels, data.info)


def tiny_trainer(data=None, *, epochs=2, **options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return Trainer(model, optimizer, train_data=data or tiny_data(), val_data=None, test_data=None, epochs=epochs,
                   batch_size=8, test_batch_size=64, milestones=[1], gamma=0.1, warmup_iters=3,
                   device=torch.device("cpu"), seed=0, **options)


def train(trainer):
    rows = []
    while not trainer.done:
        assert trainer.train_epoch()
        rows.append(trainer.end_epoch())
    return rows


def state(trainer):
    """Model, buffers and optimizer state as plain tensors (to compare before and after a step)."""
    saved = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for index, s in enumerate(trainer.optimizer.state.values()):
        saved.update({f"opt{index}.{k}": v.clone() for k, v in s.items() if torch.is_tensor(v)})
    return saved


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_sample_stops_training_by_default_naming_the_epoch_and_batch():
    trainer = tiny_trainer(tiny_data([5]))
    with pytest.raises(NonFiniteError) as info:
        train(trainer)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"non-finite numbers at epoch 1, batch {info.value.batch} of 8: the loss is NaN; "
                              "try a lower `lr`")
    assert "check the input data" in message and "`nonfinite` 'skip'" in message
    assert info.value.what == "the loss is NaN" and trainer.batch == info.value.batch - 1


def test_skipped_steps_leave_model_optimizer_and_batch_norm_untouched_and_are_counted():
    data = tiny_data([5, 40])  # two NaN samples: two skipped steps per epoch, or one where both share a batch
    trainer = tiny_trainer(data, nonfinite="skip")
    before, skipped_at = [state(trainer)], []

    def on_batch(t):
        if t.totals.skipped > len(skipped_at[-1]):
            skipped_at[-1].append(t.batch)
            assert same(state(t), before[-1])  # nothing of the step was kept, running statistics included
        else:
            assert not same(state(t), before[-1])
        before.append(state(t))

    rows = []
    while not trainer.done:
        skipped_at.append([])
        assert trainer.train_epoch(on_batch=on_batch)
        rows.append(trainer.end_epoch())
    # Exactly the batches that hold a NaN sample were skipped (found from the loader's own order).
    expected = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(64, generator=generator)
        batches = {int(i) // 8 + 1 for i in range(64) if int(order[i]) in (5, 40)}
        expected.append(sorted(batches))
    assert [r["skipped_steps"] for r in rows] == [len(e) for e in expected]
    assert skipped_at == expected
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert all(bool(torch.isfinite(v).all()) for v in trainer.model.state_dict().values())
    # The schedule still counted every batch: epoch 2 runs at lr × γ, from its first step.
    assert trainer.scheduler.last_epoch == 16 and rows[1]["lr"] == pytest.approx(0.01)


def test_more_skipped_steps_than_allowed_stop():
    trainer = tiny_trainer(tiny_data(range(0, 64, 8)), nonfinite="skip", max_skipped_steps=2)
    with pytest.raises(NonFiniteError, match="that is 3 steps skipped in this epoch, more than `max_skipped_steps` 2"):
        train(trainer)
    assert trainer.totals.skipped == 2
    with pytest.raises(NonFiniteError, match="that is 1 steps skipped in this epoch, more than `max_skipped_steps` 0"):
        train(tiny_trainer(tiny_data([3]), nonfinite="skip", max_skipped_steps=0))


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_nan_gradient_with_a_finite_loss_is_caught_before_the_update(mode):
    trainer = tiny_trainer(nonfinite=mode)
    layer = trainer.model[3]
    layer.weight.register_hook(lambda g: g * NAN if (trainer.epoch, trainer.batch) == (0, 2) else g)  # step 3
    if mode == "stop":
        with pytest.raises(NonFiniteError, match="batch 3 of 8: the gradient of 3.weight holds NaN;"):
            train(trainer)
        assert bool(torch.isfinite(layer.weight).all())  # the step was not taken
    else:
        assert [r["skipped_steps"] for r in train(trainer)] == [1, 0]


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")  # step_then_overflow
@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_non_finite_parameter_after_the_step_is_caught(mode):
    trainer = tiny_trainer(nonfinite=mode)
    original = trainer.optimizer.step
    steps = []

    def step_then_overflow():
        original()
        steps.append(1)
        if len(steps) == 4:
            with torch.no_grad():
                trainer.model[0].weight[1, 2] = math.inf

    trainer.optimizer.step = step_then_overflow
    if mode == "stop":
        with pytest.raises(NonFiniteError, match="batch 4 of 8: parameter 0.weight holds inf after the optimizer step"):
            train(trainer)
    else:
        rows = train(trainer)
        assert [r["skipped_steps"] for r in rows] == [1, 0]
        assert bool(torch.isfinite(trainer.model[0].weight).all())  # the update was undone


def test_large_finite_gradients_are_not_taken_for_non_finite():
    trainer = tiny_trainer()
    x, y = next(iter(trainer.loader))
    loss = torch.nn.functional.cross_entropy(trainer.model(x), y)
    loss.backward()
    for p in trainer.model.parameters():
        p.grad.mul_(1e30)  # finite; their squares, and so a 2-norm, would overflow float32
    assert trainer._check_loss_and_gradients(loss) == (loss.item(), None)
    trainer.model[0].weight.grad[1, 2] = -math.inf
    assert trainer._check_loss_and_gradients(loss)[1] == "the gradient of 0.weight holds inf"


def test_the_settings_are_checked():
    with pytest.raises(ValueError, match="`nonfinite` must be 'stop' or 'skip', got 'ignore'"):
        tiny_trainer(nonfinite="ignore")
    with pytest.raises(ValueError, match="`max_skipped_steps` must be an integer >= 0, got -1"):
        tiny_trainer(max_skipped_steps=-1)


# -- the command line ---------------------------------------------------------------------------

@pytest.fixture
def nan_samples(monkeypatch):
    """Training data (after the validation split) with NaN in the samples given by ``set``."""
    chosen: list[int] = []
    load_splits = build.load_splits

    def with_nan(config):
        train_data, val, test = load_splits(config)
        inputs = train_data.inputs.clone()
        inputs[chosen] = NAN
        return ArrayDataset(inputs, train_data.labels, train_data.info), val, test

    monkeypatch.setattr(build, "load_splits", with_nan)
    return chosen


def test_train_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, nan_samples, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    written = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.name != "config.json"}  # resume rewrites it
    before = written()
    nan_samples.append(7)
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "2", "--threads", "1", "--out", str(out), "--resume"])
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message  # exit status 1, one line
    assert message.startswith("error: non-finite numbers at epoch 2, batch ")
    # The spiking forward drops the NaN (it never crosses the threshold): the backward through the input weights does not.
    assert ": the gradient of network.input_layer.op.weight holds NaN; try a lower --lr, a tighter backward solve (a smaller --b_tol, a larger " \
           "--b_max_iter), or check the input data for NaN or inf, or skip such steps with --nonfinite 'skip' " \
           f"({out / 'checkpoint-last.pt'} is still the last good state)" in message
    assert written() == before  # nothing of epoch 2 was written: checkpoints, metrics and summary as they were
    # --nonfinite may change on resume: the same run goes on past the NaN sample.
    assert main(["train", "--epochs", "2", "--threads", "1", "--out", str(out), "--resume", "--nonfinite", "skip"]) == 0
    assert "skipped 1 non-finite step |" in capsys.readouterr().out
    assert [r["skipped_steps"] for r in metrics(out)] == [0, 1]
    fresh = tmp_path / "fresh"
    message = cli_error(["train", *SMALL, "--epochs", "1", "--out", str(fresh)], capsys)
    assert message.endswith("(no checkpoint was written)")


def test_resume_after_skipped_steps_is_exact(tmp_path, nan_samples, monkeypatch):
    """A run cut by Ctrl-C after its skipped steps, resumed, matches the run left alone."""
    nan_samples.extend([1, 7, 19])  # in batches 2, 4 (before the cut) and 10 of epoch 1; 2, 9 and 13 of epoch 2
    original_step = torch.optim.SGD.step
    calls = []

    def step_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self, *args, **kwargs)

    skip = ["--nonfinite", "skip"]
    monkeypatch.setattr(torch.optim.SGD, "step", step_then_interrupt)
    assert main(["train", *SMALL, *skip, "--epochs", "2", "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(torch.optim.SGD, "step", original_step)
    cut = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=False)
    assert cut["epoch"] == 0 and cut["totals"]["skipped"] == 2 and cut["batch"] == 7  # 5 steps taken, 2 skipped
    assert main(["train", *SMALL, *skip, "--epochs", "2", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert main(["train", *SMALL, *skip, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    whole = metrics(tmp_path / "whole")
    assert [r["skipped_steps"] for r in whole] == [3, 3]
    assert comparable(metrics(tmp_path / "cut")) == comparable(whole)
    a = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=False)
    b = torch.load(tmp_path / "whole" / "checkpoint-last.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"] == b["scheduler"]


@pytest.mark.parametrize("argv, message", [
    (["--nonfinite", "ignore"], "invalid choice: 'ignore'"),
    (["--max-skipped-steps", "-1"], "--max-skipped-steps: must be an integer >= 0, got '-1'"),
])
def test_the_nonfinite_flags_are_checked(argv, message, tmp_path, capsys):
    assert message in cli_error(["train", *argv, "--out", str(tmp_path / "x")], capsys)


@pytest.mark.parametrize("command", ["eval", "analyze"])
@pytest.mark.parametrize("tensor", ["network.feedback.op.weight", "network.feedback.spectral.u"])  # a buffer too
def test_eval_and_analyze_refuse_a_checkpoint_holding_nan(tmp_path, capsys, command, tensor):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoint-last.pt", weights_only=False)
    assert tensor in ckpt["model"], sorted(ckpt["model"])
    ckpt["model"][tensor].view(-1)[[0, 3]] = NAN
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    message = cli_error([command, str(bad)], capsys)
    assert message == (f"error: {bad}: the model's {tensor} holds 2 non-finite values (NaN or inf) of "
                       f"{ckpt['model'][tensor].numel()}; use a checkpoint from before it (training stops at a "
                       "non-finite number and keeps the last good checkpoint)")


def test_a_firing_rate_stuck_at_zero_is_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--vth", "1e30", "--out", str(out)]) == 0
    (row,) = metrics(out)
    assert row["firing_rate"] == 0
    warning = ("the mean firing rate is 0: the neurons (almost) never fire, so no gradient reaches the weights; "
               "try a lower --vth or check the input scale")
    assert row["warnings"] == [warning]
    assert f"\nwarning: epoch 1: {warning}\n" in capsys.readouterr().out


def test_epoch_warnings_at_both_ends_only():
    from implicit_snn.app.report import epoch_warnings

    assert epoch_warnings({"firing_rate": 0.13}) == [] and epoch_warnings({}) == []
    assert "try a higher --vth" in epoch_warnings({"firing_rate": 1.0})[0]
    assert epoch_warnings({"firing_rate": 5e-5}) and not epoch_warnings({"firing_rate": 2e-4})


@pytest.mark.parametrize("argv, message", [
    (["--lr", "1e300"], "--lr: must be a number in (0, 10], got '1e300'"),
    (["--lr", "11"], "--lr: must be a number in (0, 10], got '11'"),
    (["--momentum", "1"], "--momentum: must be a number in [0, 1), got '1'"),
    (["--weight-decay", "2"], "--weight-decay: must be a number in [0, 1], got '2'"),
])
def test_optimizer_settings_that_can_only_overflow_are_refused(argv, message, tmp_path, capsys):
    assert message in cli_error(["train", *argv, "--out", str(tmp_path / "x")], capsys)
    assert not (tmp_path / "x").exists()
