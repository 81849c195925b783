"""The hooks of the training loop, one file each (``base.Hook`` for the events); every name re-exported here."""

from cnnctl.training.hooks.base import Hook, optimizer_step_hooks, steps_hooks
from cnnctl.training.hooks.best_metric import BestMetric, resolve_mode
from cnnctl.training.hooks.checkpoints import EpochCheckpoint, StepCheckpoint
from cnnctl.training.hooks.early_stopping import EarlyStopping
from cnnctl.training.hooks.interruption import Interruption
from cnnctl.training.hooks.lr_schedule import LRSchedule
from cnnctl.training.hooks.metrics_csv import METRIC_COLUMNS, MetricsCSV, write_metrics
from cnnctl.training.hooks.progress import REFRESH_SECONDS, Progress, epoch_line, in_notebook
from cnnctl.training.hooks.recorders import ActivationStatsHook, GradientRecorderHook
from cnnctl.training.hooks.tensorboard import (
    TensorBoard,
    final_metrics,
    first_layer_filters,
    hparam_values,
    require_tensorboard,
)
from cnnctl.training.hooks.unfreeze import Unfreeze

__all__ = [
    "Hook",
    "steps_hooks",
    "optimizer_step_hooks",
    "resolve_mode",
    "BestMetric",
    "EarlyStopping",
    "LRSchedule",
    "REFRESH_SECONDS",
    "in_notebook",
    "Progress",
    "epoch_line",
    "METRIC_COLUMNS",
    "MetricsCSV",
    "write_metrics",
    "TensorBoard",
    "hparam_values",
    "final_metrics",
    "first_layer_filters",
    "require_tensorboard",
    "StepCheckpoint",
    "EpochCheckpoint",
    "Interruption",
    "GradientRecorderHook",
    "ActivationStatsHook",
    "Unfreeze",
]
