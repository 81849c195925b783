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
``Progress``). Only hooks that override ``on_step_end`` (or an optimizer-step event) are called per step.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.config import is_finite_number
from cnnctl.errors import ConfigError, UsageError, WriteError
from cnnctl.interrupts import second_signal
from cnnctl.io import check_writable, writing

if TYPE_CHECKING:
    from cnnctl.training.engine import EpochState
    from cnnctl.training.run import Run

log = logging.getLogger("cnnctl")

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"]
REFRESH_SECONDS = 1.0


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


# ---------------------------------------------------------------- best metric, early stopping


def resolve_mode(monitor: str, mode: str) -> str:
    """``auto`` means ``min`` for a loss and ``max`` for an accuracy."""
    if mode not in ("auto", "min", "max"):
        raise UsageError(f"mode must be auto, min or max, not {mode!r}")
    if mode == "auto":
        return "min" if monitor.endswith("loss") else "max"
    return mode


class BestMetric(Hook):
    """Tracks the best value of one monitored metric and the epoch it came at (which decides best.pt)."""

    key = "best"

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None

    def improves(self, value: float) -> bool:
        if not is_finite_number(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; True when it is a new best."""
        if self.improves(value):
            self.best, self.best_epoch = value, epoch
            return True
        return False

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        self.update(row[self.monitor], run.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")


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


# ---------------------------------------------------------------- the lr schedule


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


# ---------------------------------------------------------------- progress, metrics, TensorBoard


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


class MetricsCSV(Hook):
    """metrics.csv rewritten whole after each epoch (atomically: a kill never leaves half a row) and the epoch's
    log line. Rank 0 only."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        write_metrics(self.run_dir, run.history)
        improved = run.best.best_epoch == run.epoch
        log.info(epoch_line(row, run.config.train.epochs, run.train_loader.num_samples, improved))


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    from cnnctl.training.checkpoint import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _csv_value(row.get(k)) for k in METRIC_COLUMNS})
    write_text(run_dir / "metrics.csv", buffer.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def epoch_line(row: dict[str, Any], epochs: int, samples: int, improved: bool) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}", f"train_acc {row['train_acc']:.2%}"]
    if row["val_loss"] is not None:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {row['val_acc']:.2%}"]
    parts += [f"lr {row['lr']:.3g}", f"{samples / max(row['epoch_seconds'], 1e-9):,.0f} img/s",
              f"{row['epoch_seconds']:.1f}s"]
    return "  ".join(parts) + ("  *" if improved else "")


class TensorBoard(Hook):
    """``train.tensorboard: true``, under RUN/tensorboard (rank 0 only). Each epoch: the metrics row as scalars and a
    histogram of every weight. At the end of the run: the HParams tab's session (the flattened resolved config
    against the final metrics, so runs under one ``--logdir`` compare there) and two images, the test confusion
    matrix (confusion_matrix.png) and the first conv layer's filters."""

    def __init__(self, run_dir: Path) -> None:
        require_tensorboard()  # the install hint before anything is written
        self.run_dir = run_dir
        self.folder = run_dir / "tensorboard"
        self.writer: Any = None

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return writing(self.folder, note="train.tensorboard: true writes its event files there; make it a writable "
                                         "folder or set train.tensorboard: false")

    def _open(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        with self._writing():
            if self.folder.exists() and not self.folder.is_dir():
                raise WriteError(str(self.folder), "it is a file, not a folder", note="move the file away or set "
                                 "train.tensorboard: false")
            self.folder.mkdir(exist_ok=True)
            # The writer's own thread opens the event file: probed here, a failure is this run's error, not a
            # traceback from that thread.
            check_writable(self.folder)
            return SummaryWriter(log_dir=str(self.folder))

    def on_train_start(self, run: Run) -> None:
        self.writer = self._open()

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        epoch = row["epoch"]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            if row.get(key) is not None:
                self.writer.add_scalar(key.replace("_", "/"), row[key], epoch)  # train/loss, ..., lr
        for name, param in run.model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), epoch)
        with self._writing():  # a failed write of the writer's thread (a full disk) is raised here
            self.writer.flush()

    def on_train_end(self, run: Run) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with self._writing():
                writer.close()

    def on_run_end(self, run: Run, summary: dict[str, Any]) -> None:
        # A writer of its own (a second event file in the same folder, one TensorBoard run): the loop's writer is
        # closed in on_train_end, which also runs when training raises and this never comes.
        from torch.utils.tensorboard.summary import hparams

        writer = self._open()
        try:
            metrics = final_metrics(summary)
            file_writer = writer._get_file_writer()
            for proto in hparams(hparam_values(run.config.dump()), metrics):  # experiment, session start and end
                file_writer.add_summary(proto)
            for tag, value in metrics.items():  # the HParams tab reads each metric from a scalar of its tag
                writer.add_scalar(tag, value, run.epoch)
            confusion = self.run_dir / "confusion_matrix.png"
            if summary.get("test") and confusion.is_file():
                writer.add_image("confusion_matrix/test", _png_pixels(confusion), run.epoch, dataformats="HWC")
            filters = first_layer_filters(run.model)
            if filters is not None:
                writer.add_image("filters/" + filters[0], filters[1], run.epoch)
        finally:
            with self._writing():
                writer.close()


def hparam_values(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as HParams values: dotted keys; numbers and strings kept, the rest (null, true/false,
    lists such as model.layers) as their JSON text, which the HParams tab shows and filters as strings."""
    import json

    from cnnctl.config import flatten_keys

    return {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else json.dumps(v)
            for k, v in flatten_keys(config).items()}


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers runs are compared by in the HParams tab, under ``hparams/``: the best epoch's val metrics, the
    test metrics (with the weights summary.json names), the epoch count and wall time. Missing ones are left out."""
    best, test = summary.get("best") or {}, summary.get("test") or {}
    values = {"best_val_acc": best.get("val_acc"), "best_val_loss": best.get("val_loss"),
              "best_epoch": summary.get("best_epoch"), "test_accuracy": test.get("accuracy"),
              "test_loss": test.get("loss"), "test_top5": test.get("top5"), "epochs": summary.get("epochs"),
              "wall_seconds": summary.get("wall_seconds")}
    return {f"hparams/{k}": float(v) for k, v in values.items() if is_finite_number(v)}


def first_layer_filters(model: Any, limit: int = 64) -> tuple[str, Any] | None:
    """The first conv layer's name and its filters as one picture ``[3, H, W]`` in 0..1, each tile scaled to its own
    min..max as ``cnnctl visualize`` draws them (RGB filters in colour, other inputs one grey tile per channel, at
    most ``limit`` tiles), or None for a network without a conv layer.

    Drawn with torchvision's ``make_grid`` rather than visualize.py's tiles: visualize imports inference, which
    imports the loop and so this module.
    """
    import math

    import torch
    from torchvision.utils import make_grid

    conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return None
    weight = conv[1].weight.detach().float().cpu()
    tiles = weight if weight.shape[1] in (1, 3) else weight.reshape(-1, 1, *weight.shape[2:])
    tiles = tiles[:limit]
    lo = tiles.amin(dim=(1, 2, 3), keepdim=True)
    span = tiles.amax(dim=(1, 2, 3), keepdim=True) - lo
    tiles = (tiles - lo) / span.clamp_min(1e-12)  # a flat tile is 0 - 0: black
    scale = max(1, 32 // max(tiles.shape[2:]))  # 5x5 kernels are a few pixels: enlarge, nearest-neighbour
    tiles = tiles.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return conv[0], make_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))), padding=1, pad_value=1.0)


def _png_pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
    except ImportError:
        raise ConfigError("train.tensorboard: true needs the tensorboard package: pip install 'cnnctl[tensorboard]' "
                          "(or set train.tensorboard: false)") from None


# ---------------------------------------------------------------- checkpoints and interruption


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
    training stops. Put it after the hooks that decide to stop."""

    def __init__(self, save_every: int) -> None:
        self.save_every = save_every

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        names = ["best.pt"] if run.best.best_epoch == run.epoch else []
        if run.epoch % self.save_every == 0 or run.epoch >= run.config.train.epochs or run.stop_reason:
            names.append("last.pt")
        if names:
            run.save(*names)


class Interruption(Hook):
    """SIGINT / SIGTERM: the first asks the loop to stop after the current step, saving last.pt there; a second
    exits at once (the last checkpoint stays as it is). The loop then returns and the caller raises
    ``errors.Interrupted``; nothing is raised from inside the loop."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._run: Run | None = None

    def on_train_start(self, run: Run) -> None:
        self._run = run
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
                self._previous[sig] = signal.signal(sig, self._handle)

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
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ---------------------------------------------------------------- what happens inside: gradients, activations


def _tensorboard_writer(run: Run) -> Any:
    """The open SummaryWriter of the run's TensorBoard hook, if any (recorders add their scalars to it; it
    flushes after them, being later in the list)."""
    return next((h.writer for h in run.hooks if isinstance(h, TensorBoard) and h.writer is not None), None)


class GradientRecorderHook(Hook):
    """``train.record_gradients_every: N``: per layer, the gradient norm and the update/weight ratio every Nth
    step of each epoch (``recorders.GradientRecorder`` on ``run.model``), averaged per epoch into
    RUN/gradients.csv (each epoch) and drawn as RUN/gradients.png (when training ends). Its sums ride in the checkpoint, so a resumed run writes
    the same gradients.csv as an uninterrupted one. Rank 0 only (the gradients are all-reduced: every rank's
    are the same)."""

    key = "gradients"

    def __init__(self, run_dir: Path, model: Any, every_n_steps: int) -> None:
        from cnnctl.training.recorders import GradientRecorder

        self.run_dir = run_dir
        self.recorder = GradientRecorder(model, every_n_steps)

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
        writer = _tensorboard_writer(run)
        if writer is not None:
            for tag, value in tensorboard_scalars(gradient_rows=rows):
                writer.add_scalar(tag, value, row["epoch"])

    def on_train_end(self, run: Run) -> None:
        # Drawn once, not per epoch: a figure costs ~70 ms, 6% of a 10-epoch lenet5-digits run if drawn each epoch.
        from cnnctl.training.recorders import plot_gradients

        if self.recorder.rows:
            plot_gradients(self.recorder.rows, self.run_dir / "gradients.png", title=f"{run.config.name}: gradient "
                           f"flow (every {self.recorder.every_n_steps} steps, mean per epoch)")

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

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.by_epoch: dict[int, list[dict[str, Any]]] = {}

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        from cnnctl.training.recorders import activation_stats, tensorboard_scalars

        if run.val_loader is None:
            return
        stats = activation_stats(run.model, run.val_loader.batches(0))
        self.by_epoch[int(row["epoch"])] = stats
        writer = _tensorboard_writer(run)
        if writer is not None:
            for tag, value in tensorboard_scalars(activation_rows=stats):
                writer.add_scalar(tag, value, row["epoch"])

    def on_train_end(self, run: Run) -> None:
        from cnnctl.training.recorders import plot_activations

        if self.by_epoch:  # drawn once, as gradients.png
            plot_activations(self.by_epoch, self.run_dir / "activations.png",
                             title=f"{run.config.name}: activations over the validation split")

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
