"""Event streams binned into frames as tonic's ``ToFrame(sensor_size, n_time_bins=T)`` bins them,
and the frame cache the event datasets (``dvs-gesture``, ``cifar10-dvs``, ``shd``) share.

**Binning** (tonic 1.7: ``tonic/functional/to_frame.py`` slicing with
``tonic/slicers.py::SliceByTimeBins``, overlap 0). A sample's events, in time order, run from
``t_first`` to ``t_last`` (integer microseconds). The window is ``w = (t_last - t_first) // T``
(integer division) and frame ``i`` (0 ≤ i < T) counts the events with
``t_first + i·w <= t < t_first + (i+1)·w``, per polarity and pixel: frames ``[T, P, H, W]``
indexed ``[t, polarity, y, x]`` (``[T, P, W]`` for a sensor without rows, SHD's 700 channels).
The T windows end at ``t_first + T·w <= t_last``: the events of the last
``(t_last - t_first) % T`` microseconds, and always those at ``t_last``, fall in no frame, as in
tonic. A sample spanning fewer than T microseconds (one event, or all at one time) has
``w = 0`` and T empty frames, as in tonic.

Where ours differs from tonic:

- an empty sample: tonic returns float64 zeros shaped ``(T, P, W, H)`` (x and y swapped, and
  ``(T, 1, 700, 1)`` for SHD); ours is the usual ``[T, P, H, W]`` (``[T, 1, 700]``) of zeros;
- timestamps out of order: tonic takes the first and the last event as the span and slices with
  ``searchsorted``, which assumes sorted times; ours sorts the events by time first (stable), so
  both agree on sorted input and ours bins unsorted input by time;
- counts: tonic's frames are int16 (a count above 32767 wraps); ours are uint8 and saturate at
  255; ``accumulate="binary"`` writes 1 wherever at least one event fell;
- down-sampling (``downsample``): tonic's ``Downsample(spatial_factor=size/sensor)`` multiplies
  each coordinate by the float factor and truncates; ours is ``floor(x·size / sensor)`` in
  integers. They agree whenever ``size/sensor`` is exact in binary, which holds for every size
  of a 128-pixel sensor (DVS128 Gesture, CIFAR10-DVS); for SHD's 700 channels, 35 of the 700
  sizes (45, 90, 180 among them) have a float product land just below a whole number, which
  tonic truncates one lower.

**Cache.** Binning a whole split takes minutes, so the frames are cached in the folder the
event files were found in, one file per setting:
``<dataset>-<split>-T<T>-<size>-<accumulate>-<key>.pt``, where ``key`` hashes every setting
that changes the frames (dataset, split, T, size, accumulate mode, the reader's own choices and
``CACHE_VERSION``) and the file also holds a fingerprint of the source files (names and sizes,
and the content of small label files). A changed setting reads another file; changed sources,
an unreadable file, or (with ``verify``) a cache built without verification are rebuilt. Writes
are atomic (``implicit_snn.files.atomic_file``); a folder that cannot be written only warns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import torch

from ..files import atomic_file
from ._base import ArrayDataset, DataFile, DatasetInfo, _is_positive_int

Accumulate = Literal["count", "binary"]
CACHE_VERSION = 1


def check_accumulate(accumulate) -> str:
    """``accumulate`` if it is "count" or "binary"."""
    if accumulate not in ("count", "binary"):
        raise ValueError(f"`accumulate` must be 'count' or 'binary', got {accumulate!r}")
    return accumulate


def check_size(size, sensor: int, what: str) -> int:
    """``size`` if it is a whole number in ``1..sensor`` (the down-sampled ``what``)."""
    if not _is_positive_int(size) or size > sensor:
        raise ValueError(f"`size` must be a whole number of {what} in 1..{sensor} (the sensor's), got {size!r}")
    return size


def downsample(coordinate: np.ndarray, sensor: int, size: int) -> np.ndarray:
    """``floor(coordinate · size / sensor)``: pixel (or channel) coordinates of a ``sensor``-wide
    axis mapped onto ``size`` (tonic's ``Downsample(spatial_factor=size/sensor)``, in integers)."""
    coordinate = np.asarray(coordinate, dtype=np.int64)
    return coordinate if size == sensor else (coordinate * size) // sensor


def frames_by_time_bins(t: np.ndarray, x: np.ndarray, y: Optional[np.ndarray], p: np.ndarray, *,
                        time_steps: int, shape: Sequence[int], accumulate: Accumulate = "count") -> np.ndarray:
    """One sample's events binned into ``time_steps`` frames of equal duration (module docstring).

    Args:
        t: timestamps (integer microseconds), any order.
        x, y: coordinates, already down-sampled; ``y`` None for a sensor without rows.
        p: polarity per event (0 or 1; 0 throughout for a one-polarity sensor).
        time_steps: frames T.
        shape: one frame's shape, ``(P, H, W)``, or ``(P, W)`` when ``y`` is None.
        accumulate: "count" (events per polarity and pixel, saturating at 255) or "binary".

    Returns:
        uint8 ``[T, *shape]``.
    """
    shape = tuple(int(s) for s in shape)
    size = time_steps * math.prod(shape)
    t = np.asarray(t, dtype=np.int64)
    if len(t) == 0:
        return np.zeros((time_steps, *shape), dtype=np.uint8)
    columns = [np.asarray(p, dtype=np.int64)] + ([] if y is None else [np.asarray(y, dtype=np.int64)]) + \
        [np.asarray(x, dtype=np.int64)]
    if len(t) > 1 and bool(np.any(t[1:] < t[:-1])):
        order = np.argsort(t, kind="stable")
        t, columns = t[order], [c[order] for c in columns]
    window = (int(t[-1]) - int(t[0])) // time_steps
    if window == 0:
        return np.zeros((time_steps, *shape), dtype=np.uint8)
    frame = (t - t[0]) // window
    keep = frame < time_steps
    flat = frame[keep]
    for column, extent in zip(columns, shape):
        flat = flat * extent + column[keep]
    counts = np.bincount(flat, minlength=size)
    out = (counts > 0) if accumulate == "binary" else np.minimum(counts, 255)
    return out.astype(np.uint8).reshape(time_steps, *shape)


def fingerprint(parts: Sequence[str]) -> str:
    """A short hash of ``parts`` (e.g. ``"name:size"`` of each source file)."""
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


@dataclasses.dataclass
class EventSource:
    """What a reader found for one split: where, what, and how to read it.

    Attributes:
        folder: where the files were found; the cache is written here.
        fingerprint: of the source files (names, sizes); None when they are gone and only a
            cache is left, which is then used as it is.
        samples: ``samples(verify, records)`` yields ``(t, x, y, p, label)`` per sample, in order,
            appending to ``records`` the ``DataFile`` of each file read (identified against the
            published checksums when ``verify``; a wrong file raises ``ValueError``).
        count: the number of samples, where known before reading them (frames are then written
            into one preallocated array).
    """

    folder: Path
    fingerprint: Optional[str]
    samples: Callable[[bool, list], Iterator[tuple]]
    count: Optional[int] = None


def load_event_split(folders: Sequence[Path], find: Callable[[Path], Optional[EventSource]], info: DatasetInfo,
                     split: str, *, settings: dict, cache: bool, verify: bool,
                     to_frames: Callable[..., np.ndarray],
                     not_found: Callable[[Optional[str]], Exception]) -> ArrayDataset:
    """The split from the first of ``folders`` where ``find`` finds its files (or, with ``cache``,
    where a cache of these settings is left): uint8 frames ``[N, T, *info.in_shape]`` read from
    the cache when it has these settings and sources (and, with ``verify``, was built from
    verified files), else binned with ``to_frames(t, x, y, p)`` and cached.

    ``not_found(note)`` builds the error raised when no folder has the split, or when only an
    unreadable cache is left (``note`` says so).
    """
    key = {"version": CACHE_VERSION, "dataset": info.name, "split": split, "time_steps": info.time_steps,
           "in_shape": list(info.in_shape), **settings}
    for folder in folders:
        source = find(folder)
        path = cache_path(folder, key, info.in_shape)
        if source is None:
            if not (cache and path.is_file()):
                continue
            source = EventSource(folder, None, lambda verify, records: iter(()))
        if cache and path.is_file():
            found = _read_cache(path, key, source.fingerprint, verify, info)
            if found is not None:
                return ArrayDataset(torch.from_numpy(found[0]), torch.from_numpy(found[1]), info, found[2])
            if source.fingerprint is None:
                raise not_found(f"the cache {path} cannot be read (or was built without verification) and the "
                                "event files it was built from are gone; restore them or delete the cache")
        frames, labels, records = _bin_all(source, info, split, verify, to_frames)
        if cache:
            packed = settings.get("accumulate") == "binary"
            write_cache(path, {"key": key, "fingerprint": source.fingerprint, "verified": bool(verify),
                                "files": [r.to_dict() for r in records], "labels": torch.from_numpy(labels),
                                "packed": packed, "frames": torch.from_numpy(pack_frames(frames, packed))})
        return ArrayDataset(torch.from_numpy(frames), torch.from_numpy(labels), info, records)
    raise not_found(None)


def _bin_all(source: EventSource, info: DatasetInfo, split: str, verify: bool,
             to_frames: Callable[..., np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[DataFile]]:
    records: list[DataFile] = []
    shape = (info.time_steps, *info.in_shape)
    if source.count is None:
        frames, labels = [], []
        for t, x, y, p, label in source.samples(verify, records):
            frames.append(to_frames(t, x, y, p))
            labels.append(label)
        stacked = np.stack(frames) if frames else np.zeros((0, *shape), dtype=np.uint8)
        return stacked, np.asarray(labels, dtype=np.int64), records
    frames = np.zeros((source.count, *shape), dtype=np.uint8)
    labels = np.zeros(source.count, dtype=np.int64)
    n = 0
    for t, x, y, p, label in source.samples(verify, records):
        if n == source.count:
            raise ValueError(f"{info.name} {split}: the files hold more than the {source.count} samples listed")
        frames[n] = to_frames(t, x, y, p)
        labels[n] = label
        n += 1
    if n != source.count:
        raise ValueError(f"{info.name} {split}: the files hold {n} samples, {source.count} were listed")
    return frames, labels, records


def cache_path(folder: Path, key: dict, in_shape: Sequence[int]) -> Path:
    """The cache file of the frames ``key`` describes, in ``folder``."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    size = "x".join(str(s) for s in in_shape[1:])
    return Path(folder) / (f"{key['dataset']}-{key['split']}-T{key['time_steps']}-{size}-"
                           f"{key.get('accumulate', 'count')}-{digest}.pt")


def pack_frames(frames: np.ndarray, packed: bool) -> np.ndarray:
    """``[N, ...]`` uint8 frames flattened per sample, bit-packed if ``packed`` (binary frames: 8x smaller)."""
    flat = frames.reshape(len(frames), -1)
    return np.packbits(flat, axis=1) if packed else flat


def _read_cache(path: Path, key: dict, source_fingerprint: Optional[str], verify: bool, info: DatasetInfo):
    """``(frames, labels, files)`` from the cache, or None when it is unreadable, stale, built
    differently, or (``verify``) built from files that were not verified."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key or (verify and not blob["verified"]):
            return None
        if source_fingerprint is not None and blob["fingerprint"] != source_fingerprint:
            return None
        labels = blob["labels"].numpy()
        per_sample = info.time_steps * math.prod(info.in_shape)
        frames = blob["frames"].numpy()
        if blob["packed"]:
            frames = np.unpackbits(frames, axis=1, count=per_sample)
        frames = np.ascontiguousarray(frames.reshape(len(labels), info.time_steps, *info.in_shape))
        files = tuple(DataFile(**record) for record in blob["files"])
        return frames, labels.astype(np.int64), files
    except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        return None


def write_cache(path: Path, blob: dict, what: str = "frame") -> None:
    """``torch.save`` to ``path`` atomically; a failure to write only warns (``what`` names the cache)."""
    try:
        with atomic_file(path) as handle:
            torch.save(blob, handle)
    except OSError as err:  # a read-only folder or a full disk: loading still succeeds
        warnings.warn(f"cannot write the {what} cache {path} ({err}); the next load builds it again")
