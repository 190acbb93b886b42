"""DVS128 Gesture and CIFAR10-DVS from the files their authors published, binned into frames.

**DVS128 Gesture** (Amir et al., CVPR 2017; IBM, ``DvsGesture.tar.gz``): the folder
``DvsGesture/`` holds 122 recordings ``userNN_<lighting>.aedat``, each with
``userNN_<lighting>_labels.csv`` (a header line ``class,startTime_usec,endTime_usec``, then one
gesture per line: class 1..11 and its start and end in microseconds), and
``trials_to_train.txt`` / ``trials_to_test.txt`` naming the recordings of each split (users
01-23 train, 24-29 test). The recordings are **AEDAT 3.1** (cAER), not jAER's AEDAT 2.0: polarity
events with x in bits 17-31 and y in bits 2-16 of the address, as SpikingJelly's
``load_aedat_v3`` and tonic's ``read_dvs_ibm`` read them, not mirrored (``_aedat``). Each labelled
segment is one sample, the events with ``start <= t < end`` (SpikingJelly's rule), label
``class - 1``; samples are ordered as the trials file lists the recordings, then as the label
file lists the segments (1176 train and 288 test samples, SpikingJelly's counts). Sensor
128 × 128, 2 polarities (channel 0 OFF, 1 ON), 11 classes. Not supported: tonic's repack
(``ibmGestureTrain.tar.gz``: ``.npy`` per gesture with millisecond timestamps, 1077/264 samples).

**CIFAR10-DVS** (Li et al., Frontiers in Neuroscience 2017; figshare 4724671): one archive per
class (``airplane.zip`` … ``truck.zip``), each holding 1000 recordings
``cifar10_<class>_<i>.aedat`` (i = 0..999) in a folder named by the class. The recordings are
**AEDAT 2.0** from a DVS128 (jAER): an address word's bits 1-7 and 8-14 are the two coordinates
and bit 0 the polarity; decoded as SpikingJelly's ``CIFAR10DVS`` decodes them today,
x = 127 − bits 8-14, y = 127 − bits 1-7, polarity = 1 − bit 0 (jackd/events-tfds pull request 1).
jAER's own DVS128 extractor, MNIST-DVS's ``dat2mat.m`` and SpikingJelly's earlier releases read
x = 127 − bits 1-7, y = bits 8-14 with the same polarity: the same frames turned by 90°.
Read from the archives themselves or from the folders they extract to.
Not supported: tonic's repack (``CIFAR10DVS.zip`` of ``.aedat4`` files), whose AEDAT 4 packets are
LZ4/zstd-compressed flatbuffers that need the non-Python ``aedat`` package. The dataset has no
published split: per class, the files sorted by name (as SpikingJelly's folder dataset lists
them) are split at ceil(0.9·n): the first 900 train, the last 100 test, the split
SpikingJelly's ``split_to_train_test_set(0.9, dataset, 10, random_split=False)`` makes.

**Identity.** DVS128 Gesture: each ``.aedat`` by its MD5, from the per-file list in norse's
``DVSGestureDataset`` (``norse/dataset/dvs_gesture.py``; the archive's MD5 there and in
SpikingJelly is 8a5c71fb11e24e5ca5b11866ca6c00a1), and the trials files must name exactly the
published recordings of their split; the label files have no published checksum (their format
is checked, their content fingerprinted). CIFAR10-DVS: each class archive by its MD5, from
SpikingJelly's ``CIFAR10DVS.resource_url_md5``; the extracted ``.aedat`` files have no published
checksum, so a folder of them is checked for the published layout (1000 files
``cifar10_<class>_0..999.aedat`` per class, AEDAT 2.0 headers) and recorded as unverified.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from ._aedat import decode_aedat2, decode_aedat31_polarity
from ._base import (ArrayDataset, DataFile, DatasetInfo, DatasetNotFoundError, PathLike, candidate_dirs, identify,
                    identify_md5, root_problem)
from ._frames import (Accumulate, EventSource, check_accumulate, check_size, downsample, fingerprint,
                      frames_by_time_bins, load_event_split)

SENSOR = 128  # DVS128: 128 x 128 pixels

# ----------------------------------------------------------------------------- DVS128 Gesture

GESTURE_CLASSES = 11

# MD5 of each published recording, as norse's DVSGestureDataset lists them (not checked against
# a copy here: none was at hand).
GESTURE_MD5 = {
    "user01_fluorescent.aedat": "e113517a64ab66cf2259dd8428058222",
    "user01_fluorescent_led.aedat": "7280eac9ec165cf0ff8e14f56679a9f8",
    "user01_lab.aedat": "e7e1d66e2b9d11164851fbd7f1f8ac1f",
    "user01_led.aedat": "dc50d295cb1af9277486f22a556c3153",
    "user01_natural.aedat": "401ff23f0c91f095ed8a0701ab24794a",
    "user02_fluorescent.aedat": "ff883f9b52c6f84d14be18674d7e8a85",
    "user02_fluorescent_led.aedat": "c82fa62429ee51858985ff07afccd8b9",
    "user02_lab.aedat": "84c62a8f3336b01f4a2f78c24ad0ea0e",
    "user02_led.aedat": "696db3d8da3defbff96d2cb3d5da78a8",
    "user02_natural.aedat": "08bb21aa108cb4f5c4bd5899666ec4b2",
    "user03_fluorescent.aedat": "26cdbc971fec225d132054b37f3c8a55",
    "user03_fluorescent_led.aedat": "3fc93616aa6d3ee6f7ed36bc5a199875",
    "user03_led.aedat": "47e772f3ee80edd58e30493755a6ebbc",
    "user03_natural.aedat": "49dba7cbf22a6e209392869d02f8187b",
    "user04_fluorescent.aedat": "96727cc1c64183bc4db5a28db6427289",
    "user04_fluorescent_led.aedat": "ba33603a7e560ec08e5b62f567542658",
    "user04_led.aedat": "8c3ece51743db0a6191ca5e5c9903da7",
    "user04_natural.aedat": "0cffd708c224df0cbf061644174df9de",
    "user05_fluorescent.aedat": "b33a87123d204e591a5bbbe51a9883a2",
    "user05_fluorescent_led.aedat": "bec648630aece183c1e33e7f69397f25",
    "user05_lab.aedat": "6d56c1fc1cfa56e908d0a35efbd19823",
    "user05_led.aedat": "9bd2586003386938704d4e0d84f6e393",
    "user05_natural.aedat": "c4a60c769fcc1cecf12b210338b2ec23",
    "user06_fluorescent.aedat": "824d7e00f20fbb4145475e4c1db24b05",
    "user06_fluorescent_led.aedat": "9623d0caed540bf3735470e27ad1a550",
    "user06_lab.aedat": "8f6d70570d0c0192b57a98be64deaf96",
    "user06_led.aedat": "e92c7e2649261fc326f849783c21acc9",
    "user06_natural.aedat": "f7c2102462d126300915e6a1aa266957",
    "user07_fluorescent.aedat": "9ca2aec9e9b80671dba00223c36a0203",
    "user07_fluorescent_led.aedat": "b0589d8d271a67cfb859c39d9d237c7c",
    "user07_lab.aedat": "340dd0cbce9a311057ffcd34dfc9dc8a",
    "user07_led.aedat": "a2276802aaf84bce0bb564470adf3fa2",
    "user08_fluorescent.aedat": "8da2c7748c07669fb11326c7422eeecf",
    "user08_fluorescent_led.aedat": "ec2ba4a7071910530b4c40a77120bb2b",
    "user08_lab.aedat": "0e199262643a851d29287a335924c99c",
    "user08_led.aedat": "d0bd827564492d62960acc2318058877",
    "user09_fluorescent.aedat": "64e0c9e329061c09df74a65a39310de5",
    "user09_fluorescent_led.aedat": "fa0b7ed7d7b99ce5e9f25d2f739d59c9",
    "user09_lab.aedat": "2cb402d45cfe94f0ad97386d3f688a17",
    "user09_led.aedat": "69addacc47fed56aef710b8b8d47fe55",
    "user09_natural.aedat": "670e32f14a2d0165f3260d756ae1d23d",
    "user10_fluorescent.aedat": "889a722076ceb0c062e9b0fc97666ee1",
    "user10_fluorescent_led.aedat": "61428512d590714fa33ada9e2137201d",
    "user10_lab.aedat": "dbd79c303461407862161134a0bdee4a",
    "user10_led.aedat": "ee5f1b5ee13a3d61ce418bc03f8297e9",
    "user11_fluorescent.aedat": "07bf070c98057eb91805f03f7e39dd14",
    "user11_fluorescent_led.aedat": "bc73c49520f4eeecbfddb7121e1bbb48",
    "user11_natural.aedat": "2005eade67ae4180b54b900eca08fc14",
    "user12_fluorescent_led.aedat": "a8ad16870e944f5dfc1e288b8bd931db",
    "user12_led.aedat": "cf9e1979c3daf8c048b00e3e1fda8964",
    "user13_fluorescent.aedat": "bd305f1f4112cac4a060c7dd34340213",
    "user13_fluorescent_led.aedat": "9b9399d723c5f6a5168bfa8fd0c30941",
    "user13_lab.aedat": "6e5b4ae30b095ac44c969480e16ddbdf",
    "user13_led.aedat": "5bae5bbd8d38375f1e082aad87e59032",
    "user13_natural.aedat": "9b902e35ef6352d151ef0cd313e2f0f4",
    "user14_fluorescent.aedat": "f63461d3be511b8a0225e380eed8c00c",
    "user14_fluorescent_led.aedat": "c0a0bb30ad897fcb33b7e5dbda53aa67",
    "user14_led.aedat": "3426123998de30b62d14577e713692b7",
    "user14_natural.aedat": "101d0c8c4c79e0e79fe9279566847c95",
    "user15_fluorescent.aedat": "5a4df5a4703f94f54e59415436e2f2f1",
    "user15_fluorescent_led.aedat": "b17b1401643fac32679b2b30f0bf5216",
    "user15_lab.aedat": "55e8efeafa4aa5002f80b4d1ac716e77",
    "user15_led.aedat": "a7af361ccdd1a3d0ca30ed3487b327ca",
    "user15_natural.aedat": "0a289cd4774d0cb02d7ad823a6d4ee3f",
    "user16_fluorescent.aedat": "e91b9a4bdeaadbca8b7d57de0305ce15",
    "user16_lab.aedat": "ab3c405c6ce16746ddc4960c6dd420ce",
    "user16_led.aedat": "78cc668d66af4460101090bdd7dda7a7",
    "user16_natural.aedat": "fa97da22138daca004ed608dfc53c8fd",
    "user17_fluorescent.aedat": "42e215ea69d8468afd01b4e18f261b12",
    "user17_fluorescent_led.aedat": "03c8f7860bda6517bec0ae27f9c95715",
    "user17_lab.aedat": "d1ced90bed55b58ba37c419a61224b26",
    "user17_led.aedat": "52ff6c6a4dd55a03049687613548b2ae",
    "user17_natural.aedat": "9146316b5b74891f5c2c6bc37181f838",
    "user18_fluorescent.aedat": "ba6a8dc4e95da3b53c5a52ac08766a12",
    "user18_fluorescent_led.aedat": "729b4f6ad024d3ce101e36a50581129d",
    "user18_lab.aedat": "39ea291876e716b6f7f416b5a7848256",
    "user18_led.aedat": "97ed078c4104dc0928036ede88466de4",
    "user19_fluorescent.aedat": "078d675669cac51ed27e66eb09f26588",
    "user19_fluorescent_led.aedat": "87cd29d3133173083a2d4f6c2293e66b",
    "user19_lab.aedat": "120d0079824d8ae4a557068d06ca707c",
    "user19_led.aedat": "b97e441db4ac06a809f7c091d3d8ba37",
    "user19_natural.aedat": "81d7f4081034e2a005e3e5f243145abc",
    "user20_fluorescent.aedat": "39603316e10bf095461196234ba6c3da",
    "user20_fluorescent_led.aedat": "bd7a4fc388ae050a7d2047041b8638ce",
    "user20_led.aedat": "4b78a4c6cb444e0bee2d29d9fed7b19d",
    "user21_fluorescent.aedat": "d9fd906b2d0cc8f125280d3b6ff160c4",
    "user21_fluorescent_led.aedat": "a142ce4e5b9b725d5244a19f5e6cb77e",
    "user21_lab.aedat": "0442ba221fd5af22769ca34d575eee23",
    "user21_natural.aedat": "b86a9f4cb959a959ed036fbfda076120",
    "user22_fluorescent.aedat": "1e161012c767220db83b08ebf0364efa",
    "user22_fluorescent_led.aedat": "0145ebf561d861fc95a5a7df315c770d",
    "user22_lab.aedat": "66ab68a4743213de0862f7e430f96b4c",
    "user22_led.aedat": "6ceafd193d838d4371fb6615dbf2d36f",
    "user22_natural.aedat": "49f7df28f49c2a3f15beae96987592e1",
    "user23_fluorescent.aedat": "c1bf9480f97c2098d79995edce5b359d",
    "user23_fluorescent_led.aedat": "efa48186c9435edfe0aadaf2c2766ce7",
    "user23_lab.aedat": "e6b2fcda56b47da869b2b4b48c587447",
    "user23_led.aedat": "520f05beef4b623d34bb6039ac752ee9",
    "user24_fluorescent.aedat": "f89a2526dcf2826b9bf902d8d285a5ec",
    "user24_fluorescent_led.aedat": "e4f9171c7868c5f7f1fe861644a97e81",
    "user24_led.aedat": "e7c34ba86e17de56ca5336f6f02f8b02",
    "user25_fluorescent.aedat": "91ad11ed0a229d51e11cdd9a7eadce19",
    "user25_led.aedat": "290c4801a674439a7f8822ad74dbe8dd",
    "user26_fluorescent.aedat": "5ddcb8a3b94cb8e5f2ec18104e808948",
    "user26_fluorescent_led.aedat": "08604845038463d0897f91e35a69ea45",
    "user26_lab.aedat": "a52e368c850380615b310074e8166941",
    "user26_led.aedat": "147836193bc15a0786d2f6f08d9958e2",
    "user26_natural.aedat": "bcf0488fdd7ee6daf47c9db80aad1daf",
    "user27_fluorescent.aedat": "566dfaa35b1d67877eb779444a459b63",
    "user27_fluorescent_led.aedat": "b788383a93bf92825af81ed554c98577",
    "user27_led.aedat": "92d60850c7fbb32d21d3032817c5f930",
    "user27_natural.aedat": "ae7b4eef347c2f72008af1899908b36f",
    "user28_fluorescent.aedat": "b9c9f09a6d4a907b08ead198f48992dd",
    "user28_fluorescent_led.aedat": "be834d6b872d60244c1f2615793328ce",
    "user28_lab.aedat": "983f84996a8d8051d0a10b591adc90f7",
    "user28_led.aedat": "d61b157c1d0985f805b5549d36296ad6",
    "user28_natural.aedat": "35cd06ca7b820592355bd26407aab23b",
    "user29_fluorescent.aedat": "fbf320693883263cb06ce5d848c22004",
    "user29_fluorescent_led.aedat": "5bf8cf03464b2676bffc37e00dfeb656",
    "user29_lab.aedat": "b953a9e5af1393ded645e8e4b51b8bba",
    "user29_led.aedat": "043d9e7935bb1318251b5c320b87d9eb",
    "user29_natural.aedat": "f8c2c6a1374e44f18bf5d1f9f292e40e",
}
_GESTURE_PUBLISHED = {md5: ("dvs-gesture", name) for name, md5 in GESTURE_MD5.items()}


def gesture_split_of(name: str) -> str:
    """The published split of a recording: users 01-23 train, 24-29 test (``trials_to_*.txt``)."""
    return "train" if int(name[4:6]) <= 23 else "test"


def dvs_gesture_info(time_steps: int, *, size: int = 32, **_) -> DatasetInfo:
    """The dataset's description for T frames of ``size`` × ``size`` pixels."""
    check_size(size, SENSOR, "pixels")
    return DatasetInfo("dvs-gesture", (2, size, size), GESTURE_CLASSES, "spikes", time_steps)


def load_dvs_gesture_dataset(split: str, root: Optional[PathLike], download: bool, time_steps: int, *,
                             size: int = 32, accumulate: Accumulate = "count", cache: bool = True,
                             verify: bool = True) -> ArrayDataset:
    """DVS128 Gesture ``split`` as uint8 frames ``[N, T, 2, size, size]`` (``[n, t, polarity, y, x]``).

    Each gesture's events are binned into T frames of equal duration as tonic's
    ``ToFrame(n_time_bins=T)`` bins them, after down-sampling 128 → ``size`` pixels (``_frames``).

    Args:
        split: "train" (trials_to_train.txt) or "test".
        root: folder holding ``DvsGesture/`` (or the folder itself).
        download: not available (IBM's archive needs a browser); the files must be present.
        time_steps: frames T per gesture.
        size: pixels per side after down-sampling (128: the sensor's; 32 for the presets).
        accumulate: "count" (events per pixel, saturating at 255) or "binary".
        cache: read and write the frame cache (``_frames``).
        verify: check each recording's MD5 and the split files (module docstring); False loads
            files of one's own in the same format.
    """
    info = dvs_gesture_info(time_steps, size=size)
    check_accumulate(accumulate)
    note = root_problem(root)
    dirs = candidate_dirs(root, ["DvsGesture"])
    trials = f"trials_to_{split}.txt"
    seen: list[str] = []  # what the folders hold instead, for the error

    def not_found(extra: Optional[str]) -> DatasetNotFoundError:
        hint = ("Download DvsGesture.tar.gz (IBM, Amir et al. 2017; research.ibm.com/dvsgesture) and extract it "
                "into DIR so that DIR/DvsGesture/trials_to_train.txt exists, then set `root` to DIR; "
                "`download` is not available for DVS128 Gesture.")
        return DatasetNotFoundError("dvs-gesture", split, f"{trials} with its .aedat and _labels.csv files",
                                    dirs, hint, extra or note or (seen[0] if seen else None))

    if note:
        raise not_found(None)

    def to_frames(t, x, y, p):
        return frames_by_time_bins(t, downsample(x, SENSOR, size), downsample(y, SENSOR, size), p,
                                   time_steps=time_steps, shape=info.in_shape, accumulate=accumulate)

    settings = {"size": size, "accumulate": accumulate, "reader": "aedat3.1, segments start <= t < end"}
    return load_event_split(dirs, lambda folder: _find_gesture(folder, split, trials, not_found, seen), info, split,
                            settings=settings, cache=cache, verify=verify, to_frames=to_frames, not_found=not_found)


def _find_gesture(folder: Path, split: str, trials: str, not_found, seen: list) -> Optional[EventSource]:
    trials_path = folder / trials
    if not trials_path.is_file():
        if (folder / "DvsGesture.tar.gz").is_file():
            seen.append(f"{folder} holds DvsGesture.tar.gz: extract it there (tar xzf DvsGesture.tar.gz)")
        elif any((folder / name).exists() for name in _REPACK):
            seen.append(f"{folder} holds tonic's repack (ibmGestureTrain, ibmGestureTest: .npy gestures with "
                        "millisecond timestamps), which is not read here; use IBM's original DvsGesture.tar.gz")
        return None
    trials_text = trials_path.read_text(encoding="utf-8", errors="replace")
    names = [line.strip() for line in trials_text.splitlines() if line.strip()]
    recordings, parts = [], [f"{trials}:{hashlib.sha1(trials_text.encode()).hexdigest()}"]
    for name in names:
        path = folder / name
        labels_path = folder / (Path(name).stem + "_labels.csv")
        for needed in (path, labels_path):
            if not needed.is_file():
                raise not_found(f"{trials_path} lists {name}, but {needed} is missing")
        labels_text = labels_path.read_bytes()
        segments = _read_gesture_labels(labels_text, labels_path)
        recordings.append((path, labels_path, labels_text, segments))
        parts.append(f"{name}:{path.stat().st_size}:{hashlib.sha1(labels_text).hexdigest()}")

    def samples(verify: bool, records: list):
        if verify:
            _check_trials(trials_path, names, split)
        records.append(identify(trials_path, trials_text.encode(), "dvs-gesture", trials, {}, False))
        for path, labels_path, labels_text, segments in recordings:
            data = path.read_bytes()
            records.append(identify(path, data, "dvs-gesture", path.name, _GESTURE_PUBLISHED, verify))
            records.append(identify(labels_path, labels_text, "dvs-gesture", labels_path.name, {}, False))
            t, x, y, p = decode_aedat31_polarity(data, str(path))
            if len(t) and max(int(x.max()), int(y.max())) >= SENSOR:
                raise ValueError(f"{path} has an event at x={int(x.max())}, y={int(y.max())}; DVS128 coordinates "
                                 f"lie in 0..{SENSOR - 1}")
            for label, start, end in segments:
                inside = (t >= start) & (t < end)
                yield t[inside], x[inside], y[inside], p[inside], label

    count = sum(len(segments) for _, _, _, segments in recordings)
    return EventSource(folder, fingerprint(parts), samples, count)


_REPACK = ("ibmGestureTrain", "ibmGestureTest", "ibmGestureTrain.tar.gz", "ibmGestureTest.tar.gz")


def _read_gesture_labels(content: bytes, path: Path) -> list[tuple[int, int, int]]:
    """``(label, start_us, end_us)`` per gesture of a ``_labels.csv`` file, label = class - 1."""
    lines = content.decode("utf-8", errors="replace").splitlines()
    rows = [(number, row) for number, row in enumerate(csv.reader(lines), start=1) if any(c.strip() for c in row)]
    if not rows or _integers(rows[0][1]) is not None:
        raise ValueError(f"{path} must begin with a header line ('class,startTime_usec,endTime_usec'), got "
                         f"{','.join(rows[0][1]) if rows else 'an empty file'!r}")
    segments = []
    for number, row in rows[1:]:
        values = _integers(row)
        if values is None:
            raise ValueError(f"{path} line {number}: expected three integers 'class,start,end', got "
                             f"{','.join(row)!r}")
        cls, start, end = values
        if not 1 <= cls <= GESTURE_CLASSES or start >= end:
            raise ValueError(f"{path} line {number}: expected a class in 1..{GESTURE_CLASSES} and start < end, "
                             f"got {','.join(row)!r}")
        segments.append((cls - 1, start, end))
    return segments


def _integers(row: list[str]) -> Optional[tuple[int, int, int]]:
    """A label row's three integers, or None when it is not three integers."""
    try:
        cls, start, end = (int(cell) for cell in row)
    except ValueError:
        return None
    return cls, start, end


def _check_trials(path: Path, names: list[str], split: str) -> None:
    expected = sorted(name for name in GESTURE_MD5 if gesture_split_of(name) == split)
    if sorted(names) != expected:
        extra = sorted(set(names) - set(expected))
        lacking = sorted(set(expected) - set(names))
        what = "; ".join(part for part in (f"unexpected {', '.join(extra[:3])}" if extra else "",
                                           f"missing {', '.join(lacking[:3])}" if lacking else "",
                                           "a name listed twice" if len(set(names)) != len(names) else "") if part)
        raise ValueError(f"{path} must list the {len(expected)} published {split} recordings ({expected[0]} … "
                         f"{expected[-1]}): {what}; pass `verify=False` to load a split of your own")


# ----------------------------------------------------------------------------- CIFAR10-DVS

CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = 1000
TRAIN_FRACTION = 0.9

# MD5 of each class archive as SpikingJelly's CIFAR10DVS.resource_url_md5 lists them (figshare
# 4724671; not checked against a copy here).
CIFAR10_DVS_ZIP_MD5 = {
    "airplane.zip": "0afd5c4bf9ae06af762a77b180354fdd",
    "automobile.zip": "8438dfeba3bc970c94962d995b1b9bdd",
    "bird.zip": "a9c207c91c55b9dc2002dc21c684d785",
    "cat.zip": "52c63c677c2b15fa5146a8daf4d56687",
    "deer.zip": "b6bf21f6c04d21ba4e23fc3e36c8a4a3",
    "dog.zip": "f379ebdf6703d16e0a690782e62639c3",
    "frog.zip": "cad6ed91214b1c7388a5f6ee56d08803",
    "horse.zip": "e7cbbf77bec584ffbf913f00e682782a",
    "ship.zip": "41c7bd7d6b251be82557c6cce9a7d5c9",
    "truck.zip": "89f3922fd147d9aeff89e76a2b0b70a7",
}
_CIFAR10_DVS_PUBLISHED = {md5: ("cifar10-dvs", name) for name, md5 in CIFAR10_DVS_ZIP_MD5.items()}


def cifar10_dvs_info(time_steps: int, *, size: int = 48, **_) -> DatasetInfo:
    """The dataset's description for T frames of ``size`` × ``size`` pixels."""
    check_size(size, SENSOR, "pixels")
    return DatasetInfo("cifar10-dvs", (2, size, size), len(CIFAR10_DVS_CLASSES), "spikes", time_steps)


def decode_cifar10_dvs(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(t, x, y, p)`` int64 arrays of one CIFAR10-DVS recording (AEDAT 2.0, DVS128 addresses),
    oriented as SpikingJelly orients them (module docstring)."""
    address, timestamp = decode_aedat2(data, source)
    address = address.astype(np.int64)
    x = (SENSOR - 1) - ((address >> 8) & 0x7F)
    y = (SENSOR - 1) - ((address >> 1) & 0x7F)
    return timestamp.astype(np.int64), x, y, 1 - (address & 1)


def split_files(names: list[str], split: str) -> list[str]:
    """A class's files of ``split``: sorted by name, the first ceil(0.9·n) train, the rest test."""
    ordered = sorted(names)
    cut = math.ceil(len(ordered) * TRAIN_FRACTION)
    return ordered[:cut] if split == "train" else ordered[cut:]


def load_cifar10_dvs_dataset(split: str, root: Optional[PathLike], download: bool, time_steps: int, *,
                             size: int = 48, accumulate: Accumulate = "count", cache: bool = True,
                             verify: bool = True) -> ArrayDataset:
    """CIFAR10-DVS ``split`` (90/10 per class, module docstring) as uint8 frames ``[N, T, 2, size, size]``.

    Each recording's events are binned into T frames of equal duration as tonic's
    ``ToFrame(n_time_bins=T)`` bins them, after down-sampling 128 → ``size`` pixels (``_frames``).
    Samples are ordered by class, then by file name.

    Args:
        split: "train" or "test".
        root: folder holding the class archives ``<class>.zip`` or the folders ``<class>/`` they
            extract to (or ``CIFAR10-DVS/`` holding them); the archives are read when both are there.
        download: not available; the files must be present.
        time_steps: frames T per recording.
        size: pixels per side after down-sampling (128: the sensor's; 48 for the preset, as SPIDE).
        accumulate: "count" (events per pixel, saturating at 255) or "binary".
        cache: read and write the frame cache (``_frames``).
        verify: check each archive's MD5 (an extracted folder: the published layout); False loads
            files of one's own in the same format, any number per class.
    """
    info = cifar10_dvs_info(time_steps, size=size)
    check_accumulate(accumulate)
    note = root_problem(root)
    dirs = candidate_dirs(root, ["CIFAR10-DVS", "CIFAR10DVS"])

    def not_found(extra: Optional[str]) -> DatasetNotFoundError:
        hint = ("Download the ten class archives of CIFAR10-DVS (airplane.zip … truck.zip; Li et al. 2017, "
                "figshare 4724671) into DIR, extracted or not, and set `root` to DIR; `download` is not "
                "available for CIFAR10-DVS.")
        return DatasetNotFoundError("cifar10-dvs", split, "<class>.zip or <class>/*.aedat for all 10 classes",
                                    dirs, hint, extra or note)

    if note:
        raise not_found(None)

    def to_frames(t, x, y, p):
        return frames_by_time_bins(t, downsample(x, SENSOR, size), downsample(y, SENSOR, size), p,
                                   time_steps=time_steps, shape=info.in_shape, accumulate=accumulate)

    settings = {"size": size, "accumulate": accumulate,
                "reader": "aedat2, x=127-bits8..14, y=127-bits1..7, p=1-bit0; split ceil(0.9n) by name"}
    return load_event_split(dirs, lambda folder: _find_cifar10_dvs(folder, split, not_found), info, split,
                            settings=settings, cache=cache, verify=verify, to_frames=to_frames, not_found=not_found)


def _find_cifar10_dvs(folder: Path, split: str, not_found) -> Optional[EventSource]:
    archives = [folder / f"{name}.zip" for name in CIFAR10_DVS_CLASSES]
    folders = [folder / name for name in CIFAR10_DVS_CLASSES]
    if all(a.is_file() for a in archives):
        return _cifar10_dvs_archives(folder, archives, split)
    if all(f.is_dir() for f in folders):
        return _cifar10_dvs_folders(folder, folders, split)
    present = [a.name for a in archives if a.is_file()] + [f.name + "/" for f in folders if f.is_dir()]
    if present:
        lacking = [n for n in CIFAR10_DVS_CLASSES if not (folder / f"{n}.zip").is_file() and not (folder / n).is_dir()]
        raise not_found(f"{folder} holds {', '.join(present[:3])}{' …' if len(present) > 3 else ''} but not "
                        f"{', '.join(lacking) or 'all ten in one form (all archives, or all folders)'}")
    return None


def _cifar10_dvs_archives(folder: Path, archives: list[Path], split: str) -> EventSource:
    members, parts = [], []
    for label, archive in enumerate(archives):
        try:
            with zipfile.ZipFile(archive) as handle:
                everything = [info.filename for info in handle.infolist()]
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"{archive} is not a readable zip archive ({err}); fetch it again") from None
        names = [name for name in everything if name.endswith(".aedat")]
        if not names and any(name.endswith(".aedat4") for name in everything):
            raise ValueError(_AEDAT4.format(archive))
        by_base = {os.path.basename(name): name for name in names}
        members.append([(label, by_base[base]) for base in split_files(list(by_base), split)])
        parts.append(f"{archive.name}:{archive.stat().st_size}")

    def samples(verify: bool, records: list):
        for archive, chosen in zip(archives, members):
            records.append(identify_md5(archive, _file_md5(archive), "cifar10-dvs", archive.name,
                                        _CIFAR10_DVS_PUBLISHED, verify))
            with zipfile.ZipFile(archive) as handle:
                for label, name in chosen:
                    yield (*decode_cifar10_dvs(handle.read(name), f"{archive}:{name}"), label)

    return EventSource(folder, fingerprint(parts), samples, sum(len(m) for m in members))


def _cifar10_dvs_folders(folder: Path, folders: list[Path], split: str) -> EventSource:
    chosen, parts, all_names = [], [], []
    for label, class_folder in enumerate(folders):
        with os.scandir(class_folder) as entries:
            found = sorted((e.name, e.stat().st_size) for e in entries if e.is_file() and e.name.endswith(".aedat"))
        if not found and any(e.endswith(".aedat4") for e in os.listdir(class_folder)):
            raise ValueError(_AEDAT4.format(class_folder))
        all_names.append([name for name, _ in found])
        chosen.append([(label, class_folder / name) for name in split_files([n for n, _ in found], split)])
        parts += [f"{class_folder.name}/{name}:{size}" for name, size in found]

    def samples(verify: bool, records: list):
        for class_folder, names, files in zip(folders, all_names, chosen):
            if verify:
                _check_cifar10_dvs_layout(class_folder, names)
            records.append(DataFile(str(class_folder.absolute())))  # no published checksum to verify
            for label, path in files:
                yield (*decode_cifar10_dvs(path.read_bytes(), str(path)), label)

    return EventSource(folder, fingerprint(parts), samples, sum(len(c) for c in chosen))


_AEDAT4 = ("{} holds AEDAT 4 files (tonic's CIFAR10DVS.zip repack), which need the non-Python `aedat` package; "
           "use the original per-class archives (airplane.zip … truck.zip, AEDAT 2.0) instead")


def _check_cifar10_dvs_layout(class_folder: Path, names: list[str]) -> None:
    expected = {f"cifar10_{class_folder.name}_{i}.aedat" for i in range(PER_CLASS)}
    if set(names) != expected:
        extra = sorted(set(names) - expected)[:2]
        lacking = sorted(expected - set(names), key=lambda n: int(re.findall(r"\d+", n)[-1]))[:2]
        raise ValueError(f"{class_folder} must hold the {PER_CLASS} published recordings cifar10_{class_folder.name}_0"
                         f".aedat … _{PER_CLASS - 1}.aedat, found {len(names)} .aedat files"
                         f"{'; unexpected ' + ', '.join(extra) if extra else ''}"
                         f"{'; missing ' + ', '.join(lacking) if lacking else ''}; pass `verify=False` to load "
                         "files of your own")


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
