"""The built-in datasets, registered in the order ``available_datasets`` lists them (the default first)."""

from __future__ import annotations

import functools

from ._base import DatasetInfo
from ._cifar import load_cifar_dataset
from ._dvs import cifar10_dvs_info, dvs_gesture_info, load_cifar10_dvs_dataset, load_dvs_gesture_dataset
from ._idx import load_idx_dataset
from ._nmnist import load_nmnist_dataset
from ._registry import register_dataset
from ._shd import load_shd_dataset, shd_info
from ._synthetic import load_synthetic_dataset, synthetic_info


def _static(load, name: str):
    """``load(name, split, root, download, verify=...)`` as a registry loader, whose one option is
    ``verify`` (static images ignore ``time_steps``)."""
    one = functools.partial(load, name)

    def static(split, root, download, time_steps, *, verify: bool = True):
        return one(split, root, download, verify=verify)

    return static


register_dataset("fashion-mnist", info=DatasetInfo("fashion-mnist", (1, 28, 28), 10, "constant"),
                 description="Fashion-MNIST, 60k/10k 28x28 grey images (the default)")(
    _static(load_idx_dataset, "fashion-mnist"))
register_dataset("mnist", info=DatasetInfo("mnist", (1, 28, 28), 10, "constant"),
                 description="MNIST, 60k/10k 28x28 grey digits")(_static(load_idx_dataset, "mnist"))
register_dataset("cifar10", info=DatasetInfo("cifar10", (3, 32, 32), 10, "constant"),
                 description="CIFAR-10, 50k/10k 32x32 colour images, 10 classes")(
    _static(load_cifar_dataset, "cifar10"))
register_dataset("cifar100", info=DatasetInfo("cifar100", (3, 32, 32), 100, "constant"),
                 description="CIFAR-100, 50k/10k 32x32 colour images, 100 fine classes")(
    _static(load_cifar_dataset, "cifar100"))
register_dataset("nmnist", info=DatasetInfo("nmnist", (2, 34, 34), 10, "spikes", 30),
                 description="N-MNIST, 60k/10k event recordings binned into [T, 2, 34, 34] spike frames")(
    load_nmnist_dataset)
register_dataset("dvs-gesture", info=dvs_gesture_info,
                 description="DVS128 Gesture, 1176/288 gestures binned into [T, 2, size, size] frames (size 32)")(
    load_dvs_gesture_dataset)
register_dataset("cifar10-dvs", info=cifar10_dvs_info,
                 description="CIFAR10-DVS, 9000/1000 recordings binned into [T, 2, size, size] frames (size 48)")(
    load_cifar10_dvs_dataset)
register_dataset("shd", info=shd_info,
                 description="Spiking Heidelberg Digits, 8156/2264 spoken digits binned into [T, 1, 700] frames")(
    load_shd_dataset)
register_dataset("synthetic", info=synthetic_info,
                 description="generated class prototypes plus noise, 512/256 samples (smoke tests)")(
    load_synthetic_dataset)
