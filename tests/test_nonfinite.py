"""Non-finite numbers in training (a NaN sample, a NaN gradient, a NaN weight): stop or skip,
with exact counts."""

import math

import pytest
import torch

from implicit_snn.data import ArrayDataset, load_dataset
from implicit_snn.training import NonFiniteError, Trainer

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
