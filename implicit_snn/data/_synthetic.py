"""A small, generated, learnable dataset for smoke tests: class prototypes plus noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from ._base import ArrayDataset, DatasetInfo, InputKind, PathLike


def synthetic_info(time_steps: int, *, shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                   input_kind: InputKind = "constant", **_) -> DatasetInfo:
    """The ``DatasetInfo`` that ``load_synthetic_dataset`` with the same options returns."""
    _check_options(shape, num_classes, input_kind)
    return DatasetInfo("synthetic", tuple(shape), num_classes, input_kind,
                       time_steps if input_kind == "spikes" else None)


def load_synthetic_dataset(split: str, root: Optional[PathLike], download: bool, time_steps: int, *,
                           num_train: int = 512, num_test: int = 256, shape: Sequence[int] = (1, 28, 28),
                           num_classes: int = 10, noise: float = 1.0, seed: int = 0,
                           input_kind: InputKind = "constant") -> ArrayDataset:
    """A generated split, the same for the same options on every machine (``root`` is not used).

    Each class ``k`` has a prototype ``P_k ~ N(0, 1)`` of ``shape`` drawn from ``seed``; both
    splits share the prototypes and draw their own samples. A constant sample of class ``k`` is
    ``(P_k + noise * eps) / sqrt(1 + noise**2)`` with ``eps ~ N(0, 1)``: zero mean and unit
    variance by construction, with the same transform for both splits. With
    ``input_kind="spikes"`` that sample ``z`` becomes a Bernoulli spike train ``[T, *shape]`` with
    rate ``sigmoid(2 z)`` per element, stored as uint8. Labels are balanced (``n // num_classes``
    per class, the remainder to the lowest labels) and shuffled.

    Args:
        split: "train" (``num_train`` samples) or "test" (``num_test`` samples).
        time_steps: T, used for spike trains only.
        num_train, num_test: split sizes; small by default so that a CI epoch takes seconds.
        shape: per-sample (per time step) shape.
        num_classes: number of classes (at least 2).
        noise: standard deviation of the per-sample noise relative to the prototypes; the default
            1.0 leaves the classes easy to separate in 784 dimensions.
        seed: a non-negative integer; everything is derived from it.
        input_kind: "constant" (images) or "spikes" (Bernoulli spike trains).
    """
    info = synthetic_info(time_steps, shape=shape, num_classes=num_classes, input_kind=input_kind)
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not noise >= 0:
        raise ValueError(f"`noise` must be a non-negative number, got {noise!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    shape = info.in_shape
    prototypes = np.random.default_rng([seed, 0]).standard_normal((num_classes, *shape), dtype=np.float32)
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    n = num_train if split == "train" else num_test
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    eps = rng.standard_normal((n, *shape), dtype=np.float32)
    z = (prototypes[labels] + np.float32(noise) * eps) / np.float32(math.sqrt(1 + noise**2))
    if input_kind == "spikes":
        rates = 1 / (1 + np.exp(-2 * z))
        inputs = (rng.random((n, time_steps, *shape), dtype=np.float32) < rates[:, None]).astype(np.uint8)
    else:
        inputs = z.astype(np.float32)
    return ArrayDataset(torch.from_numpy(inputs), torch.from_numpy(labels), info)


def _check_options(shape, num_classes, input_kind) -> None:
    if not isinstance(shape, Sequence) or not shape or not all(_is_int(d) and d > 0 for d in shape):
        raise ValueError(f"`shape` must be a non-empty tuple of positive integers, got {shape!r}")
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer of at least 2, got {num_classes!r}")
    if input_kind not in ("constant", "spikes"):
        raise ValueError(f"`input_kind` must be 'constant' or 'spikes', got {input_kind!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
