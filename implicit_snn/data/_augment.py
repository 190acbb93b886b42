"""Batch augmentation driven by an explicit generator: random crop with padding, horizontal flip."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._cifar import CIFAR_MEAN, CIFAR_STD


def random_crop_flip(inputs: torch.Tensor, generator: torch.Generator, *, padding: int = 4,
                     fill: Sequence[float] = (0.0,), flip_p: float = 0.5) -> torch.Tensor:
    """Pad, crop back to size at a random offset, then flip horizontally at random; per sample.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` followed by
    ``RandomHorizontalFlip(flip_p)`` on each image, vectorised over the batch. The random draws,
    in this order, all on the CPU from ``generator``: ``top = randint(0, 2 * padding + 1, (B,))``,
    ``left = randint(0, 2 * padding + 1, (B,))``, ``flip = rand(B) < flip_p``.

    Args:
        inputs: ``[B, C, H, W]``.
        generator: a CPU ``torch.Generator``.
        padding: pixels added on every side before cropping.
        fill: the padding value, one per channel or one for all.
        flip_p: probability of a horizontal flip.

    Returns:
        A new ``[B, C, H, W]`` tensor.
    """
    if inputs.dim() != 4:
        raise ValueError(f"`inputs` must be a batch of images [B, C, H, W], got shape {list(inputs.shape)}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"`padding` must be a non-negative integer, got {padding!r}")
    batch, channels, height, width = inputs.shape
    fill_t = torch.as_tensor(fill, dtype=inputs.dtype, device=inputs.device).reshape(-1)
    if fill_t.numel() not in (1, channels):
        raise ValueError(f"`fill` needs 1 or {channels} values (one per channel), got {fill_t.numel()}")
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < flip_p
    device = inputs.device
    padded = fill_t.view(1, -1, 1, 1).expand(batch, channels, height + 2 * padding, width + 2 * padding).clone()
    padded[:, :, padding:padding + height, padding:padding + width] = inputs
    rows = (top[:, None] + torch.arange(height)).to(device)                 # [B, H]
    cols = left[:, None] + torch.arange(width)                              # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(device)        # a flip reverses the columns
    samples = torch.arange(batch, device=device)
    out = padded[samples[:, None, None], :, rows[:, :, None], cols[:, None, :]]   # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def cifar_augment(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's CIFAR training augmentation on a normalised batch ``[B, 3, 32, 32]``.

    ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` as torchvision applies them
    before ``Normalize``: the padding is raw black, which after normalisation is
    ``-mean / std`` per channel. Pass it to the training ``BatchLoader`` as ``augment=``.
    """
    fill = [-m / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)]
    return random_crop_flip(inputs, generator, padding=4, fill=fill, flip_p=0.5)
