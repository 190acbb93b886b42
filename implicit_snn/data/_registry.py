"""Dataset names to loaders: ``available_datasets``, ``dataset_info``, ``load_dataset``."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Callable, Optional

from ._base import ArrayDataset, DatasetInfo, PathLike, _is_positive_int, check_split
from ._cifar import load_cifar_dataset
from ._idx import load_idx_dataset
from ._nmnist import load_nmnist_dataset
from ._synthetic import load_synthetic_dataset, synthetic_info


@dataclasses.dataclass(frozen=True)
class _Entry:
    load: Callable[..., ArrayDataset]          # load(split, root, download, time_steps, **options)
    info: Callable[..., DatasetInfo]           # info(time_steps, **options)
    description: str


def _fixed(info: DatasetInfo, spikes: bool = False) -> Callable[..., DatasetInfo]:
    return lambda time_steps, **_: dataclasses.replace(info, time_steps=time_steps) if spikes else info


def _drop_time_steps(load):
    return lambda split, root, download, time_steps: load(split, root, download)


_DATASETS: dict[str, _Entry] = {
    "fashion-mnist": _Entry(_drop_time_steps(functools.partial(load_idx_dataset, "fashion-mnist")),
                            _fixed(DatasetInfo("fashion-mnist", (1, 28, 28), 10, "constant")),
                            "Fashion-MNIST, 60k/10k 28x28 grey images (the default)"),
    "mnist": _Entry(_drop_time_steps(functools.partial(load_idx_dataset, "mnist")),
                    _fixed(DatasetInfo("mnist", (1, 28, 28), 10, "constant")),
                    "MNIST, 60k/10k 28x28 grey digits"),
    "cifar10": _Entry(_drop_time_steps(functools.partial(load_cifar_dataset, "cifar10")),
                      _fixed(DatasetInfo("cifar10", (3, 32, 32), 10, "constant")),
                      "CIFAR-10, 50k/10k 32x32 colour images, 10 classes"),
    "cifar100": _Entry(_drop_time_steps(functools.partial(load_cifar_dataset, "cifar100")),
                       _fixed(DatasetInfo("cifar100", (3, 32, 32), 100, "constant")),
                       "CIFAR-100, 50k/10k 32x32 colour images, 100 fine classes"),
    "nmnist": _Entry(load_nmnist_dataset, _fixed(DatasetInfo("nmnist", (2, 34, 34), 10, "spikes", 30), True),
                     "N-MNIST, 60k/10k event recordings binned into [T, 2, 34, 34] spike frames"),
    "synthetic": _Entry(load_synthetic_dataset, synthetic_info,
                        "generated class prototypes plus noise, 512/256 samples (smoke tests)"),
}


def available_datasets() -> list[str]:
    """Names accepted by ``load_dataset``, in a fixed order (the default first)."""
    return list(_DATASETS)


def describe_datasets() -> dict[str, str]:
    """One line per dataset."""
    return {name: entry.description for name, entry in _DATASETS.items()}


def dataset_options(name: str) -> list[str]:
    """The dataset-specific keyword options ``load_dataset(name, ...)`` accepts."""
    params = inspect.signature(_entry(name).load).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def dataset_info(name: str, *, time_steps: int = 30, **options) -> DatasetInfo:
    """What ``load_dataset(name, split, time_steps=time_steps, **options).info`` will be, without loading.

    ``time_steps`` only matters for spike datasets (``info.time_steps`` is None otherwise);
    ``options`` only matter for ``synthetic`` (``shape``, ``num_classes``, ``input_kind``).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        TypeError: an option the dataset does not have.
    """
    entry = _entry(name)
    _check_options(name, options, time_steps)
    return entry.info(time_steps, **options)


def load_dataset(name: str, split: str, *, root: Optional[PathLike] = None, download: bool = False,
                 time_steps: int = 30, **options) -> ArrayDataset:
    """Load one split of a dataset into memory.

    Args:
        name: one of ``available_datasets()``.
        split: "train" or "test" (use ``split_validation`` for a validation set).
        root: folder with the dataset's files; see each dataset's search order in the package
            docstring. Fashion-MNIST is also found in Debian's ``/usr/share/datasets/fashion-mnist``.
        download: fetch missing files with torchvision (MNIST, Fashion-MNIST, CIFAR) into ``root``.
        time_steps: frames per spike train (N-MNIST, synthetic spikes); ignored for static images.
        **options: dataset-specific, listed by ``dataset_options(name)``; e.g. N-MNIST's
            ``bin_ms``, ``accumulate``, ``cache``, or synthetic's ``num_train``, ``seed``.

    Returns:
        An ``ArrayDataset`` (inputs normalised, labels int64, ``info`` filled in).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        ValueError: bad split, bad option value, or a corrupt file.
        TypeError: an option the dataset does not have.
        DatasetNotFoundError: the files are missing (the message lists where it looked and how
            to get them).
    """
    entry = _entry(name)
    check_split(split)
    _check_options(name, options, time_steps)
    return entry.load(split, root, bool(download), time_steps, **options)


def _entry(name: str) -> _Entry:
    try:
        return _DATASETS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(name, _DATASETS, n=1) if isinstance(name, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown dataset {name!r}{hint} known datasets: {', '.join(_DATASETS)}") from None


def _check_options(name: str, options: dict, time_steps) -> None:
    if not _is_positive_int(time_steps):
        raise ValueError(f"`time_steps` must be a positive integer, got {time_steps!r}")
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(allowed) or 'none'}")
