"""VGG (Simonyan & Zisserman 2015) as data: each config is a list of conv widths and "M" for a 2x2 max-pool."""

from __future__ import annotations

import torch
from torch import nn

from cnnctl.errors import ConfigError

# The paper's Table 1 columns, as torchvision names them.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# stem "auto" uses the ImageNet head only when the last feature map (side / 32) is at least its 7x7 pool: below
# 224 pixels that pool would only repeat pixels of a smaller map into 25,088 inputs of a 100M-weight layer.
IMAGENET_MIN_SIDE = 224
STEMS = ("auto", "imagenet", "cifar")


def make_layers(cfg: list[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """3x3 "same" convolutions (+ BN) + ReLU for each width in ``cfg``, a 2x2 max-pool for each "M"."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        width = int(v)
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features``, ``avgpool`` and ``classifier`` as torchvision names them.

    ``stem="imagenet"``: torchvision's head, a 7x7 adaptive pool and 25,088 -> 4096 -> 4096 -> classes.
    ``stem="cifar"``: for small inputs (a 32x32 image leaves a 1x1 map) a 1x1 adaptive pool and 512 -> 512 -> 512
    -> classes, the same shape of MLP with ReLU and dropout at 1/8 the width (as in the usual CIFAR VGGs).
    """

    def __init__(self, features: nn.Sequential, num_classes: int, stem: str = "imagenet", dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        pooled, hidden = (7, 4096) if stem == "imagenet" else (1, 512)
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = nn.Sequential(
            nn.Linear(512 * pooled * pooled, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def resolve_stem(stem: str, image_size: tuple[int, int]) -> str:
    if stem not in STEMS:
        raise ConfigError(f"model.stem: {stem!r} is not one of {', '.join(STEMS)}")
    if stem == "auto":
        return "imagenet" if min(image_size) >= IMAGENET_MIN_SIDE else "cifar"
    return stem


def _vgg(cfg: str, batch_norm: bool, *, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str,
         dropout: float) -> VGG:
    """VGG of layer config ``cfg``. ``stem``: imagenet (torchvision's 7x7 head), cifar (1x1 pool, 512-wide MLP) or
    auto (imagenet from IMAGENET_MIN_SIDE pixels a side). ``dropout``: in the classifier, as given (torchvision's
    default is 0.5)."""
    head = resolve_stem(stem, image_size)
    return VGG(make_layers(CFGS[cfg], in_channels, batch_norm), num_classes, head, dropout)


# The zoo: one documented def per network, as torchvision writes them (Simonyan & Zisserman 2014, Table 1's
# configurations A, B, D, E), each registered under its own name in models/registry.py.


def vgg11(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
          dropout: float = 0.0) -> VGG:
    """VGG-11 (configuration A)."""
    return _vgg("A", False, num_classes=num_classes, in_channels=in_channels, image_size=image_size, stem=stem,
                dropout=dropout)


def vgg11_bn(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
             dropout: float = 0.0) -> VGG:
    """VGG-11 with batch norm after each conv (configuration A)."""
    return _vgg("A", True, num_classes=num_classes, in_channels=in_channels, image_size=image_size, stem=stem,
                dropout=dropout)


def vgg13(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
          dropout: float = 0.0) -> VGG:
    """VGG-13 (configuration B)."""
    return _vgg("B", False, num_classes=num_classes, in_channels=in_channels, image_size=image_size, stem=stem,
                dropout=dropout)


def vgg13_bn(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
             dropout: float = 0.0) -> VGG:
    """VGG-13 with batch norm after each conv (configuration B)."""
    return _vgg("B", True, num_classes=num_classes, in_channels=in_channels, image_size=image_size, stem=stem,
                dropout=dropout)


def vgg16(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
          dropout: float = 0.0) -> VGG:
    """VGG-16 (configuration D)."""
    return _vgg("D", False, num_classes=num_classes, in_channels=in_channels, image_size=image_size, stem=stem,
                dropout=dropout)


def vgg16_bn(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
             dropout: float = 0.0) -> VGG:
    """VGG-16 with batch norm after each conv (configuration D)."""
    return _vgg("D", True, num_classes=num_classes, in_channels=in_channels, image_size=image_size, stem=stem,
                dropout=dropout)


def vgg19(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
          dropout: float = 0.0) -> VGG:
    """VGG-19 (configuration E)."""
    return _vgg("E", False, num_classes=num_classes, in_channels=in_channels, image_size=image_size, stem=stem,
                dropout=dropout)


def vgg19_bn(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
             dropout: float = 0.0) -> VGG:
    """VGG-19 with batch norm after each conv (configuration E)."""
    return _vgg("E", True, num_classes=num_classes, in_channels=in_channels, image_size=image_size, stem=stem,
                dropout=dropout)
