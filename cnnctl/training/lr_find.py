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
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.config import Config
from cnnctl.errors import UsageError

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


@dataclass
class _Setup:
    model: Any
    optimizer: Any
    batches: Callable[[int], Iterator[Any]]  # epoch -> its training batches
    amp_dtype: Any
    scaler: Any
    grad_clip: float | None
    criterion: Any  # train.loss, as training builds it
    device: Any


def _assemble(config: Config, device: str | None) -> _Setup:
    """Model, data and optimizer as training builds them (``run.assemble``: no run directory, no hooks)."""
    import torch

    from cnnctl.training.distributed import DistContext
    from cnnctl.training.losses import create_loss
    from cnnctl.training.optim import create_optimizer
    from cnnctl.training.run import assemble

    run = assemble(config, dist=DistContext(), device=device)  # one process, even under torchrun
    # A fresh optimizer of the same kind and settings: assemble's schedule has already moved the lrs (warmup
    # starts low) and, for onecycle, the momentum; the range test sets the lr itself.
    optimizer = create_optimizer(run.model, config.optimizer)
    scaler = torch.amp.GradScaler(run.device.type) if run.amp_dtype == torch.float16 else None
    return _Setup(run.model, optimizer, run.train_loader.batches, run.amp_dtype, scaler, config.train.grad_clip,
                  create_loss(config.train.loss, config.train.label_smoothing), run.device)


def _out_folder(out_dir: str | Path, name: str) -> Path:
    from cnnctl.training.run import new_run_dir

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
    import torch
    from torch import nn

    _check(start, end, steps, diverge)
    started = time.perf_counter()
    setup = _assemble(config, device)
    model, optimizer = setup.model, setup.optimizer
    ratios = [g.get("initial_lr", g["lr"]) / config.optimizer.lr for g in optimizer.param_groups]
    criterion = setup.criterion
    factor = (end / start) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, lowest, stop_reason = 0.0, math.inf, None
    epoch, batches = 0, setup.batches(0)
    model.train()
    for i in range(steps):
        lr = start * factor**i
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        batch = next(batches, None)
        if batch is None:  # cycle through the training set, a new shuffle each pass
            epoch += 1
            batches = setup.batches(epoch)
            batch = next(batches)
        x, y = batch
        with torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if setup.scaler is not None:
            setup.scaler.scale(loss).backward()
            setup.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if setup.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), setup.grad_clip)
        if setup.scaler is not None:
            setup.scaler.step(optimizer)
            setup.scaler.update()
        else:
            optimizer.step()
        value = float(loss.detach())  # one sync per step: the stopping rule needs the number
        if not math.isfinite(value):
            stop_reason = f"the loss became {value} at lr {lr:.3g}"
            break
        avg = BETA * avg + (1 - BETA) * value
        smooth = avg / (1 - BETA ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(smooth)
        lowest = min(lowest, smooth)
        if smooth > diverge * lowest:
            stop_reason = f"the smoothed loss {smooth:.3g} passed {diverge:g} x its minimum {lowest:.3g} at lr {lr:.3g}"
            break
    if len(lrs) < 3:
        raise _too_short(start, factor, lrs, stop_reason)
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
    from cnnctl.training.recorders import _figure

    fig, (ax,) = _figure((7.0, 4.5), 1)
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
