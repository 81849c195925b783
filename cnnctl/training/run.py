"""A run from a resolved config to its outputs: assembly (``build_run``), restore from a checkpoint, the run
directory, the resume policy's checks that need the checkpoint, the end of a run (``finish``) and the train entry
(``train``), with torchrun's elastic-restart markers.

``build_run`` returns a complete ``Run`` (data, model, the module that trains: compiled and/or DDP-wrapped,
optimizer, schedule, hooks, run directory, restored state); nothing patches it afterwards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnctl.config import Config, ResolvedRun, resolve_run
from cnnctl.data.base import DataBundle, load_data, make_loader
from cnnctl.data.spec import input_spec
from cnnctl.errors import CnnctlError, ConfigError, Interrupted, TrainingError, UsageError, WriteError, first_line
from cnnctl.insight.runs import STATUS_FILE
from cnnctl.io import make_folders, writing
from cnnctl.models.registry import check_model_size, create_model
from cnnctl.runtime import (
    autocast_dtype,
    precision_name,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
    use_channels_last,
)
from cnnctl.training.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_model_state,
    run_checkpoint,
    save_checkpoint,
    write_json,
    write_text,
)
from cnnctl.training.distributed import DistContext
from cnnctl.training.engine import EpochState, evaluate, fit
from cnnctl.training.hooks import (
    ActivationStatsHook,
    BestMetric,
    EarlyStopping,
    EpochCheckpoint,
    GradientRecorderHook,
    Hook,
    Interruption,
    LRSchedule,
    MetricsCSV,
    Progress,
    StepCheckpoint,
    TensorBoard,
    require_tensorboard,
)
from cnnctl.training.losses import create_loss
from cnnctl.training.optim import create_optimizer, create_scheduler
from cnnctl.training.runlock import LOCK_NAME, RunLock
from cnnctl.version import __version__

log = logging.getLogger("cnnctl")


@dataclass
class Run:
    """Everything ``fit`` trains and a checkpoint restores, and what the hooks read and steer."""

    config: Config
    data: DataBundle
    model: nn.Module  # the plain network: what checkpoints hold
    module: nn.Module  # the module that trains and evaluates: ``model``, compiled and/or DDP-wrapped
    criterion: nn.Module
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
    hooks: list[Hook]
    dist: DistContext
    run_dir: Path
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: EpochState | None = None  # a mid-epoch checkpoint's epoch, to continue
    last_saved_step: int = 0  # run.step when last.pt was last written
    stop_reason: str | None = None  # set by a hook: training ends after this epoch
    stop_after_step: bool = False  # set by a hook: the epoch ends after this step
    interrupted: int | None = None  # the signal that asked training to stop
    lock: RunLock | None = None  # rank 0's hold on run_dir/.lock while the run is trained

    def checkpoint(self, partial: EpochState | None = None) -> dict[str, Any]:
        callbacks: dict[str, Any] = {"early_stopping": None}
        callbacks.update({h.key: h.state_dict() for h in self.hooks if h.key})
        return {
            "format": FORMAT,
            "cnnctl_version": __version__,
            "config": self.config.dump(),
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
            "callbacks": callbacks,
            "rng": rng_state(),
            "metrics": self.history[-1] if self.history else None,
            "history": list(self.history),
        }

    def save(self, *names: str, partial: EpochState | None = None) -> None:
        """Write the checkpoint as each of ``names`` in the run directory (rank 0 only; every rank notes the step)."""
        if self.dist.is_main:
            ckpt = self.checkpoint(partial)
            for name in names:
                save_checkpoint(self.run_dir / name, ckpt)
        self.last_saved_step = self.step

    def has_checkpoint(self) -> bool:
        return (self.run_dir / "last.pt").exists()


# ---------------------------------------------------------------- assembly


@dataclass
class Parts:
    """What a config trains, assembled: no run directory, no hooks (``lr_find`` uses these alone)."""

    data: DataBundle
    model: nn.Module
    module: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    train_loader: Any
    val_loader: Any | None
    test_loader: Any | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any


def assemble(config: Config, *, dist: DistContext | None = None, device: str | None = None) -> Parts:
    """Seed, device, data, model, loaders, optimizer, schedule, scaler and the training module for ``config``.
    Writes nothing."""
    cfg = config
    dist = dist or DistContext.from_env(device or cfg.train.device)
    seed_everything(cfg.seed)
    dev = dist.device if dist.world_size > 1 else select_device(device or cfg.train.device)
    amp_dtype = autocast_dtype(cfg.train.precision, dev)
    channels_last = use_channels_last(cfg.train.channels_last, dev)
    if cfg.train.tensorboard and dist.is_main:
        require_tensorboard()
    # The network's size from the data's shapes alone, before any image is read: a network too large to build
    # (lenet5 at image_size 4096: 2e9 parameters) is refused without first resizing the dataset to that size.
    channels, size, classes = input_spec(cfg.data)
    check_model_size(cfg.model, in_channels=channels, image_size=size, num_classes=classes)
    data = load_data(cfg.data, cfg.seed, device=dev)  # cache: auto budgets GPU memory when training on CUDA
    _check_monitors(cfg, has_val=data.val is not None)
    model = create_model(cfg.model, in_channels=data.channels, image_size=data.size, num_classes=len(data.classes))
    from cnnctl.insight.summary import check_input

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
    module: nn.Module = torch.compile(model) if cfg.train.compile else model
    if dist.world_size > 1:
        module = nn.parallel.DistributedDataParallel(module, device_ids=[dist.local_rank] if dev.type == "cuda" else None)
    return Parts(data, model, module, dev, amp_dtype, channels_last, train_loader, val_loader, test_loader, optimizer,
                 scheduler, scaler)


def build_run(config: Config, *, dist: DistContext | None = None, device: str | None = None,
              hooks: Sequence[Hook] = (), resume: ResolvedRun | None = None) -> Run:
    """Data, model, the training module, optimizer, schedule, hooks and run directory for ``config``, on the chosen
    device; with ``resume`` (a resolved resume), its checkpoint's state restored into them.

    ``hooks`` are the caller's own (``cnnctl.training.hooks.Hook`` subclasses); they run after early stopping and before
    metrics.csv, TensorBoard and the checkpoints, so a stop they ask for is saved in this epoch's last.pt.
    """
    cfg = config
    dist = dist or DistContext.from_env(device or cfg.train.device)
    p = assemble(cfg, dist=dist, device=device)
    es = cfg.train.early_stopping
    early_stopping = EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.restore_best) if es else None
    best = BestMetric(cfg.train.checkpoint.monitor)
    resuming = resume is not None and resume.resume_from is not None
    run_dir = resume.resume_from.parent if resuming else _new_run_dir(cfg, dist)
    # Taken before anything is written there, so a second writer is refused before it changes a file.
    lock = RunLock(run_dir).acquire() if dist.is_main else None
    try:
        run = Run(cfg, p.data, p.model, p.module, create_loss(cfg.train.loss, cfg.train.label_smoothing),
                  p.device, p.amp_dtype, p.channels_last, p.train_loader, p.val_loader, p.test_loader, p.optimizer,
                  p.scheduler, p.scaler, best, early_stopping, _hooks(cfg, run_dir, dist, p, best, early_stopping, hooks),
                  dist, run_dir, lock=lock)
        if resume is not None and resume.checkpoint is not None:
            restore(run, resume.checkpoint, source=str(resume.resume_from))
        _open_run_dir(run, resuming=resuming)
    except BaseException:
        if lock is not None:
            lock.release()
        if not resuming and dist.is_main:
            remove_if_empty(run_dir)
        raise
    return run


def _hooks(cfg: Config, run_dir: Path, dist: DistContext, parts: Parts, best: BestMetric,
           early_stopping: EarlyStopping | None, extra: Sequence[Hook]) -> list[Hook]:
    """The run's hooks in the order they run at each event: the schedule first (later hooks read its lr), the
    stop decisions before the writers, the recorders before TensorBoard (which flushes their scalars), the
    checkpoints last (a stop decided this epoch, and the recorders' state, are saved with it)."""
    hooks: list[Hook] = [LRSchedule(parts.scheduler), best]
    if early_stopping is not None:
        hooks.append(early_stopping)
    hooks += list(extra)
    if dist.is_main:
        # The recorders are handed the TensorBoard hook (its writer gets their scalars); they run before it.
        tensorboard = TensorBoard(run_dir) if cfg.train.tensorboard else None
        if cfg.train.record_gradients_every:
            hooks.append(GradientRecorderHook(run_dir, parts.model, cfg.train.record_gradients_every, tensorboard))
        if cfg.train.record_activations and parts.val_loader is not None:
            hooks.append(ActivationStatsHook(run_dir, tensorboard))
        if tensorboard is not None:
            hooks.append(tensorboard)
        hooks.append(MetricsCSV(run_dir, best))
    hooks.append(Progress(enabled=dist.is_main))
    if cfg.train.checkpoint.save_every_steps:
        hooks.append(StepCheckpoint(cfg.train.checkpoint.save_every_steps))
    hooks += [EpochCheckpoint(cfg.train.checkpoint.save_every, best), Interruption()]
    return hooks


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


def restore(run: Run, ckpt: dict[str, Any], *, source: str = "checkpoint") -> None:
    """Put a checkpoint's state into ``run``: weights, optimizer, schedule, hooks, counters, RNG, a partial epoch.

    A checkpoint of another number of epochs is being extended (``--set train.epochs=N``): the schedule is
    re-planned for N epochs and early stopping gets a fresh patience. A run with nothing left to do is refused.
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
    if replan and run.early_stopping is not None:
        run.early_stopping.restart_patience()
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
    if run.early_stopping is not None and run.early_stopping.stopped_epoch is not None:
        raise ConfigError(f"--resume: {run.run_dir} stopped early at epoch {run.early_stopping.stopped_epoch}; to "
                          "train on, add --set train.epochs=N (which also restarts the patience count)")


# ---------------------------------------------------------------- the run directory


def new_run_dir(out: Path, name: str) -> Path:
    """``OUT/NAME``, or ``NAME-2``, ``NAME-3``... when it exists. WriteError (naming the folder and the reason)
    when ``out`` cannot hold it: read-only, a regular file, under a regular file."""
    note = "give --out a writable folder"
    with writing(out, note=note):  # exists() too: a name too long for the file system fails already there
        if out.exists() and not out.is_dir():
            raise WriteError(str(out), "it is a file, not a folder", note="give --out a folder for run directories")
        make_folders(out)
    for i in range(1, 100_000):
        path = out / (name if i == 1 else f"{name}-{i}")
        with writing(path, note=note):
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    raise UsageError(f"{out}: too many runs named {name}; use --name")


def _new_run_dir(cfg: Config, dist: DistContext) -> Path:
    """Rank 0 makes the directory, every rank gets its path; under torchrun a marker names it for restarts."""
    path = new_run_dir(Path(cfg.out), cfg.name or "run") if dist.is_main else None
    run_dir = Path(dist.broadcast_path(str(path) if path else None))
    marker = _elastic_marker(cfg.out)
    if marker is not None and dist.is_main:
        write_text(marker, str(run_dir))
    return run_dir


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run directory this run created that holds nothing but its lock (it failed before writing)."""
    try:
        if {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:  # unreadable or not ours to remove: leaving it is harmless
        pass


def _open_run_dir(run: Run, *, resuming: bool = False) -> None:
    if not run.dist.is_main:
        return
    for stale in run.run_dir.glob(".*.tmp"):  # a save that a kill interrupted
        with writing(stale):
            stale.unlink(missing_ok=True)
    if resuming:  # a failure a resume continues from is no longer the run's state
        with writing(run.run_dir / STATUS_FILE, note="the run directory must be writable to resume it"):
            (run.run_dir / STATUS_FILE).unlink(missing_ok=True)
    write_text(run.run_dir / "config.yaml", run.config.to_yaml())
    log.info("run directory: %s  (device %s, %s, %d parameters)", run.run_dir, run.device,
             precision_name(run.amp_dtype), sum(p.numel() for p in run.model.parameters()))


def _elastic_marker(out: str | Path) -> Path | None:
    """Under torchrun, a file naming this job's run directory, so an elastic restart resumes it."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or "LOCAL_RANK" not in os.environ:
        return None
    return Path(out) / f".torchrun-{run_id}"


def elastic_restart_dir(out: str | Path) -> Path | None:
    """On a torchrun restart (``--max-restarts``), the run directory of the attempt that died, if it saved."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    marker = _elastic_marker(out)
    if marker is None or not marker.exists():
        return None
    run_dir = Path(marker.read_text().strip())
    if not (run_dir / "last.pt").exists():
        return None
    log.warning("torchrun restart %s: resuming %s from last.pt", os.environ["TORCHELASTIC_RESTART_COUNT"], run_dir)
    return run_dir


# ---------------------------------------------------------------- the end of a run


def finish(run: Run, *, wall_seconds: float) -> dict[str, Any]:
    """Restore the best weights when asked, evaluate the test split, write summary.json and the plots."""
    cfg = run.config
    run.dist.barrier()  # every rank reads best.pt only after rank 0 has written it
    weights = "last"
    best_path = run.run_dir / "best.pt"
    restore_best = cfg.train.early_stopping.restore_best if cfg.train.early_stopping else True
    if restore_best and best_path.exists():
        load_model_state(run.model, load_checkpoint(best_path)["model"], str(best_path))
        weights = "best"
    test = None
    if run.test_loader is not None:
        acc, _ = evaluate(run.module, run.test_loader.batches(0), len(run.data.classes), run.device,
                          amp_dtype=run.amp_dtype, loss=run.config.train.loss)
        test = run.dist.reduce_eval(acc, run.data.classes)
    if run.stop_reason:
        log.info("early stopping: %s", run.stop_reason)
    best_row = next((r for r in run.history if r["epoch"] == run.best.best_epoch), None)
    rows = run.history
    images = run.train_loader.num_samples * run.dist.world_size * len(rows)
    seconds = sum(r["epoch_seconds"] for r in rows)
    summary = {
        "name": cfg.name,
        "run_dir": str(run.run_dir),
        "epochs": run.epoch,
        "steps": run.step,
        "monitor": run.best.monitor,
        "best_epoch": run.best.best_epoch,
        "best": best_row,
        "stopped_early": run.stop_reason is not None,
        "stop_reason": run.stop_reason,
        "test_weights": weights,
        "test": test,
        "wall_seconds": wall_seconds,
        "train_images_per_second": images / seconds if seconds > 0 else None,
        "device": str(run.device),
        "precision": precision_name(run.amp_dtype),
        "world_size": run.dist.world_size,
        "params": sum(p.numel() for p in run.model.parameters()),
    }
    for hook in run.hooks:  # the recorders' figures ("gradients", "activations"), or a hook of the caller's
        summary.update(hook.summary_items())
    if run.dist.is_main:
        write_json(run.run_dir / "summary.json", summary)
        from cnnctl.insight.plots import run_plots

        stopped = run.early_stopping.stopped_epoch if run.early_stopping and run.stop_reason else None
        run_plots(run.run_dir, summary, run.data.classes, stopped)
        if test is not None:
            top5 = f", top-5 {test['top5']:.2%}" if test["top5"] is not None else ""
            log.info("test (%s weights): loss %.4f, accuracy %.2f%%%s on %d images", weights, test["loss"],
                     100 * test["accuracy"], top5, test["n"])
    for hook in run.hooks:  # after the plots: TensorBoard shows confusion_matrix.png
        hook.on_run_end(run, summary)
    return summary


# ---------------------------------------------------------------- the train entry


def resolve(config: Config | str | Path | None = None, *, overrides: Sequence[str] | None = None,
            name: str | None = None, out: str | None = None, resume: str | Path | None = None) -> ResolvedRun:
    """The run ``train`` would start: its validated config and, on resume, the checkpoint it continues.

    Only the resumed checkpoint is loaded here (torch.load); the config is resolved by ``config.resolve_run``.
    """
    overrides = list(overrides or [])
    if resume is None and config is not None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        # A torchrun restart resumes the attempt that died; its marker lives under the resolved `out`.
        resume = elastic_restart_dir(resolve_run(config, overrides=overrides, name=name, out=out).config.out)
    if resume is None:
        return resolve_run(config, overrides=overrides, name=name, out=out)
    path = run_checkpoint(resume, "last.pt")
    return resolve_run(config, overrides=overrides, name=name, out=out, resume_from=path,
                       checkpoint=load_checkpoint(path))


def train(config: Config | str | Path | None = None, *, overrides: Sequence[str] | None = None, name: str | None = None,
          out: str | None = None, resume: str | Path | None = None, device: str | None = None,
          hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """``cnnctl train``: a new run from ``config`` (a Config, a file or a bundled config name), or a resumed one
    (``resume``: a run directory or checkpoint); returns summary.json's content.

    ``hooks``: extra ``cnnctl.training.hooks.Hook`` objects (``cnnctl tune``'s pruner is one).
    Raises ``errors.Interrupted`` after a SIGINT/SIGTERM (last.pt saved). Changes no process-wide state but the
    seeds: the CLI sets threads, the allocator and logging (``runtime.configure_process``).
    """
    return train_resolved(resolve(config, overrides=overrides, name=name, out=out, resume=resume), device=device,
                          hooks=hooks)


def train_resolved(resolved: ResolvedRun, *, device: str | None = None, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """``train`` for a run already resolved (``resolve``): build it, fit it, finish it."""
    import time

    config = resolved.config
    dist = DistContext.from_env(device or config.train.device)
    finished = False
    run: Run | None = None
    try:
        run = build_run(config, dist=dist, device=device, hooks=list(hooks), resume=resolved)
        started = time.perf_counter()
        fit(run)
        if run.interrupted is not None and run.epoch < config.train.epochs and run.stop_reason is None:
            raise Interrupted(run.interrupted, resume_command(run.run_dir, resolved.overrides))
        summary = finish(run, wall_seconds=time.perf_counter() - started)
        finished = True
        return summary
    except Exception as e:
        if run is not None and run.dist.is_main and _is_failure(e):
            _write_failed(run.run_dir, e)
        raise
    finally:
        # released here, not at exit: a notebook's process lives on and may train this run again
        if run is not None and run.lock is not None:
            run.lock.release()
        dist.close(finished=finished)


def _is_failure(error: Exception) -> bool:
    """A failure ``cnnctl runs`` should show: a run-time one (non-finite loss, failed write) or a crash, not an
    interruption (last.pt says it all) nor bad input."""
    if isinstance(error, Interrupted):
        return False
    return isinstance(error, (TrainingError, WriteError)) or not isinstance(error, CnnctlError)


def _write_failed(run_dir: Path, error: Exception) -> None:
    try:
        write_json(run_dir / STATUS_FILE, {"status": "failed", "reason": first_line(error)})
    except WriteError as e:  # the failure itself may be the disk: the error that ended the run is what to report
        log.warning("%s", e)


def resume_command(run_dir: Path, overrides: Sequence[str]) -> str:
    """The command that continues ``run_dir`` (an epochs override kept: it is what the run was extended to)."""
    return f"cnnctl train --resume {run_dir}" + "".join(f" --set {o}" for o in overrides if "epochs" in o)
