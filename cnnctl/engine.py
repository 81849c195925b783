"""The training loop as plain functions: ``train_one_epoch``, ``evaluate`` and ``fit``.

The hot path never synchronises with the device per step: each step's loss and correct count are written
into device buffers and read once per progress refresh (at most once a second) and once per epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnctl import __version__
from cnnctl.callbacks import BestMetric, EarlyStopping
from cnnctl.checkpoint import FORMAT, load_model_state, save_checkpoint, write_json, write_text
from cnnctl.config import Config
from cnnctl.data.base import DataBundle, load_data, make_loader
from cnnctl.distributed import DistContext
from cnnctl.errors import CnnctlError, ConfigError, TrainingError
from cnnctl.metrics import EvalAccumulator
from cnnctl.models.registry import create_model
from cnnctl.optim import create_optimizer, create_scheduler

log = logging.getLogger("cnnctl")

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"]
REFRESH_SECONDS = 1.0


# ---------------------------------------------------------------- device, precision, seeding

# glibc malloc may serve a block above its mmap threshold with a fresh mmap and hand freed heap back to the
# system, and PyTorch's CPU allocator does not cache: activations can then cost page faults at every step. Keeping
# them in the heap made CPU training 27-38% faster in a process that had trained before (scripts/bench_loop.py,
# lenet5; `cnnctl tune` runs its trials in one process); a fresh `cnnctl train` showed no difference this machine
# could resolve (scripts/bench_allocator.py). See README, Performance. The process keeps its peak heap instead of
# handing it back, the trade jemalloc and tcmalloc make. CNNCTL_DEFAULT_MALLOC=1 leaves glibc as it is.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_LIMIT = 1 << 30
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (Linux with glibc only); True when done."""
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("CNNCTL_DEFAULT_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return _allocator_tuned
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, _ALLOCATOR_LIMIT)
                                and libc.mallopt(_M_TRIM_THRESHOLD, _ALLOCATOR_LIMIT))
    except (OSError, AttributeError):
        return False
    return _allocator_tuned



def select_device(spec: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for a device that is not there is bad input."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: CUDA was asked for but torch sees no CUDA device; use device: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {spec} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: mps is not available on this machine; use device: cpu or auto")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto``: bf16 on CUDA that supports it, else fp32."""
    if precision == "auto":
        supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if supported else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    # Measured with scripts/bench_switches.py (README, Performance): on CPU channels_last trains resnet20 1.22x and
    # lenet5 1.07x faster than NCHW; on CUDA it is what tensor-core convolutions want.
    return device.type in ("cuda", "cpu") if setting == "auto" else bool(setting)


def seed_everything(seed: int) -> None:
    """Seed Python and torch (CPU and every CUDA device). Data order and augmentation are seeded apart."""
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    return {
        "python": [version, list(state), gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- interruption


class Interrupt:
    """SIGINT / SIGTERM: the first asks the loop to stop after the current step; a second exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: leave now, the last checkpoint stays as it is
            os._exit(128 + signum)
        self.signum = signum
        log.warning("%s received: finishing this step and saving last.pt (press Ctrl-C again to quit at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> Interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """Training stopped on a signal after saving last.pt; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, resume_command: str) -> None:
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; last.pt saved. Resume with:\n  {resume_command}")


# ---------------------------------------------------------------- one epoch


@dataclass
class EpochState:
    """What one epoch has accumulated so far, on the device: per-step losses and hits, so a mid-epoch checkpoint
    carries them and a resumed epoch sums exactly what the uninterrupted one would."""

    losses: torch.Tensor
    correct: torch.Tensor
    sizes: torch.Tensor
    step: int = 0  # steps done in this epoch

    @classmethod
    def empty(cls, steps: int, device: torch.device) -> EpochState:
        return cls(torch.zeros(steps, device=device), torch.zeros(steps, dtype=torch.int64, device=device),
                   torch.zeros(steps, dtype=torch.int64))

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.cpu(), "correct": self.correct.cpu(), "sizes": self.sizes.clone(), "step": self.step}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochState:
        return cls(state["losses"].to(device), state["correct"].to(device), state["sizes"], state["step"])

    def first_nonfinite(self) -> int | None:
        bad = torch.nonzero(~torch.isfinite(self.losses[: self.step]))
        return int(bad[0]) if len(bad) else None

    def totals(self) -> tuple[float, float, int]:
        """Mean loss, accuracy and sample count (one device sync)."""
        sizes = self.sizes[: self.step]
        n = int(sizes.sum())
        loss_sum = (self.losses[: self.step].double() * sizes.to(self.losses.device)).sum()
        return float(loss_sum) / max(n, 1), float(self.correct[: self.step].sum()) / max(n, 1), n


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator,
                    state: EpochState, *, scheduler: Any = None, scaler: Any = None, amp_dtype: torch.dtype | None = None,
                    grad_clip: float | None = None, on_step: Callable[[EpochState], bool] | None = None) -> EpochState:
    """Train over ``batches``, filling ``state`` step by step; ``on_step`` returning True stops the epoch early."""
    model.train()
    device_type = state.losses.device.type
    for x, y in batches:
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None and scheduler.interval == "step":
            scheduler.step()
        i = state.step
        state.losses[i] = loss.detach()
        state.correct[i] = (logits.detach().argmax(1) == y).sum()
        state.sizes[i] = len(y)
        state.step = i + 1
        if on_step is not None and on_step(state):
            break
    return state


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterator, num_classes: int, device: torch.device, *,
             amp_dtype: torch.dtype | None = None, keep_probs: bool = False) -> tuple[EvalAccumulator, torch.Tensor | None]:
    """Loss (plain cross-entropy), top-1/top-5 hits and the confusion matrix over ``batches``."""
    model.eval()
    acc = EvalAccumulator(num_classes, device)
    probs = []
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        acc.update(logits, y)
        if keep_probs:
            probs.append(logits.float().softmax(1).cpu())
    acc.flush()  # inside inference mode, where its sums were made
    return acc, (torch.cat(probs) if keep_probs and probs else None)


# ---------------------------------------------------------------- fit


@dataclass
class Run:
    """Everything ``fit`` builds from a config: the pieces a checkpoint restores."""

    config: Config
    data: DataBundle
    model: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    train_loader: Any
    val_loader: Any | None
    test_loader: Any | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    best: BestMetric
    early_stopping: EarlyStopping | None
    dist: DistContext
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    train_module: nn.Module | None = None  # the module trained: compiled and/or DDP-wrapped

    @property
    def module(self) -> nn.Module:
        """The module that trains and evaluates. (Not an ``or`` of the two: a compiled ResNet has no truth value.)"""
        return self.train_module if self.train_module is not None else self.model

    def checkpoint(self, partial: EpochState | None = None) -> dict[str, Any]:
        cfg = self.config
        return {
            "format": FORMAT,
            "cnnctl_version": __version__,
            "config": cfg.dump(),
            "classes": list(self.data.classes),
            "input": {"channels": self.data.channels, "size": list(self.data.size), "mean": list(self.data.mean),
                      "std": list(self.data.std)},
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "partial_epoch": partial.state_dict() if partial is not None and partial.step > 0 else None,
            "callbacks": {"best": self.best.state_dict(),
                          "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None},
            "rng": rng_state(),
            "metrics": self.history[-1] if self.history else None,
            "history": list(self.history),
        }


def build_run(config: Config, *, device: str | None = None, dist: DistContext | None = None) -> Run:
    """Data, model, optimizer, schedule and callbacks for ``config``, on the chosen device."""
    dist = dist or DistContext.from_env()
    cfg = config
    tune_cpu_allocator()
    if cfg.train.threads != "auto":
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    dev = dist.device if dist.world_size > 1 else select_device(device or cfg.train.device)
    amp_dtype = autocast_dtype(cfg.train.precision, dev)
    channels_last = use_channels_last(cfg.train.channels_last, dev)
    if cfg.train.tensorboard and dist.is_main:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            tensorboard_writer(Path("."))  # raises the install hint before anything is written
    data = load_data(cfg.data, cfg.seed)
    _check_monitors(cfg, has_val=data.val is not None)
    model = create_model(cfg.model, in_channels=data.channels, image_size=data.size, num_classes=len(data.classes))
    from cnnctl.models.summary import check_input

    check_input(model, arch=cfg.model.arch, in_channels=data.channels, image_size=data.size)
    if cfg.train.sync_bn and dist.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)

    eval_bs = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    loader_args = {"device": dev, "mean": data.mean, "std": data.std, "seed": cfg.seed, "rank": dist.rank,
                   "world_size": dist.world_size, "workers": cfg.data.workers, "channels_last": channels_last}
    train_loader = make_loader(data.train, batch_size=cfg.data.batch_size, train=True, augment=cfg.data.augment,
                               **loader_args)
    val_loader = make_loader(data.val, batch_size=eval_bs, train=False, augment=None, **loader_args) if data.val else None
    test_loader = make_loader(data.test, batch_size=eval_bs, train=False, augment=None, **loader_args) if data.test else None
    if len(train_loader) == 0:
        raise ConfigError(f"data.batch_size: the training split has {train_loader.num_samples} images, too few for one "
                          "batch; lower data.val_split or use more data")

    optimizer = create_optimizer(model, cfg.optimizer)
    scheduler = create_scheduler(optimizer, cfg.scheduler, epochs=cfg.train.epochs, steps_per_epoch=len(train_loader))
    scaler = torch.amp.GradScaler(dev.type) if amp_dtype == torch.float16 else None
    es = cfg.train.early_stopping
    early_stopping = EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.restore_best) if es else None
    best = BestMetric(cfg.train.checkpoint.monitor)
    return Run(cfg, data, model, dev, amp_dtype, channels_last, train_loader, val_loader, test_loader, optimizer,
               scheduler, scaler, best, early_stopping, dist)


def _check_monitors(cfg: Config, *, has_val: bool) -> None:
    if has_val:
        return
    monitored = {"train.checkpoint.monitor": cfg.train.checkpoint.monitor}
    if cfg.train.early_stopping:
        monitored["train.early_stopping.monitor"] = cfg.train.early_stopping.monitor
    if cfg.scheduler.name == "plateau":
        monitored["scheduler.monitor"] = cfg.scheduler.monitor
    for key, metric in monitored.items():
        if metric.startswith("val_"):
            raise ConfigError(f"{key}: {metric} needs a validation split, but there is none (data.val_split is 0); "
                              "set data.val_split > 0 or monitor train_loss / train_acc")


def restore(run: Run, ckpt: dict[str, Any], *, replan: bool = False, source: str = "checkpoint") -> EpochState | None:
    """Put a checkpoint's state into ``run``; returns the partial epoch to continue, if the save was mid-epoch."""
    load_model_state(run.model, ckpt["model"], source)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"], replan=replan)
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.best.load_state_dict(ckpt["callbacks"]["best"])
    if run.early_stopping is not None and ckpt["callbacks"].get("early_stopping"):
        run.early_stopping.load_state_dict(ckpt["callbacks"]["early_stopping"])
    run.epoch, run.step = ckpt["epoch"], ckpt["step"]
    run.history = list(ckpt.get("history") or [])
    set_rng_state(ckpt["rng"])
    partial = ckpt.get("partial_epoch")
    return EpochState.from_state(partial, run.device) if partial else None


def new_run_dir(out: Path, name: str) -> Path:
    """``OUT/NAME``, or ``NAME-2``, ``NAME-3``... when it exists."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, 100_000):
        path = out / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CnnctlError(f"{out}: too many runs named {name}; use --name")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
    write_text(run_dir / "metrics.csv", buffer.getvalue())


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


class Progress:
    """A tqdm bar on a terminal, nothing per step otherwise; values are read from the device at most once a second."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, unit="batch")
        self.last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last >= REFRESH_SECONDS:
            self.last = now
            return True
        return False

    def update(self, n: int, postfix: dict[str, str] | None) -> None:
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fit(run: Run, run_dir: Path, *, resume_command: str, partial: EpochState | None = None,
        on_epoch: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """Train ``run`` to its configured epochs (or an early stop) writing ``run_dir``; returns summary.json's content.

    ``on_epoch(row)`` sees each epoch's metrics row; a returned sentence stops training like early stopping does
    (``cnnctl tune`` prunes trials this way).
    """
    cfg = run.config
    main = run.dist.is_main
    ckpt_cfg = cfg.train.checkpoint
    epochs = cfg.train.epochs
    steps_per_epoch = len(run.train_loader)
    classes = run.data.classes
    train_module = run.module
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    started = time.perf_counter()
    stop_reason: str | None = None
    last_saved_step = run.step
    board = tensorboard_writer(run_dir) if cfg.train.tensorboard and main else None

    def save(*names: str, state: EpochState | None = None) -> None:
        nonlocal last_saved_step
        if main:
            ckpt = run.checkpoint(state)
            for name in names:
                save_checkpoint(run_dir / name, ckpt)
        last_saved_step = run.step

    with Interrupt() as interrupt:
        while run.epoch < epochs and stop_reason is None:
            epoch = run.epoch  # 0-based index of the epoch being trained
            state = partial or EpochState.empty(steps_per_epoch, run.device)
            partial = None
            start_step = state.step
            progress = Progress(steps_per_epoch, start_step, f"epoch {epoch + 1}/{epochs}", main)
            t0 = time.perf_counter()

            def on_step(state: EpochState, epoch: int = epoch, progress: Progress = progress, t0: float = t0) -> bool:
                run.step += 1
                if progress.due() or interrupt.signum is not None:
                    _check_finite(state, epoch)
                    loss, acc, n = state.totals()
                    progress.update(state.step, {"loss": f"{loss:.4f}", "acc": f"{acc:.2%}", "lr": f"{run.scheduler.lr:.3g}",
                                                 "img/s": f"{n / max(time.perf_counter() - t0, 1e-9):.0f}"})
                if interrupt.signum is not None:
                    _check_finite(state, epoch)
                    save("last.pt", state=state)
                    progress.close()
                    raise Interrupted(interrupt.signum, resume_command)
                if ckpt_cfg.save_every_steps and run.step - last_saved_step >= ckpt_cfg.save_every_steps \
                        and state.step < steps_per_epoch:
                    _check_finite(state, epoch)
                    save("last.pt", state=state)
                return False

            train_one_epoch(train_module, criterion, run.optimizer, run.train_loader.batches(epoch, start=start_step),
                            state, scheduler=run.scheduler, scaler=run.scaler, amp_dtype=run.amp_dtype,
                            grad_clip=cfg.train.grad_clip, on_step=on_step)
            progress.close()
            _check_finite(state, epoch)
            train_loss, train_acc, _ = run.dist.reduce_epoch(state)
            seconds = time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                                   "val_loss": None, "val_acc": None, "lr": run.scheduler.lr, "epoch_seconds": seconds}
            if run.val_loader is not None:
                acc, _ = evaluate(train_module, run.val_loader.batches(0), len(classes), run.device, amp_dtype=run.amp_dtype)
                val = run.dist.reduce_eval(acc, classes)
                row["val_loss"], row["val_acc"] = val["loss"], val["accuracy"]
            run.history.append(row)
            run.epoch += 1
            if run.scheduler.interval == "epoch":
                run.scheduler.step(row)
            improved = run.best.update(row[ckpt_cfg.monitor], run.epoch)
            if run.early_stopping is not None:
                stop, stop_reason = run.early_stopping.step(row[run.early_stopping.monitor], run.epoch)
                stop_reason = run.dist.broadcast_reason(stop_reason if stop else None)
            if on_epoch is not None and stop_reason is None:
                stop_reason = run.dist.broadcast_reason(on_epoch(row))
            if board is not None:
                log_tensorboard(board, run.model, row)
            if main:
                write_metrics(run_dir, run.history)
                log.info(_epoch_line(row, epochs, steps_per_epoch, run.train_loader.num_samples, improved))
            names = ["best.pt"] if improved else []
            if run.epoch % ckpt_cfg.save_every == 0 or run.epoch == epochs or stop_reason or interrupt.signum:
                names.append("last.pt")
            if names:
                save(*names)
            if interrupt.signum is not None and run.epoch < epochs and not stop_reason:
                raise Interrupted(interrupt.signum, resume_command)

    if board is not None:
        board.close()
    wall = time.perf_counter() - started
    if stop_reason:
        log.info("early stopping: %s", stop_reason)
    return finish(run, run_dir, stop_reason=stop_reason, wall_seconds=wall)


def tensorboard_writer(run_dir: Path) -> Any:
    """A SummaryWriter logging to RUN/tensorboard (``train.tensorboard: true``)."""
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard: true needs the tensorboard package: pip install 'cnnctl[tensorboard]' "
                          "(or set train.tensorboard: false)") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def log_tensorboard(writer: Any, model: nn.Module, row: dict[str, Any]) -> None:
    """One epoch: the metrics row as scalars (lr included) and a histogram of every weight."""
    epoch = row["epoch"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        if row.get(key) is not None:
            writer.add_scalar(key.replace("_", "/", 1) if key != "lr" else "lr", row[key], epoch)
    for name, param in model.named_parameters():
        writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), epoch)
    writer.flush()


def _check_finite(state: EpochState, epoch: int) -> None:
    bad = state.first_nonfinite()
    if bad is not None:
        value = float(state.losses[bad])
        raise TrainingError(
            f"the training loss became {value} at epoch {epoch + 1}, step {bad + 1}; training stopped and the last "
            "good checkpoint (last.pt) is kept. Try a lower optimizer.lr or set train.grad_clip (e.g. 1.0)")


def _epoch_line(row: dict[str, Any], epochs: int, steps: int, samples: int, improved: bool) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}", f"train_acc {row['train_acc']:.2%}"]
    if row["val_loss"] is not None:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {row['val_acc']:.2%}"]
    parts += [f"lr {row['lr']:.3g}", f"{samples / max(row['epoch_seconds'], 1e-9):,.0f} img/s",
              f"{row['epoch_seconds']:.1f}s"]
    return "  ".join(parts) + ("  *" if improved else "")


def finish(run: Run, run_dir: Path, *, stop_reason: str | None, wall_seconds: float) -> dict[str, Any]:
    """Restore the best weights when asked, evaluate the test split, write summary.json."""
    cfg = run.config
    run.dist.barrier()  # every rank reads best.pt only after rank 0 has written it
    weights = "last"
    best_path = run_dir / "best.pt"
    restore_best = cfg.train.early_stopping.restore_best if cfg.train.early_stopping else True
    if restore_best and best_path.exists():
        from cnnctl.checkpoint import load_checkpoint

        load_model_state(run.model, load_checkpoint(best_path)["model"], str(best_path))
        weights = "best"
    test = None
    if run.test_loader is not None:
        acc, _ = evaluate(run.module, run.test_loader.batches(0), len(run.data.classes), run.device,
                          amp_dtype=run.amp_dtype)
        test = run.dist.reduce_eval(acc, run.data.classes)
    best_row = next((r for r in run.history if r["epoch"] == run.best.best_epoch), None)
    rows = run.history
    images = sum(run.train_loader.num_samples * run.dist.world_size for _ in rows)
    seconds = sum(r["epoch_seconds"] for r in rows)
    summary = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "epochs": run.epoch,
        "steps": run.step,
        "monitor": run.best.monitor,
        "best_epoch": run.best.best_epoch,
        "best": best_row,
        "stopped_early": stop_reason is not None,
        "stop_reason": stop_reason,
        "test_weights": weights,
        "test": test,
        "wall_seconds": wall_seconds,
        "train_images_per_second": images / seconds if seconds > 0 else None,
        "device": str(run.device),
        "precision": str(run.amp_dtype).removeprefix("torch.") if run.amp_dtype else "fp32",
        "world_size": run.dist.world_size,
        "params": sum(p.numel() for p in run.model.parameters()),
    }
    if run.dist.is_main:
        write_json(run_dir / "summary.json", summary)
        from cnnctl.plots import run_plots

        stopped = run.early_stopping.stopped_epoch if run.early_stopping else None
        run_plots(run_dir, summary, run.data.classes, stopped)
        if test is not None:
            top5 = f", top-5 {test['top5']:.2%}" if test["top5"] is not None else ""
            log.info("test (%s weights): loss %.4f, accuracy %.2f%%%s on %d images", weights, test["loss"],
                     100 * test["accuracy"], top5, test["n"])
    return summary


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# ---------------------------------------------------------------- the train command

# Keys that may change on --resume without changing what the run means (the README lists them).
RESUME_ALLOWED = (
    "name", "out", "train.epochs", "train.device", "train.threads", "train.compile", "train.tensorboard",
    "train.early_stopping.patience", "train.early_stopping.min_delta", "train.early_stopping.restore_best",
    "train.checkpoint.save_every", "train.checkpoint.save_every_steps", "data.root", "data.download", "data.workers",
    "data.eval_batch_size",
)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resume_config(saved: dict[str, Any], overrides: list[str], source: str, given: Config | None = None) -> Config:
    """The checkpoint's config with ``--set`` overrides, refusing changes that would make it another run."""
    from cnnctl.config import apply_overrides, validate_config

    new = validate_config(apply_overrides(saved, overrides), f"{source} (resumed config)", overrides)
    if given is not None:  # a CONFIG given with --resume is compared as if each difference were a --set
        new = given.model_copy(update={"name": new.name})
    before, after = _flatten(validate_config(saved, source).dump()), _flatten(new.dump())
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    refused = [k for k in changed if not any(k == a or k.startswith(a + ".") for a in RESUME_ALLOWED)]
    if refused:
        detail = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in refused)
        raise ConfigError(f"--resume: changing {detail} would make this a different run; resume with the config it "
                          f"was started with, or start a new run. Keys that may change on resume: {', '.join(RESUME_ALLOWED)}")
    return new


def train(config: Config | None, *, overrides: list[str] | None = None, name: str | None = None, out: str | None = None,
          resume: str | None = None, device: str | None = None,
          on_epoch: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
    """``cnnctl train``: a new run from ``config``, or a resumed one; returns the summary."""
    from cnnctl.checkpoint import load_checkpoint, run_checkpoint

    overrides = list(overrides or [])
    ckpt = None
    if resume is None and config is not None:
        resume = _elastic_restart_dir(config, out)
    if resume is not None:
        ckpt_path = run_checkpoint(resume, "last.pt")
        ckpt = load_checkpoint(ckpt_path)
        run_dir = ckpt_path.parent
        config = resume_config(ckpt["config"], overrides, str(ckpt_path), config)
    assert config is not None
    if name:
        config = config.model_copy(update={"name": name})
    if out:
        config = config.model_copy(update={"out": out})
    dist = DistContext.from_env(device or config.train.device)
    if not dist.is_main:
        log.setLevel(logging.WARNING)  # rank 0 alone reports progress
    finished = False
    try:
        run = build_run(config, device=device, dist=dist)
        partial = None
        if ckpt is not None:
            replan = ckpt["config"]["train"]["epochs"] != config.train.epochs
            partial = restore(run, ckpt, replan=replan, source=str(ckpt_path))
            if replan and run.early_stopping is not None:
                run.early_stopping.wait, run.early_stopping.stopped_epoch = 0, None  # extending: a fresh patience
            if run.epoch >= config.train.epochs and partial is None:
                raise ConfigError(f"--resume: {run_dir} already finished {run.epoch} of {config.train.epochs} epochs; "
                                  f"to train on, add --set train.epochs=N with N > {run.epoch}")
            if (run.early_stopping and run.early_stopping.stopped_epoch is not None and not replan):
                raise ConfigError(f"--resume: {run_dir} stopped early at epoch {run.early_stopping.stopped_epoch}; to "
                                  "train on, add --set train.epochs=N (which also restarts the patience count)")
        else:
            path = new_run_dir(Path(config.out), config.name or "run") if dist.is_main else None
            run_dir = Path(dist.broadcast_path(str(path) if path else None))
            marker = _elastic_marker(config.out)
            if marker is not None and dist.is_main:
                write_text(marker, str(run_dir))
        if dist.is_main:
            for stale in run_dir.glob(".*.tmp"):  # a save that a kill interrupted
                stale.unlink(missing_ok=True)
            write_text(run_dir / "config.yaml", config.to_yaml())
            log.info("run directory: %s  (device %s, %s, %d parameters)", run_dir, run.device,
                     "fp32" if run.amp_dtype is None else str(run.amp_dtype).removeprefix("torch."),
                     sum(p.numel() for p in run.model.parameters()))
        module: nn.Module = run.model
        if config.train.compile:
            module = torch.compile(module)
        if dist.world_size > 1:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[dist.local_rank] if run.device.type == "cuda" else None)
        run.train_module = module
        resume_command = f"cnnctl train --resume {run_dir}" + "".join(f" --set {o}" for o in overrides if "epochs" in o)
        summary = fit(run, run_dir, resume_command=resume_command, partial=partial, on_epoch=on_epoch)
        finished = True
        return summary
    finally:
        dist.close(finished=finished)


def _elastic_marker(out: str | Path) -> Path | None:
    """Under torchrun, a file naming this job's run directory, so an elastic restart resumes it."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or "LOCAL_RANK" not in os.environ:
        return None
    return Path(out) / f".torchrun-{run_id}"


def _elastic_restart_dir(config: Config, out: str | None) -> str | None:
    """On a torchrun restart (``--max-restarts``), the run directory of the attempt that died, if it saved."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    marker = _elastic_marker(out or config.out)
    if marker is None or not marker.exists():
        return None
    run_dir = Path(marker.read_text().strip())
    if not (run_dir / "last.pt").exists():
        return None
    log.warning("torchrun restart %s: resuming %s from last.pt", os.environ["TORCHELASTIC_RESTART_COUNT"], run_dir)
    return str(run_dir)
