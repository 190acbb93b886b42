"""Batches by slicing in-memory tensors, and a reproducible validation split."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Callable, Optional, Union

import torch

from ._base import ArrayDataset

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class BatchLoader:
    """Iterate over ``(inputs, labels)`` batches of an ``ArrayDataset``, one epoch per ``iter()``.

    Batches are cut from the dataset's tensors by slicing (unshuffled) or by one index gather
    (shuffled), which on a 2-core CPU is far faster than a ``DataLoader`` that collates samples
    one ``__getitem__`` at a time. Inputs come out float32 (spike trains stored as uint8 are
    converted per batch) on the dataset's device; labels are int64. An unshuffled, un-augmented
    float32 batch is a view into the dataset: do not modify it in place.

    Randomness comes from ``generator`` only, never from torch's global RNG: each epoch first
    draws ``torch.randperm(N, generator=generator)`` (when shuffling), then ``augment`` draws from
    it batch by batch. Saving ``loader.generator.get_state()`` before an epoch and restoring it
    with ``set_state`` replays that epoch exactly, which is what a resumed run needs.

    Args:
        dataset: the split to iterate over.
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: a fresh random order every epoch.
        generator: a CPU ``torch.Generator``; when None a new one is seeded from torch's global
            RNG (so ``torch.manual_seed`` still makes the run reproducible).
        drop_last: skip the last, incomplete batch.
        augment: ``augment(inputs, generator) -> inputs`` applied to every batch, e.g.
            ``cifar_augment``; it must draw its randomness from the generator it is given.
        shard: ``(rank, world_size)``: yield only this process's contiguous part of every batch
            (sizes differ by at most one). Every process draws the same order and augmentation
            for the whole batch, so the generators stay in step; ``(0, 1)`` (default) is the whole batch.

    Raises:
        ValueError: ``batch_size`` not a positive integer, a generator not on the CPU, or a bad ``shard``.
        TypeError: ``dataset`` not an ``ArrayDataset`` or ``augment`` not callable.
    """

    def __init__(self, dataset: ArrayDataset, batch_size: int, *, shuffle: bool,
                 generator: Optional[torch.Generator] = None, drop_last: bool = False,
                 augment: Optional[Augment] = None, shard: tuple[int, int] = (0, 1)):
        if not isinstance(dataset, ArrayDataset):
            raise TypeError(f"`dataset` must be an ArrayDataset (see `load_dataset`), got {type(dataset).__name__}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), dtype=torch.int64)))
        elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError(f"`generator` must be a CPU torch.Generator, got {generator!r}")
        if augment is not None and not callable(augment):
            raise TypeError(f"`augment` must be a callable `augment(inputs, generator)`, got {augment!r}")
        rank, world = shard
        if not (isinstance(world, int) and isinstance(rank, int) and world >= 1 and 0 <= rank < world):
            raise ValueError(f"`shard` must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, bool(shuffle)
        self.shard = (rank, world)
        self.generator, self.drop_last, self.augment = generator, bool(drop_last), augment

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def global_batch_size(self, index: int) -> int:
        """Samples in batch ``index`` over all shards (``batch_size`` except perhaps the last)."""
        return min(self.batch_size, len(self.dataset) - index * self.batch_size)

    def _part(self, size: int) -> slice:
        """This shard's contiguous part of a batch of ``size`` samples."""
        rank, world = self.shard
        base, extra = divmod(size, world)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (rank < extra))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs, labels = self.dataset.inputs, self.dataset.labels
        order = torch.randperm(len(self.dataset), generator=self.generator) if self.shuffle else None
        if order is not None:
            order = order.to(inputs.device)
        # The augmentation draws for the whole batch, so it sees the whole batch before the shard is cut.
        cut_after = self.augment is not None and self.shard[1] > 1
        for b in range(len(self)):
            start, stop = b * self.batch_size, b * self.batch_size + self.global_batch_size(b)
            if not cut_after:
                part = self._part(stop - start)
                start, stop = start + part.start, start + part.stop
            if order is None:
                x, y = inputs[start:stop], labels[start:stop]
            else:
                index = order[start:stop]
                x, y = inputs[index], labels[index.to(labels.device)]
            x = x.float()
            if self.augment is not None:
                x = self.augment(x, self.generator)
            if cut_after:
                part = self._part(stop - start)
                x, y = x[part], y[part]
            yield x, y


def split_validation(dataset: ArrayDataset, size: Union[int, float], *, seed: int
                     ) -> tuple[ArrayDataset, ArrayDataset]:
    """Carve a validation set out of a training split: ``(train_subset, val_subset)``.

    The split depends only on ``len(dataset)``, ``size`` and ``seed`` (a permutation drawn from
    ``torch.Generator().manual_seed(seed)``), so every run and every machine gets the same one.
    Both subsets keep the dataset's original order.

    Args:
        dataset: the training split.
        size: validation samples, as a count ``1 <= size < N`` or a fraction ``0 < size < 1``
            (rounded to the nearest count, which must also satisfy ``1 <= count < N``).
        seed: selects the split.

    Raises:
        ValueError: ``size`` outside the allowed range or not a number.
    """
    n = len(dataset)
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"`size` must be an int count or a float fraction in (0, 1), got {size!r}")
    if isinstance(size, float):
        if not 0 < size < 1:
            raise ValueError(f"a fractional `size` must lie in (0, 1), got {size}")
        count = round(size * n)
    else:
        count = size
    if not 1 <= count < n:
        raise ValueError(f"the validation set must hold between 1 and {n - 1} of the {n} samples, "
                         f"got size={size!r} ({count} samples)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:count].sort().values, order[count:].sort().values
    return dataset.subset(train), dataset.subset(val)
