"""Unfreeze: ``train.freeze`` for the first ``train.freeze_epochs`` epochs, then every layer trains (fastai's
``fine_tune``); while the body is frozen, the feature cache (``cnnctl.training.features``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.training.hooks.base import Hook, log

if TYPE_CHECKING:  # torch is imported where a run uses them: `cnnctl tune` imports the hooks before torch
    import torch

    from cnnctl.training.engine import EpochState
    from cnnctl.training.features import CachedPhase
    from cnnctl.training.freeze import Frozen
    from cnnctl.training.state import Run


class Unfreeze(Hook):
    """Puts each epoch's freeze in force at its start, a function of the epoch alone (so a run resumed on either
    side of the unfreeze is in the state the uninterrupted one was: no state of its own to save).

    While frozen and cacheable, ``run.module`` and the loaders are the head and the features for the epoch's
    steps and its validation, and the network and images again from ``on_epoch_end`` on: keep this hook first, so
    every later hook sees the whole run. With ``freeze_epochs``, each metrics.csv row gets ``lr_frozen``: the
    frozen layers' lr, 0 while they are frozen."""

    def __init__(self, frozen: Frozen, freeze_epochs: int | None) -> None:
        self.frozen, self.freeze_epochs = frozen, freeze_epochs
        self.cached: CachedPhase | None = None
        self.cache_decided = False
        self.images: tuple[Any, Any, Any] | None = None  # (module, train_loader, val_loader) while swapped out

    def frozen_at(self, epoch: int) -> bool:
        """Whether the epoch with 0-based index ``epoch`` trains with the freeze in force."""
        return self.freeze_epochs is None or epoch < self.freeze_epochs

    def on_epoch_start(self, run: Run, state: EpochState) -> None:
        from cnnctl.training.freeze import is_frozen, set_frozen

        frozen = self.frozen_at(run.epoch)
        if is_frozen(run.model, self.frozen) != frozen:
            set_frozen(run.model, self.frozen, frozen)
            if not frozen:
                log.info("epoch %d: the frozen layers train from here on, at lr %g", run.epoch + 1,
                         frozen_group_lr(run.optimizer))
        if frozen:
            self._use_cache(run)

    def _use_cache(self, run: Run) -> None:
        from cnnctl.training.features import build_cached_phase, cache_problem

        if not self.cache_decided:
            self.cache_decided = True
            problem = cache_problem(run, self.frozen)
            if problem is not None:
                log.info("feature cache: off (%s)", problem)
            else:
                self.cached = build_cached_phase(run, self.frozen)
        if self.cached is not None:
            self.images = (run.module, run.train_loader, run.val_loader)
            run.module, run.train_loader, run.val_loader = (self.cached.module, self.cached.train_loader,
                                                            self.cached.val_loader)

    def _restore(self, run: Run) -> None:
        if self.images is not None:
            run.module, run.train_loader, run.val_loader = self.images
            self.images = None

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        self._restore(run)
        if self.freeze_epochs is not None:
            row["lr_frozen"] = 0.0 if self.frozen_at(run.epoch - 1) else frozen_group_lr(run.optimizer)
        if not self.frozen_at(run.epoch):
            self.cached = None  # the next epoch trains every layer: the features are of no more use

    def on_train_end(self, run: Run) -> None:
        self._restore(run)


def frozen_group_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr of the frozen layers' groups (``optim.param_groups`` marks them)."""
    return float(next(g["lr"] for g in optimizer.param_groups if g.get("frozen")))
