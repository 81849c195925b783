"""ResNets (He et al. 2016): torchvision's ImageNet family and the paper's CIFAR nets, as block counts."""

from __future__ import annotations

import torch
from torch import nn

from cnnctl.errors import ConfigError

# stem "auto": the 7x7/2 conv + 3x3/2 max-pool from this side up. Below it a 32x32 image would reach layer4 as a
# 1x1 map after the stem's 4x reduction, so the CIFAR stem (3x3/1 conv, no max-pool) keeps the resolution.
IMAGENET_MIN_SIDE = 64
STEMS = ("auto", "imagenet", "cifar")


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    # The stride sits on the 3x3 conv (ResNet v1.5, as torchvision): "improves accuracy by ~0.5% top-1",
    # https://catalog.ngc.nvidia.com/orgs/nvidia/resources/resnet_50_v1_5_for_pytorch
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """``conv1, bn1, relu, maxpool, layer1..N, avgpool, fc`` as torchvision names them (plus a parameter-free
    ``dropout`` before ``fc``). Stage i has ``widths[i]`` planes and ``layers[i]`` blocks; every stage after the
    first halves the map. Where a block changes the shape its shortcut is a 1x1 conv + BN projection."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        *,
        num_classes: int,
        in_channels: int = 3,
        stem: str = "imagenet",
        widths: tuple[int, ...] = (64, 128, 256, 512),
        zero_init_residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        imagenet = stem == "imagenet"
        if imagenet:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, self.inplanes)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if imagenet else nn.Identity()
        self.stages = [f"layer{i + 1}" for i in range(len(widths))]
        for i, (name, width, blocks) in enumerate(zip(self.stages, widths, layers, strict=True)):
            self.add_module(name, self._make_layer(block, width, blocks, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity: "improves the model by 0.2~0.3%", https://arxiv.org/abs/1706.02677
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ConfigError(f"model.stem: {stem!r} is not one of {', '.join(STEMS)}")


def _imagenet_resnet(block: Block, layers: list[int], *, num_classes: int, in_channels: int,
                     image_size: tuple[int, int], stem: str, zero_init_residual: bool, dropout: float) -> ResNet:
    """torchvision's ResNet of ``block`` x ``layers``, with the stem ``auto`` picks by image size."""
    _check_stem(stem)
    if stem == "auto":
        stem = "imagenet" if min(image_size) >= IMAGENET_MIN_SIDE else "cifar"
    return ResNet(block, layers, num_classes=num_classes, in_channels=in_channels, stem=stem,
                  zero_init_residual=zero_init_residual, dropout=dropout)


def _cifar_resnet(depth: int, *, num_classes: int, in_channels: int, stem: str, zero_init_residual: bool,
                  dropout: float) -> ResNet:
    """He et al. 2016's CIFAR ResNet of ``depth`` = 6n + 2 layers: 3 stages of n basic blocks, 16/32/64 channels.
    Shortcuts that change shape are 1x1 conv + BN projections (the paper's option B; its 0.27M for ResNet-20 is
    option A, zero-padding, which these projections add 2,752 parameters to)."""
    _check_stem(stem)
    if stem == "imagenet":
        raise ConfigError(
            f"model.stem: resnet{depth} is a CIFAR net with a 3x3 stem only; remove stem (or set it to cifar), "
            "or use resnet18/34/50 for the ImageNet stem"
        )
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n, n, n], num_classes=num_classes, in_channels=in_channels, stem="cifar",
                  widths=(16, 32, 64), zero_init_residual=zero_init_residual, dropout=dropout)


# The zoo: one documented def per network, as torchvision writes them, each registered under its own name in
# models/registry.py (which names them without importing torch). The ImageNet ResNets take ``stem``: imagenet (7x7/2
# conv + max-pool), cifar (3x3/1 conv, no max-pool) or auto (imagenet from IMAGENET_MIN_SIDE pixels a side);
# ``zero_init_residual``: each block's last BN starts at zero; ``dropout``: before fc.


def resnet18(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
             zero_init_residual: bool = False, dropout: float = 0.0) -> ResNet:
    """ResNet-18 (He et al. 2015): basic blocks [2, 2, 2, 2]; 11.7M parameters at 1000 classes."""
    return _imagenet_resnet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, stem=stem, zero_init_residual=zero_init_residual, dropout=dropout)


def resnet34(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
             zero_init_residual: bool = False, dropout: float = 0.0) -> ResNet:
    """ResNet-34 (He et al. 2015): basic blocks [3, 4, 6, 3]."""
    return _imagenet_resnet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, stem=stem, zero_init_residual=zero_init_residual, dropout=dropout)


def resnet50(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
             zero_init_residual: bool = False, dropout: float = 0.0) -> ResNet:
    """ResNet-50 (He et al. 2015): bottleneck blocks [3, 4, 6, 3] (torchvision's v1.5: stride in the 3x3)."""
    return _imagenet_resnet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, stem=stem, zero_init_residual=zero_init_residual, dropout=dropout)


def resnet101(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
              zero_init_residual: bool = False, dropout: float = 0.0) -> ResNet:
    """ResNet-101 (He et al. 2015): bottleneck blocks [3, 4, 23, 3]."""
    return _imagenet_resnet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, stem=stem, zero_init_residual=zero_init_residual, dropout=dropout)


def resnet152(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
              zero_init_residual: bool = False, dropout: float = 0.0) -> ResNet:
    """ResNet-152 (He et al. 2015): bottleneck blocks [3, 8, 36, 3]."""
    return _imagenet_resnet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, stem=stem, zero_init_residual=zero_init_residual, dropout=dropout)


def resnet200(*, num_classes: int, in_channels: int, image_size: tuple[int, int], stem: str = "auto",
              zero_init_residual: bool = False, dropout: float = 0.0) -> ResNet:
    """ResNet-200: bottleneck blocks [3, 24, 36, 3], the counts of He et al. 2016b
    (https://arxiv.org/abs/1603.05027), whose blocks are pre-activation; here they are torchvision's v1.5 blocks
    like the rest. torchvision has no resnet200."""
    return _imagenet_resnet(Bottleneck, [3, 24, 36, 3], num_classes=num_classes, in_channels=in_channels,
                            image_size=image_size, stem=stem, zero_init_residual=zero_init_residual, dropout=dropout)


# He et al. 2016's CIFAR ResNets (Sec. 4.2): ``stem`` cifar only; ``zero_init_residual`` and ``dropout`` as above.


def resnet20(*, num_classes: int, in_channels: int, stem: str = "auto", zero_init_residual: bool = False,
             dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-20: 3 stages of 3 basic blocks (272,474 parameters at 10 classes)."""
    return _cifar_resnet(20, num_classes=num_classes, in_channels=in_channels, stem=stem,
                         zero_init_residual=zero_init_residual, dropout=dropout)


def resnet32(*, num_classes: int, in_channels: int, stem: str = "auto", zero_init_residual: bool = False,
             dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-32: 3 stages of 5 basic blocks."""
    return _cifar_resnet(32, num_classes=num_classes, in_channels=in_channels, stem=stem,
                         zero_init_residual=zero_init_residual, dropout=dropout)


def resnet44(*, num_classes: int, in_channels: int, stem: str = "auto", zero_init_residual: bool = False,
             dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-44: 3 stages of 7 basic blocks."""
    return _cifar_resnet(44, num_classes=num_classes, in_channels=in_channels, stem=stem,
                         zero_init_residual=zero_init_residual, dropout=dropout)


def resnet56(*, num_classes: int, in_channels: int, stem: str = "auto", zero_init_residual: bool = False,
             dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-56: 3 stages of 9 basic blocks."""
    return _cifar_resnet(56, num_classes=num_classes, in_channels=in_channels, stem=stem,
                         zero_init_residual=zero_init_residual, dropout=dropout)


def resnet110(*, num_classes: int, in_channels: int, stem: str = "auto", zero_init_residual: bool = False,
              dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-110: 3 stages of 18 basic blocks."""
    return _cifar_resnet(110, num_classes=num_classes, in_channels=in_channels, stem=stem,
                         zero_init_residual=zero_init_residual, dropout=dropout)


def resnet1202(*, num_classes: int, in_channels: int, stem: str = "auto", zero_init_residual: bool = False,
               dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-1202: 3 stages of 200 basic blocks, He et al. 2016's "over 1000 layers" experiment (Sec. 4.2,
    Table 6: 19.4M parameters)."""
    return _cifar_resnet(1202, num_classes=num_classes, in_channels=in_channels, stem=stem,
                         zero_init_residual=zero_init_residual, dropout=dropout)
