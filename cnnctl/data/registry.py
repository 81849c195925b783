"""The dataset registry. Names are declared here without importing torch or the config (which validates
``data.dataset`` against them); loaders load on first use.

A loader is ``load(cfg: DataConfig, seed: int) -> DataBundle`` (see ``cnnctl.data.base``). The input shape a
config gives a network without loading its data is ``cnnctl.data.spec.input_spec``.
"""

from __future__ import annotations

from cnnctl.registry import Registry

DATASETS = Registry(
    "dataset",
    {
        "digits": "cnnctl.data.digits:load_digits",
        "mnist": "cnnctl.data.vision:load_mnist",
        "fashion_mnist": "cnnctl.data.vision:load_fashion_mnist",
        "kmnist": "cnnctl.data.vision:load_kmnist",
        "cifar10": "cnnctl.data.vision:load_cifar10",
        "cifar100": "cnnctl.data.vision:load_cifar100",
        "imagefolder": "cnnctl.data.folder:load_imagefolder",
        "fake": "cnnctl.data.fake:load_fake",
    },
)
register = DATASETS.register
