"""Datasets held in memory as tensors, batched by slicing.

``load_dataset(name, split)`` returns an ``ArrayDataset`` (``inputs``, ``labels``, ``info``);
``BatchLoader`` iterates over it with an explicit ``torch.Generator``; ``split_validation``
carves a fixed validation set from a training split; ``cifar_augment`` is the CIFAR training
augmentation, applied per batch by the loader. ``register_dataset`` adds a dataset of one's own
under a name, after the built-ins below.

Where each dataset is looked for (``root`` is ``--data-root`` on the command line). A ``root``
that is given is used or is an error (``DatasetNotFoundError``: it does not exist, is a file, or
lacks one of the files); the system folder is searched only when no ``root`` is given.

==============  =====================================================================
fashion-mnist   ``root``, ``root/FashionMNIST/raw`` (torchvision); without a ``root``,
                ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``);
                IDX files, gzipped or not
mnist           ``root``, ``root/MNIST/raw``; IDX files, gzipped or not
cifar10         ``root/cifar-10-batches-py`` or ``root`` (``data_batch_1..5``, ``test_batch``)
cifar100        ``root/cifar-100-python`` or ``root`` (``train``, ``test``; fine labels)
nmnist          ``root`` or ``root/NMNIST``, holding ``Train/<digit>/*.bin`` and ``Test/<digit>/*.bin``
dvs-gesture     ``root`` or ``root/DvsGesture`` (IBM's archive extracted): ``trials_to_{train,test}.txt``,
                ``userNN_<lighting>.aedat`` (AEDAT 3.1) and ``userNN_<lighting>_labels.csv``
cifar10-dvs     ``root``, ``root/CIFAR10-DVS`` or ``root/CIFAR10DVS``: the ten class archives
                ``<class>.zip``, or the folders ``<class>/`` of ``.aedat`` (AEDAT 2.0) they extract to
shd             ``root`` or ``root/SHD``: ``shd_{train,test}.h5``, ``.h5.gz`` or ``.h5.zip`` (needs h5py:
                ``pip install 'implicit-snn[events]'``)
synthetic       generated from ``seed``
==============  =====================================================================

The event datasets (docs/datasets.md) bin each sample's events into T frames of equal duration
as tonic's ``ToFrame(n_time_bins=T)`` does (``_frames``), take ``size`` (down-sampled pixels or
channels; defaults 32, 48, 700), ``accumulate`` ("count" or "binary"), ``cache`` and ``verify``,
and cache the frames in the data folder under a name keyed by every setting that changes them.

Identity: MNIST, Fashion-MNIST, the CIFARs and the event datasets take the option ``verify``
(default True): each file read must be the published one, by its MD5 (``PUBLISHED_MD5`` in
``_idx``/``_cifar``, for IDX files of the decompressed content; ``GESTURE_MD5``,
``CIFAR10_DVS_ZIP_MD5`` in ``_dvs`` and ``SHD_MD5`` in ``_shd``; where a file has no published
checksum, its layout is checked instead). MNIST and Fashion-MNIST share file names, so a folder of
the one loaded as the other is refused, naming what the files are; ``verify=False`` loads files
of one's own. Every loaded dataset lists the files it was read from in ``dataset.files``
(``DataFile``: path, content MD5, verified).

Shapes: static images ``[N, C, H, W]`` float32, normalised (MNIST constants for both MNIST and
Fashion-MNIST, the reference's CIFAR constants for both CIFARs); spike trains
``[N, T, *in_shape]`` (N-MNIST ``(2, 34, 34)``, DVS128 Gesture and CIFAR10-DVS ``(2, size, size)``,
SHD ``(1, size)``), batch first then time, stored as uint8 and batched as float32.
"""

from ._augment import cifar_augment, random_crop_flip
from ._base import ArrayDataset, DataFile, DatasetInfo, DatasetNotFoundError
from ._cifar import CIFAR_MEAN, CIFAR_STD
from ._idx import MNIST_MEAN, MNIST_STD, read_idx
from ._loader import BatchLoader, split_validation
from ._nmnist import decode_events, events_to_frames
from ._registry import (available_datasets, dataset_info, dataset_options, describe_datasets, load_dataset,
                        register_dataset)
from . import _builtins  # noqa: F401  (registers the built-in datasets)

__all__ = [
    "ArrayDataset", "BatchLoader", "CIFAR_MEAN", "CIFAR_STD", "DataFile", "DatasetInfo", "DatasetNotFoundError",
    "MNIST_MEAN", "MNIST_STD", "available_datasets", "cifar_augment", "dataset_info", "dataset_options",
    "decode_events", "describe_datasets", "events_to_frames", "load_dataset", "random_crop_flip",
    "read_idx", "register_dataset", "split_validation",
]
