"""StepCheckpoint and EpochCheckpoint: last.pt every N steps or epochs, best.pt on improvement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.training.hooks.base import Hook

if TYPE_CHECKING:
    from cnnctl.training.engine import EpochState
    from cnnctl.training.hooks.best_metric import BestMetric
    from cnnctl.training.state import Run


class StepCheckpoint(Hook):
    """``train.checkpoint.save_every_steps: N``: last.pt (with the partial epoch) every N optimizer steps."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, run: Run, state: EpochState) -> None:
        if run.step - run.last_saved_step >= self.every and state.step < len(run.train_loader):
            state.check_finite(run.epoch, kept=run.has_checkpoint())
            run.save("last.pt", partial=state)


class EpochCheckpoint(Hook):
    """best.pt when the monitored metric improved; last.pt every ``save_every`` epochs, at the last epoch and when
    training stops. Put it after the hooks that decide to stop, and after ``best`` (the run's BestMetric, handed
    over by assembly) has seen the epoch."""

    def __init__(self, save_every: int, best: BestMetric) -> None:
        self.save_every, self.best = save_every, best

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        names = ["best.pt"] if self.best.best_epoch == run.epoch else []
        if run.epoch % self.save_every == 0 or run.epoch >= run.config.train.epochs or run.stop_reason:
            names.append("last.pt")
        if names:
            run.save(*names)
