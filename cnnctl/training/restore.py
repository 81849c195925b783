"""Restore: a checkpoint's state put back into a ``Run``, and the resume policy's checks that need the checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.errors import ConfigError
from cnnctl.runtime import set_rng_state
from cnnctl.training.checkpoint import load_model_state
from cnnctl.training.engine import EpochState

if TYPE_CHECKING:
    from cnnctl.training.hooks import EarlyStopping
    from cnnctl.training.state import Run


def restore(run: Run, ckpt: dict[str, Any], *, source: str = "checkpoint",
            early_stopping: EarlyStopping | None = None) -> None:
    """Put a checkpoint's state into ``run``: weights, optimizer, schedule, every hook's state (by its ``key``),
    counters, RNG, a partial epoch.

    A checkpoint of another number of epochs is being extended (``--set train.epochs=N``): the schedule is
    re-planned for N epochs and ``early_stopping`` (the run's, among its hooks) gets a fresh patience. A run with
    nothing left to do is refused.
    """
    replan = ckpt["config"]["train"]["epochs"] != run.config.train.epochs
    load_model_state(run.model, ckpt["model"], source)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"], replan=replan)
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    saved = ckpt.get("callbacks") or {}
    for hook in run.hooks:
        if hook.key and saved.get(hook.key):
            hook.load_state_dict(saved[hook.key])
    if replan and early_stopping is not None:
        early_stopping.restart_patience()
    run.epoch = ckpt["epoch"]
    run.step = run.last_saved_step = ckpt["step"]
    run.history = list(ckpt.get("history") or [])
    set_rng_state(ckpt["rng"])
    partial = ckpt.get("partial_epoch")
    run.partial = EpochState.from_state(partial, run.device) if partial else None
    epochs = run.config.train.epochs
    if run.epoch >= epochs and run.partial is None:
        raise ConfigError(f"--resume: {run.run_dir} already finished {run.epoch} of {epochs} epochs; "
                          f"to train on, add --set train.epochs=N with N > {run.epoch}")
    if early_stopping is not None and early_stopping.stopped_epoch is not None:
        raise ConfigError(f"--resume: {run.run_dir} stopped early at epoch {early_stopping.stopped_epoch}; to "
                          "train on, add --set train.epochs=N (which also restarts the patience count)")
