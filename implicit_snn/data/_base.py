"""What every dataset shares: its description, the in-memory split, and the not-found error."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch

SPLITS = ("train", "test")
InputKind = Literal["constant", "spikes"]
PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before it sees a sample.

    Attributes:
        name: the registry name, e.g. ``"fashion-mnist"``.
        in_shape: shape of one static image, or of one time step of a spike train,
            e.g. ``(1, 28, 28)``, ``(3, 32, 32)``, ``(2, 34, 34)``.
        num_classes: number of labels; labels lie in ``[0, num_classes)``.
        input_kind: ``"constant"`` (a static image, presented at every time step) or
            ``"spikes"`` (a binary spike train ``[T, *in_shape]`` per sample).
        time_steps: ``None`` for constant inputs; the number of frames T for spike trains.
    """

    name: str
    in_shape: tuple[int, ...]
    num_classes: int
    input_kind: InputKind
    time_steps: Optional[int] = None

    def __post_init__(self):
        if self.input_kind not in ("constant", "spikes"):
            raise ValueError(f"`input_kind` must be 'constant' or 'spikes', got {self.input_kind!r}")
        if self.input_kind == "constant" and self.time_steps is not None:
            raise ValueError(f"constant inputs have `time_steps=None`, got {self.time_steps!r}")
        if self.input_kind == "spikes" and not _is_positive_int(self.time_steps):
            raise ValueError(f"spike inputs need a positive integer `time_steps`, got {self.time_steps!r}")
        if not _is_positive_int(self.num_classes):
            raise ValueError(f"`num_classes` must be a positive integer, got {self.num_classes!r}")
        object.__setattr__(self, "in_shape", tuple(int(d) for d in self.in_shape))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``in_shape`` for constant inputs, ``(T, *in_shape)`` for spikes."""
        return self.in_shape if self.time_steps is None else (self.time_steps, *self.in_shape)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the loader looked.

    ``str(error)`` is one paragraph naming every folder searched, what was wrong there where that
    is known (``note``: a ``root`` that does not exist or is a file, a folder holding only some of
    the files) and how to get the data; the folders are also in ``error.searched``.
    """

    def __init__(self, dataset: str, split: str, wanted: str, searched: Sequence[Path], hint: str,
                 note: Optional[str] = None):
        self.dataset, self.split, self.searched = dataset, split, [str(p) for p in searched]
        if self.searched:
            found = f"looked for {wanted} in {', '.join(self.searched)}"
        else:
            found = f"no data folder was given (`root`), so nothing was searched for {wanted}"
        super().__init__(f"{dataset} {split} split not found: {found}{'; ' + note if note else ''}. {hint}")


@dataclasses.dataclass(frozen=True)
class DataFile:
    """One file (or folder) a dataset was read from, as a run records it.

    Attributes:
        path: the absolute path read.
        content_md5: MD5 (hex) of what the file holds: for a gzipped IDX file, of the decompressed
            bytes (so that the same data compressed differently has one checksum); None where none
            was computed (N-MNIST's event folders and cache).
        verified: True when ``content_md5`` is the published file's, i.e. the file was identified
            as the dataset's file of that name; False when the check was skipped (``verify=False``)
            or the dataset has no published checksums.
    """

    path: str
    content_md5: Optional[str] = None
    verified: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ArrayDataset:
    """A whole dataset split held in memory as two tensors.

    Shapes: ``inputs`` is ``[N, *in_shape]`` for constant inputs (float32, normalised) and
    ``[N, T, *in_shape]``, batch first then time, for spike trains. Spike trains are stored as
    ``uint8`` (0/1, or event counts with ``accumulate="count"``) because the N-MNIST training
    split would take 16.6 GB as float32 (4.2 GB as uint8); ``dataset[i]`` and ``BatchLoader``
    hand out float32. ``labels`` is int64 ``[N]``.

    Args:
        inputs: ``[N, *info.sample_shape]``, float32 or (spikes only) uint8.
        labels: int64 ``[N]`` in ``[0, info.num_classes)``.
        info: the dataset's description.
        files: the files the samples were read from (``DataFile``s; empty for generated data);
            ``subset`` and ``to`` keep them.

    Raises:
        ValueError: shapes, dtypes or label range disagree with ``info``.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, info: DatasetInfo,
                 files: Sequence[DataFile] = ()):
        allowed = (torch.float32, torch.uint8) if info.input_kind == "spikes" else (torch.float32,)
        if inputs.dtype not in allowed:
            names = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{info.name} inputs must be {names}, got {inputs.dtype}")
        if tuple(inputs.shape[1:]) != info.sample_shape:
            raise ValueError(f"{info.name} inputs must be [N, {', '.join(map(str, info.sample_shape))}], "
                             f"got {list(inputs.shape)}")
        if labels.dtype != torch.int64 or labels.dim() != 1 or len(labels) != len(inputs):
            raise ValueError(f"labels must be int64 [N] with N = {len(inputs)} inputs, "
                             f"got {labels.dtype} {list(labels.shape)}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
            raise ValueError(f"{info.name} labels must lie in [0, {info.num_classes}), "
                             f"got [{int(labels.min())}, {int(labels.max())}]")
        self.inputs, self.labels, self.info = inputs, labels, info
        self.files: tuple[DataFile, ...] = tuple(files)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, label)``: a float32 ``info.sample_shape`` tensor and an int64 scalar."""
        return self.inputs[index].float(), self.labels[index]

    def __repr__(self) -> str:
        return (f"ArrayDataset({self.info.name!r}, n={len(self)}, inputs={list(self.inputs.shape)} "
                f"{self.inputs.dtype}, num_classes={self.info.num_classes})")

    def subset(self, indices) -> "ArrayDataset":
        """A new dataset with the samples at ``indices`` (ints, a range or a 1-D integer tensor), copied.

        Raises:
            ValueError: an index outside ``[0, len(self))`` or not a 1-D integer sequence.
        """
        index = as_index_tensor(indices, len(self))
        return ArrayDataset(self.inputs[index.to(self.inputs.device)],
                            self.labels[index.to(self.labels.device)], self.info, self.files)

    def to(self, device: Union[str, torch.device]) -> "ArrayDataset":
        """The same dataset with both tensors on ``device`` (e.g. to slice batches on the GPU)."""
        return ArrayDataset(self.inputs.to(device), self.labels.to(device), self.info, self.files)


def as_index_tensor(indices, n: int) -> torch.Tensor:
    """``indices`` as an int64 CPU tensor, each checked to lie in ``[0, n)``."""
    if isinstance(indices, torch.Tensor):
        index = indices.detach().cpu()
    else:
        index = torch.as_tensor(np.asarray(list(indices) if isinstance(indices, range) else indices))
    integer = index.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8) or index.numel() == 0
    if index.dim() != 1 or not integer:
        raise ValueError(f"indices must be a 1-D sequence of integers, got {index.dtype} of shape {list(index.shape)}")
    index = index.long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"indices must lie in [0, {n}), got [{int(index.min())}, {int(index.max())}]")
    return index


def check_split(split: str) -> str:
    """``split`` if it is one of ``SPLITS``."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}; "
                         "carve a validation set from 'train' with `split_validation`")
    return split


def candidate_dirs(root: Optional[PathLike], subdirs: Sequence[str], system: Sequence[Path] = ()) -> list[Path]:
    """Folders to search, in order: ``root``, then ``root/<sub>`` for each sub; the ``system``
    folders only when no ``root`` is given (a given root is used or is an error, never passed over)."""
    if root is None:
        return [Path(p) for p in system]
    base = Path(root).expanduser()
    return [base] + [base / sub for sub in subdirs]


def root_problem(root: Optional[PathLike]) -> Optional[str]:
    """What makes a given ``root`` unusable as a folder (it does not exist, or is a file); None if nothing."""
    if root is None:
        return None
    base = Path(root).expanduser()
    if not base.exists():
        return f"`root` {base} does not exist"
    if not base.is_dir():
        return f"`root` {base} is a file, not a folder"
    return None


def identify(path: Path, content: bytes, dataset: str, file: str, published: dict[str, tuple[str, str]],
             verify: bool) -> DataFile:
    """The record of ``path`` (holding ``content``), checked against the published checksums.

    Args:
        path: the file read.
        content: what it holds (decompressed, for a gzipped file).
        dataset, file: the dataset and the published file it was read as, e.g. ``("mnist",
            "train-images-idx3-ubyte")``.
        published: content MD5 -> (dataset, file) of every published file the loader knows, those
            of related datasets too, so that a file of the other dataset is named as such.
        verify: False records the checksum without checking it (files of one's own).

    Raises:
        ValueError: ``verify`` and the content is another published file (another dataset's, or
            the same dataset's under another name), or no published file at all.
    """
    return identify_md5(path, hashlib.md5(content).hexdigest(), dataset, file, published, verify)


def identify_md5(path: Path, md5: str, dataset: str, file: str, published: dict[str, tuple[str, str]],
                 verify: bool) -> DataFile:
    """``identify`` for a file whose content MD5 (hex) is already known (e.g. hashed in chunks)."""
    record = DataFile(str(Path(path).absolute()), md5, False)
    if not verify:
        return record
    found = published.get(md5)
    if found == (dataset, file):
        return dataclasses.replace(record, verified=True)
    if found is not None and found[0] != dataset:
        raise ValueError(f"{path} is {found[0]}'s {found[1]}, not {dataset}'s {file}: these are {found[0]} "
                         f"files; load them as dataset '{found[0]}'")
    if found is not None:
        raise ValueError(f"{path} is {dataset}'s {found[1]}, not its {file}: the file is misnamed")
    expected = next((md5 for md5, owner in published.items() if owner == (dataset, file)), "?")
    raise ValueError(f"{path} is not {dataset}'s published {file}: its content has MD5 {md5}, the published "
                     f"file's is {expected}; fetch it again if it is a damaged copy, or pass `verify=False` "
                     "to load files of your own")


def torchvision_download(class_name: str, root: Optional[PathLike]) -> None:
    """Fetch a dataset's original files into ``root`` with ``torchvision.datasets.<class_name>``."""
    if root is None:
        raise ValueError("`download=True` needs a `root` folder to put the files in")
    import torchvision  # imported here: only downloading needs it

    getattr(torchvision.datasets, class_name)(str(root), train=True, download=True)


def normalize_images(raw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` pixels to float32 ``(x / 255 - mean[c]) / std[c]``."""
    raw = np.ascontiguousarray(raw)
    x = torch.from_numpy(raw if raw.flags.writeable else raw.copy()).float().div_(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
