"""The dataset registry. Names are declared here without importing torch; loaders load on first use.

A loader is ``load(cfg: DataConfig, seed: int) -> DataBundle`` (see ``cnnctl.data.base``).
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

# (channels, (height, width), classes) as each dataset ships, so `cnnctl summary` needs no download.
NATIVE_SHAPES: dict[str, tuple[int, tuple[int, int], int]] = {
    "digits": (1, (8, 8), 10),
    "mnist": (1, (28, 28), 10),
    "fashion_mnist": (1, (28, 28), 10),
    "kmnist": (1, (28, 28), 10),
    "cifar10": (3, (32, 32), 10),
    "cifar100": (3, (32, 32), 100),
}


def input_spec(cfg) -> tuple[int, tuple[int, int], int]:  # cfg: DataConfig
    """Channels, (H, W) and number of classes the model will see, without loading the images where possible."""
    if cfg.dataset == "fake":
        side = cfg.image_size or 32
        return cfg.channels or 3, (side, side), cfg.num_classes or 10
    if cfg.dataset in NATIVE_SHAPES:
        channels, size, classes = NATIVE_SHAPES[cfg.dataset]
        return channels, ((cfg.image_size, cfg.image_size) if cfg.image_size else size), classes
    from cnnctl.data.folder import load_imagefolder  # a folder scan and one decoded image, no statistics pass

    bundle = load_imagefolder(cfg, 0)
    return bundle.channels, tuple(bundle.size), len(bundle.classes)
