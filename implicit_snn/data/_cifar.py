"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches.

Each batch file is a pickled dict with ``b"data"``, uint8 ``[N, 3072]`` (1024 red, then 1024
green, then 1024 blue values, each a 32 x 32 image in row-major order), and ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` (CIFAR-100), a list of N ints.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ._base import (ArrayDataset, DatasetInfo, DatasetNotFoundError, PathLike, candidate_dirs, normalize_images,
                    torchvision_download)

# The reference (IDE-FSNN) normalises both CIFAR-10 and CIFAR-100 with these constants.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

_LAYOUT = {
    # name: (folder torchvision extracts, train files, test files, label key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def find_cifar_files(name: str, split: str, root: Optional[PathLike]) -> list[Path]:
    """The batch files of ``split``, from ``root/<batches folder>`` or ``root`` itself.

    Raises:
        DatasetNotFoundError: neither folder holds every batch file of the split.
    """
    folder_name, train, test, _, _ = _LAYOUT[name]
    wanted = train if split == "train" else test
    dirs = candidate_dirs(root, [])
    if dirs:
        dirs = [dirs[0] / folder_name, dirs[0]]
    for folder in dirs:
        if all((folder / f).is_file() for f in wanted):
            return [folder / f for f in wanted]
    size = "163 MB" if name == "cifar10" else "161 MB"
    hint = (f"Extract the python version of the archive ({folder_name}, {size}) so that "
            f"DIR/{folder_name}/{wanted[0]} exists and set `root` to DIR, "
            "or set `download` where the network allows.")
    raise DatasetNotFoundError(name, split, ", ".join(wanted), dirs, hint)


def read_cifar_batch(path: PathLike, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` from one pickle batch file.

    The file is unpickled, which can run code: load only files from a source you trust (as with
    torchvision's CIFAR classes).

    Raises:
        ValueError: the file is not a pickle of the expected dict, or its sizes disagree.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"CIFAR batch {path} is not a readable pickle ({err}); delete it and fetch it again") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"CIFAR batch {path} must be a dict with b'data' and {label_key!r}, got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"CIFAR batch {path}: b'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (len(data),):
        raise ValueError(f"CIFAR batch {path}: {len(data)} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar_dataset(name: str, split: str, root: Optional[PathLike], download: bool) -> ArrayDataset:
    """CIFAR ``split`` as float32 ``[N, 3, 32, 32]``, normalised with ``CIFAR_MEAN`` / ``CIFAR_STD``.

    No augmentation here: pass ``augment=cifar_augment`` to the training ``BatchLoader``. The
    training split is the five batches concatenated in order (CIFAR-10).
    """
    try:
        files = find_cifar_files(name, split, root)
    except DatasetNotFoundError:
        if not download:
            raise
        _download(name, root)
        files = find_cifar_files(name, split, root)
    _, _, _, label_key, num_classes = _LAYOUT[name]
    parts = [read_cifar_batch(f, label_key) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    info = DatasetInfo(name, (3, 32, 32), num_classes, "constant")
    return ArrayDataset(normalize_images(images, CIFAR_MEAN, CIFAR_STD), torch.from_numpy(labels), info)


def _download(name: str, root: Optional[PathLike]) -> None:
    torchvision_download("CIFAR10" if name == "cifar10" else "CIFAR100", root)
