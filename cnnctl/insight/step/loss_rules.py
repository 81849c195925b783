"""The loss's gradient at the logits, where the backward pass starts: one rule per loss name.

Part of ``cnnctl step``: see ``cnnctl/insight/step/__init__.py``.
"""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cnnctl.config import Config
from cnnctl.registry import Registry
from cnnctl.training.losses import smoothed_one_hot


@dataclass(frozen=True)
class LossRule:
    """A training loss as the step shows it, all in float64 from the logits ``z`` and the target ``y``.

    The criterion is training's own (``losses.create_loss``); ``target(label, classes, config)`` the vector y;
    ``value(z, y)`` the loss; ``logit_grad(z, y)`` dL/dz, where the backward pass begins."""

    name: str
    formula: str
    gradient: str
    target: Callable[[int, int, Config], torch.Tensor]
    value: Callable[[torch.Tensor, torch.Tensor], float]
    logit_grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _smoothed_one_hot(label: int, classes: int, config: Config) -> torch.Tensor:
    """One-hot, or with ``train.label_smoothing`` e: (1 - e) on the true class plus e/C on every class (float64)."""
    return smoothed_one_hot(torch.tensor([label]), classes, config.train.label_smoothing, dtype=torch.float64)[0]


LOSSES = Registry("loss")
LOSSES.add("cross_entropy", LossRule(
    "cross_entropy", "L = -sum_i y_i * log p_i",
    "dL/dz_i = p_i - y_i (softmax and cross-entropy differentiated together)",
    _smoothed_one_hot,
    lambda z, y: float(-(y * torch.log_softmax(z, 0)).sum()),
    lambda z, y: torch.softmax(z, 0) - y,
))


def _mse_logit_grad(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dL/dz_j = sum_i 2 (p_i - y_i) dp_i/dz_j with dp_i/dz_j = p_i (delta_ij - p_j)."""
    p = torch.softmax(z, 0)
    return 2 * p * ((p - y) - (p * (p - y)).sum())


LOSSES.add("mse", LossRule(
    "mse", "L = sum_i (p_i - y_i)^2",
    "dL/dz_j = 2 p_j ((p_j - y_j) - sum_i p_i (p_i - y_i)) (the softmax's Jacobian times 2 (p - y): "
    "a factor p_j that vanishes where the softmax saturates)",
    _smoothed_one_hot,
    lambda z, y: float((torch.softmax(z, 0) - y).pow(2).sum()),
    _mse_logit_grad,
))


def loss_rule(config: Config) -> LossRule:
    """The rule for the config's loss (``train.loss``)."""
    return LOSSES.get(config.train.loss)


