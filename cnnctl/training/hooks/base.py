"""What happens during training besides the optimizer step, as small objects the loop calls at named events.

The loop (``engine.fit``) calls, on every hook of ``run.hooks`` in list order:

| event | when | typical use |
|---|---|---|
| ``on_train_start(run)`` | once, before the first step | open a writer, install signal handlers |
| ``on_epoch_start(run, state)`` | before each epoch's first step (``state.step`` > 0 on a mid-epoch resume) | a progress bar |
| ``on_before_optimizer_step(run, state)`` | gradients ready: after backward (and GradScaler's unscale), before clipping | gradient statistics |
| ``on_after_optimizer_step(run, state)`` | right after ``optimizer.step()`` (``state.step``: the step's index in its epoch) | update sizes |
| ``on_step_end(run, state)`` | after every optimizer step (``run.step`` already counts it) | lr schedule, step checkpoints |
| ``on_epoch_end(run, row)`` | after each epoch's validation; ``row`` is its metrics.csv row, in ``run.history`` | early stopping, metrics.csv, checkpoints |
| ``on_train_end(run)`` | once, when the loop returns or raises | close files, restore handlers |

A hook steers the loop only through ``run``: ``run.stop_reason = "..."`` ends training after this epoch (early
stopping, a pruner); ``run.stop_after_step = True`` ends the epoch after this step (interruption), the hook having
saved what must be kept. A hook with state that must survive a resume names it ``key``: its ``state_dict()`` is
stored in the checkpoint under ``callbacks[key]`` and handed back to ``load_state_dict`` on resume.

Per step the hooks run on the hot path: they must not synchronise with the device unless it is due (see
``Progress``). Only hooks that override ``on_step_end`` (or an optimizer-step event) are called per step."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnctl.training.engine import EpochState
    from cnnctl.training.state import Run


log = logging.getLogger("cnnctl")


class Hook:
    """The base: every event does nothing. Subclass it and override the events you need."""

    key: str | None = None  # where the checkpoint keeps this hook's state (None: it has none)

    def on_train_start(self, run: Run) -> None:
        pass

    def on_epoch_start(self, run: Run, state: EpochState) -> None:
        pass

    def on_before_optimizer_step(self, run: Run, state: EpochState) -> None:
        pass

    def wants_unscaled_gradients(self, run: Run, state: EpochState) -> bool:
        """With a GradScaler (fp16), whether ``on_before_optimizer_step`` needs this step's gradients unscaled
        (unscaling costs a pass over them: say False on steps you skip)."""
        return True

    def on_after_optimizer_step(self, run: Run, state: EpochState) -> None:
        pass

    def on_step_end(self, run: Run, state: EpochState) -> None:
        pass

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        pass

    def on_train_end(self, run: Run) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def summary_items(self) -> dict[str, Any]:
        """What this hook adds to summary.json at the end of the run (the recorders: their figures under their key).
        ``finish.finish`` asks every hook, so it needs to know none of them by type."""
        return {}

    def on_run_end(self, run: Run, summary: dict[str, Any]) -> None:
        """Once, after the test evaluation: ``summary`` is summary.json's content (a run that raised has none)."""


def steps_hooks(hooks: list[Hook]) -> list[Hook]:
    """The hooks that do something per step (the rest are skipped on the hot path)."""
    return [h for h in hooks if type(h).on_step_end is not Hook.on_step_end]


def optimizer_step_hooks(hooks: list[Hook]) -> tuple[list[Hook], list[Hook]]:
    """The hooks that override ``on_before_optimizer_step`` and ``on_after_optimizer_step`` (the others cost the
    hot path nothing)."""
    return ([h for h in hooks if type(h).on_before_optimizer_step is not Hook.on_before_optimizer_step],
            [h for h in hooks if type(h).on_after_optimizer_step is not Hook.on_after_optimizer_step])
