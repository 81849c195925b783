"""Progress: the bar (tqdm), the once-a-second non-finite check and the epoch line."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from cnnctl.training.hooks.base import Hook

if TYPE_CHECKING:
    from cnnctl.training.engine import EpochState
    from cnnctl.training.state import Run


REFRESH_SECONDS = 1.0


def in_notebook() -> bool:
    """Running in a Jupyter kernel, where stderr is no terminal but tqdm.auto draws a bar (a widget with ipywidgets)."""
    return "ipykernel" in sys.modules and "ipykernel.zmqshell" in sys.modules


class Progress(Hook):
    """A tqdm bar on a terminal (rank 0), nothing per step otherwise. Loss and accuracy are read from the device
    at most once a second (``REFRESH_SECONDS``), when the non-finite check runs too."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and (sys.stderr.isatty() or in_notebook())
        self.bar: Any = None
        self.t0 = self.last = 0.0  # set at each epoch's start

    def on_epoch_start(self, run: Run, state: EpochState) -> None:
        self.t0 = self.last = time.perf_counter()
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(run.train_loader), initial=state.step, leave=False, dynamic_ncols=True,
                            desc=f"epoch {run.epoch + 1}/{run.config.train.epochs}", unit="batch")

    def on_step_end(self, run: Run, state: EpochState) -> None:
        now = time.perf_counter()
        if now - self.last < REFRESH_SECONDS:
            return
        self.last = now
        state.check_finite(run.epoch, kept=run.has_checkpoint())
        if self.bar is not None:
            loss, acc, n = state.totals()  # a device sync, once a second
            self.bar.update(state.step - self.bar.n)
            self.bar.set_postfix({"loss": f"{loss:.4f}", "acc": f"{acc:.2%}", "lr": f"{run.scheduler.lr:.3g}",
                                  "img/s": f"{n / (now - self.t0):.0f}"}, refresh=False)  # >= REFRESH_SECONDS

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        self._close()

    def on_train_end(self, run: Run) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def epoch_line(row: dict[str, Any], epochs: int, samples: int, improved: bool) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}", f"train_acc {row['train_acc']:.2%}"]
    if row["val_loss"] is not None:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {row['val_acc']:.2%}"]
    parts += [f"lr {row['lr']:.3g}", f"{samples / max(row['epoch_seconds'], 1e-9):,.0f} img/s",
              f"{row['epoch_seconds']:.1f}s"]
    return "  ".join(parts) + ("  *" if improved else "")
