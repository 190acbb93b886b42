"""Building a run from a ``RunConfig``: the model (presets from ``models``), data, optimizer, trainer."""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch

import models
import solvers

from .. import distributed, producers
from ..data import (ArrayDataset, available_datasets, cifar_augment, dataset_info, dataset_options, load_dataset,
                    split_validation)
from ..distributed import Context
from ..precision import resolve_precision
from ..training import Trainer
from .config import PRODUCER_SETTINGS, RunConfig
from .errors import UsageError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device must be cpu, cuda or auto, got {name!r}")
    return torch.device(name)


def producer_settings(config: RunConfig) -> dict[str, Any]:
    """The producer's options from the run settings: those it takes that are set."""
    takes = producers.producer_options(config.producer or "lif")
    return {name: getattr(config, name) for name in PRODUCER_SETTINGS
            if name in takes and getattr(config, name) is not None}


def model_from_config(config: RunConfig, num_classes: int,
                      in_shape: Optional[tuple[int, ...]] = None) -> torch.nn.Module:
    """The run's model: ``models.build_model`` of ``config.model`` (a registered name, or a spec
    string in the paper's notation, which needs ``in_shape``) with the run's settings; a model
    built for inputs other than ``in_shape`` is a ``UsageError`` naming datasets that fit."""
    options = dict(
        dropout=config.dropout, vth=config.vth, operator_norm=config.operator_norm,
        bn_momentum=config.bn_momentum, alpha_init=config.alpha_init, bn_backward=config.bn_backward,
        producer=config.producer or "lif", producer_options=producer_settings(config),
        b_solver=config.b_solver, b_max_iter=config.b_max_iter, b_tol=config.b_tol, b_stop_mode=config.b_stop_mode,
        b_options=dict(config.b_options),
        method=config.method, surrogate=config.surrogate, surrogate_slope=config.surrogate_slope,
    )
    spec = "(" in config.model
    model = models.build_model(config.model, num_classes, in_shape=in_shape if spec else None, **options)
    if in_shape is not None and not spec:
        expected = getattr(getattr(model, "network", None), "in_shape", None)
        check_input_shape(expected, config.model, config.dataset, in_shape)
    return model


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def check_input_shape(expected: Optional[tuple[int, ...]], name: str, dataset: Optional[str],
                      in_shape: tuple[int, ...]) -> None:
    """Refuse (``UsageError``) a model built for inputs of shape ``expected`` on a dataset of
    ``in_shape`` ones: it would fail at its first batch. ``expected`` None (a model that does not
    say) passes."""
    if expected is None or tuple(expected) == tuple(in_shape):
        return
    expected, in_shape = tuple(expected), tuple(in_shape)
    datasets = [d for d in available_datasets() if _dataset_shape(d) == expected]
    presets = [p for p, preset in models.PRESETS.items() if tuple(preset.in_shape) == in_shape]
    instead = (f"--dataset {' or '.join(datasets)}" if datasets else f"a dataset of {_shape(expected)} inputs")
    fitting = f"the presets {', '.join(presets)} or " if presets else ""
    raise UsageError(f"model {name} takes {_shape(expected)} inputs, but the {dataset} dataset's are "
                     f"{_shape(in_shape)}; use {instead}, or for {dataset} {fitting}a spec such as '400 (F400)' "
                     "(built for the dataset's shape)")


def _dataset_shape(name: str) -> Optional[tuple[int, ...]]:
    try:
        return tuple(dataset_info(name).in_shape)
    except (KeyError, TypeError, ValueError):  # a registered dataset whose shape depends on options it needs
        return None


def backward_unknowns(model: torch.nn.Module, in_shape: tuple[int, ...], batch: int) -> Optional[tuple[int, int, bool]]:
    """(unknowns of one backward solve, unknowns per sample, whether the batch is coupled) of a
    training step on ``batch`` samples; None for a model without an implicit backward (BPTT).

    Asks the network itself, as a training step does (``couples_samples`` on the arguments of f's
    differentiable evaluation), on a copy and with the RNG restored, so the run is unchanged."""
    network = getattr(model, "network", None)
    if getattr(model, "method", "ide") == "bptt" or network is None or not hasattr(network, "map_inputs"):
        return None
    probe = copy.deepcopy(network).cpu().train()  # map_inputs takes a power-iteration step in training
    x = torch.zeros((2, *in_shape))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        f_args = probe.map_inputs(x)
        differentiable = getattr(probe, "differentiable_args", None)
        if differentiable is not None:
            f_args = differentiable(*f_args)
        coupled = producers.couples_samples(probe, f_args)
        per_sample = probe.initial_state(x)[0].numel()
    return (per_sample * batch if coupled else per_sample), per_sample, coupled


def check_exact_size(model: torch.nn.Module, in_shape: tuple[int, ...], batch: int) -> None:
    """Refuse (``UsageError``) an ``exact`` backward whose system would exceed its ``max_size``
    on a training batch of ``batch`` samples (the largest one a process trains), before any
    step: ``exact`` itself only finds out at the first backward."""
    adjoint = getattr(model, "adjoint", None)
    solver = getattr(adjoint, "solver", None)
    if not isinstance(solver, solvers.Exact):
        return
    sized = backward_unknowns(model, in_shape, batch)
    if sized is None:
        return
    unknowns, per_sample, coupled = sized
    limit = solver.max_size
    if unknowns <= limit:
        return
    if coupled:
        fits = limit // per_sample  # batch norm needs 2 samples a batch: below that no batch size fits
        smaller = f"a --batch-size of at most {fits}, " if fits >= 2 else ""
        raise UsageError(
            f"--b_solver exact: the backward is one system of {unknowns:,} unknowns ({batch} samples × "
            f"{per_sample:,} last-layer neurons, coupled by batch norm's batch statistics), above exact's max_size "
            f"{limit:,}; use {smaller}--bn-backward simulated (samples not coupled), another --b_solver, or "
            f"--b_options max_size={unknowns} (a dense {unknowns:,}² Jacobian)")
    raise UsageError(
        f"--b_solver exact: the backward has {unknowns:,} unknowns per sample (the last layer's neurons), above "
        f"exact's max_size {limit:,}; use another --b_solver, or --b_options max_size={unknowns} (a dense "
        f"{unknowns:,}² Jacobian per sample)")


def _load(config: RunConfig, split: str) -> ArrayDataset:
    """One split of the run's dataset as stored (spike datasets binned into the run's T frames)."""
    kwargs: dict[str, Any] = dict(root=config.data_root, download=config.download)
    info = dataset_info(config.dataset)
    if info.input_kind == "spikes":
        kwargs["time_steps"] = config.time_steps or info.time_steps
    if "verify" in dataset_options(config.dataset):
        kwargs["verify"] = config.verify_data
    elif not config.verify_data:
        raise UsageError(f"--no-verify-data: the {config.dataset} dataset has no published checksums to skip")
    return load_dataset(config.dataset, split, **kwargs)


def data_files(*datasets: Optional[ArrayDataset]) -> list[dict[str, Any]]:
    """The files the datasets were read from, each once (path, content MD5, verified), for the run to record."""
    files = {f.path: f.to_dict() for dataset in datasets if dataset is not None for f in dataset.files}
    return list(files.values())


def default_val_size(train_size: int) -> int:
    """The validation split carved by default: 5,000 samples, or a tenth of a smaller training set."""
    return min(5000, train_size // 10)


def _check_val_size(config: RunConfig, total: int, least: int) -> None:
    """Refuse a validation split that leaves fewer than ``least`` of the ``total`` training samples
    to train on, advising the largest one that is accepted."""
    if config.val_size > 0 and total - config.val_size < least:
        most = total - least
        advice = f"use at most {most}, or 0 for no validation split" if most >= 1 else "use 0: it is too small to split"
        left = max(total - config.val_size, 0)
        what = "nothing" if left == 0 else f"only {left} sample{'' if left == 1 else 's'}"
        raise ValueError(f"--val-size {config.val_size} leaves {what} to train on: the {config.dataset} training set "
                         f"has {total} samples and training needs at least {least} (batch statistics); {advice}")


def _split_train(config: RunConfig, train: ArrayDataset) -> tuple[ArrayDataset, Optional[ArrayDataset]]:
    """The training set minus the validation split, and that split (None with ``val_size`` 0); at
    least 2 samples must be left to train on (``Trainer``'s minimum in one process).
    An unset ``val_size`` is resolved here, in ``config``, so the saved configuration holds the number."""
    if config.val_size is None:
        config.val_size = default_val_size(len(train))
    _check_val_size(config, len(train), 2)
    if config.val_size > 0:
        return split_validation(train, config.val_size, seed=config.seed)
    return train, None


def load_splits(config: RunConfig) -> tuple[ArrayDataset, Optional[ArrayDataset], ArrayDataset]:
    """Train (minus the validation split), validation (carved from train) and test data."""
    train, val = _split_train(config, _load(config, "train"))
    return train, val, _load(config, "test")


def load_split(config: RunConfig, split: str) -> Optional[ArrayDataset]:
    """Only the ``split`` (``train``, ``val`` or ``test``) of the run: the test set is read alone;
    ``val`` is None when the run has no validation split."""
    if split == "test":
        return _load(config, "test")
    train, val = _split_train(config, _load(config, "train"))
    return {"train": train, "val": val}[split]


def make_trainer(config: RunConfig, context: Context = Context.single()) -> Trainer:
    """Everything a training run needs, seeded from ``config.seed``; ``context`` is this process's
    place in a ``torchrun`` run (one process by default)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = distributed.process_device(resolve_device(config.device), context)
    if config.sim_precision == "auto":  # the saved settings say what ran
        config.sim_precision = resolve_precision("auto", device)
    torch.manual_seed(config.seed)
    if config.model in models.PRESETS:  # before the data are read; model_from_config checks any model again
        shape = dataset_info(config.dataset).in_shape  # as _load reads it: the shape needs no options
        check_input_shape(models.PRESETS[config.model].in_shape, config.model, config.dataset, shape)
    train, val, test = load_splits(config)
    # Trainer's minimum is 2 samples per process: with several, the split may leave too few.
    _check_val_size(config, len(train) + (len(val) if val is not None else 0), 2 * context.world_size)
    info = train.info
    # Every process builds the same initial model; from here on each draws its own dropout masks
    # (rank 0 goes on with the stream a one-process run has always used).
    model = model_from_config(config, info.num_classes, info.in_shape)
    # The largest part of a batch any process trains: the first batch's, split as BatchLoader does.
    largest = math.ceil(min(config.batch_size, len(train)) / context.world_size)
    check_exact_size(model, info.in_shape, largest)
    model = model.to(device)
    if context.rank > 0:
        torch.manual_seed(distributed.rank_seed(config.seed, context))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    augment = cifar_augment if config.dataset in ("cifar10", "cifar100") else None
    return Trainer(
        model, optimizer, train_data=train, val_data=val, test_data=test, epochs=config.epochs,
        batch_size=config.batch_size, test_batch_size=config.test_batch_size, milestones=list(config.milestones),
        gamma=config.gamma, warmup_iters=config.warmup_iters, device=device, seed=config.seed, augment=augment,
        context=context, nonfinite=config.nonfinite, max_skipped_steps=config.max_skipped_steps,
    )


def count_model(name: str) -> tuple[int, int, int]:
    """(spiking neurons, input units, trainable parameters) of a preset for its default dataset's classes."""
    model = models.build_model(name)
    inputs = math.prod(model.network.in_shape)
    return model.network.num_neurons, inputs, model.num_parameters()
