"""MetricsCSV: metrics.csv, one row an epoch, rewritten whole and atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.training.hooks.base import Hook, log
from cnnctl.training.hooks.progress import epoch_line

if TYPE_CHECKING:
    from cnnctl.training.hooks.best_metric import BestMetric
    from cnnctl.training.state import Run


METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"]
# Written only when a row has them: the frozen layers' lr of a fine-tuning schedule (the Unfreeze hook)
OPTIONAL_COLUMNS = ["lr_frozen"]


class MetricsCSV(Hook):
    """metrics.csv rewritten whole after each epoch (atomically: a kill never leaves half a row) and the epoch's
    log line, marked when ``best`` (the run's BestMetric, handed over by assembly) improved this epoch. Rank 0 only."""

    def __init__(self, run_dir: Path, best: BestMetric) -> None:
        self.run_dir, self.best = run_dir, best

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        write_metrics(self.run_dir, run.history)
        improved = self.best.best_epoch == run.epoch
        log.info(epoch_line(row, run.config.train.epochs, run.train_loader.num_samples, improved))


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    from cnnctl.training.checkpoint import write_text

    columns = METRIC_COLUMNS + [k for k in OPTIONAL_COLUMNS if any(k in row for row in history)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    write_text(run_dir / "metrics.csv", buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value
