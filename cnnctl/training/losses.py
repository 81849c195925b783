"""The training losses ``train.loss`` names: cross-entropy, and the squared error of the softmax against the
one-hot target, the classic comparison.

Both read the logits z and the target class. Cross-entropy is L = -log p_t (with ``train.label_smoothing`` the
target is smoothed); ``mse`` is L = sum_i (p_i - y_i)^2 over the classes (the Brier score), averaged over the batch
as cross-entropy is. Its gradient at the logits, dL/dz_j = 2 p_j ((p_j - y_j) - sum_i p_i (p_i - y_i)), carries a
factor p_j: where the softmax saturates on a wrong class (p_t near 0) the gradient nearly vanishes, while
cross-entropy's p - y stays large. That is why classifiers train with cross-entropy, and what
``configs/compare-loss`` shows.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

LossName = Literal["cross_entropy", "mse"]
LOSS_NAMES: tuple[str, ...] = ("cross_entropy", "mse")


def smoothed_one_hot(target: torch.Tensor, num_classes: int, label_smoothing: float = 0.0,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The target distribution torch's cross-entropy uses: 1 - eps + eps/C on the true class, eps/C elsewhere."""
    y = F.one_hot(target, num_classes).to(dtype)
    return y * (1 - label_smoothing) + label_smoothing / num_classes if label_smoothing else y


def squared_errors(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """sum_i (softmax(z)_i - y_i)^2 for each image of the batch: the one formula of ``train.loss: mse``."""
    p = torch.softmax(logits.float(), dim=1)
    return (p - smoothed_one_hot(target, logits.shape[1], label_smoothing)).pow(2).sum(1)


class SoftmaxMSELoss(nn.Module):
    """sum_i (softmax(z)_i - y_i)^2 per image, averaged (``reduction="mean"``) or summed over the batch."""

    def __init__(self, label_smoothing: float = 0.0, reduction: Literal["mean", "sum"] = "mean") -> None:
        super().__init__()
        self.label_smoothing, self.reduction = label_smoothing, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_image = squared_errors(logits, target, self.label_smoothing)
        return per_image.mean() if self.reduction == "mean" else per_image.sum()


def loss_sum(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The batch's summed loss for evaluation (no label smoothing), computed functionally: no module per call."""
    if name == "cross_entropy":
        return F.cross_entropy(logits, target, reduction="sum")
    return squared_errors(logits, target).sum()


def create_loss(name: str, label_smoothing: float = 0.0, reduction: Literal["mean", "sum"] = "mean") -> nn.Module:
    """The criterion for ``train.loss``: what training minimises and what its train and val losses report."""
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction=reduction)
    if name == "mse":
        return SoftmaxMSELoss(label_smoothing, reduction)
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSS_NAMES)}")  # the schema admits only these
