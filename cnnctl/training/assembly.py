"""Run assembly: what a config trains (``assemble`` -> ``Parts``), the hooks in their order (``_hooks``), and the
complete ``Run`` (``build_run``: parts, hooks, run directory, restored state); nothing patches it afterwards.

The stateful hooks that others read (the best-metric tracker, early stopping) are made once (``Trackers``) and
handed to each reader: the checkpoint and metrics.csv hooks, ``restore`` and ``finish``. No hook finds another
through the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnctl.config import Config, ResolvedRun
from cnnctl.data.base import DataBundle, load_data, make_loader
from cnnctl.data.spec import input_spec
from cnnctl.errors import ConfigError
from cnnctl.models.pretrained import apply_weight_defaults
from cnnctl.models.registry import check_model_size, create_model
from cnnctl.runtime import autocast_dtype, seed_everything, select_device, use_channels_last
from cnnctl.training.distributed import DistContext
from cnnctl.training.freeze import Frozen, freeze_for_training
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
    Unfreeze,
    require_tensorboard,
)
from cnnctl.training.initial_weights import InitReport, initialise, weights_source
from cnnctl.training.losses import create_loss
from cnnctl.training.optim import create_optimizer, create_scheduler
from cnnctl.training.restore import restore
from cnnctl.training.rundir import new_run_dir_for, open_run_dir, remove_if_empty
from cnnctl.training.runlock import RunLock
from cnnctl.training.state import Run


@dataclass
class Parts:
    """What a config trains, assembled: no run directory, no hooks (``lr_find`` trains these alone)."""

    data: DataBundle
    model: nn.Module  # the plain network: what checkpoints hold
    module: nn.Module  # the module that trains and evaluates: ``model``, compiled and/or DDP-wrapped
    criterion: nn.Module  # train.loss, with its label smoothing
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    train_loader: Any
    val_loader: Any | None
    test_loader: Any | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    frozen: Frozen | None = None  # train.freeze, resolved on the model (the Unfreeze hook releases it)
    init: InitReport | None = None  # what model.pretrained / model.init_from loaded (init.json)


def assemble(config: Config, *, dist: DistContext | None = None, device: str | None = None,
             initial_weights: bool = True) -> Parts:
    """Seed, device, data, model, loss, loaders, optimizer, schedule, scaler and the training module for
    ``config``. Writes nothing. ``initial_weights``: load ``model.pretrained`` / ``model.init_from`` (a resumed run
    takes its weights from its checkpoint instead, and needs neither file)."""
    # What pretrained weights bring (mean/std, image size): already in a resolved run's config; lr-find and step
    # assemble a config as loaded.
    cfg = apply_weight_defaults(config)
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
    # Read (or downloaded) before any image is: a weights file missing offline is reported without a dataset read.
    source = weights_source(cfg.model, in_channels=channels) if initial_weights else None
    data = load_data(cfg.data, cfg.seed, device=dev)  # cache: auto budgets GPU memory when training on CUDA
    _check_monitors(cfg, has_val=data.val is not None)
    model = create_model(cfg.model, in_channels=data.channels, image_size=data.size, num_classes=len(data.classes))
    from cnnctl.insight.summary import check_input

    check_input(model, arch=cfg.model.arch, in_channels=data.channels, image_size=data.size)
    init = initialise(model, source)  # before the optimizer, the freeze and sync_bn see the model
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

    frozen = freeze_for_training(model, cfg.train, cfg.model.arch, world_size=dist.world_size)
    optimizer = create_optimizer(model, cfg.optimizer, frozen=frozen.params if frozen else frozenset(),
                                 frozen_lr_factor=cfg.train.frozen_lr_factor)
    scheduler = create_scheduler(optimizer, cfg.scheduler, epochs=cfg.train.epochs, steps_per_epoch=len(train_loader))
    scaler = torch.amp.GradScaler(dev.type) if amp_dtype == torch.float16 else None
    module: nn.Module = torch.compile(model) if cfg.train.compile else model
    if dist.world_size > 1:
        module = nn.parallel.DistributedDataParallel(module, device_ids=[dist.local_rank] if dev.type == "cuda" else None)
    criterion = create_loss(cfg.train.loss, cfg.train.label_smoothing)
    return Parts(data, model, module, criterion, dev, amp_dtype, channels_last, train_loader, val_loader, test_loader,
                 optimizer, scheduler, scaler, frozen, init)


@dataclass(frozen=True)
class Trackers:
    """The stateful hooks other parts of the run read, made once and handed to each reader: ``best`` (the monitored
    metric's best epoch: best.pt, the metrics.csv mark, summary.json) and ``early_stopping`` (restore's fresh
    patience and its refusal, the plots' stop mark)."""

    best: BestMetric
    early_stopping: EarlyStopping | None

    @classmethod
    def from_config(cls, config: Config) -> Trackers:
        es = config.train.early_stopping
        early_stopping = EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.restore_best) if es else None
        return cls(BestMetric(config.train.checkpoint.monitor), early_stopping)


def build_run(config: Config, *, dist: DistContext | None = None, device: str | None = None,
              hooks: Sequence[Hook] = (), resume: ResolvedRun | None = None, trackers: Trackers | None = None) -> Run:
    """Data, model, the training module, optimizer, schedule, hooks and run directory for ``config``, on the chosen
    device; with ``resume`` (a resolved resume), its checkpoint's state restored into them.

    ``hooks`` are the caller's own (``cnnctl.training.hooks.Hook`` subclasses); they run after early stopping and before
    metrics.csv, TensorBoard and the checkpoints, so a stop they ask for is saved in this epoch's last.pt.
    ``trackers``: the run's best-metric tracker and early stopping (default: made from ``config``); pass them to
    read them after training, as ``finish`` does.
    """
    cfg = config
    dist = dist or DistContext.from_env(device or cfg.train.device)
    trackers = trackers or Trackers.from_config(cfg)
    resuming = resume is not None and resume.resume_from is not None
    parts = assemble(cfg, dist=dist, device=device, initial_weights=not resuming)
    run_dir = resume.resume_from.parent if resuming else new_run_dir_for(cfg, dist)
    # Taken before anything is written there, so a second writer is refused before it changes a file.
    lock = RunLock(run_dir).acquire() if dist.is_main else None
    try:
        run = Run(cfg, parts, _hooks(cfg, run_dir, dist, parts, trackers, hooks), dist, run_dir, lock=lock)
        if resume is not None and resume.checkpoint is not None:
            restore(run, resume.checkpoint, source=str(resume.resume_from), early_stopping=trackers.early_stopping)
        open_run_dir(run, resuming=resuming)
        if parts.init is not None and dist.is_main:
            parts.init.write(run_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        if not resuming and dist.is_main:
            remove_if_empty(run_dir)
        raise
    return run


def _hooks(cfg: Config, run_dir: Path, dist: DistContext, parts: Parts, trackers: Trackers,
           extra: Sequence[Hook]) -> list[Hook]:
    """The run's hooks in the order they run at each event: the freeze schedule first (every later hook sees the
    epoch's trainable layers, and the whole network again at the epoch's end), the schedule next (later hooks read
    its lr), the stop decisions before the writers, the recorders before TensorBoard (which flushes their scalars),
    the checkpoints last (a stop decided this epoch, and the recorders' state, are saved with it)."""
    best = trackers.best
    hooks: list[Hook] = [Unfreeze(parts.frozen, cfg.train.freeze_epochs)] if parts.frozen is not None else []
    hooks += [LRSchedule(parts.scheduler), best]
    if trackers.early_stopping is not None:
        hooks.append(trackers.early_stopping)
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
