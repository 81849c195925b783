"""LeNet-5 (LeCun et al. 1998): conv 6@5x5, pool 2, conv 16@5x5, pool 2, fc 120, fc 84, classifier."""

from __future__ import annotations

import torch
from torch import nn

from cnnctl.errors import ShapeError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def paddings(image_size: tuple[int, int]) -> tuple[int, int]:
    """The paddings of conv1 and conv2 for an input of ``image_size``.

    The paper's input is 32x32; MNIST's 28x28 is padded by 2 so conv1 still sees a 32x32 field (the classic
    61,706-parameter model), and so is anything smaller. Larger inputs get none. On inputs under 12x12 (the 8x8
    digits) conv2 would meet a map of 5x5 or less and leave nothing for the second pool, so it is padded by 2 too
    ("same" convolutions): 8x8 -> 8x8 -> 4x4 -> 4x4 -> 2x2.
    """
    pad1 = 2 if min(image_size) <= 28 else 0
    conv1 = min(image_size) + 2 * pad1 - 4
    pad2 = 2 if conv1 // 2 < 6 else 0
    return pad1, pad2


class LeNet5(nn.Module):
    """``features`` (conv, act, pool, conv, act, pool) and ``classifier`` (fc 120, act, dropout, fc 84, act,
    dropout, fc classes). Dropout modules are always present (p=0 is a no-op) so state_dict keys do not depend
    on the dropout rate."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        activation: str = "relu",
        pool: str = "max",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        act, pool_cls = ACTIVATIONS[activation], POOLS[pool]
        pad1, pad2 = paddings(image_size)
        sides = [_final_side(side, pad1, pad2) for side in image_size]
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=pad1),
            act(),
            pool_cls(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=pad2),
            act(),
            pool_cls(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * sides[0] * sides[1], 120),
            act(),
            nn.Dropout(dropout),
            nn.Linear(120, 84),
            act(),
            nn.Dropout(dropout),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _final_side(side: int, pad1: int, pad2: int) -> int:
    """One side of the map after the second pool; a ShapeError with the arithmetic when nothing is left."""
    conv1 = side + 2 * pad1 - 5 + 1
    pool1 = conv1 // 2
    conv2 = pool1 + 2 * pad2 - 5 + 1
    pool2 = conv2 // 2
    if conv1 < 1 or pool2 < 1:
        raise ShapeError(
            f"model.arch 'lenet5': a {side}-pixel side leaves no map after features.5 (the second pool): "
            f"conv1 out = floor(({side} + 2*{pad1} - 5) / 1) + 1 = {conv1}, pool out = floor({conv1} / 2) = {pool1}, "
            f"conv2 out = floor(({pool1} + 2*{pad2} - 5) / 1) + 1 = {conv2}, pool out = floor({conv2} / 2) = {pool2}; "
            "lenet5 needs images of at least 4x4: set data.image_size larger"
        )
    return pool2


def lenet5(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    activation: str = "auto",
    pool: str = "auto",
    dropout: float = 0.0,
) -> LeNet5:
    """LeNet-5 for ``in_channels`` x ``image_size`` inputs (paddings as :func:`paddings` says).

    ``activation``: relu (auto), tanh (the paper's), sigmoid, gelu, leaky_relu. ``pool``: max (auto) or avg (the
    paper's subsampling). ``dropout``: after each hidden fully-connected layer's activation.
    """
    return LeNet5(
        num_classes,
        in_channels,
        image_size,
        activation="relu" if activation == "auto" else activation,
        pool="max" if pool == "auto" else pool,
        dropout=dropout,
    )
