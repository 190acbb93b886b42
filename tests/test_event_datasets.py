"""The event datasets (dvs-gesture, cifar10-dvs, shd): each read from tiny files written here in
its published format, decoded exactly, binned as tonic's ToFrame(n_time_bins=T) bins, cached
under every setting that changes the frames, identified by checksums, and trained on from the
command line."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from implicit_snn import data
from implicit_snn.app.cli import main
from implicit_snn.data import _dvs, _shd
from implicit_snn.data._aedat import decode_aedat2, decode_aedat31_polarity
from implicit_snn.data._frames import downsample, frames_by_time_bins

# ----------------------------------------------------------------------------- file writers


def gesture_address(x: int, y: int, p: int, valid: int = 1) -> int:
    """An AEDAT 3.1 polarity event's data word: x bits 17-31, y bits 2-16, polarity bit 1, valid bit 0."""
    return (x << 17) | (y << 2) | (p << 1) | valid


def aedat31(packets: list[tuple[int, int, list[tuple[int, int]]]]) -> bytes:
    """An AEDAT 3.1 file: header, then ``(type, ts_overflow, [(word, ts), ...])`` packets of 8-byte events."""
    out = [b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"]
    for kind, overflow, events in packets:
        out.append(struct.pack("<hhiiiiii", kind, 1, 8, 4, overflow, len(events), len(events), len(events)))
        out += [struct.pack("<Ii", word, ts) for word, ts in events]
    return b"".join(out)


# user01_lab: two polarity packets around a special-event packet (type 0), and an event outside
# every gesture (t = 500). user02_led: its timestamps carry an overflow of 1 (2^31 µs later).
# Events are (t, x, y, p) as the sensor saw them.
GESTURE_EVENTS = {
    "user01_lab": [[(500, 3, 3, 1), (1000, 0, 0, 1), (1010, 127, 5, 0)],
                   [(1050, 64, 64, 1), (1099, 1, 2, 0), (1100, 10, 20, 1), (1200, 11, 21, 0), (1299, 12, 22, 1)]],
    "user02_led": [[(7, 100, 50, 1), (17, 101, 51, 0), (27, 102, 52, 1)]],
    "user24_led": [[(0, 9, 9, 0), (20, 8, 8, 1), (40, 8, 8, 1)]],
}
GESTURE_OVERFLOW = {"user01_lab": 0, "user02_led": 1, "user24_led": 0}
GESTURE_LABELS = {  # class 1..11, start, end (µs)
    "user01_lab": [(3, 1000, 1100), (11, 1100, 1300)],
    "user02_led": [(1, (1 << 31) + 0, (1 << 31) + 30)],
    "user24_led": [(5, 0, 41)],
}


def write_gesture(base: Path) -> Path:
    folder = base / "DvsGesture"
    folder.mkdir(parents=True, exist_ok=True)
    for name, packets in GESTURE_EVENTS.items():
        overflow = GESTURE_OVERFLOW[name]
        encoded = [(1, overflow, [(gesture_address(x, y, p), t) for t, x, y, p in packets[0]]),
                   (0, overflow, [(0x1, 123)])]  # a special event: skipped
        encoded += [(1, overflow, [(gesture_address(x, y, p), t) for t, x, y, p in more]) for more in packets[1:]]
        (folder / f"{name}.aedat").write_bytes(aedat31(encoded))
        rows = "".join(f"{c},{s},{e}\r\n" for c, s, e in GESTURE_LABELS[name])
        (folder / f"{name}_labels.csv").write_text("class,startTime_usec,endTime_usec\r\n" + rows)
    (folder / "trials_to_train.txt").write_text("user01_lab.aedat\nuser02_led.aedat\n\n")
    (folder / "trials_to_test.txt").write_text("user24_led.aedat\n")
    return folder


def cifar_address(x: int, y: int, p: int) -> int:
    """The DVS128 address SpikingJelly's CIFAR10-DVS decoding maps to (x, y, p)."""
    return ((127 - x) << 8) | ((127 - y) << 1) | (1 - p)


def aedat2(events: list[tuple[int, int, int, int]]) -> bytes:
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Timestamps tick is 1 us\r\n"
    return header + b"".join(struct.pack(">II", cifar_address(x, y, p), t) for t, x, y, p in events)


def cifar_recording(label: int, i: int) -> list[tuple[int, int, int, int]]:
    """A recording whose events say which class and file they are: x = class, y = i."""
    return [(100, label, i, 1), (200, label + 20, i, 0), (300, 0, 0, 0)]


CIFAR_COUNTS = {"airplane": 10, "automobile": 10}  # the other classes hold one recording each


def write_cifar10_dvs(base: Path, archives: bool = False) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(_dvs.CIFAR10_DVS_CLASSES):
        files = {f"cifar10_{name}_{i}.aedat": aedat2(cifar_recording(label, i))
                 for i in range(CIFAR_COUNTS.get(name, 1))}
        if archives:
            with zipfile.ZipFile(base / f"{name}.zip", "w") as handle:
                for file, content in files.items():
                    handle.writestr(f"{name}/{file}", content)
        else:
            (base / name).mkdir(exist_ok=True)
            for file, content in files.items():
                (base / name / file).write_bytes(content)
    return base


# Spike times exactly representable in float16 (seconds); 2^-10 s = 976.5625 µs truncates to 976.
SHD_SAMPLES = [
    (np.array([0.0, 2 ** -10, 0.5, 0.75, 1.0], dtype=np.float16), np.array([0, 699, 350, 1, 2], dtype=np.uint16), 7),
    (np.array([0.25], dtype=np.float16), np.array([5], dtype=np.uint16), 19),
    (np.array([], dtype=np.float16), np.array([], dtype=np.uint16), 0),
]


def shd_h5_bytes(samples=SHD_SAMPLES) -> bytes:
    h5py = pytest.importorskip("h5py")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        times = handle.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float16))
        units = handle.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u, _) in enumerate(samples):
            times[i], units[i] = t, u
        handle.create_dataset("labels", data=np.array([label for _, _, label in samples], dtype=np.uint16))
    return buffer.getvalue()


def write_shd(folder: Path, form: str = ".h5", split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    content = shd_h5_bytes()
    path = folder / f"shd_{split}{form}"
    if form == ".h5.gz":
        content = gzip.compress(content)
    elif form == ".h5.zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as handle:
            handle.writestr(f"shd_{split}.h5", content)
        content = buffer.getvalue()
    path.write_bytes(content)
    return path


def nonzero(frames: torch.Tensor) -> list[tuple[int, ...]]:
    """Every nonzero entry of frames ``[T, *shape]`` as ``(*index, value)``."""
    return [(*map(int, index), int(frames[tuple(index)])) for index in torch.nonzero(frames)]


# ----------------------------------------------------------------------------- registry


def test_event_datasets_are_registered_with_shapes_that_follow_their_options():
    names = data.available_datasets()
    assert names.index("dvs-gesture") > names.index("nmnist") and names[-1] == "synthetic"
    assert data.dataset_info("dvs-gesture", time_steps=7) == data.DatasetInfo("dvs-gesture", (2, 32, 32), 11,
                                                                              "spikes", 7)
    assert data.dataset_info("dvs-gesture", size=128).in_shape == (2, 128, 128)
    assert data.dataset_info("cifar10-dvs") == data.DatasetInfo("cifar10-dvs", (2, 48, 48), 10, "spikes", 30)
    assert data.dataset_info("shd", size=350) == data.DatasetInfo("shd", (1, 350), 20, "spikes", 30)
    for name in ("dvs-gesture", "cifar10-dvs", "shd"):
        assert data.dataset_options(name) == ["size", "accumulate", "cache", "verify"]
    with pytest.raises(ValueError, match=r"`size` must be a whole number of pixels in 1\.\.128"):
        data.dataset_info("dvs-gesture", size=129)
    with pytest.raises(ValueError, match=r"`size` must be a whole number of channels in 1\.\.700"):
        data.dataset_info("shd", size=0)
    with pytest.raises(ValueError, match="`accumulate` must be 'count' or 'binary', got 'sum'"):
        data.load_dataset("shd", "train", root="/nonexistent", accumulate="sum")


# ----------------------------------------------------------------------------- binning


def test_binning_windows_use_integer_division_and_drop_the_tail_as_tonic_does():
    # Span 12 µs, T = 3: window 12 // 3 = 4, frames [10, 14), [14, 18), [18, 22); t = 22 is in none.
    t = np.array([10, 11, 13, 14, 17, 18, 21, 22])
    x = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    p = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    frames = torch.from_numpy(frames_by_time_bins(t, x, y, p, time_steps=3, shape=(2, 4, 8)))
    assert frames.dtype == torch.uint8 and frames.shape == (3, 2, 4, 8)
    assert nonzero(frames) == [(0, 0, 0, 1, 1), (0, 1, 0, 0, 1), (0, 1, 1, 2, 1),
                               (1, 0, 1, 3, 1), (1, 1, 2, 4, 1),
                               (2, 0, 2, 5, 1), (2, 1, 3, 6, 1)]
    # Span 10 µs, T = 3: window 3 (not 10/3), frames [0, 3), [3, 6), [6, 9); t = 9 and 10 dropped.
    t = np.array([0, 2, 3, 5, 6, 8, 9, 10])
    frames = frames_by_time_bins(t, np.zeros(8), None, np.zeros(8), time_steps=3, shape=(1, 1))
    assert frames.reshape(3).tolist() == [2, 2, 2]
    # Out of order: sorted first (stable), the same frames.
    order = np.array([7, 0, 5, 2, 6, 1, 4, 3])
    assert np.array_equal(frames_by_time_bins(t[order], np.zeros(8), None, np.zeros(8), time_steps=3, shape=(1, 1)),
                          frames)


def test_empty_and_instantaneous_samples_are_empty_frames_and_counts_saturate():
    empty = frames_by_time_bins(np.array([]), np.array([]), np.array([]), np.array([]), time_steps=4, shape=(2, 3, 3))
    assert empty.shape == (4, 2, 3, 3) and empty.dtype == np.uint8 and not empty.any()
    one = frames_by_time_bins(np.array([5]), np.array([1]), np.array([1]), np.array([1]), time_steps=4, shape=(2, 3, 3))
    assert not one.any()  # a span of 0 µs < T: window 0, every frame empty (tonic too)
    same = frames_by_time_bins(np.full(3, 9), np.ones(3), np.ones(3), np.ones(3), time_steps=1, shape=(2, 3, 3))
    assert not same.any()
    # 300 events on one pixel within frame 0, then one in frame 1 and the dropped last one.
    t = np.concatenate([np.arange(300), [1000, 1999]])
    ones = np.ones(302, dtype=np.int64)
    counts = frames_by_time_bins(t, ones, None, 0 * ones, time_steps=2, shape=(1, 2))
    assert counts.tolist() == [[[0, 255]], [[0, 1]]]
    binary = frames_by_time_bins(t, ones, None, 0 * ones, time_steps=2, shape=(1, 2), accumulate="binary")
    assert binary.tolist() == [[[0, 1]], [[0, 1]]]


def test_downsampling_floors_coordinates_times_size_over_sensor():
    assert downsample(np.array([0, 3, 4, 127]), 128, 32).tolist() == [0, 0, 1, 31]
    assert downsample(np.array([0, 2, 3, 127]), 128, 48).tolist() == [0, 0, 1, 47]  # floor(3 * 0.375) = 1
    assert downsample(np.array([699, 350]), 700, 7).tolist() == [6, 3]


def test_binning_matches_tonic_to_frame_on_random_events():
    transforms = pytest.importorskip("tonic.transforms")
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(60):
        n, T = int(rng.integers(0, 50)), int(rng.integers(1, 9))
        size = int(rng.choice([128, 48, 32]))
        t = np.sort(rng.integers(0, int(rng.choice([6, 60, 6000])), n)) + int(rng.integers(0, 99))
        x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
        events = np.zeros(n, dtype=[("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
        events["x"], events["y"], events["p"], events["t"] = x, y, p, t
        if size != 128:
            events = transforms.Downsample(spatial_factor=size / 128)(events)
        expected = transforms.ToFrame(sensor_size=(size, size, 2), n_time_bins=T)(events)
        ours = frames_by_time_bins(t, downsample(x, 128, size), downsample(y, 128, size), p, time_steps=T,
                                   shape=(2, size, size))
        assert ours.shape == expected.shape and np.array_equal(ours, expected), (n, T, size)
        compared += int(expected.any())
        # SHD's one-row sensor: tonic's sensor size (700, 1, 1), frames (T, 1, 700).
        channels = rng.integers(0, 700, n)
        audio = np.zeros(n, dtype=[("t", int), ("x", int), ("p", int)])
        audio["t"], audio["x"], audio["p"] = t, channels, 1
        expected = transforms.ToFrame(sensor_size=(700, 1, 1), n_time_bins=T)(audio) if n else None
        ours = frames_by_time_bins(t, channels, None, 0 * channels, time_steps=T, shape=(1, 700))
        if n:  # tonic's empty sample is (T, 1, 700, 1): one of the documented differences
            assert np.array_equal(ours, expected)
    assert compared > 30


# ----------------------------------------------------------------------------- AEDAT


def test_aedat31_polarity_events_are_decoded_exactly_and_other_packets_skipped():
    content = aedat31([(1, 0, [(gesture_address(5, 7, 1), 40), (gesture_address(127, 0, 0), 41)]),
                       (0, 0, [(0xFFFF, 42)]),
                       (1, 3, [(gesture_address(0, 127, 1, valid=0), 5)])])
    t, x, y, p = decode_aedat31_polarity(content, "f")
    assert t.tolist() == [40, 41, (3 << 31) | 5]
    assert (x.tolist(), y.tolist(), p.tolist()) == ([5, 127, 0], [7, 0, 127], [1, 0, 1])
    # A hand-encoded word: x = 2 (bit 18), y = 1 (bit 2), ON (bit 1), valid (bit 0).
    word = (1 << 18) | (1 << 2) | (1 << 1) | 1
    assert word == 0x40007
    t, x, y, p = decode_aedat31_polarity(aedat31([(1, 0, [(word, 9)])]), "f")
    assert (t.tolist(), x.tolist(), y.tolist(), p.tolist()) == ([9], [2], [1], [1])
    with pytest.raises(ValueError, match="event file f is truncated: a packet of 1 events of 8 bytes runs past"):
        decode_aedat31_polarity(content[:-3], "f")
    with pytest.raises(ValueError, match="is AEDAT 2.0, expected AEDAT 3.1"):
        decode_aedat31_polarity(aedat2([(1, 2, 3, 1)]), "f")


def test_aedat2_cifar10_dvs_addresses_are_decoded_as_spikingjelly_orients_them():
    content = b"#!AER-DAT2.0\r\n#x\r\n" + bytes.fromhex("00000102" "0000000a" "00007e01" "ffffffff")
    address, ts = decode_aedat2(content, "f")
    assert address.tolist() == [0x0102, 0x7E01] and ts.tolist() == [10, 0xFFFFFFFF]
    t, x, y, p = _dvs.decode_cifar10_dvs(content, "f")
    # 0x0102: bits 8-14 = 1, bits 1-7 = 1, bit 0 = 0 -> x = 126, y = 126, ON
    # 0x7e01: bits 8-14 = 126, bits 1-7 = 0, bit 0 = 1 -> x = 1, y = 127, OFF
    assert (t.tolist(), x.tolist(), y.tolist(), p.tolist()) == ([10, 0xFFFFFFFF], [126, 1], [126, 127], [1, 0])
    with pytest.raises(ValueError, match="event file f has 15 bytes of events after its header"):
        decode_aedat2(content[:-1], "f")


# ----------------------------------------------------------------------------- DVS128 Gesture


def test_gesture_segments_labels_and_split_from_the_published_files(tmp_path):
    write_gesture(tmp_path)
    train = data.load_dataset("dvs-gesture", "train", root=tmp_path, time_steps=2, size=128, verify=False, cache=False)
    assert train.info == data.DatasetInfo("dvs-gesture", (2, 128, 128), 11, "spikes", 2)
    assert train.labels.tolist() == [2, 10, 0] and train.inputs.dtype == torch.uint8
    # Gesture 1: [1000, 1100), span 99 µs, window 49: t = 1000, 1010 in frame 0, 1050 in frame 1,
    # 1099 dropped; t = 500 and 1100 belong to no / the next gesture.
    assert nonzero(train.inputs[0]) == [(0, 0, 5, 127, 1), (0, 1, 0, 0, 1), (1, 1, 64, 64, 1)]
    # Gesture 2: [1100, 1300), span 199, window 99: 1100 -> 0, 1200 -> 1, 1299 dropped.
    assert nonzero(train.inputs[1]) == [(0, 1, 20, 10, 1), (1, 0, 21, 11, 1)]
    # Gesture 3 (timestamps past the overflow): span 20, window 10: 7 -> 0, 17 -> 1, 27 dropped.
    assert nonzero(train.inputs[2]) == [(0, 1, 50, 100, 1), (1, 0, 51, 101, 1)]
    test = data.load_dataset("dvs-gesture", "test", root=tmp_path / "DvsGesture", time_steps=2, verify=False,
                             cache=False)
    assert test.labels.tolist() == [4] and test.inputs.shape == (1, 2, 2, 32, 32)
    assert nonzero(test.inputs[0]) == [(0, 0, 2, 2, 1), (1, 1, 2, 2, 1)]  # 128 -> 32: (9, 9) -> (2, 2)
    names = [Path(f.path).name for f in train.files]
    assert names == ["trials_to_train.txt", "user01_lab.aedat", "user01_lab_labels.csv", "user02_led.aedat",
                     "user02_led_labels.csv"]
    assert not any(f.verified for f in train.files)


def test_gesture_checksums_and_split_files_identify_the_published_recordings(tmp_path, monkeypatch):
    folder = write_gesture(tmp_path)
    with pytest.raises(ValueError, match=r"trials_to_train.txt must list the 98 published train recordings "
                                         r"\(user01_fluorescent.aedat … user23_led.aedat\): missing "
                                         r"user01_fluorescent.aedat, user01_fluorescent_led.aedat, user01_led.aedat"):
        data.load_dataset("dvs-gesture", "train", root=tmp_path, time_steps=2, cache=False)
    published = {name + ".aedat": hashlib.md5((folder / (name + ".aedat")).read_bytes()).hexdigest()
                 for name in GESTURE_EVENTS}
    monkeypatch.setattr(_dvs, "GESTURE_MD5", published)
    monkeypatch.setattr(_dvs, "_GESTURE_PUBLISHED", {md5: ("dvs-gesture", n) for n, md5 in published.items()})
    train = data.load_dataset("dvs-gesture", "train", root=tmp_path, time_steps=2, cache=False)
    verified = {Path(f.path).name: f.verified for f in train.files}
    assert verified["user01_lab.aedat"] and verified["user02_led.aedat"] and not verified["trials_to_train.txt"]
    damaged = bytearray((folder / "user02_led.aedat").read_bytes())
    damaged[-1] ^= 1
    (folder / "user02_led.aedat").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"user02_led.aedat is not dvs-gesture's published user02_led.aedat: its "
                                         r"content has MD5 [0-9a-f]{32}, the published file's is " + published[
                                             "user02_led.aedat"]):
        data.load_dataset("dvs-gesture", "train", root=tmp_path, time_steps=2, cache=False)
    (folder / "user01_lab.aedat").rename(tmp_path / "spare")
    (folder / "user24_led.aedat").rename(folder / "user01_lab.aedat")
    with pytest.raises(ValueError, match="user01_lab.aedat is dvs-gesture's user24_led.aedat, not its "
                                         "user01_lab.aedat: the file is misnamed"):
        data.load_dataset("dvs-gesture", "train", root=tmp_path, time_steps=2, cache=False)


def test_gesture_missing_or_malformed_files_are_named(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=r"dvs-gesture train split not found: looked for "
                                                        r"trials_to_train.txt .* in .*DvsGesture"):
        data.load_dataset("dvs-gesture", "train", root=tmp_path)
    (tmp_path / "ibmGestureTrain").mkdir()
    with pytest.raises(data.DatasetNotFoundError, match=r"holds tonic's repack .ibmGestureTrain, ibmGestureTest: .npy "
                                                        r"gestures with millisecond timestamps., which is not read"):
        data.load_dataset("dvs-gesture", "train", root=tmp_path)
    (tmp_path / "DvsGesture").mkdir()
    (tmp_path / "DvsGesture" / "DvsGesture.tar.gz").write_bytes(b"")
    with pytest.raises(data.DatasetNotFoundError, match=r"holds DvsGesture.tar.gz: extract it there"):
        data.load_dataset("dvs-gesture", "test", root=tmp_path / "DvsGesture")
    folder = write_gesture(tmp_path)
    (folder / "user02_led_labels.csv").unlink()
    with pytest.raises(data.DatasetNotFoundError, match=r"trials_to_train.txt lists user02_led.aedat, but .*"
                                                        r"user02_led_labels.csv is missing"):
        data.load_dataset("dvs-gesture", "train", root=tmp_path, verify=False)
    (folder / "user02_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n\n3,0,5\n12,0,5\n")
    with pytest.raises(ValueError, match=r"user02_led_labels.csv line 4: expected a class in 1..11 and start < end, "
                                         r"got '12,0,5'"):
        data.load_dataset("dvs-gesture", "train", root=tmp_path, verify=False)
    (folder / "user02_led_labels.csv").write_text("3,0,5\n")  # no header: the first gesture would be lost
    with pytest.raises(ValueError, match=r"user02_led_labels.csv must begin with a header line"):
        data.load_dataset("dvs-gesture", "train", root=tmp_path, verify=False)


# ----------------------------------------------------------------------------- the cache


def test_the_cache_is_reused_keyed_by_every_setting_and_rebuilt_when_stale(tmp_path, monkeypatch):
    folder = write_gesture(tmp_path)

    def load(**options):
        return data.load_dataset("dvs-gesture", "train", root=tmp_path, **{"time_steps": 2, "verify": False, **options})

    first = load()
    caches = sorted(folder.glob("dvs-gesture-train-T2-32x32-count-*.pt"))
    assert len(caches) == 1
    calls = []
    real = _dvs.decode_aedat31_polarity
    monkeypatch.setattr(_dvs, "decode_aedat31_polarity", lambda *a: calls.append(a[1]) or real(*a))
    second = load()
    assert calls == [] and torch.equal(second.inputs, first.inputs) and second.files == first.files
    longer, smaller, binary = load(time_steps=3), load(size=16), load(accumulate="binary")
    assert len(calls) == 6  # each new setting decoded both recordings again
    assert longer.inputs.shape[1] == 3 and smaller.inputs.shape[-1] == 16
    assert torch.equal(binary.inputs, first.inputs.clamp(max=1))
    assert len(list(folder.glob("dvs-gesture-train-*.pt"))) == 4
    assert torch.equal(load(accumulate="binary").inputs, binary.inputs) and len(calls) == 6  # bit-packed, read back
    caches[0].write_bytes(b"garbled")
    assert torch.equal(load().inputs, first.inputs) and len(calls) == 8
    with (folder / "user02_led_labels.csv").open("a") as handle:  # changed sources: rebuilt
        handle.write("2,2147483655,2147483670\r\n")
    assert load().labels.tolist() == [2, 10, 0, 1] and len(calls) == 10
    # A cache built from unverified files never stands in for a verification.
    with pytest.raises(ValueError, match="must list the 98 published train recordings"):
        load(verify=True)
    # Sources gone: the cache is used as it is.
    for path in folder.iterdir():
        if path.suffix != ".pt":
            path.unlink()
    assert load().labels.tolist() == [2, 10, 0, 1]


# ----------------------------------------------------------------------------- CIFAR10-DVS


@pytest.mark.parametrize("archives", [False, True])
def test_cifar10_dvs_split_labels_and_frames_from_folders_or_archives(tmp_path, archives):
    write_cifar10_dvs(tmp_path / "CIFAR10-DVS", archives=archives)
    train = data.load_dataset("cifar10-dvs", "train", root=tmp_path, time_steps=2, size=128, verify=False, cache=False)
    test = data.load_dataset("cifar10-dvs", "test", root=tmp_path, time_steps=2, size=128, verify=False, cache=False)
    # Per class, sorted by name: airplane_0 … _8 train (ceil(0.9 · 10) = 9), _9 test; the classes
    # of one file have it in train (ceil(0.9) = 1).
    assert train.labels.tolist() == [0] * 9 + [1] * 9 + list(range(2, 10))
    assert test.labels.tolist() == [0, 1]
    # Span 200 µs, window 100: t = 100 in frame 0, 200 in frame 1, 300 (the last) dropped.
    assert nonzero(test.inputs[1]) == [(0, 1, 9, 1, 1), (1, 0, 9, 21, 1)]  # automobile_9: x = 1, y = 9
    assert nonzero(train.inputs[9 + 3]) == [(0, 1, 3, 1, 1), (1, 0, 3, 21, 1)]
    assert train.inputs.shape == (26, 2, 2, 128, 128)
    default = data.load_dataset("cifar10-dvs", "test", root=tmp_path, time_steps=2, verify=False, cache=False)
    assert default.inputs.shape == (2, 2, 2, 48, 48) and nonzero(default.inputs[1])[0] == (0, 1, 3, 0, 1)


def test_cifar10_dvs_identity_archives_by_checksum_folders_by_layout(tmp_path, monkeypatch):
    write_cifar10_dvs(tmp_path / "zips", archives=True)
    with pytest.raises(ValueError, match=r"airplane.zip is not cifar10-dvs's published airplane.zip: its content "
                                         r"has MD5 [0-9a-f]{32}, the published file's is "
                                         r"0afd5c4bf9ae06af762a77b180354fdd"):
        data.load_dataset("cifar10-dvs", "train", root=tmp_path / "zips", time_steps=2, cache=False)
    published = {f"{name}.zip": hashlib.md5((tmp_path / "zips" / f"{name}.zip").read_bytes()).hexdigest()
                 for name in _dvs.CIFAR10_DVS_CLASSES}
    monkeypatch.setattr(_dvs, "_CIFAR10_DVS_PUBLISHED", {md5: ("cifar10-dvs", n) for n, md5 in published.items()})
    verified = data.load_dataset("cifar10-dvs", "test", root=tmp_path / "zips", time_steps=2, cache=False)
    assert len(verified.files) == 10 and all(f.verified for f in verified.files)
    write_cifar10_dvs(tmp_path / "folders")
    with pytest.raises(ValueError, match=r"airplane must hold the 1000 published recordings cifar10_airplane_0.aedat "
                                         r"… _999.aedat, found 10 .aedat files; missing cifar10_airplane_10.aedat"):
        data.load_dataset("cifar10-dvs", "train", root=tmp_path / "folders", time_steps=2, cache=False)
    (tmp_path / "folders" / "truck" / "cifar10_truck_0.aedat").unlink()
    (tmp_path / "folders" / "truck" / "cifar10_truck_0.aedat4").write_bytes(b"")
    with pytest.raises(ValueError, match="truck holds AEDAT 4 files .tonic's CIFAR10DVS.zip repack"):
        data.load_dataset("cifar10-dvs", "train", root=tmp_path / "folders", time_steps=2, cache=False, verify=False)
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "airplane").mkdir()
    with pytest.raises(data.DatasetNotFoundError, match=r"part holds airplane/ but not automobile, bird"):
        data.load_dataset("cifar10-dvs", "train", root=tmp_path / "part")


# ----------------------------------------------------------------------------- SHD


@pytest.mark.parametrize("form", [".h5", ".h5.gz", ".h5.zip"])
def test_shd_spikes_labels_and_frames_from_each_published_form(tmp_path, form):
    write_shd(tmp_path / "SHD", form)
    train = data.load_dataset("shd", "train", root=tmp_path, time_steps=2, verify=False, cache=False)
    assert train.info == data.DatasetInfo("shd", (1, 700), 20, "spikes", 2)
    assert train.labels.tolist() == [7, 19, 0] and train.inputs.shape == (3, 2, 1, 700)
    # Times 0, 976 (2^-10 s truncated), 500000, 750000, 1000000 µs: window 500000; frame 0 holds
    # 0 and 976, frame 1 holds 500000 and 750000, 1000000 (the last) is dropped.
    assert nonzero(train.inputs[0]) == [(0, 0, 0, 1), (0, 0, 699, 1), (1, 0, 1, 1), (1, 0, 350, 1)]
    assert not train.inputs[1].any() and not train.inputs[2].any()  # one spike; no spikes
    third = data.load_dataset("shd", "train", root=tmp_path, time_steps=3, size=7, verify=False, cache=False)
    # T = 3: window 333333: 0, 976 -> 0; 500000 -> 1; 750000 -> 2. Channels 700 -> 7: 699 -> 6, 350 -> 3.
    assert nonzero(third.inputs[0]) == [(0, 0, 0, 1), (0, 0, 6, 1), (1, 0, 3, 1), (2, 0, 0, 1)]


def test_shd_identity_by_checksum_of_the_file_or_its_content(tmp_path, monkeypatch):
    path = write_shd(tmp_path, ".h5.gz")
    with pytest.raises(ValueError, match=r"shd_train.h5.gz is not shd's published shd_train.h5: its content has "
                                         r"MD5 [0-9a-f]{32}, the published file's is 8e9877c85f29a28dd353ea6a54402667"):
        data.load_dataset("shd", "train", root=tmp_path, time_steps=2, cache=False)
    content_md5 = hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest()
    monkeypatch.setattr(_shd, "_PUBLISHED", {**_shd._PUBLISHED, content_md5: ("shd", "shd_train.h5")})
    loaded = data.load_dataset("shd", "train", root=tmp_path, time_steps=2, cache=False)  # a recompressed copy
    assert loaded.files[0].verified and loaded.files[0].content_md5 == content_md5
    path.rename(tmp_path / "shd_test.h5.gz")
    with pytest.raises(ValueError, match="shd_test.h5.gz is shd's shd_train.h5, not its shd_test.h5: the file is "
                                         "misnamed"):
        data.load_dataset("shd", "test", root=tmp_path, time_steps=2, cache=False)
    (tmp_path / "shd_test.h5.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="cannot decompress .*shd_test.h5.gz"):
        data.load_dataset("shd", "test", root=tmp_path, verify=False, cache=False)
    with pytest.raises(data.DatasetNotFoundError, match=r"shd train split not found: looked for "
                                                        r"shd_train.h5\[.gz\|.zip\]"):
        data.load_dataset("shd", "train", root=tmp_path)


def test_shd_without_h5py_says_how_to_install_it(tmp_path, monkeypatch):
    write_shd(tmp_path)
    import builtins

    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(ModuleNotFoundError, match=r"^reading SHD needs h5py: pip install 'implicit-snn\[events\]'$"):
        data.load_dataset("shd", "train", root=tmp_path, verify=False, cache=False)


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("dataset, model", [("dvs-gesture", "f64c5_dvsgesture"), ("cifar10-dvs", "4C9s (F4C5)"),
                                            ("shd", "f400_shd")])
def test_cli_trains_on_each_event_dataset(tmp_path, dataset, model):
    root = tmp_path / "data"
    {"dvs-gesture": write_gesture, "cifar10-dvs": write_cifar10_dvs, "shd": lambda r: write_shd(r)}[dataset](root)
    if dataset == "shd":
        write_shd(root, split="test")
    out = tmp_path / "run"
    assert main(["train", "--dataset", dataset, "--data-root", str(root), "--model", model, "--no-verify-data",
                 "--val-size", "0", "--epochs", "1", "--batch-size", "2", "--time-steps", "2", "--threads", "1",
                 "--b_max_iter", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["model"], config["time_steps"]) == (dataset, model, 2)
    assert summary["epochs"] == 1 and 0 <= summary["final_test_acc"] <= 1
