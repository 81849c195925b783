"""``Run``: the state of one training run, what ``fit`` trains and the hooks read and steer, and its checkpoint.

A Run holds the ``Parts`` assembly built (``run.parts``); ``run.model``, ``run.optimizer``, ... read them, so a hook
reads the run's parts as its own. The hooks themselves are in ``run.hooks``; the Run holds none of them by name
(a hook shares state with another only through what assembly hands both, ``assembly.Trackers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.runtime import rng_state
from cnnctl.training.checkpoint import FORMAT, save_checkpoint
from cnnctl.version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnctl.config import Config
    from cnnctl.data.base import DataBundle
    from cnnctl.training.assembly import Parts
    from cnnctl.training.distributed import DistContext
    from cnnctl.training.engine import EpochState
    from cnnctl.training.hooks import Hook
    from cnnctl.training.runlock import RunLock


@dataclass
class Run:
    """Everything ``fit`` trains and a checkpoint restores, and what the hooks read and steer."""

    config: Config
    parts: Parts  # data, model, module, criterion, loaders, optimizer, schedule, scaler: as ``assemble`` built them
    hooks: list[Hook]
    dist: DistContext
    run_dir: Path | None  # None: a run that writes nothing (lr-find)
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: EpochState | None = None  # a mid-epoch checkpoint's epoch, to continue
    last_saved_step: int = 0  # run.step when last.pt was last written
    stop_reason: str | None = None  # set by a hook: training ends after this epoch
    stop_after_step: bool = False  # set by a hook: the epoch ends after this step
    interrupted: int | None = None  # the signal that asked training to stop
    lock: RunLock | None = None  # rank 0's hold on run_dir/.lock while the run is trained

    @property
    def data(self) -> DataBundle:
        return self.parts.data

    @property
    def model(self) -> nn.Module:
        """The plain network: what checkpoints hold."""
        return self.parts.model

    @property
    def module(self) -> nn.Module:
        """The module that trains and evaluates: ``model``, compiled and/or DDP-wrapped. A hook may swap it, and
        the loaders, for a phase of training (``Unfreeze``: the head and its cached features)."""
        return self.parts.module

    @module.setter
    def module(self, module: nn.Module) -> None:
        self.parts.module = module

    @property
    def criterion(self) -> nn.Module:
        return self.parts.criterion

    @property
    def device(self) -> torch.device:
        return self.parts.device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.parts.amp_dtype

    @property
    def train_loader(self) -> Any:
        return self.parts.train_loader

    @train_loader.setter
    def train_loader(self, loader: Any) -> None:
        self.parts.train_loader = loader

    @property
    def val_loader(self) -> Any | None:
        return self.parts.val_loader

    @val_loader.setter
    def val_loader(self, loader: Any | None) -> None:
        self.parts.val_loader = loader

    @property
    def test_loader(self) -> Any | None:
        return self.parts.test_loader

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parts.optimizer

    @property
    def scheduler(self) -> Any:
        return self.parts.scheduler

    @property
    def scaler(self) -> Any:
        return self.parts.scaler

    def checkpoint(self, partial: EpochState | None = None) -> dict[str, Any]:
        """The checkpoint: a plain dict of tensors and primitives (every hook's state under ``callbacks[key]``)."""
        callbacks: dict[str, Any] = {"early_stopping": None}
        callbacks.update({h.key: h.state_dict() for h in self.hooks if h.key})
        data = self.data
        return {
            "format": FORMAT,
            "cnnctl_version": __version__,
            "config": self.config.dump(),
            "classes": list(data.classes),
            "input": {"channels": data.channels, "size": list(data.size), "mean": list(data.mean),
                      "std": list(data.std)},
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
        return self.run_dir is not None and (self.run_dir / "last.pt").exists()
