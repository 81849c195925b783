"""Classification metrics computed from logits on the device, read once at the end.

Accuracy, top-k, the confusion matrix and per-class precision / recall / F1 / support, the same
definitions as scikit-learn's ``classification_report`` (precision of a class never predicted is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cnnctl.training.losses import loss_sum


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``cm[true, pred]`` as int64, on the device of the inputs."""
    index = targets.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_report(cm: torch.Tensor, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support for each class of a confusion matrix ``cm[true, pred]``."""
    cm = cm.double().cpu()
    tp = cm.diag()
    predicted = cm.sum(0)
    support = cm.sum(1)
    # 0 where a class is never predicted / never present / has neither: tp is 0 there, over a denominator of at least 1
    precision = tp / predicted.clamp(min=1)
    recall = tp / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    ]


@dataclass
class EvalAccumulator:
    """Loss, top-1 and top-5 hits and the confusion matrix, summed on the device; ``result()`` syncs once.

    Logits are buffered and reduced in large chunks: per-batch metric kernels cost more than a small network's
    forward pass (measured in scripts/bench_infer.py: 0.72x the bare forward before, see the README after).
    """

    num_classes: int
    device: torch.device
    loss: str = "cross_entropy"  # train.loss: val and test losses are the loss training minimises
    flush_rows: int = 65536
    loss_sum: torch.Tensor = field(init=False)
    top5: torch.Tensor = field(init=False)
    cm: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.top5 = torch.zeros((), dtype=torch.int64, device=self.device)
        self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._rows = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor | None = None) -> None:
        """Add a batch. Without ``loss_sum`` the loss (``self.loss``) of ``logits`` is computed at the flush."""
        if loss_sum is not None:
            self.flush()
            self.loss_sum += loss_sum.double()
            self._reduce(logits, targets)
        else:
            self._logits.append(logits)
            self._targets.append(targets)
            self._rows += len(targets)
            if self._rows >= self.flush_rows:
                self.flush()

    def flush(self) -> None:
        """Reduce the buffered batches into the sums."""
        if not self._logits:
            return
        logits, targets = torch.cat(self._logits), torch.cat(self._targets)
        self._logits, self._targets, self._rows = [], [], 0
        self.loss_sum += loss_sum(self.loss, logits.float(), targets).double()
        self._reduce(logits, targets)

    def _reduce(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.cm += confusion_matrix(logits.argmax(1), targets, self.num_classes)
        if self.num_classes >= 5:
            top = logits.topk(5, dim=1).indices
            self.top5 += (top == targets[:, None]).any(1).sum()

    def result(self, classes: list[str]) -> dict:
        self.flush()
        cm = self.cm.cpu()
        n = int(cm.sum())
        return {
            "n": n,
            "loss": float(self.loss_sum) / max(n, 1),
            "accuracy": float(cm.diag().sum()) / max(n, 1),
            "top5": float(self.top5) / max(n, 1) if self.num_classes >= 5 else None,
            "per_class": per_class_report(cm, classes),
            "confusion_matrix": cm.tolist(),
        }
