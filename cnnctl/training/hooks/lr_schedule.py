"""LRSchedule: the one place the learning-rate schedule steps (per step or per epoch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.training.hooks.base import Hook

if TYPE_CHECKING:
    from cnnctl.training.engine import EpochState
    from cnnctl.training.state import Run


class LRSchedule(Hook):
    """The one place the lr schedule steps: at the end of every optimizer step (``interval == "step"``), or at the
    end of each epoch with its metrics (``"epoch"``, plateau). Keep it first: later hooks read the new lr."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.per_step = scheduler.interval == "step"

    def on_step_end(self, run: Run, state: EpochState) -> None:
        if self.per_step:
            self.scheduler.step()

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        if not self.per_step:
            self.scheduler.step(row)
