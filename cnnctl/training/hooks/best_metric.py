"""BestMetric: the best value of the monitored metric so far, which checkpoints and early stopping read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.config import is_finite_number
from cnnctl.errors import UsageError
from cnnctl.training.hooks.base import Hook

if TYPE_CHECKING:
    from cnnctl.training.state import Run


def resolve_mode(monitor: str, mode: str) -> str:
    """``auto`` means ``min`` for a loss and ``max`` for an accuracy."""
    if mode not in ("auto", "min", "max"):
        raise UsageError(f"mode must be auto, min or max, not {mode!r}")
    if mode == "auto":
        return "min" if monitor.endswith("loss") else "max"
    return mode


class BestMetric(Hook):
    """Tracks the best value of one monitored metric and the epoch it came at (which decides best.pt)."""

    key = "best"

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None

    def improves(self, value: float) -> bool:
        if not is_finite_number(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; True when it is a new best."""
        if self.improves(value):
            self.best, self.best_epoch = value, epoch
            return True
        return False

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        self.update(row[self.monitor], run.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
