"""EarlyStopping: stop when the monitored metric has not improved for ``patience`` epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.config import is_finite_number
from cnnctl.errors import UsageError
from cnnctl.training.hooks.base import Hook
from cnnctl.training.hooks.best_metric import BestMetric

if TYPE_CHECKING:
    from cnnctl.training.state import Run


class EarlyStopping(Hook):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    key = "early_stopping"

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True) -> None:
        if patience < 1:
            raise UsageError(f"patience must be at least 1, not {patience}")
        self.tracker = BestMetric(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best = restore_best
        self.wait = 0
        self.stopped_epoch: int | None = None

    @property
    def monitor(self) -> str:
        return self.tracker.monitor

    def step(self, value: float, epoch: int, *, last: bool = False) -> tuple[bool, str | None]:
        """Feed one epoch's value; returns ``(should_stop, reason)``, the reason a sentence a person can read.

        ``last``: this is the run's last configured epoch, so it ends here anyway: patience running out now is
        not an early stop.
        """
        if not is_finite_number(value):
            if last:
                return False, None
            self.stopped_epoch = epoch
            return True, f"{self.monitor} is {value} at epoch {epoch}; stopping."
        if self.tracker.update(value, epoch):
            self.wait = 0
            return False, None
        self.wait += 1
        if self.wait >= self.patience and not last:
            self.stopped_epoch = epoch
            best = self.tracker.best
            return True, (
                f"{self.monitor} did not improve by more than {self.tracker.min_delta} for {self.patience} epochs "
                f"(best {best:.4f} at epoch {self.tracker.best_epoch}); stopping at epoch {epoch}."
            )
        return False, None

    def restart_patience(self) -> None:
        """A run extended on resume (``--set train.epochs=N``) gets a fresh patience count."""
        self.wait, self.stopped_epoch = 0, None

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        _, reason = self.step(row[self.monitor], run.epoch, last=run.epoch >= run.config.train.epochs)
        reason = run.dist.broadcast_reason(reason)  # rank 0 decides for all (a reason only when it stops)
        if reason is not None:
            run.stop_reason = reason

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracker.state_dict(), "wait": self.wait, "patience": self.patience,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
        self.wait = state.get("wait", 0)
        self.stopped_epoch = state.get("stopped_epoch")
