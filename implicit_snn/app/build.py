"""Building a run from a ``RunConfig``: the model (presets from ``models``), data, optimizer, trainer."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

import models

from .. import distributed, producers
from ..data import ArrayDataset, cifar_augment, dataset_info, dataset_options, load_dataset, split_validation
from ..distributed import Context
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


def build_model(config: RunConfig, num_classes: int, in_shape: Optional[tuple[int, ...]] = None) -> torch.nn.Module:
    """The model named by ``config.model`` (a preset, or a spec string in the paper's notation)."""
    options = dict(
        dropout=config.dropout, vth=config.vth, operator_norm=config.operator_norm,
        bn_momentum=config.bn_momentum, alpha_init=config.alpha_init, bn_backward=config.bn_backward,
        producer=config.producer or "lif", producer_options=producer_settings(config),
        backward=config.b_solver, b_max_iter=config.b_max_iter, b_tol=config.b_tol, b_stop_mode=config.b_stop_mode,
        b_options=dict(config.b_options),
        method=config.method, surrogate=config.surrogate, surrogate_slope=config.surrogate_slope,
    )
    if config.model in models.available_models():
        return models.build_model(config.model, num_classes=num_classes, **options)
    if "(" in config.model:
        if in_shape is None:
            raise ValueError("a spec-string model needs the dataset's input shape")
        return models.from_spec(config.model, in_shape, num_classes, **options)
    raise UsageError(f"unknown model {config.model!r}; presets: {', '.join(models.available_models())}, "
                     "or a spec such as '400 (F400)'")


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


def _split_train(config: RunConfig, train: ArrayDataset) -> tuple[ArrayDataset, Optional[ArrayDataset]]:
    """The training set minus the validation split, and that split (None with ``val_size`` 0).
    An unset ``val_size`` is resolved here, in ``config``, so the saved configuration holds the number."""
    if config.val_size is None:
        config.val_size = default_val_size(len(train))
    if config.val_size >= len(train):
        raise ValueError(f"--val-size {config.val_size} leaves nothing to train on: the {config.dataset} training set "
                         f"has {len(train)} samples (use at most {len(train) - 1}, or 0 for no validation split)")
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
    torch.manual_seed(config.seed)
    train, val, test = load_splits(config)
    info = train.info
    # Every process builds the same initial model; from here on each draws its own dropout masks
    # (rank 0 goes on with the stream a one-process run has always used).
    model = build_model(config, info.num_classes, info.in_shape).to(device)
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
