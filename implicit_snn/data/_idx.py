"""MNIST and Fashion-MNIST from their IDX files (LeCun's format), with a parser of our own.

An IDX file is a 4-byte big-endian magic number ``0x0000TTDD`` (TT: element type, 0x08 for
unsigned bytes; DD: number of dimensions), DD big-endian uint32 sizes, then the elements in
C order. Images are ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ._base import (ArrayDataset, DatasetInfo, DatasetNotFoundError, PathLike, candidate_dirs, normalize_images,
                    torchvision_download)

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# The paper normalises Fashion-MNIST with the MNIST constants as well.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

# Where Debian's `dataset-fashion-mnist` package puts the files; tests may replace this tuple.
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),), "mnist": ()}
_TORCHVISION_DIR = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: PathLike, magic: int) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzipped when its name ends in ``.gz``).

    Args:
        path: the file.
        magic: the magic number it must carry: ``IMAGES_MAGIC`` (uint8 [N, rows, cols]) or
            ``LABELS_MAGIC`` (uint8 [N]).

    Returns:
        A read-only uint8 numpy array with the shape the header declares.

    Raises:
        ValueError: not a (readable) gzip stream, wrong magic number, or a size that
            disagrees with the header (a truncated or padded file).
    """
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot decompress IDX file {path}: {err}; delete it and fetch it again") from None
    if len(data) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than its 4-byte magic number")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}.get(magic, "IDX")
        raise ValueError(f"IDX file {path} has magic number 0x{found:08X}, expected 0x{magic:08X} "
                         f"({kind}); is it the right file?")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than its {header}-byte header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(f"IDX file {path} is {state}: header says shape {shape} ({expected} bytes in all), "
                         f"file has {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_files(name: str, split: str, root: Optional[PathLike]) -> tuple[Path, Path]:
    """``(images, labels)`` paths of ``split``, from the first folder that holds both.

    Search order: ``root``, ``root/<FashionMNIST|MNIST>/raw`` (torchvision's layout), then the
    system folders of ``SYSTEM_DIRS``. In each folder the gzipped file is preferred.

    Raises:
        DatasetNotFoundError: no folder holds both files.
    """
    stem = _PREFIX[split]
    wanted = (f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte")
    dirs = candidate_dirs(root, [f"{_TORCHVISION_DIR[name]}/raw"], SYSTEM_DIRS[name])
    for folder in dirs:
        found = [next((folder / (w + ext) for ext in (".gz", "") if (folder / (w + ext)).is_file()), None)
                 for w in wanted]
        if all(found):
            return found[0], found[1]
    raise DatasetNotFoundError(name, split, f"{wanted[0]}[.gz] and {wanted[1]}[.gz]", dirs, _hint(name))


def load_idx_dataset(name: str, split: str, root: Optional[PathLike], download: bool) -> ArrayDataset:
    """MNIST or Fashion-MNIST ``split`` as float32 ``[N, 1, 28, 28]``, ``(x/255 - 0.1307) / 0.3081``.

    ``download=True`` fetches the raw files with torchvision into ``root/<FashionMNIST|MNIST>/raw``
    when they are not found; they are then read by ``read_idx`` like any other copy.
    """
    try:
        images_path, labels_path = find_idx_files(name, split, root)
    except DatasetNotFoundError:
        if not download:
            raise
        _download(name, root)
        images_path, labels_path = find_idx_files(name, split, root)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if len(labels) and labels.max() >= 10:
        raise ValueError(f"{labels_path} holds label {int(labels.max())}, expected labels 0..9")
    info = DatasetInfo(name, (1, 28, 28), 10, "constant")
    inputs = normalize_images(images[:, None], MNIST_MEAN, MNIST_STD)
    return ArrayDataset(inputs, torch.from_numpy(labels.astype(np.int64)), info)


def _hint(name: str) -> str:
    if name == "fashion-mnist":
        return ("Install Debian's package with `apt-get install dataset-fashion-mnist`, or set `root` to a "
                "folder DIR holding the four IDX files (or DIR/FashionMNIST/raw/), or set `download` where "
                "the network allows.")
    return ("Put the four IDX files (train-/t10k-images-idx3-ubyte, train-/t10k-labels-idx1-ubyte, "
            "gzipped or not) in a folder DIR or DIR/MNIST/raw/ and set `root` to DIR, or set `download` "
            "where the network allows.")


def _download(name: str, root: Optional[PathLike]) -> None:
    torchvision_download("FashionMNIST" if name == "fashion-mnist" else "MNIST", root)
