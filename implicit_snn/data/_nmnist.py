"""N-MNIST (Orchard et al. 2015) from the original binary event files, binned into frames.

Layout: ``Train/<digit>/*.bin`` and ``Test/<digit>/*.bin`` under the data folder. Each event is
40 bits, big-endian: byte 0 = x (0..33), byte 1 = y (0..33), bit 7 of byte 2 = polarity
(1 = ON), the other 23 bits (byte 2 bits 6..0, byte 3, byte 4) = timestamp in microseconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from ._base import ArrayDataset, DataFile, DatasetInfo, DatasetNotFoundError, PathLike, candidate_dirs, root_problem
from ._frames import fingerprint as hash_parts, pack_frames, write_cache

SENSOR = 34                       # the ATIS crop used by N-MNIST: 34 x 34 pixels
FRAME = 2 * SENSOR * SENSOR       # values per time step: 2 polarities x 34 x 34
CACHE_VERSION = 1
_SPLIT_DIR = {"train": "Train", "test": "Test"}
Accumulate = Literal["binary", "count"]


def decode_events(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The events of one N-MNIST file as ``(x, y, polarity, ts)`` arrays of length E.

    ``x``, ``y``, ``polarity`` (1 = ON, 0 = OFF) are int64; ``ts`` is int64 microseconds.

    Raises:
        ValueError: the length is not a multiple of 5 bytes, or a coordinate is outside 0..33.
    """
    if len(data) % 5:
        raise ValueError(f"N-MNIST file {source} has {len(data)} bytes, not a whole number of 5-byte events")
    ev = np.frombuffer(data, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = ev[:, 0], ev[:, 1]
    polarity = ev[:, 2] >> 7
    ts = ((ev[:, 2] & 0x7F) << 16) | (ev[:, 3] << 8) | ev[:, 4]
    if len(ev) and max(int(x.max()), int(y.max())) >= SENSOR:
        raise ValueError(f"N-MNIST file {source} has an event at x={int(x.max())}, y={int(y.max())}; "
                         f"coordinates must lie in 0..{SENSOR - 1}")
    return x, y, polarity, ts


def events_to_frames(x: np.ndarray, y: np.ndarray, polarity: np.ndarray, ts: np.ndarray, *,
                     time_steps: int, bin_us: int, accumulate: Accumulate = "binary") -> np.ndarray:
    """Bin events into uint8 frames ``[T, 2, 34, 34]`` indexed ``[t, polarity, y, x]``.

    Frame ``t`` collects the events with ``t * bin_us <= ts < (t + 1) * bin_us``; later events
    are dropped. Channel 0 is OFF, channel 1 is ON (the polarity bit). ``"binary"`` writes 1
    where at least one event fell; ``"count"`` writes the number of events, saturating at 255.
    """
    frame = ts // bin_us
    keep = frame < time_steps
    flat = (((frame[keep] * 2 + polarity[keep]) * SENSOR + y[keep]) * SENSOR + x[keep])
    if accumulate == "binary":
        out = np.zeros(time_steps * FRAME, dtype=np.uint8)
        out[flat] = 1
    else:
        out = np.minimum(np.bincount(flat, minlength=time_steps * FRAME), 255).astype(np.uint8)
    return out.reshape(time_steps, 2, SENSOR, SENSOR)


def load_nmnist_dataset(split: str, root: Optional[PathLike], download: bool, time_steps: int, *,
                        bin_ms: float = 3, accumulate: Accumulate = "binary", cache: bool = True) -> ArrayDataset:
    """N-MNIST ``split`` as uint8 spike trains ``[N, T, 2, 34, 34]`` (``[n, t, polarity, y, x]``).

    Events are binned into frames of ``bin_ms`` milliseconds (frame = ts // (bin_ms * 1000)) and
    the first ``time_steps`` frames are kept: 30 frames of 3 ms cover the first 90 ms, most of
    the first of the three ~100 ms saccades. Differences from the reference (IDE-FSNN): events at ts = 0 are
    kept (the reference drops them), and the last frame is filled like any other (not forced
    empty). Samples are ordered by digit, then by file name; the label is the digit folder.

    Decoding all 60 000 training files takes a while, so the frames are cached in
    ``<data folder>/nmnist-<split>-T<T>-bin<bin_ms>ms-<accumulate>.pt`` (written atomically) and
    read from there next time. The cache is rebuilt when it cannot be read, or when the ``.bin``
    files it was built from changed (names or sizes); it is used as is when they are gone.

    Args:
        split: "train" or "test".
        root: folder holding ``Train/`` and ``Test/`` (or ``NMNIST/Train``, ``NMNIST/Test``).
        download: N-MNIST cannot be downloaded automatically; the files must be present.
        time_steps: frames T to keep (the paper uses 30).
        bin_ms: frame length in milliseconds (a whole number of microseconds).
        accumulate: "binary" (the paper) or "count".
        cache: read and write the ``.pt`` cache.
    """
    bin_us = round(bin_ms * 1000) if isinstance(bin_ms, (int, float)) and not isinstance(bin_ms, bool) else 0
    if bin_us <= 0 or abs(bin_us - bin_ms * 1000) > 1e-6:
        raise ValueError(f"`bin_ms` must be a positive whole number of microseconds, got {bin_ms!r}")
    if accumulate not in ("binary", "count"):
        raise ValueError(f"`accumulate` must be 'binary' or 'count', got {accumulate!r}")
    key = {"version": CACHE_VERSION, "split": split, "time_steps": time_steps, "bin_us": bin_us,
           "accumulate": accumulate}
    cache_name = f"nmnist-{split}-T{time_steps}-bin{bin_us / 1000:g}ms-{accumulate}.pt"
    dirs = candidate_dirs(root, ["NMNIST"])
    note = root_problem(root)
    for base in [] if note else dirs:
        files = _list_files(base / _SPLIT_DIR[split])
        cache_path = base / cache_name
        if not files and not (cache and cache_path.is_file()):
            continue
        fingerprint = _fingerprint(files) if files else None
        if cache and cache_path.is_file():
            frames_labels = _read_cache(cache_path, key, fingerprint)
            if frames_labels is not None:
                return _to_dataset(*frames_labels, time_steps, cache_path)
            if not files:
                raise DatasetNotFoundError(
                    "nmnist", split, f"{_SPLIT_DIR[split]}/<digit>/*.bin",
                    [base / _SPLIT_DIR[split]], f"The cache {cache_path} cannot be read and the event files "
                    "it was built from are gone; restore them or delete the cache.")
        frames, labels = _decode_all(files, time_steps, bin_us, accumulate)
        if cache:
            write_cache(cache_path, {**key, "fingerprint": fingerprint, **_pack(frames, accumulate),
                                      "labels": torch.from_numpy(labels)}, "N-MNIST")
        return _to_dataset(frames, labels, time_steps, base / _SPLIT_DIR[split])
    hint = ("Download the original N-MNIST (Train.zip and Test.zip, Orchard et al. 2015; "
            "https://www.garrickorchard.com/datasets/n-mnist) and unzip both into DIR so that "
            "DIR/Train/0/00002.bin exists, then set `root` to DIR; `download` is not available "
            "for N-MNIST.")
    raise DatasetNotFoundError("nmnist", split, f"{_SPLIT_DIR[split]}/<digit>/*.bin or {cache_name}",
                               dirs, hint, note)


def _list_files(split_dir: Path) -> list[tuple[int, Path, int]]:
    """``(label, path, size)`` of every ``<digit>/*.bin`` in ``split_dir``, by digit then name."""
    found = []
    for digit in range(10):
        folder = split_dir / str(digit)
        if folder.is_dir():
            with os.scandir(folder) as entries:
                found += sorted((digit, Path(e.path), e.stat().st_size)
                                for e in entries if e.name.endswith(".bin") and e.is_file())
    return found


def _fingerprint(files: list[tuple[int, Path, int]]) -> str:
    return hash_parts([f"{label}/{path.name}:{size}" for label, path, size in files])


def _decode_all(files, time_steps: int, bin_us: int, accumulate: Accumulate) -> tuple[np.ndarray, np.ndarray]:
    frames = np.empty((len(files), time_steps, 2, SENSOR, SENSOR), dtype=np.uint8)
    for i, (_, path, _) in enumerate(files):   # a loop over files; the events are decoded vectorised
        x, y, p, ts = decode_events(path.read_bytes(), source=str(path))
        frames[i] = events_to_frames(x, y, p, ts, time_steps=time_steps, bin_us=bin_us, accumulate=accumulate)
    return frames, np.array([label for label, _, _ in files], dtype=np.int64)


def _pack(frames: np.ndarray, accumulate: Accumulate) -> dict:
    """Binary frames are stored bit-packed (8x smaller: 0.5 GB for the training split)."""
    packed = accumulate == "binary"
    return {"frames": torch.from_numpy(pack_frames(frames, packed)), "packed": packed}


def _read_cache(path: Path, key: dict, fingerprint: Optional[str]):
    """``(frames, labels)`` from the cache, or None when it is unreadable, stale or built differently."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if any(blob.get(k) != v for k, v in key.items()):
            return None
        if fingerprint is not None and blob["fingerprint"] != fingerprint:
            return None
        frames, labels = blob["frames"].numpy(), blob["labels"].numpy()
        if blob["packed"]:
            frames = np.unpackbits(frames, axis=1, count=key["time_steps"] * FRAME)
        return frames.reshape(len(labels), key["time_steps"], 2, SENSOR, SENSOR), labels
    except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        return None


def _to_dataset(frames: np.ndarray, labels: np.ndarray, time_steps: int, source: Path) -> ArrayDataset:
    """The dataset, recording ``source``: the split's event folder, or the cache it came from
    (N-MNIST has no published checksums; the files are not hashed)."""
    info = DatasetInfo("nmnist", (2, SENSOR, SENSOR), 10, "spikes", time_steps)
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(labels), info,
                        (DataFile(str(source.absolute())),))
