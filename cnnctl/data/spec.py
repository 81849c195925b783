"""The input a data config gives a network (channels, size, classes), known without loading the images where
possible, so that ``cnnctl summary`` needs no download. Apart from the registry, whose names the config imports:
this module reads the config, so the registry must not import it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnctl.config import DataConfig

# (channels, (height, width), classes) as each dataset ships, so `cnnctl summary` needs no download.
NATIVE_SHAPES: dict[str, tuple[int, tuple[int, int], int]] = {
    "digits": (1, (8, 8), 10),
    "mnist": (1, (28, 28), 10),
    "fashion_mnist": (1, (28, 28), 10),
    "kmnist": (1, (28, 28), 10),
    "cifar10": (3, (32, 32), 10),
    "cifar100": (3, (32, 32), 100),
}


def input_spec(cfg: DataConfig) -> tuple[int, tuple[int, int], int]:
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
