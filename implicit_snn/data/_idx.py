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

from ._base import (ArrayDataset, DataFile, DatasetInfo, DatasetNotFoundError, PathLike, candidate_dirs, identify,
                    normalize_images, root_problem, torchvision_download)

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# The paper normalises Fashion-MNIST with the MNIST constants as well.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

# Where Debian's `dataset-fashion-mnist` package puts the files; tests may replace this tuple.
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),), "mnist": ()}
_TORCHVISION_DIR = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
_PREFIX = {"train": "train", "test": "t10k"}

# The published files, known by the MD5 of their IDX content (the decompressed bytes), so that a
# copy is recognised however it was compressed, or left uncompressed. The MD5s of the gzipped
# files (torchvision.datasets.MNIST/FashionMNIST.resources: MNIST train-images f68b3c2d..., labels
# d53e105e..., t10k-images 9fb629c4..., labels ec29112d...; Fashion-MNIST 8d4fb7e6..., 25c81989...,
# bef4ecab..., bb300cfd...) would not do: Debian's dataset-fashion-mnist recompressed them (its
# train-images .gz has MD5 cf8536b0...) and holds the same bytes. Fashion-MNIST's values were
# computed from Debian's files (they agree with published lists); MNIST's are from published
# lists of the decompressed files' MD5s, not checked against a copy here (none was at hand).
PUBLISHED_MD5 = {
    "6bbc9ace898e44ae57da46a324031adb": ("mnist", "train-images-idx3-ubyte"),
    "a25bea736e30d166cdddb491f175f624": ("mnist", "train-labels-idx1-ubyte"),
    "2646ac647ad5339dbf082846283269ea": ("mnist", "t10k-images-idx3-ubyte"),
    "27ae3e4e09519cfbb04c329615203637": ("mnist", "t10k-labels-idx1-ubyte"),
    "f4a8712d7a061bf5bd6d2ca38dc4d50a": ("fashion-mnist", "train-images-idx3-ubyte"),
    "9018921c3c673c538a1fc5bad174d6f9": ("fashion-mnist", "train-labels-idx1-ubyte"),
    "8181f5470baa50b63fa0f6fddb340f0a": ("fashion-mnist", "t10k-images-idx3-ubyte"),
    "15d484375f8d13e6eb1aabb0c3f46965": ("fashion-mnist", "t10k-labels-idx1-ubyte"),
}


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
    return _parse_idx(_idx_content(Path(path)), Path(path), magic)


def _idx_content(path: Path) -> bytes:
    """The IDX bytes of ``path``: the file, decompressed when its name ends in ``.gz``."""
    try:
        return gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot decompress IDX file {path}: {err}; delete it and fetch it again") from None


def _parse_idx(data: bytes, path: Path, magic: int) -> np.ndarray:
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


def _read_checked(path: Path, magic: int, name: str, file: str, verify: bool) -> tuple[np.ndarray, DataFile]:
    """``read_idx`` (its header checks first), then the content identified as ``name``'s ``file``."""
    content = _idx_content(path)
    array = _parse_idx(content, path, magic)
    return array, identify(path, content, name, file, PUBLISHED_MD5, verify)


def find_idx_files(name: str, split: str, root: Optional[PathLike]) -> tuple[Path, Path]:
    """``(images, labels)`` paths of ``split``, from the first folder that holds both.

    Search order: ``root``, then ``root/<FashionMNIST|MNIST>/raw`` (torchvision's layout); only
    when no ``root`` is given, the system folders of ``SYSTEM_DIRS``. In each folder the gzipped
    file is preferred.

    Raises:
        DatasetNotFoundError: no folder holds both files (or ``root`` is no folder).
    """
    stem = _PREFIX[split]
    wanted = (f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte")
    dirs = candidate_dirs(root, [f"{_TORCHVISION_DIR[name]}/raw"], SYSTEM_DIRS[name])
    note = root_problem(root)
    for folder in [] if note else dirs:
        found = [next((folder / (w + ext) for ext in (".gz", "") if (folder / (w + ext)).is_file()), None)
                 for w in wanted]
        if all(found):
            return found[0], found[1]
        if any(found) and note is None:
            have, lack = (found[0], wanted[1]) if found[0] else (found[1], wanted[0])
            note = f"{folder} holds {have.name} but not {lack}[.gz]"
    raise DatasetNotFoundError(name, split, f"{wanted[0]}[.gz] and {wanted[1]}[.gz]", dirs, _hint(name), note)


def load_idx_dataset(name: str, split: str, root: Optional[PathLike], download: bool, *,
                     verify: bool = True) -> ArrayDataset:
    """MNIST or Fashion-MNIST ``split`` as float32 ``[N, 1, 28, 28]``, ``(x/255 - 0.1307) / 0.3081``.

    ``download=True`` fetches the raw files with torchvision into ``root/<FashionMNIST|MNIST>/raw``
    when they are not found; they are then read by ``read_idx`` like any other copy.

    ``verify=True`` (default) identifies each file by the MD5 of its content (``PUBLISHED_MD5``):
    the other dataset's file (the two share file names), another split's, or an unknown one is a
    ``ValueError`` naming it. ``verify=False`` loads files of one's own in the same format. The
    dataset's ``files`` hold the paths read and their checksums either way.
    """
    try:
        images_path, labels_path = find_idx_files(name, split, root)
    except DatasetNotFoundError:
        if not download:
            raise
        _download(name, root)
        images_path, labels_path = find_idx_files(name, split, root)
    stem = _PREFIX[split]
    images, images_file = _read_checked(images_path, IMAGES_MAGIC, name, f"{stem}-images-idx3-ubyte", verify)
    labels, labels_file = _read_checked(labels_path, LABELS_MAGIC, name, f"{stem}-labels-idx1-ubyte", verify)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if len(labels) and labels.max() >= 10:
        raise ValueError(f"{labels_path} holds label {int(labels.max())}, expected labels 0..9")
    info = DatasetInfo(name, (1, 28, 28), 10, "constant")
    inputs = normalize_images(images[:, None], MNIST_MEAN, MNIST_STD)
    return ArrayDataset(inputs, torch.from_numpy(labels.astype(np.int64)), info, (images_file, labels_file))


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
