"""The training-time recorders as hooks: gradient flow (gradients.csv/png) and activation statistics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.errors import ConfigError
from cnnctl.training.hooks.base import Hook
from cnnctl.training.hooks.tensorboard import TensorBoard

if TYPE_CHECKING:
    from cnnctl.training.engine import EpochState
    from cnnctl.training.state import Run


def _writer(tensorboard: TensorBoard | None) -> Any:
    """The open SummaryWriter of the TensorBoard hook the run handed this recorder, if any: the recorders add their
    scalars to it, and it flushes after them, being later in the hook list (``assembly._hooks``)."""
    return tensorboard.writer if tensorboard is not None else None


class GradientRecorderHook(Hook):
    """``train.record_gradients_every: N``: per layer, the gradient norm and the update/weight ratio every Nth
    step of each epoch (``recorders.GradientRecorder`` on ``run.model``), averaged per epoch into
    RUN/gradients.csv (each epoch) and drawn as RUN/gradients.png (when training ends). Its sums ride in the checkpoint, so a resumed run writes
    the same gradients.csv as an uninterrupted one. Rank 0 only (the gradients are all-reduced: every rank's
    are the same)."""

    key = "gradients"

    def __init__(self, run_dir: Path, model: Any, every_n_steps: int, tensorboard: TensorBoard | None = None) -> None:
        from cnnctl.training.recorders import GradientRecorder

        self.run_dir, self.tensorboard = run_dir, tensorboard
        # Frozen layers too: train.freeze may release them, and gradients.png marks them while they are held.
        self.recorder = GradientRecorder(model, every_n_steps, include_frozen=True)

    def wants_unscaled_gradients(self, run: Run, state: EpochState) -> bool:
        return self.recorder.is_sampled(state.step)

    def on_before_optimizer_step(self, run: Run, state: EpochState) -> None:
        self.recorder.before_optimizer_step(state.step)

    def on_after_optimizer_step(self, run: Run, state: EpochState) -> None:
        self.recorder.after_optimizer_step(state.step)

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        from cnnctl.training.recorders import tensorboard_scalars

        rows = self.recorder.end_epoch(row["epoch"])
        self.recorder.write_csv(self.run_dir / "gradients.csv")
        writer = _writer(self.tensorboard)
        if writer is not None:
            for tag, value in tensorboard_scalars(gradient_rows=rows):
                writer.add_scalar(tag, value, row["epoch"])

    def on_train_end(self, run: Run) -> None:
        # Drawn once, not per epoch: a figure costs ~70 ms, 6% of a 10-epoch lenet5-digits run if drawn each epoch.
        from cnnctl.training.recorder_plots import plot_gradients

        if self.recorder.rows:
            plot_gradients(self.recorder.rows, self.run_dir / "gradients.png", title=f"{run.config.name}: gradient "
                           f"flow (every {self.recorder.every_n_steps} steps, mean per epoch)")

    def summary_items(self) -> dict[str, Any]:
        return {self.key: self.summary()}

    def summary(self) -> dict[str, Any] | None:
        """summary.json's ``gradients``: the last epoch's first/last-layer norms and their ratio."""
        from cnnctl.training.recorders import gradient_summary

        figures = gradient_summary(self.recorder.rows)
        return None if figures is None else {**figures, "every_n_steps": self.recorder.every_n_steps}

    def state_dict(self) -> dict[str, Any]:
        return self.recorder.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.recorder.load_state_dict(state)
        except ValueError as e:  # another model's layers
            raise ConfigError(f"--resume: {e}") from None
        except (KeyError, TypeError, AttributeError):
            raise ConfigError("--resume: the checkpoint's gradient record is not one cnnctl wrote; resume from another "
                              "checkpoint, or without the record: --set train.record_gradients_every=null") from None


class ActivationStatsHook(Hook):
    """``train.record_activations: true``: after each epoch, per activation layer over the validation split,
    the dead units (never positive) and the saturated outputs (``recorders.activation_stats``), drawn as
    RUN/activations.png when training ends. One extra forward pass over the validation split per epoch. Rank 0 only, on its shard
    of the split under torchrun."""

    key = "activations"

    def __init__(self, run_dir: Path, tensorboard: TensorBoard | None = None) -> None:
        self.run_dir, self.tensorboard = run_dir, tensorboard
        self.by_epoch: dict[int, list[dict[str, Any]]] = {}

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        from cnnctl.training.recorders import activation_stats, tensorboard_scalars

        if run.val_loader is None:
            return
        stats = activation_stats(run.model, run.val_loader.batches(0))
        self.by_epoch[int(row["epoch"])] = stats
        writer = _writer(self.tensorboard)
        if writer is not None:
            for tag, value in tensorboard_scalars(activation_rows=stats):
                writer.add_scalar(tag, value, row["epoch"])

    def on_train_end(self, run: Run) -> None:
        from cnnctl.training.recorder_plots import plot_activations

        if self.by_epoch:  # drawn once, as gradients.png
            plot_activations(self.by_epoch, self.run_dir / "activations.png",
                             title=f"{run.config.name}: activations over the validation split")

    def summary_items(self) -> dict[str, Any]:
        return {self.key: self.summary()}

    def summary(self) -> dict[str, Any] | None:
        """summary.json's ``activations``: the last epoch's statistics, one entry per activation layer."""
        if not self.by_epoch:
            return None
        epoch = max(self.by_epoch)
        return {"epoch": epoch, "split": "val", "layers": self.by_epoch[epoch]}

    def state_dict(self) -> dict[str, Any]:
        return {"by_epoch": {str(e): rows for e, rows in self.by_epoch.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.by_epoch = {int(e): rows for e, rows in state.get("by_epoch", {}).items()}
