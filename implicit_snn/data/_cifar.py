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

from ._base import (ArrayDataset, DatasetInfo, DatasetNotFoundError, PathLike, candidate_dirs, identify,
                    normalize_images, root_problem, torchvision_download)

# The reference (IDE-FSNN) normalises both CIFAR-10 and CIFAR-100 with these constants.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

_LAYOUT = {
    # name: (folder torchvision extracts, train files, test files, label key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}

# The MD5 of each batch file of the python version, as torchvision.datasets.CIFAR10/CIFAR100 list them.
PUBLISHED_MD5 = {
    "c99cafc152244af753f735de768cd75f": ("cifar10", "data_batch_1"),
    "d4bba439e000b95fd0a9bffe97cbabec": ("cifar10", "data_batch_2"),
    "54ebc095f3ab1f0389bbae665268c751": ("cifar10", "data_batch_3"),
    "634d18415352ddfa80567beed471001a": ("cifar10", "data_batch_4"),
    "482c414d41f54cd18b22e5b47cb7c3cb": ("cifar10", "data_batch_5"),
    "40351d587109b95175f43aff81a1287e": ("cifar10", "test_batch"),
    "16019d7e3df5f24257cddd939b257f8d": ("cifar100", "train"),
    "f0ef6b0ae62326f3e7ffdfab6717acfc": ("cifar100", "test"),
}


def find_cifar_files(name: str, split: str, root: Optional[PathLike]) -> list[Path]:
    """The batch files of ``split``, from ``root/<batches folder>`` or ``root`` itself.

    Raises:
        DatasetNotFoundError: neither folder holds every batch file of the split (or ``root`` is no folder).
    """
    folder_name, train, test, _, _ = _LAYOUT[name]
    wanted = train if split == "train" else test
    dirs = candidate_dirs(root, [])
    if dirs:
        dirs = [dirs[0] / folder_name, dirs[0]]
    note = root_problem(root)
    for folder in [] if note else dirs:
        present = [f for f in wanted if (folder / f).is_file()]
        if len(present) == len(wanted):
            return [folder / f for f in wanted]
        if present and note is None:
            note = f"{folder} holds {', '.join(present)} but not {', '.join(f for f in wanted if f not in present)}"
    size = "163 MB" if name == "cifar10" else "161 MB"
    hint = (f"Extract the python version of the archive ({folder_name}, {size}) so that "
            f"DIR/{folder_name}/{wanted[0]} exists and set `root` to DIR, "
            "or set `download` where the network allows.")
    raise DatasetNotFoundError(name, split, ", ".join(wanted), dirs, hint, note)


def read_cifar_batch(path: PathLike, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` from one pickle batch file.

    The file is unpickled, which can run code: load only files from a source you trust (as with
    torchvision's CIFAR classes).

    Raises:
        ValueError: the file is not a pickle of the expected dict, or its sizes disagree.
    """
    return _parse_batch(Path(path).read_bytes(), Path(path), label_key)


def _parse_batch(content: bytes, path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.loads(content, encoding="bytes")
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


def load_cifar_dataset(name: str, split: str, root: Optional[PathLike], download: bool, *,
                       verify: bool = True) -> ArrayDataset:
    """CIFAR ``split`` as float32 ``[N, 3, 32, 32]``, normalised with ``CIFAR_MEAN`` / ``CIFAR_STD``.

    No augmentation here: pass ``augment=cifar_augment`` to the training ``BatchLoader``. The
    training split is the five batches concatenated in order (CIFAR-10).

    ``verify=True`` (default) checks each batch file's MD5 against the published one
    (``PUBLISHED_MD5``) before unpickling it: another batch, the other CIFAR's, or an unknown file
    is a ``ValueError`` naming it. ``verify=False`` loads files of one's own (pickles of the same
    layout). The dataset's ``files`` hold the paths read and their checksums either way.
    """
    try:
        files = find_cifar_files(name, split, root)
    except DatasetNotFoundError:
        if not download:
            raise
        _download(name, root)
        files = find_cifar_files(name, split, root)
    _, _, _, label_key, num_classes = _LAYOUT[name]
    parts, records = [], []
    for path in files:
        content = path.read_bytes()
        records.append(identify(path, content, name, path.name, PUBLISHED_MD5, verify))
        parts.append(_parse_batch(content, path, label_key))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    info = DatasetInfo(name, (3, 32, 32), num_classes, "constant")
    return ArrayDataset(normalize_images(images, CIFAR_MEAN, CIFAR_STD), torch.from_numpy(labels), info, records)


def _download(name: str, root: Optional[PathLike]) -> None:
    torchvision_download("CIFAR10" if name == "cifar10" else "CIFAR100", root)
