"""The Spiking Heidelberg Digits (SHD; Cramer et al., IEEE TNNLS 2020) from their HDF5 files.

``shd_train.h5`` and ``shd_test.h5`` (zenkelab.org/datasets, formerly compneuro.net/datasets)
each hold ``spikes/times`` (per sample, a variable-length array of spike times in seconds),
``spikes/units`` (the channel of each spike, 0..699: 700 cochlea-model fibres) and ``labels``
(0..19: the digits 0-9 spoken in English and German). They are published gzipped
(``shd_train.h5.gz``, with ``md5sums.txt``) and zipped (``shd_train.h5.zip``, what tonic and
SpikingJelly fetch); all three forms are read (gzip and zip in memory, no temporary file).
Reading HDF5 needs h5py (``pip install 'implicit-snn[events]'``).

Times become integer microseconds as tonic's ``SHD`` makes them (``float64(times) · 1e6``,
truncated) and the events are binned like every event dataset (``_frames``) into frames
``[T, 1, channels]``: one "polarity" (tonic's sensor size ``(700, 1, 1)``), ``channels`` 700 or
fewer after down-sampling. Samples keep the files' order.

**Identity** by MD5, of whichever form is read: ``shd_{train,test}.h5.gz`` as ``md5sums.txt``
lists them (also in norse's ``SpikingHeidelbergDigitsDataset``), the decompressed
``shd_{train,test}.h5`` (norse's ``test_file_md5``/``train_file_md5``), and the ``.h5.zip``
archives (tonic's ``SHD`` and SpikingJelly's ``SpikingHeidelbergDigits``). A gzipped or zipped
copy whose own checksum is unknown (recompressed) is accepted when its content is the published
``.h5``. None of these was checked against a copy here (none was at hand).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from ._base import ArrayDataset, DatasetInfo, DatasetNotFoundError, PathLike, candidate_dirs, identify, root_problem
from ._frames import (Accumulate, EventSource, check_accumulate, check_size, downsample, fingerprint,
                      frames_by_time_bins, load_event_split)

CHANNELS = 700
CLASSES = 20
FORMS = (".h5", ".h5.gz", ".h5.zip")

SHD_MD5 = {
    "shd_train.h5.gz": "d47c9825dee33347913e8ce0f2be08b0",
    "shd_test.h5.gz": "3062a80ec0c5719404d5b02e166543b1",
    "shd_train.h5": "8e9877c85f29a28dd353ea6a54402667",
    "shd_test.h5": "207ad1295a0ab611e22d1734989c254e",
    "shd_train.h5.zip": "f3252aeb598ac776c1b526422d90eecb",
    "shd_test.h5.zip": "1503a5064faa34311c398fb0a1ed0a6f",
}
_PUBLISHED = {md5: ("shd", name) for name, md5 in SHD_MD5.items()}


def shd_info(time_steps: int, *, size: int = CHANNELS, **_) -> DatasetInfo:
    """The dataset's description for T frames of ``size`` channels."""
    check_size(size, CHANNELS, "channels")
    return DatasetInfo("shd", (1, size), CLASSES, "spikes", time_steps)


def load_shd_dataset(split: str, root: Optional[PathLike], download: bool, time_steps: int, *,
                     size: int = CHANNELS, accumulate: Accumulate = "count", cache: bool = True,
                     verify: bool = True) -> ArrayDataset:
    """SHD ``split`` as uint8 frames ``[N, T, 1, size]`` (``[n, t, polarity, channel]``).

    Each sample's spikes are binned into T frames of equal duration as tonic's
    ``ToFrame(n_time_bins=T)`` bins them, after down-sampling 700 → ``size`` channels (``_frames``).

    Args:
        split: "train" or "test".
        root: folder holding ``shd_<split>.h5`` (or ``.h5.gz``, ``.h5.zip``; or ``SHD/`` holding it).
        download: not available; the files must be present.
        time_steps: frames T per sample.
        size: channels after down-sampling (700: all).
        accumulate: "count" (spikes per channel, saturating at 255) or "binary".
        cache: read and write the frame cache (``_frames``).
        verify: check the file's MD5 (module docstring); False loads files of one's own in the
            same format.
    """
    info = shd_info(time_steps, size=size)
    check_accumulate(accumulate)
    note = root_problem(root)
    dirs = candidate_dirs(root, ["SHD"])
    stem = f"shd_{split}"

    def not_found(extra: Optional[str]) -> DatasetNotFoundError:
        hint = ("Download shd_train.h5.gz and shd_test.h5.gz (Cramer et al. 2020; zenkelab.org/datasets) into DIR, "
                "decompressed or not, and set `root` to DIR; `download` is not available for SHD.")
        return DatasetNotFoundError("shd", split, f"{stem}.h5[.gz|.zip]", dirs, hint, extra or note)

    if note:
        raise not_found(None)

    def find(folder: Path) -> Optional[EventSource]:
        path = next((folder / (stem + form) for form in FORMS if (folder / (stem + form)).is_file()), None)
        if path is None:
            return None
        return EventSource(folder, fingerprint([f"{path.name}:{path.stat().st_size}"]),
                           lambda verify, records: _samples(path, stem, verify, records))

    def to_frames(t, x, y, p):
        return frames_by_time_bins(t, downsample(x, CHANNELS, size), None, p, time_steps=time_steps,
                                   shape=info.in_shape, accumulate=accumulate)

    settings = {"size": size, "accumulate": accumulate, "reader": "h5, t = trunc(float64(s) * 1e6) us"}
    return load_event_split(dirs, find, info, split, settings=settings, cache=cache, verify=verify,
                            to_frames=to_frames, not_found=not_found)


def _samples(path: Path, stem: str, verify: bool, records: list):
    content = path.read_bytes()
    h5_bytes = _h5_content(path, content)
    md5 = hashlib.md5(content).hexdigest()
    if verify and path.name != stem + ".h5" and _PUBLISHED.get(md5) != ("shd", path.name):
        records.append(identify(path, h5_bytes, "shd", stem + ".h5", _PUBLISHED, True))  # a recompressed copy
    else:
        records.append(identify(path, content, "shd", path.name, _PUBLISHED, verify))
    times, units, labels = _read_h5(h5_bytes, path)
    for sample_times, sample_units, label in zip(times, units, labels):
        t = (np.asarray(sample_times, dtype=np.float64) * 1e6).astype(np.int64)
        x = np.asarray(sample_units, dtype=np.int64)
        yield t, x, None, np.zeros(len(x), dtype=np.int64), int(label)


def _h5_content(path: Path, content: bytes) -> bytes:
    """The HDF5 bytes of ``path``: the file, or the one ``.h5`` it gzips or zips."""
    try:
        if path.name.endswith(".gz"):
            return gzip.decompress(content)
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                inside = [name for name in archive.namelist() if name.endswith(".h5")]
                if len(inside) != 1:
                    raise ValueError(f"{path} must hold one .h5 file, holds {inside or 'none'}")
                return archive.read(inside[0])
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot decompress {path}: {err}; delete it and fetch it again") from None
    return content


def _read_h5(content: bytes, path: Path) -> tuple[list, list, np.ndarray]:
    """``(times, units, labels)`` of an SHD file, checked for the published structure."""
    try:
        import h5py
    except ImportError:
        raise ModuleNotFoundError("reading SHD needs h5py: pip install 'implicit-snn[events]'") from None
    try:
        handle = h5py.File(io.BytesIO(content), "r")
    except OSError as err:
        raise ValueError(f"{path} is not an HDF5 file ({err}); fetch it again") from None
    with handle:
        missing = [key for key in ("spikes/times", "spikes/units", "labels") if key not in handle]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: an SHD file holds spikes/times, spikes/units "
                             "and labels")
        times, units = list(handle["spikes/times"][()]), list(handle["spikes/units"][()])
        labels = np.asarray(handle["labels"][()], dtype=np.int64)
    if not len(times) == len(units) == len(labels):
        raise ValueError(f"{path} holds {len(times)} spike-time arrays, {len(units)} unit arrays and "
                         f"{len(labels)} labels; they must be as many")
    for i, (t, u) in enumerate(zip(times, units)):
        if len(t) != len(u):
            raise ValueError(f"{path}: sample {i} has {len(t)} spike times but {len(u)} units")
        if len(u) and (int(np.min(u)) < 0 or int(np.max(u)) >= CHANNELS):
            raise ValueError(f"{path}: sample {i} has a spike on unit {int(np.max(u))}; units lie in 0..{CHANNELS - 1}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= CLASSES):
        raise ValueError(f"{path} holds label {int(labels.max())}; SHD labels lie in 0..{CLASSES - 1}")
    return times, units, labels
