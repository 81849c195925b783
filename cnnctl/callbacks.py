"""Small stateful objects that decide when to stop and which epoch is best.

Each has ``state_dict`` / ``load_state_dict`` so a resumed run decides exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any


def resolve_mode(monitor: str, mode: str) -> str:
    """``auto`` means ``min`` for a loss and ``max`` for an accuracy."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be auto, min or max, not {mode!r}")
    if mode == "auto":
        return "min" if monitor.endswith("loss") else "max"
    return mode


class BestMetric:
    """Tracks the best value of one monitored metric and the epoch it came at."""

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
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

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True) -> None:
        if patience < 1:
            raise ValueError(f"patience must be at least 1, not {patience}")
        self.tracker = BestMetric(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best = restore_best
        self.wait = 0
        self.stopped_epoch: int | None = None

    @property
    def monitor(self) -> str:
        return self.tracker.monitor

    def step(self, value: float, epoch: int) -> tuple[bool, str | None]:
        """Feed one epoch's value; returns ``(should_stop, reason)``, the reason a sentence a person can read."""
        if not math.isfinite(value):
            self.stopped_epoch = epoch
            return True, f"{self.monitor} is {value} at epoch {epoch}; stopping."
        if self.tracker.update(value, epoch):
            self.wait = 0
            return False, None
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            best = self.tracker.best
            return True, (
                f"{self.monitor} did not improve by more than {self.tracker.min_delta} for {self.patience} epochs "
                f"(best {best:.4f} at epoch {self.tracker.best_epoch}); stopping at epoch {epoch}."
            )
        return False, None

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracker.state_dict(), "wait": self.wait, "patience": self.patience,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
        self.wait = state.get("wait", 0)
        self.stopped_epoch = state.get("stopped_epoch")
