"""Dataset names to loaders: ``register_dataset``, ``available_datasets``, ``dataset_info``, ``load_dataset``."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Optional, Union

from solvers import Registry

from ._base import ArrayDataset, DatasetInfo, PathLike, _is_positive_int, check_split

Loader = Callable[..., ArrayDataset]       # load(split, root, download, time_steps, *, option=default, ...)
InfoFn = Callable[..., DatasetInfo]        # info(time_steps, **options)


@dataclasses.dataclass(frozen=True)
class _Entry:
    load: Loader
    info: InfoFn
    description: str


class _InOrder(Registry[_Entry]):
    """A ``Registry`` that lists names in registration order, so that the default comes first."""

    def names(self) -> list[str]:
        return list(self._items)


DATASETS: _InOrder = _InOrder("dataset")


def register_dataset(name: str, *, info: Union[DatasetInfo, InfoFn],
                     description: Optional[str] = None) -> Callable[[Loader], Loader]:
    """Decorator registering a loader as the dataset ``name`` (a taken name is an error).

    The loader is called as ``load(split, root, download, time_steps, **options)`` and returns an
    ``ArrayDataset``; its keyword-only parameters are the dataset's options (``dataset_options``),
    and any other keyword given to ``load_dataset`` is refused before it is called.

    Args:
        name: the name ``load_dataset`` and ``--dataset`` take; datasets are listed in the order
            they were registered.
        info: the dataset's ``DatasetInfo``, or ``info(time_steps, **options) -> DatasetInfo`` when
            it depends on the options (it is given the same options as the loader). A spike
            dataset's fixed ``DatasetInfo`` takes the ``time_steps`` asked for.
        description: one line for ``describe_datasets``; the first line of the loader's docstring
            if not given.

    Raises:
        ValueError: ``name`` is taken or not a non-empty string.
        TypeError: the loader cannot be called as above, or ``info`` is neither of the two.
    """
    if isinstance(info, DatasetInfo):
        info = _fixed(info)
    elif not callable(info):
        raise TypeError(f"register_dataset({name!r}) needs `info` to be a DatasetInfo or a callable, got {info!r}")

    def decorate(load: Loader) -> Loader:
        try:
            inspect.signature(load).bind_partial("train", None, False, 1)
        except (TypeError, ValueError):
            raise TypeError(f"register_dataset({name!r}) needs a loader callable as "
                            f"load(split, root, download, time_steps, **options), got {load!r}") from None
        text = description if description is not None else (inspect.getdoc(load) or "")
        DATASETS.add(name, _Entry(load, info, (text.strip().splitlines() or [""])[0]))
        return load

    return decorate


def _fixed(info: DatasetInfo) -> InfoFn:
    if info.input_kind == "spikes":
        return lambda time_steps, **_: dataclasses.replace(info, time_steps=time_steps)
    return lambda time_steps, **_: info


def available_datasets() -> list[str]:
    """Names accepted by ``load_dataset``, in registration order (the default first)."""
    return DATASETS.names()


def describe_datasets() -> dict[str, str]:
    """One line per dataset, in registration order."""
    return DATASETS.describe()


def dataset_options(name: str) -> list[str]:
    """The dataset-specific keyword options ``load_dataset(name, ...)`` accepts."""
    params = inspect.signature(DATASETS.get(name).load).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def dataset_info(name: str, *, time_steps: int = 30, **options) -> DatasetInfo:
    """What ``load_dataset(name, split, time_steps=time_steps, **options).info`` will be, without loading.

    ``time_steps`` only matters for spike datasets (``info.time_steps`` is None otherwise);
    ``options`` only matter where the info depends on them, e.g. synthetic's ``shape``,
    ``num_classes``, ``input_kind``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        TypeError: an option the dataset does not have.
    """
    entry = DATASETS.get(name)
    _check_options(name, options, time_steps)
    return entry.info(time_steps, **options)


def load_dataset(name: str, split: str, *, root: Optional[PathLike] = None, download: bool = False,
                 time_steps: int = 30, **options) -> ArrayDataset:
    """Load one split of a dataset into memory.

    Args:
        name: one of ``available_datasets()`` (the built-ins and any ``register_dataset`` added).
        split: "train" or "test" (use ``split_validation`` for a validation set).
        root: folder with the dataset's files; see each dataset's search order in the package
            docstring. A given root is used or is a ``DatasetNotFoundError``; without one,
            Fashion-MNIST is found in Debian's ``/usr/share/datasets/fashion-mnist``.
        download: fetch missing files with torchvision (MNIST, Fashion-MNIST, CIFAR) into ``root``.
        time_steps: frames per spike train (N-MNIST, synthetic spikes); ignored for static images.
        **options: dataset-specific, listed by ``dataset_options(name)``; e.g. N-MNIST's
            ``bin_ms``, ``accumulate``, ``cache``, synthetic's ``num_train``, ``seed``, or the
            ``verify`` of MNIST, Fashion-MNIST and the CIFARs (False: skip the check that the files
            are the published ones, for files of one's own).

    Returns:
        An ``ArrayDataset`` (inputs normalised, labels int64, ``info`` filled in, ``files`` the
        files read).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        ValueError: bad split, bad option value, a corrupt file, or (``verify``) a file that is not
            the published one.
        TypeError: an option the dataset does not have, or a loader that returned no ArrayDataset.
        DatasetNotFoundError: the files are missing (the message lists where it looked and how
            to get them).
    """
    entry = DATASETS.get(name)
    check_split(split)
    _check_options(name, options, time_steps)
    dataset = entry.load(split, root, bool(download), time_steps, **options)
    if not isinstance(dataset, ArrayDataset):
        raise TypeError(f"dataset {name!r}'s loader returned {type(dataset).__name__}, expected an ArrayDataset")
    return dataset


def _check_options(name: str, options: dict, time_steps) -> None:
    if not _is_positive_int(time_steps):
        raise ValueError(f"`time_steps` must be a positive integer, got {time_steps!r}")
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(allowed) or 'none'}")
