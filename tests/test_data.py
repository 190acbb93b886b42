"""The dataset layer: file formats written by hand, loaders, batching, augmentation, splits."""

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from implicit_snn import data
from implicit_snn.data import _idx
from implicit_snn.data._registry import DATASETS
from tests.helpers import event, write_nmnist

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
BUILT_INS = ["fashion-mnist", "mnist", "cifar10", "cifar100", "nmnist", "dvs-gesture", "cifar10-dvs", "shd",
             "synthetic"]


# ----------------------------------------------------------------------------- file writers

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def write_idx_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = {"train": "train", "test": "t10k"}[split]
    parts = ((f"{stem}-images-idx3-ubyte", images, 0x803), (f"{stem}-labels-idx1-ubyte", labels, 0x801))
    for name, arr, magic in parts:
        payload = idx_bytes(arr, magic)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(payload) if gz else payload)


@pytest.fixture
def no_system_dirs(monkeypatch, tmp_path):
    """Point the Debian folder somewhere empty, so only the test's own files are found."""
    fake = tmp_path / "no-system" / "fashion-mnist"
    monkeypatch.setitem(_idx.SYSTEM_DIRS, "fashion-mnist", (fake,))
    return fake


def tiny_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


# ----------------------------------------------------------------------------- registry

def test_registry_names_info_and_argument_errors():
    assert data.available_datasets() == BUILT_INS
    assert data.dataset_info("fashion-mnist") == data.DatasetInfo("fashion-mnist", (1, 28, 28), 10, "constant", None)
    assert data.dataset_info("cifar100").num_classes == 100
    assert data.dataset_info("cifar10").in_shape == (3, 32, 32)
    nm = data.dataset_info("nmnist")
    assert (nm.in_shape, nm.input_kind, nm.time_steps) == ((2, 34, 34), "spikes", 30)
    assert data.dataset_info("nmnist", time_steps=12).sample_shape == (12, 2, 34, 34)
    synthetic = data.dataset_info("synthetic", shape=(3, 8, 8), input_kind="spikes", time_steps=5)
    assert synthetic.sample_shape == (5, 3, 8, 8) and synthetic.time_steps == 5
    with pytest.raises(KeyError, match="did you mean 'mnist'.*known datasets: fashion-mnist, mnist, cifar10"):
        data.load_dataset("mnsit", "train")
    with pytest.raises(ValueError, match="`split` must be 'train' or 'test', got 'val'"):
        data.load_dataset("synthetic", "val")
    with pytest.raises(TypeError, match="no option.*bin_sm.*options are: bin_ms, accumulate, cache"):
        data.load_dataset("nmnist", "train", bin_sm=3)
    with pytest.raises(TypeError, match="options are: verify$"):
        data.load_dataset("mnist", "train", seed=1)
    assert data.dataset_options("fashion-mnist") == data.dataset_options("cifar100") == ["verify"]
    with pytest.raises(ValueError, match="`time_steps` must be a positive integer"):
        data.load_dataset("synthetic", "train", time_steps=0)


@pytest.fixture
def user_datasets():
    """Forget every dataset a test registers, so the registry is as the package left it."""
    before = set(data.available_datasets())
    yield
    for name in set(data.available_datasets()) - before:
        DATASETS.remove(name)
    assert data.available_datasets() == BUILT_INS


def test_a_registered_dataset_loads_both_splits_end_to_end(user_datasets):
    rng = np.random.default_rng(0)
    arrays = {split: (rng.standard_normal((n, 2, 3)).astype(np.float32), rng.integers(0, 4, n))
              for split, n in (("train", 6), ("test", 4))}
    tiny_info = data.DatasetInfo("test-tiny", (2, 3), 4, "constant")
    seen = []

    @data.register_dataset("test-tiny", info=tiny_info)
    def load_tiny(split, root, download, time_steps, *, scale=1.0):
        """Six and four random 2x3 samples held in memory (a user's own dataset).

        More text that describe_datasets leaves out.
        """
        seen.append((split, root, download, time_steps, scale))
        inputs, labels = arrays[split]
        return data.ArrayDataset(torch.from_numpy(scale * inputs), torch.from_numpy(labels), tiny_info)

    assert data.available_datasets() == BUILT_INS + ["test-tiny"]
    assert data.describe_datasets()["test-tiny"] == "Six and four random 2x3 samples held in memory (a user's own dataset)."
    assert data.dataset_options("test-tiny") == ["scale"]
    assert data.dataset_info("test-tiny") == data.dataset_info("test-tiny", time_steps=7, scale=2.0) == tiny_info
    train = data.load_dataset("test-tiny", "train")
    test = data.load_dataset("test-tiny", "test", root="somewhere", download=1, time_steps=5, scale=-2.0)
    assert seen == [("train", None, False, 30, 1.0), ("test", "somewhere", True, 5, -2.0)]
    assert train.info == test.info == tiny_info and (len(train), len(test)) == (6, 4)
    assert torch.equal(train.inputs, torch.from_numpy(arrays["train"][0]))
    assert torch.equal(test.inputs, torch.from_numpy(-2.0 * arrays["test"][0]))
    assert train.labels.tolist() == arrays["train"][1].tolist() and test.labels.dtype == torch.int64
    x, y = next(iter(data.BatchLoader(train, batch_size=4, shuffle=False)))
    assert x.shape == (4, 2, 3) and y.tolist() == arrays["train"][1][:4].tolist()
    for call in (lambda: data.load_dataset("test-tiny", "train", scal=2.0),
                 lambda: data.dataset_info("test-tiny", scal=2.0)):
        with pytest.raises(TypeError, match=r"dataset 'test-tiny' has no option\(s\) scal; its options are: scale$"):
            call()
    with pytest.raises(TypeError) as info:
        data.load_dataset("test-tiny", "train", seed=0)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="`split` must be 'train' or 'test'"):
        data.load_dataset("test-tiny", "validation")
    with pytest.raises(KeyError, match="did you mean 'test-tiny'.*known datasets: fashion-mnist, .*, test-tiny"):
        data.dataset_info("test-tin")
    assert len(seen) == 2                                  # no refused call reached the loader


def test_register_dataset_refuses_taken_names_bad_loaders_and_bad_info(user_datasets):
    info = data.DatasetInfo("test-spikes", (1, 2), 2, "spikes", 3)

    def load(split, root, download, time_steps):
        """A spike dataset whose info follows ``time_steps``."""
        inputs = torch.ones(2, time_steps, 1, 2, dtype=torch.uint8)
        return data.ArrayDataset(inputs, torch.tensor([0, 1]), data.dataset_info("test-spikes", time_steps=time_steps))

    data.register_dataset("test-spikes", info=info, description="spikes, one line")(load)
    assert data.describe_datasets()["test-spikes"] == "spikes, one line"
    assert data.dataset_info("test-spikes", time_steps=9).sample_shape == (9, 1, 2)
    assert data.load_dataset("test-spikes", "test", time_steps=4).inputs.shape == (2, 4, 1, 2)
    for taken in ("test-spikes", "fashion-mnist"):
        with pytest.raises(ValueError, match=f"a dataset named '{taken}' is already registered"):
            data.register_dataset(taken, info=info)(load)
    with pytest.raises(ValueError, match="non-empty string"):
        data.register_dataset("", info=info)(load)
    with pytest.raises(TypeError, match="needs a loader callable as load\\(split, root, download, time_steps"):
        data.register_dataset("test-two-args", info=info)(lambda split, root: None)
    with pytest.raises(TypeError, match="`info` to be a DatasetInfo or a callable"):
        data.register_dataset("test-no-info", info=(1, 28, 28))
    data.register_dataset("test-not-arrays", info=info)(lambda split, root, download, time_steps: (None, None))
    with pytest.raises(TypeError, match="'test-not-arrays'.s loader returned tuple, expected an ArrayDataset"):
        data.load_dataset("test-not-arrays", "train")
    assert data.available_datasets() == BUILT_INS + ["test-spikes", "test-not-arrays"]
    assert data.available_datasets()[0] == "fashion-mnist"


# ----------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("layout,gz", [("flat", True), ("flat", False), ("torchvision", True), ("torchvision", False)])
def test_idx_files_load_with_exact_normalised_pixels(tmp_path, no_system_dirs, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    images, labels = tiny_images(5, seed=1)
    write_idx_split(folder, "train", images, labels, gz)
    test_images, test_labels = tiny_images(3, seed=2)
    write_idx_split(folder, "test", test_images, test_labels, gz)
    ds = data.load_dataset("fashion-mnist", "train", root=tmp_path, verify=False)
    assert ds.inputs.dtype == torch.float32 and ds.inputs.shape == (5, 1, 28, 28)
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    expected = (images.astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.inputs[:, 0].numpy(), expected, rtol=0, atol=1e-6)
    assert ds.inputs[0, 0, 3, 4].item() == pytest.approx((images[0, 3, 4] / 255 - 0.1307) / 0.3081, abs=1e-6)
    test = data.load_dataset("fashion-mnist", "test", root=tmp_path, verify=False)
    assert test.labels.tolist() == test_labels.tolist() and len(test) == 3
    x, y = test[2]
    assert torch.equal(x, test.inputs[2]) and y.item() == test_labels[2]


def test_mnist_uses_its_own_torchvision_folder(tmp_path):
    images, labels = tiny_images(4, seed=3)
    write_idx_split(tmp_path / "MNIST" / "raw", "test", images, labels, gz=False)
    ds = data.load_dataset("mnist", "test", root=tmp_path, verify=False)
    assert ds.info.name == "mnist" and ds.labels.tolist() == labels.tolist()
    with pytest.raises(data.DatasetNotFoundError):
        data.load_dataset("mnist", "train", root=tmp_path, verify=False)


def test_missing_fashion_mnist_lists_every_folder_and_the_install_hint(tmp_path, no_system_dirs):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("fashion-mnist", "train")
    message = str(info.value)
    assert info.value.searched == [str(no_system_dirs)] and f"in {no_system_dirs}." in message
    assert "apt-get install dataset-fashion-mnist" in message and "set `root` to a folder DIR" in message
    assert "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]" in message
    assert isinstance(info.value, FileNotFoundError) and "\n" not in message


# A given root is used or is an error; the system folder is searched only without one.

@pytest.fixture
def system_split(monkeypatch, tmp_path):
    """A complete (tiny) Fashion-MNIST training split in the system folder, so that a fallback would load."""
    folder = tmp_path / "system" / "fashion-mnist"
    write_idx_split(folder, "train", *tiny_images(4, seed=11), gz=True)
    monkeypatch.setitem(_idx.SYSTEM_DIRS, "fashion-mnist", (folder,))
    return folder


def _not_found(name: str, root, **options) -> data.DatasetNotFoundError:
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset(name, "train", root=root, verify=False, **options)
    assert "\n" not in str(info.value)
    return info.value


def test_without_a_root_the_system_folder_is_read(system_split):
    ds = data.load_dataset("fashion-mnist", "train", verify=False)
    assert len(ds) == 4 and ds.labels.tolist() == tiny_images(4, seed=11)[1].tolist()
    assert [f.path for f in ds.files] == [str(system_split / "train-images-idx3-ubyte.gz"),
                                          str(system_split / "train-labels-idx1-ubyte.gz")]


def test_a_root_that_does_not_exist_or_is_a_file_is_an_error_not_a_fallback(tmp_path, system_split):
    missing = tmp_path / "nothing"
    error = _not_found("fashion-mnist", missing)
    assert error.searched == [str(missing), str(missing / "FashionMNIST" / "raw")]
    assert f"; `root` {missing} does not exist. Install Debian's package" in str(error)
    assert str(system_split) not in str(error)
    a_file = tmp_path / "train-images-idx3-ubyte.gz"
    a_file.write_bytes(b"")
    error = _not_found("fashion-mnist", a_file)
    assert f"; `root` {a_file} is a file, not a folder." in str(error) and str(system_split) not in str(error)
    assert f"`root` {missing} does not exist" in str(_not_found("mnist", missing))
    for name, options in (("cifar10", {}), ("cifar100", {})):
        error = _not_found(name, missing, **options)
        assert f"`root` {missing} does not exist" in str(error)
    with pytest.raises(data.DatasetNotFoundError, match=f"`root` {missing} does not exist"):
        data.load_dataset("nmnist", "train", root=missing)


def test_a_root_lacking_one_file_names_it_and_does_not_fall_back(tmp_path, system_split):
    root = tmp_path / "partial"
    write_idx_split(root, "train", *tiny_images(3, seed=12), gz=True)
    (root / "train-labels-idx1-ubyte.gz").unlink()
    error = _not_found("fashion-mnist", root)
    assert error.searched == [str(root), str(root / "FashionMNIST" / "raw")]
    assert (f"looked for train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] in {root}, "
            f"{root / 'FashionMNIST' / 'raw'}; {root} holds train-images-idx3-ubyte.gz but not "
            "train-labels-idx1-ubyte[.gz].") in str(error)
    write_cifar(root / "cifar-10-batches-py", {f"data_batch_{i}": 1 for i in (1, 2, 4, 5)}, b"labels", seed=0)
    error = _not_found("cifar10", root)
    assert f"{root / 'cifar-10-batches-py'} holds data_batch_1, data_batch_2, data_batch_4, data_batch_5 " \
           "but not data_batch_3" in str(error)


# Identity: the published files are known by the MD5 of their content.

def _md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def test_idx_files_are_identified_by_their_content(tmp_path, no_system_dirs, monkeypatch):
    images, labels = tiny_images(3, seed=13)
    write_idx_split(tmp_path, "test", images, labels, gz=True)
    image_md5, label_md5 = _md5(idx_bytes(images, 0x803)), _md5(idx_bytes(labels, 0x801))
    # Files that are no published file: refused by default, naming the file and its checksum.
    with pytest.raises(ValueError) as info:
        data.load_dataset("mnist", "test", root=tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 't10k-images-idx3-ubyte.gz'} is not mnist's published t10k-images-idx3-ubyte: its content "
        f"has MD5 {image_md5}, the published file's is 2646ac647ad5339dbf082846283269ea; fetch it again if it is a "
        "damaged copy, or pass `verify=False` to load files of your own")
    unverified = data.load_dataset("mnist", "test", root=tmp_path, verify=False)
    assert [f.to_dict() for f in unverified.files] == [
        {"path": str(tmp_path / "t10k-images-idx3-ubyte.gz"), "content_md5": image_md5, "verified": False},
        {"path": str(tmp_path / "t10k-labels-idx1-ubyte.gz"), "content_md5": label_md5, "verified": False}]
    # The same files as the published Fashion-MNIST ones, whose names MNIST shares: refused as MNIST.
    monkeypatch.setattr(_idx, "PUBLISHED_MD5", {image_md5: ("fashion-mnist", "t10k-images-idx3-ubyte"),
                                                label_md5: ("fashion-mnist", "t10k-labels-idx1-ubyte")})
    with pytest.raises(ValueError) as info:
        data.load_dataset("mnist", "test", root=tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 't10k-images-idx3-ubyte.gz'} is fashion-mnist's t10k-images-idx3-ubyte, not mnist's "
        "t10k-images-idx3-ubyte: these are fashion-mnist files; load them as dataset 'fashion-mnist'")
    ds = data.load_dataset("fashion-mnist", "test", root=tmp_path)
    assert [(f.content_md5, f.verified) for f in ds.files] == [(image_md5, True), (label_md5, True)]
    assert ds.labels.tolist() == labels.tolist()
    # Uncompressed, the same content has the same checksum.
    write_idx_split(tmp_path / "raw", "test", images, labels, gz=False)
    plain = data.load_dataset("fashion-mnist", "test", root=tmp_path / "raw")
    assert [(f.path, f.content_md5, f.verified) for f in plain.files] == [
        (str(tmp_path / "raw" / "t10k-images-idx3-ubyte"), image_md5, True),
        (str(tmp_path / "raw" / "t10k-labels-idx1-ubyte"), label_md5, True)]
    # The test split's files renamed as the training split's.
    for kind in ("images-idx3", "labels-idx1"):
        (tmp_path / f"t10k-{kind}-ubyte.gz").rename(tmp_path / f"train-{kind}-ubyte.gz")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is fashion-mnist's t10k-images-idx3-ubyte, "
                                         r"not its train-images-idx3-ubyte: the file is misnamed$"):
        data.load_dataset("fashion-mnist", "train", root=tmp_path)


def test_a_damaged_idx_file_fails_its_header_check_before_its_identity(tmp_path, no_system_dirs):
    images, labels = tiny_images(3, seed=14)
    write_idx_split(tmp_path, "train", images, labels, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"IDX file .*train-images-idx3-ubyte is truncated: header says shape "
                                         r"\(3, 28, 28\)"):
        data.load_dataset("fashion-mnist", "train", root=tmp_path)


def test_cifar_batches_are_identified_before_they_are_unpickled(tmp_path, monkeypatch):
    from implicit_snn.data import _cifar

    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar(folder, {"test_batch": 2}, b"labels", seed=15)
    batch_md5 = _md5((folder / "test_batch").read_bytes())
    with pytest.raises(ValueError) as info:
        data.load_dataset("cifar10", "test", root=tmp_path)
    assert str(info.value).startswith(f"{folder / 'test_batch'} is not cifar10's published test_batch: its content "
                                      f"has MD5 {batch_md5}, the published file's is 40351d587109b95175f43aff81a1287e")
    monkeypatch.setattr(_cifar, "PUBLISHED_MD5", {batch_md5: ("cifar100", "test")})
    with pytest.raises(ValueError, match="test_batch is cifar100's test, not cifar10's test_batch: these are "
                                         "cifar100 files; load them as dataset 'cifar100'$"):
        data.load_dataset("cifar10", "test", root=tmp_path)
    monkeypatch.setattr(_cifar, "PUBLISHED_MD5", {batch_md5: ("cifar10", "test_batch")})
    ds = data.load_dataset("cifar10", "test", root=tmp_path)
    assert ds.labels.tolist() == written["test_batch"][1]
    assert [f.to_dict() for f in ds.files] == [{"path": str(folder / "test_batch"), "content_md5": batch_md5,
                                                "verified": True}]
    # A file that is not the published one is not unpickled (the check comes first).
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="is not cifar10's published test_batch"):
        data.load_dataset("cifar10", "test", root=tmp_path)


def test_files_are_kept_by_subsets_splits_and_moves(tmp_path, no_system_dirs):
    write_idx_split(tmp_path, "train", *tiny_images(6, seed=16), gz=True)
    ds = data.load_dataset("fashion-mnist", "train", root=tmp_path, verify=False)
    train, val = data.split_validation(ds, 2, seed=0)
    assert len(ds.files) == 2 and train.files == val.files == ds.files == ds.to("cpu").files
    assert data.load_dataset("synthetic", "train").files == ()
    write_nmnist(tmp_path / "events")
    events = data.load_dataset("nmnist", "train", root=tmp_path / "events", time_steps=4)
    assert events.files == (data.DataFile(str(tmp_path / "events" / "Train")),)
    cached = data.load_dataset("nmnist", "train", root=tmp_path / "events", time_steps=4)
    assert cached.files == (data.DataFile(str(tmp_path / "events" / "nmnist-train-T4-bin3ms-binary.pt")),)


def test_missing_cifar_and_nmnist_say_where_to_put_the_files(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("cifar10", "test", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and f"{tmp_path}." in message
    assert "set `download`" in message and "test_batch" in message
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("nmnist", "train", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "NMNIST") in message and "Train/0/00002.bin" in message
    with pytest.raises(data.DatasetNotFoundError, match="no data folder was given"):
        data.load_dataset("cifar100", "train")


def test_corrupt_idx_files_are_clear_value_errors(tmp_path, no_system_dirs):
    images, labels = tiny_images(4, seed=4)
    good = idx_bytes(images, 0x803)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(labels, 0x801))                    # a labels file where images belong
    with pytest.raises(ValueError, match=r"magic number 0x00000801, expected 0x00000803 \(images\)"):
        data.read_idx(path, 0x803)
    path.write_bytes(good[:-10])
    with pytest.raises(ValueError, match=r"is truncated: header says shape \(4, 28, 28\)"):
        data.read_idx(path, 0x803)
    path.write_bytes(good[:10])
    with pytest.raises(ValueError, match="shorter than its 16-byte header"):
        data.read_idx(path, 0x803)
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(ValueError, match="cannot decompress"):
        data.read_idx(gz, 0x803)
    np.testing.assert_array_equal(data.read_idx(_write(tmp_path / "ok", good), 0x803), images)
    # A split whose images and labels disagree in count is rejected when loading.
    _write(path, good)
    _write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(labels[:3], 0x801))
    with pytest.raises(ValueError, match="holds 4 images but .* holds 3 labels"):
        data.load_dataset("fashion-mnist", "train", root=tmp_path, verify=False)


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package():
    train = data.load_dataset("fashion-mnist", "train", root=None)
    test = data.load_dataset("fashion-mnist", "test")
    assert [(f.path, f.content_md5, f.verified) for f in train.files + test.files] == [
        (str(SYSTEM_FASHION / "train-images-idx3-ubyte.gz"), "f4a8712d7a061bf5bd6d2ca38dc4d50a", True),
        (str(SYSTEM_FASHION / "train-labels-idx1-ubyte.gz"), "9018921c3c673c538a1fc5bad174d6f9", True),
        (str(SYSTEM_FASHION / "t10k-images-idx3-ubyte.gz"), "8181f5470baa50b63fa0f6fddb340f0a", True),
        (str(SYSTEM_FASHION / "t10k-labels-idx1-ubyte.gz"), "15d484375f8d13e6eb1aabb0c3f46965", True)]
    assert train.inputs.shape == (60000, 1, 28, 28) and test.inputs.shape == (10000, 1, 28, 28)
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))
    # Raw Fashion-MNIST: mean 0.2860, std 0.3530; after (x/255 - 0.1307)/0.3081:
    assert train.inputs.mean().item() == pytest.approx((0.2860 - 0.1307) / 0.3081, abs=0.01)
    assert train.inputs.std().item() == pytest.approx(0.3530 / 0.3081, abs=0.01)
    assert train.inputs.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-6)
    assert train.inputs.max().item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-6)


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_files_are_refused_as_mnist_gzipped_or_not(tmp_path):
    with pytest.raises(ValueError) as info:
        data.load_dataset("mnist", "test", root=SYSTEM_FASHION)
    assert str(info.value) == (
        f"{SYSTEM_FASHION / 't10k-images-idx3-ubyte.gz'} is fashion-mnist's t10k-images-idx3-ubyte, not mnist's "
        "t10k-images-idx3-ubyte: these are fashion-mnist files; load them as dataset 'fashion-mnist'")
    # Decompressed (Debian's .gz files differ from the published ones; their content does not).
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((SYSTEM_FASHION / f"{name}.gz").read_bytes()))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte is fashion-mnist's t10k-images-idx3-ubyte, "
                                         "not mnist's"):
        data.load_dataset("mnist", "test", root=tmp_path)
    plain = data.load_dataset("fashion-mnist", "test", root=tmp_path)
    assert [(f.content_md5, f.verified) for f in plain.files] == [
        ("8181f5470baa50b63fa0f6fddb340f0a", True), ("15d484375f8d13e6eb1aabb0c3f46965", True)]
    assert torch.equal(plain.labels.bincount(), torch.full((10,), 1000))


# ----------------------------------------------------------------------------- CIFAR

def write_cifar(folder: Path, files: dict, label_key: bytes, seed: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name, n in files.items():
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100 if label_key == b"fine_labels" else 10, n).tolist()
        batch = {b"data": pixels, label_key: labels, b"batch_label": name.encode()}
        if label_key == b"fine_labels":
            batch[b"coarse_labels"] = [v // 5 for v in labels]
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
        written[name] = (pixels, labels)
    return written


def test_cifar10_batches_concatenate_and_normalise_per_channel(tmp_path):
    files = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}
    written = write_cifar(tmp_path / "cifar-10-batches-py", files, b"labels", seed=5)
    train = data.load_dataset("cifar10", "train", root=tmp_path, verify=False)
    assert train.inputs.shape == (10, 3, 32, 32) and train.inputs.dtype == torch.float32
    assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    pixels = written["data_batch_3"][0][1]                          # sample 5 of the split
    for c, i, j in ((0, 0, 0), (1, 5, 7), (2, 31, 30)):
        raw = pixels[c * 1024 + i * 32 + j]
        expected = (raw / 255 - data.CIFAR_MEAN[c]) / data.CIFAR_STD[c]
        assert train.inputs[5, c, i, j].item() == pytest.approx(expected, abs=1e-5)
    # The batches folder itself can be the root.
    test = data.load_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py", verify=False)
    assert test.labels.tolist() == written["test_batch"][1]
    expected = (written["test_batch"][0].reshape(3, 3, 32, 32) / 255 - np.array(data.CIFAR_MEAN)[:, None, None]) \
        / np.array(data.CIFAR_STD)[:, None, None]
    np.testing.assert_allclose(test.inputs.numpy(), expected, atol=1e-5)


def test_cifar100_uses_fine_labels_and_rejects_a_bad_pickle(tmp_path):
    written = write_cifar(tmp_path / "cifar-100-python", {"train": 4, "test": 2}, b"fine_labels", seed=6)
    train = data.load_dataset("cifar100", "train", root=tmp_path, verify=False)
    assert train.info.num_classes == 100 and train.labels.tolist() == written["train"][1]
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="is not a readable pickle"):
        data.load_dataset("cifar100", "test", root=tmp_path, verify=False)


# ----------------------------------------------------------------------------- N-MNIST
# (helpers.NMNIST_EVENTS: the events write_nmnist writes, and the frames they fall in)

def test_nmnist_event_decoding_keeps_polarity_out_of_the_timestamp():
    x, y, p, ts = data.decode_events(event(33, 17, 1, 0x4ABCDE) + event(0, 1, 0, 0x7FFFFF) + event(5, 6, 1, 0))
    assert x.tolist() == [33, 0, 5] and y.tolist() == [17, 1, 6]
    assert p.tolist() == [1, 0, 1] and ts.tolist() == [0x4ABCDE, 0x7FFFFF, 0]
    with pytest.raises(ValueError, match="not a whole number of 5-byte events"):
        data.decode_events(b"\x00" * 7)
    with pytest.raises(ValueError, match="coordinates must lie in 0..33"):
        data.decode_events(event(34, 0, 0, 0))


def test_nmnist_spike_positions_labels_order_and_count_mode(tmp_path):
    write_nmnist(tmp_path / "NMNIST")
    ds = data.load_dataset("nmnist", "train", root=tmp_path, time_steps=4)
    assert ds.inputs.shape == (3, 4, 2, 34, 34) and ds.inputs.dtype == torch.uint8
    assert ds.labels.tolist() == [3, 3, 7]                          # by digit, then file name
    assert ds.info == data.DatasetInfo("nmnist", (2, 34, 34), 10, "spikes", 4)
    spikes = lambda i: sorted(map(tuple, torch.nonzero(ds.inputs[i]).tolist()))  # noqa: E731
    assert spikes(0) == [(2, 0, 4, 4)]                              # 00000.bin
    assert spikes(1) == [(0, 0, 5, 33), (0, 1, 0, 0), (1, 1, 20, 10), (3, 0, 8, 7)]
    assert spikes(2) == [(3, 1, 33, 33)]
    assert set(ds.inputs.unique().tolist()) == {0, 1}
    x, y = ds[1]
    assert x.dtype == torch.float32 and x.shape == (4, 2, 34, 34) and y.item() == 3
    counts = data.load_dataset("nmnist", "train", root=tmp_path, time_steps=4, accumulate="count")
    assert counts.inputs[1, 1, 1, 20, 10].item() == 2 and counts.inputs[1, 0, 1, 0, 0].item() == 1
    longer = data.load_dataset("nmnist", "train", root=tmp_path, time_steps=5, bin_ms=3)
    assert longer.inputs[1, 4, 1, 8, 7].item() == 1                 # ts = 12000 is frame 4
    test = data.load_dataset("nmnist", "test", root=tmp_path / "NMNIST", time_steps=4)
    assert test.labels.tolist() == [0] and torch.nonzero(test.inputs[0]).tolist() == [[0, 0, 3, 2]]
    with pytest.raises(ValueError, match="`accumulate` must be 'binary' or 'count'"):
        data.load_dataset("nmnist", "train", root=tmp_path, accumulate="sum")


def test_nmnist_cache_is_used_keyed_and_rebuilt_when_unreadable(tmp_path):
    write_nmnist(tmp_path)
    first = data.load_dataset("nmnist", "train", root=tmp_path, time_steps=4)
    cache = tmp_path / "nmnist-train-T4-bin3ms-binary.pt"
    assert cache.is_file() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # With the event files gone, the second load can only come from the cache.
    moved = tmp_path.parent / (tmp_path.name + "-train-moved")
    (tmp_path / "Train").rename(moved)
    second = data.load_dataset("nmnist", "train", root=tmp_path, time_steps=4)
    assert torch.equal(second.inputs, first.inputs) and torch.equal(second.labels, first.labels)
    # Other settings are other cache files: with the sources gone there is nothing to build from.
    with pytest.raises(data.DatasetNotFoundError):
        data.load_dataset("nmnist", "train", root=tmp_path, time_steps=5)
    # A corrupt cache is rebuilt from the sources, and the rebuilt file is valid.
    moved.rename(tmp_path / "Train")
    cache.write_bytes(b"garbage")
    third = data.load_dataset("nmnist", "train", root=tmp_path, time_steps=4)
    assert torch.equal(third.inputs, first.inputs)
    assert cache.stat().st_size > 100
    # Changed sources make the cache stale.
    (tmp_path / "Train" / "7" / "00005.bin").unlink()
    fourth = data.load_dataset("nmnist", "train", root=tmp_path, time_steps=4)
    assert fourth.labels.tolist() == [3, 3]
    # cache=False neither reads nor writes.
    os.utime(cache, (1, 1))
    data.load_dataset("nmnist", "train", root=tmp_path, time_steps=4, cache=False)
    assert cache.stat().st_mtime == 1


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_normalised_and_learnable():
    a = data.load_dataset("synthetic", "train")
    b = data.load_dataset("synthetic", "train", seed=0)
    c = data.load_dataset("synthetic", "train", seed=1)
    assert a.inputs.shape == (512, 1, 28, 28) and torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, c.inputs)
    assert torch.equal(a.labels.bincount(), torch.tensor([52, 52] + [51] * 8))
    assert abs(a.inputs.mean().item()) < 0.02 and a.inputs.std().item() == pytest.approx(1, abs=0.02)
    test = data.load_dataset("synthetic", "test")
    assert len(test) == 256 and not torch.equal(test.inputs[:10], a.inputs[:10])
    # Nearest class mean (from train) classifies the test split: the prototypes are shared.
    means = torch.stack([a.inputs[a.labels == k].mean(0) for k in range(10)]).flatten(1)
    predicted = torch.cdist(test.inputs.flatten(1), means).argmin(1)
    assert (predicted == test.labels).float().mean().item() > 0.95
    spikes = data.load_dataset("synthetic", "train", input_kind="spikes", time_steps=6, shape=(2, 5, 5),
                               num_train=40, num_classes=4)
    assert spikes.inputs.shape == (40, 6, 2, 5, 5) and set(spikes.inputs.unique().tolist()) == {0, 1}
    assert spikes.info.time_steps == 6 and spikes.info.num_classes == 4
    with pytest.raises(ValueError, match="`num_classes` must be an integer of at least 2"):
        data.load_dataset("synthetic", "train", num_classes=1)


# ----------------------------------------------------------------------------- BatchLoader

def indexed_dataset(n: int, spikes: bool = False) -> data.ArrayDataset:
    """Sample i has label i and every input value equal to i (spikes: i % 2)."""
    if spikes:
        info = data.DatasetInfo("toy", (2, 3, 3), n, "spikes", 4)
        inputs = (torch.arange(n) % 2).view(n, 1, 1, 1, 1).expand(n, 4, 2, 3, 3).to(torch.uint8).clone()
    else:
        info = data.DatasetInfo("toy", (1, 2, 2), n, "constant")
        inputs = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return data.ArrayDataset(inputs, torch.arange(n), info)


def test_batch_loader_covers_every_sample_once_and_keeps_inputs_with_labels():
    loader = data.BatchLoader(indexed_dataset(10), 3, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 4
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [3, 3, 3, 1]
        labels = torch.cat([y for _, y in batches])
        assert sorted(labels.tolist()) == list(range(10)) and labels.tolist() != list(range(10))
        for x, y in batches:
            assert x.shape == (len(y), 1, 2, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
            assert torch.equal(x[:, 0, 0, 0], y.float())


def test_batch_loader_drop_last_order_and_spike_batches():
    loader = data.BatchLoader(indexed_dataset(10), 3, shuffle=False, drop_last=True)
    assert len(loader) == 3
    assert [y.tolist() for _, y in loader] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(data.BatchLoader(indexed_dataset(9), 3, shuffle=False, drop_last=True)) == 3
    spikes = data.BatchLoader(indexed_dataset(5, spikes=True), 4, shuffle=False)
    (x0, y0), (x1, _) = list(spikes)
    assert x0.shape == (4, 4, 2, 3, 3) and x1.shape == (1, 4, 2, 3, 3) and x0.dtype == torch.float32
    assert x0[:, 2, 1, 2, 2].tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer, got 0"):
        data.BatchLoader(indexed_dataset(3), 0, shuffle=False)


def test_batch_loader_replays_an_epoch_from_a_saved_generator_state():
    generator = torch.Generator().manual_seed(7)
    flip_noise = lambda x, g: x + torch.rand(len(x), 1, 1, 1, generator=g)  # noqa: E731
    loader = data.BatchLoader(indexed_dataset(10), 4, shuffle=True, generator=generator, augment=flip_noise)
    list(loader)                                                    # epoch 0
    state = generator.get_state()
    epoch1 = list(loader)
    epoch2 = list(loader)
    generator.set_state(state)
    torch.manual_seed(123)                                          # the global RNG plays no part
    replay = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch1, replay))
    assert [y.tolist() for _, y in epoch1] != [y.tolist() for _, y in epoch2]
    assert not torch.equal(epoch1[0][0], epoch1[0][0].round())      # the augment did run


# ----------------------------------------------------------------------------- augmentation

def test_cifar_augment_matches_torchvision_order_per_sample():
    """Crop-and-flip after normalising equals crop (zero-padded raw pixels) and flip before it."""
    rng = np.random.default_rng(8)
    raw = torch.from_numpy(rng.integers(1, 256, (64, 3, 32, 32), dtype=np.uint8)).float() / 255
    mean, std = torch.tensor(data.CIFAR_MEAN).view(3, 1, 1), torch.tensor(data.CIFAR_STD).view(3, 1, 1)
    out = data.cifar_augment((raw - mean) / std, torch.Generator().manual_seed(9))
    # The documented draws, replayed on a generator in the same state.
    g = torch.Generator().manual_seed(9)
    top, left, flip = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g), \
        torch.rand(64, generator=g) < 0.5
    for b in range(64):
        padded = torch.nn.functional.pad(raw[b], (4, 4, 4, 4), value=0.0)   # torchvision: fill=0 on raw
        crop = padded[:, top[b]:top[b] + 32, left[b]:left[b] + 32]
        crop = crop.flip(-1) if flip[b] else crop
        torch.testing.assert_close(out[b], (crop - mean) / std, atol=1e-5, rtol=0)
        if top[b] < 4:                                              # padding rows hold normalised black
            torch.testing.assert_close(out[b, :, 0, 5], (-mean / std)[:, 0, 0], atol=1e-6, rtol=0)
    # Per sample, not per batch: both flips and many offsets occur.
    assert 10 < flip.sum() < 54 and len(set(top.tolist())) >= 5 and len(set(left.tolist())) >= 5


def test_random_crop_flip_without_padding_only_flips():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    g = torch.Generator().manual_seed(0)
    out = data.random_crop_flip(x, g, padding=0, flip_p=1.0)
    assert torch.equal(out, x.flip(-1))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        data.random_crop_flip(x[0], g)
    with pytest.raises(ValueError, match="`fill` needs 1 or 1 values"):
        data.random_crop_flip(x, g, fill=(0.0, 1.0))


# ----------------------------------------------------------------------------- validation split

def test_split_validation_is_disjoint_deterministic_and_sized():
    ds = indexed_dataset(20)
    train, val = data.split_validation(ds, 5, seed=3)
    assert len(train) == 15 and len(val) == 5
    ids_t, ids_v = train.labels.tolist(), val.labels.tolist()
    assert set(ids_t).isdisjoint(ids_v) and sorted(ids_t + ids_v) == list(range(20))
    assert ids_v == sorted(ids_v) and torch.equal(val.inputs[:, 0, 0, 0], val.labels.float())
    again = data.split_validation(ds, 0.25, seed=3)[1]
    assert again.labels.tolist() == ids_v
    other = data.split_validation(ds, 5, seed=4)[1]
    assert other.labels.tolist() != ids_v
    for bad in (0, 20, 0.0, 1.0, -1, True, "5"):
        with pytest.raises(ValueError, match="size"):
            data.split_validation(ds, bad, seed=0)
    assert val.info is ds.info
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 20\)"):
        ds.subset([0, 20])


# ----------------------------------------------------------------------------- the run's record

def test_a_training_run_records_the_files_it_read_and_refuses_unknown_ones(tmp_path, no_system_dirs, capsys):
    import json

    from implicit_snn.app.cli import main
    from tests.helpers import cli_error

    root = tmp_path / "own"
    write_idx_split(root, "train", *tiny_images(8, seed=17), gz=True)
    write_idx_split(root / "FashionMNIST" / "raw", "test", *tiny_images(4, seed=18), gz=False)
    out = tmp_path / "run"
    argv = ["train", "--data-root", str(root), "--model", "8 (F8)", "--val-size", "2", "--epochs", "1",
            "--batch-size", "4", "--time-steps", "2", "--threads", "1", "--out", str(out)]
    message = cli_error(argv, capsys)
    assert message.startswith(f"error: {root / 'train-images-idx3-ubyte.gz'} is not fashion-mnist's published "
                              "train-images-idx3-ubyte: its content has MD5 ")
    assert message.endswith("or pass --no-verify-data to load files of your own") and not out.exists()
    assert main([*argv, "--no-verify-data"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["verify_data"] is False and config["data_root"] == str(root)
    paths = [root / "train-images-idx3-ubyte.gz", root / "train-labels-idx1-ubyte.gz",
             root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte",
             root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"]
    expected_md5 = [_md5(gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()) for p in paths]
    assert json.loads((out / "data-files.json").read_text()) == [{"path": str(p), "content_md5": m, "verified": False}
                                    for p, m in zip(paths, expected_md5)]
    # A dataset without published checksums has nothing to skip.
    assert cli_error(["train", "--dataset", "synthetic", "--no-verify-data", "--out", str(tmp_path / "s")], capsys) == \
        "error: --no-verify-data: the synthetic dataset has no published checksums to skip"
