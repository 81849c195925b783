"""The learning-rate range test (Smith 2017, https://arxiv.org/abs/1506.01186; as fastai's and Lightning's
``lr_find``): from the config's initial state, raise the lr exponentially step by step and watch the loss.

The loss is smoothed as fastai does (an exponential moving average, beta 0.98, with bias correction, so the first
steps are not pulled toward zero) and the test stops once the smoothed loss exceeds ``diverge`` times its minimum,
or the loss is not finite. Two readings of the curve:

- ``min/10``: the lr at the smoothed loss's minimum, divided by 10 (fastai's original rule). The minimum is where
  the lr is already too high to keep improving; a tenth of it is safely on the descending side.
- ``steepest``: where the smoothed loss falls fastest per decade of lr, searched from the 10th step to the
  minimum (Lightning's rule, ``skip_begin=10``); noisier, since it rests on a derivative of a noisy curve.

The printed suggestion is ``SUGGESTION_RULE``, measured on lenet5-digits (Adam, config lr 0.002): over eight seeds
(``scripts/check_lr_find.py``) min/10 gave 0.0027-0.0051 and a mean test accuracy of 97.3% against 97.2% with the
bundled lr; steepest gave 0.024, which reached 88.9% (one seed); fastai's newer "valley" reading gave 0.0011-0.0017
and 95.3-95.8% (three seeds, bundled lr 97.2-98.1% on them). On a short test the smoothed curve's steepest point
sits late (the average lags the loss) and near the cliff, where a whole run at that lr is unstable.

Momentum and Adam's moments carry gradients of earlier, smaller lrs into each step (SGD's velocity remembers about
1/(1 - momentum) steps, 10 at 0.9), so the loss answers an lr a few steps late: with 200 steps over 8 decades
that lag is about 0.4 decade, and the curve of a momentum optimizer is shifted a little toward higher lrs.
Every optimizer works: each parameter group's lr is set at each step, keeping the groups' ratios.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.config import Config
from cnnctl.errors import UsageError
from cnnctl.training.hooks.base import Hook

if TYPE_CHECKING:
    from cnnctl.training.engine import EpochState
    from cnnctl.training.state import Run

BETA = 0.98  # fastai's smoothing
SKIP_BEGIN = 10  # Lightning's: the first steps' slope says more about the start-up than about the lr
SUGGESTION_RULE = "min/10"
COLUMNS = ["step", "lr", "loss", "smoothed_loss"]
# --start and --end: up to 1000, where the suggestion (a tenth of an lr the test reached) stays within
# optimizer.lr's own limit, 100; from 1e-12, below which a step moves no float32 weight (a gradient of 1 times
# 1e-12 is 10^5 times under a weight of 1's rounding, 1.2e-7), far from the denormals (a --start of 1e-320 made
# the per-step factor infinite).
LR_LIMITS = (1e-12, 1000.0)
MAX_STEPS = 10_000  # fastai and Lightning take 100; 10,000 batches are epochs of most datasets, not a range test


class LRFinder(Hook):
    """The range test as a hook on the ordinary loop (``engine.fit``), as Lightning's ``LearningRateFinder`` is a
    callback: the training step is fit's own. Before the first step and after each, it sets the next step's lr
    (``start`` times ``factor`` a step; each parameter group keeps its ratio to optimizer.lr); after each, it records
    the step's loss and its smoothed value, and ends the loop (``run.stop_after_step``) when the loss diverges (the
    reason in ``run.stop_reason``) or after ``steps`` steps."""

    def __init__(self, start: float, end: float, steps: int, diverge: float) -> None:
        self.start, self.steps, self.diverge = start, steps, diverge
        self.factor = (end / start) ** (1 / (steps - 1))
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.avg, self.lowest = 0.0, math.inf
        self.ratios: list[float] = []

    def on_train_start(self, run: Run) -> None:
        groups = run.optimizer.param_groups
        self.ratios = [g.get("initial_lr", g["lr"]) / run.config.optimizer.lr for g in groups]
        self._set_lr(run, 0)

    def on_step_end(self, run: Run, state: EpochState) -> None:
        i = run.step - 1  # this step's index in the test
        value = float(state.losses[state.step - 1])  # one sync per step: the stopping rule needs the number
        reason = self._record(self.start * self.factor**i, value)
        if reason is not None:
            run.stop_reason = reason
        if reason is not None or run.step >= self.steps:
            run.stop_after_step = True
        else:
            self._set_lr(run, run.step)

    def _set_lr(self, run: Run, i: int) -> None:
        lr = self.start * self.factor**i
        for group, ratio in zip(run.optimizer.param_groups, self.ratios, strict=True):
            group["lr"] = lr * ratio

    def _record(self, lr: float, value: float) -> str | None:
        """Keep one step's loss and its smoothed value; the reason to stop, if the loss diverged."""
        if not math.isfinite(value):
            return f"the loss became {value} at lr {lr:.3g}"
        self.avg = BETA * self.avg + (1 - BETA) * value
        smooth = self.avg / (1 - BETA ** (len(self.lrs) + 1))
        self.lrs.append(lr)
        self.losses.append(value)
        self.smoothed.append(smooth)
        self.lowest = min(self.lowest, smooth)
        if smooth > self.diverge * self.lowest:
            return f"the smoothed loss {smooth:.3g} passed {self.diverge:g} x its minimum {self.lowest:.3g} at lr {lr:.3g}"
        return None


def _range_test_run(config: Config, device: str | None, finder: LRFinder) -> Run:
    """The run the finder drives: model, data, loss, optimizer and scaler as training assembles them
    (``assembly.assemble``: no run directory, nothing written) under a constant schedule, since the finder sets
    every lr; enough passes over the training set for the test (a new shuffle each), no validation, one process
    even under torchrun, and no hook but the finder."""
    from cnnctl.config import SchedulerConfig
    from cnnctl.training.assembly import assemble
    from cnnctl.training.distributed import DistContext
    from cnnctl.training.state import Run

    config = config.model_copy(update={"scheduler": SchedulerConfig()})  # no warmup, no onecycle momentum
    single = DistContext()
    parts = assemble(config, dist=single, device=device)
    # The plain model, as before the test was a hook: compiling it would cost more than a 200-step test.
    parts = dataclasses.replace(parts, module=parts.model, val_loader=None, test_loader=None)
    passes = math.ceil(finder.steps / len(parts.train_loader))
    config = config.model_copy(update={"train": config.train.model_copy(update={"epochs": passes})})
    return Run(config, parts, [finder], single, run_dir=None)


def _out_folder(out_dir: str | Path, name: str) -> Path:
    from cnnctl.training.rundir import new_run_dir

    return new_run_dir(Path(out_dir), f"lr-find-{name}")


def _check(start: float, end: float, steps: int, diverge: float) -> None:
    low, high = LR_LIMITS
    for flag, lr in (("--start", start), ("--end", end)):
        if not (math.isfinite(lr) and low <= lr <= high):
            raise UsageError(f"{flag} {lr!r}: give a learning rate from {low:g} to {high:g}; the defaults are --start 1e-7 "
                             "--end 10")
    if not end > start:
        raise UsageError(f"--end ({end:g}) must be a learning rate above --start ({start:g})")
    if not 2 * SKIP_BEGIN <= steps <= MAX_STEPS:
        raise UsageError(f"--steps {steps:,}: give from {2 * SKIP_BEGIN} (a curve worth reading) to {MAX_STEPS:,} "
                         "(a range test, not a training run); the default is 200")
    if not diverge > 1:
        raise UsageError(f"diverge must be above 1 (the smoothed loss's multiple of its minimum), not {diverge}")


def _too_short(start: float, factor: float, lrs: list[float], stop_reason: str | None) -> UsageError:
    """Why fewer than 3 steps is no curve, and what would help. The first loss is measured at the initial weights,
    before any step: if it is not finite, no --start helps. Otherwise the loss broke within a step or two of
    --start, so a lower one (or a slower climb) helps, unless --start is already the lowest allowed."""
    if not lrs:
        return UsageError(f"lr-find: the loss is not finite on the first batch, at the initial weights, before any "
                          f"step at --start {start:g}: the learning rate is not the cause; check the data "
                          "(data.normalize) and the model (cnnctl summary CONFIG)")
    said = f"lr-find: the loss diverged within {len(lrs)} step{'s' * (len(lrs) > 1)} of --start {start:g} ({stop_reason})"
    lower = max(start / 1000, LR_LIMITS[0])
    if lower < start:
        return UsageError(f"{said}; start lower, e.g. --start {lower:g}, or climb slower with more --steps (each "
                          f"step now multiplies the lr by {factor:.3g})")
    return UsageError(f"{said}; --start is already the lowest allowed ({LR_LIMITS[0]:g}), so the learning rate is "
                      "not the cause: check the data (data.normalize) and the model (cnnctl summary CONFIG)")


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, float | None]:
    """The two readings of a smoothed curve: ``min/10`` and ``steepest`` (see the module docstring)."""
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    steepest = None
    lo = min(SKIP_BEGIN, max(best - 2, 0))
    if best - lo >= 2:
        logs = [math.log10(lr) for lr in lrs]
        slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(lo + 1, best)]
        steepest = lrs[lo + 1 + min(range(len(slopes)), key=slopes.__getitem__)] if slopes else None
    return {"min_loss_lr": lrs[best], "min/10": lrs[best] / 10, "steepest": steepest}


def lr_find(config: Config, *, out_dir: str | Path, start: float = 1e-7, end: float = 10.0, steps: int = 200,
            device: str | None = None, diverge: float = 4.0) -> dict[str, Any]:
    """Run the range test for ``config`` and write ``lr_find.csv`` and ``lr_find.png`` into a new folder
    ``out_dir/lr-find-NAME`` (nothing else is written). Returns the suggestion, both readings, the rule used,
    the lrs and losses, why it stopped, and the files."""
    from cnnctl.training.engine import fit

    _check(start, end, steps, diverge)
    started = time.perf_counter()
    finder = LRFinder(start, end, steps, diverge)
    run = _range_test_run(config, device, finder)
    fit(run)
    lrs, losses, smoothed, stop_reason = finder.lrs, finder.losses, finder.smoothed, run.stop_reason
    if len(lrs) < 3:
        raise _too_short(start, finder.factor, lrs, stop_reason)
    readings = suggest(lrs, smoothed)
    suggestion = readings[SUGGESTION_RULE]
    folder = _out_folder(out_dir, config.name or "run")
    csv_path = _write_csv(folder / "lr_find.csv", lrs, losses, smoothed)
    png_path = plot_lr_find(lrs, losses, smoothed, readings, folder / "lr_find.png",
                            title=f"{config.name}: {config.optimizer.name}, {len(lrs)} steps")
    return {"suggestion": suggestion, "rule": SUGGESTION_RULE, **readings, "optimizer": config.optimizer.name,
            "config_lr": config.optimizer.lr, "steps": len(lrs), "stopped_early": stop_reason is not None,
            "stop_reason": stop_reason or f"reached --end {end:g}", "lrs": lrs, "losses": losses,
            "smoothed": smoothed, "out_dir": str(folder), "csv": str(csv_path), "png": str(png_path),
            "seconds": time.perf_counter() - started}


def _write_csv(path: Path, lrs: list[float], losses: list[float], smoothed: list[float]) -> Path:
    from cnnctl.training.checkpoint import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i, row in enumerate(zip(lrs, losses, smoothed, strict=True)):
        writer.writerow([i, *map(repr, row)])
    write_text(path, buffer.getvalue())
    return path


def plot_lr_find(lrs: list[float], losses: list[float], smoothed: list[float], readings: dict[str, float | None],
                 path: Path, *, title: str = "") -> Path:
    """Loss against lr (log x): raw and smoothed, with both readings marked and the printed one labelled."""
    from cnnctl.insight.plots import save_figure
    from cnnctl.training.recorder_plots import figure

    fig, (ax,) = figure((7.0, 4.5), 1)
    ax.plot(lrs, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=1.6, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    top = max(smoothed[0] * 1.5, min(smoothed) * 2)
    ax.set_ylim(min(min(losses), min(smoothed)) * 0.9, top)
    for key, color in (("min/10", "tab:red"), ("steepest", "tab:green")):
        lr = readings.get(key)
        if lr is not None:
            mark = " (suggested)" if key == SUGGESTION_RULE else ""
            ax.axvline(lr, color=color, linestyle="--", linewidth=1.0, label=f"{key}: {lr:.2g}{mark}")
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def format_result(result: dict[str, Any]) -> str:
    """The lines ``cnnctl lr-find`` prints."""
    steep = result["steepest"]
    return "\n".join([
        f"suggested lr: {result['suggestion']:.3g}  ({result['rule']}: a tenth of the lr at the smoothed loss's "
        f"minimum, {result['min_loss_lr']:.3g})",
        f"steepest descent of the smoothed loss at lr {steep:.3g}" if steep else "steepest descent: curve too short",
        f"config lr: {result['config_lr']:.3g} ({result['optimizer']}); {result['steps']} steps, stopped: "
        f"{result['stop_reason']}",
        f"wrote {result['png']} and {result['csv']}",
    ])


def lr_find_command(config: str | Path, overrides: list[str] | None = None, *, start: float = 1e-7,
                    end: float = 10.0, steps: int = 200, out: str | None = None,
                    device: str | None = None) -> dict[str, Any]:
    """``cnnctl lr-find CONFIG``: load the config (a file or a bundled name) with ``--set`` overrides and run
    the test into ``out`` (default: the config's ``out``)."""
    from cnnctl.config import load_config

    cfg = load_config(config, overrides)[0]
    return lr_find(cfg, out_dir=out or cfg.out, start=start, end=end, steps=steps, device=device)
