"""Interruption: SIGINT / SIGTERM finish the step, save last.pt and end the loop."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from cnnctl.interrupts import install_handlers, restore_handlers, second_signal
from cnnctl.training.hooks.base import Hook, log

if TYPE_CHECKING:
    from cnnctl.training.engine import EpochState
    from cnnctl.training.state import Run


class Interruption(Hook):
    """SIGINT / SIGTERM: the first asks the loop to stop after the current step, saving last.pt there; a second
    exits at once (the last checkpoint stays as it is). The loop then returns and the caller raises
    ``errors.Interrupted``; nothing is raised from inside the loop."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._run: Run | None = None

    def on_train_start(self, run: Run) -> None:
        self._run = run
        self._previous = install_handlers(self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        run = self._run
        if run is None or run.interrupted is not None:  # second signal: leave now
            second_signal(signum)
            return
        run.interrupted = signum
        log.warning("%s received: finishing this step and saving last.pt (press Ctrl-C again to quit at once)",
                    signal.Signals(signum).name)

    def on_step_end(self, run: Run, state: EpochState) -> None:
        if run.interrupted is not None:
            state.check_finite(run.epoch, kept=run.has_checkpoint())
            if run.last_saved_step != run.step:
                run.save("last.pt", partial=state)
            run.stop_after_step = True

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        if run.interrupted is not None and run.last_saved_step != run.step:
            run.save("last.pt")

    def on_train_end(self, run: Run) -> None:
        restore_handlers(self._previous)
