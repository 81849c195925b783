"""``fake``: torchvision's FakeData (random images and labels), materialized once into a uint8 tensor."""

from __future__ import annotations

import torch

from cnnctl.config import DataConfig
from cnnctl.data.base import DataBundle, TensorSplit, derive_seed, split_off


def load_fake(cfg: DataConfig, seed: int) -> DataBundle:
    """``num_samples`` (1000) random ``channels`` (3) x ``image_size`` (32) images of ``num_classes`` (10) classes.

    The images depend on the seed; a seeded, stratified ``test_split`` is held out (val comes from the rest).
    """
    from torchvision.datasets import FakeData
    from torchvision.transforms.v2 import PILToTensor

    channels, side = cfg.channels or 3, cfg.image_size or 32
    num_classes = cfg.num_classes or 10
    data = FakeData(size=cfg.num_samples or 1000, image_size=(channels, side, side), num_classes=num_classes,
                    transform=PILToTensor(), random_offset=derive_seed(seed, "fake") % 2**32)
    items = [data[i] for i in range(len(data))]  # about 0.4 ms an image: FakeData goes through PIL
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    train, test = split_off(TensorSplit(images, labels), cfg.test_split, derive_seed(seed, "test"))
    return DataBundle("fake", [str(i) for i in range(num_classes)], channels, (side, side), [], [], train, None, test)
