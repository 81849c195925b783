"""The training loop as plain functions: ``train_one_epoch``, ``evaluate`` and ``fit``.

The hot path never synchronises with the device per step: each step's loss and correct count are written
into device buffers and read once per progress refresh (at most once a second) and once per epoch.
Everything around the optimizer step (the lr schedule, progress, checkpoints, interruption, early stopping,
metrics.csv, TensorBoard, a tuner's pruning) is a hook in ``run.hooks`` (see ``cnnctl.training.hooks``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnnctl.errors import TrainingError
from cnnctl.training.hooks import optimizer_step_hooks, steps_hooks
from cnnctl.training.metrics import EvalAccumulator

if TYPE_CHECKING:
    from cnnctl.training.state import Run


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

    def check_finite(self, epoch: int, *, kept: bool) -> None:
        """TrainingError when a loss of this epoch is NaN or infinite (one device sync); ``kept``: whether a last.pt
        from before it exists, so the message says what was saved."""
        bad = self.first_nonfinite()
        if bad is None:
            return
        value = float(self.losses[bad])
        saved = ("the last good checkpoint (last.pt) is kept" if kept
                 else "no checkpoint had been written yet, so there is nothing to resume")
        raise TrainingError(f"the training loss became {value} at epoch {epoch + 1}, step {bad + 1}; training stopped "
                            f"and {saved}. Try a lower optimizer.lr or set train.grad_clip (e.g. 1.0)")

    def totals(self) -> tuple[float, float, int]:
        """Mean loss, accuracy and sample count (one device sync)."""
        sizes = self.sizes[: self.step]
        n = int(sizes.sum())
        loss_sum = (self.losses[: self.step].double() * sizes.to(self.losses.device)).sum()
        return float(loss_sum) / max(n, 1), float(self.correct[: self.step].sum()) / max(n, 1), n


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator,
                    state: EpochState, *, scaler: Any = None, amp_dtype: torch.dtype | None = None,
                    grad_clip: float | None = None,
                    on_step_end: Callable[[EpochState], bool] | None = None,
                    before_optimizer_step: Callable[[EpochState], None] | None = None,
                    after_optimizer_step: Callable[[EpochState], None] | None = None,
                    wants_unscaled: Callable[[EpochState], bool] | None = None) -> EpochState:
    """Train over ``batches``, filling ``state`` step by step.

    ``on_step_end(state)`` runs after every optimizer step (``fit`` passes its hooks' event); True ends the epoch
    after this step. ``before_optimizer_step(state)`` sees the gradients (unscaled, before clipping; with a
    GradScaler they are unscaled for it when ``wants_unscaled(state)`` says so), ``after_optimizer_step(state)``
    the updated weights; ``state.step`` is still this step's index within the epoch in both.
    """
    model.train()
    for x, y in batches:
        with torch.autocast(state.losses.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            # unscale_ once per step at most: scaler.step does not unscale again after it
            if grad_clip is not None or (before_optimizer_step is not None and wants_unscaled is not None
                                         and wants_unscaled(state)):
                scaler.unscale_(optimizer)
            if before_optimizer_step is not None:
                before_optimizer_step(state)
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if before_optimizer_step is not None:
                before_optimizer_step(state)
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if after_optimizer_step is not None:
            after_optimizer_step(state)
        i = state.step
        state.losses[i] = loss.detach()
        state.correct[i] = (logits.detach().argmax(1) == y).sum()
        state.sizes[i] = len(y)
        state.step = i + 1
        if on_step_end is not None and on_step_end(state):
            break
    return state


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterator, num_classes: int, device: torch.device, *,
             amp_dtype: torch.dtype | None = None, keep_probs: bool = False,
             loss: str = "cross_entropy") -> tuple[EvalAccumulator, torch.Tensor | None]:
    """Loss (``loss``, without label smoothing), top-1/top-5 hits and the confusion matrix over ``batches``."""
    model.eval()
    acc = EvalAccumulator(num_classes, device, loss)
    probs = []
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        acc.update(logits, y)
        if keep_probs:
            probs.append(logits.float().softmax(1).cpu())
    acc.flush()  # inside inference mode, where its sums were made
    return acc, (torch.cat(probs) if keep_probs and probs else None)


class Events:
    """The hooks of ``run``, called at the loop's named events. The loop counts steps here."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.hooks = list(run.hooks)
        self.per_step = steps_hooks(self.hooks)
        self.before, self.after = optimizer_step_hooks(self.hooks)

    def step_callbacks(self) -> dict[str, Any]:
        """``train_one_epoch``'s optimizer-step callbacks: only those some hook listens to (None keeps the hot
        path free)."""
        return {"before_optimizer_step": self.before_optimizer_step if self.before else None,
                "after_optimizer_step": self.after_optimizer_step if self.after else None,
                "wants_unscaled": self.wants_unscaled if self.before else None}

    def wants_unscaled(self, state: EpochState) -> bool:
        return any(hook.wants_unscaled_gradients(self.run, state) for hook in self.before)

    def before_optimizer_step(self, state: EpochState) -> None:
        for hook in self.before:
            hook.on_before_optimizer_step(self.run, state)

    def after_optimizer_step(self, state: EpochState) -> None:
        for hook in self.after:
            hook.on_after_optimizer_step(self.run, state)

    def train_start(self) -> None:
        for hook in self.hooks:
            hook.on_train_start(self.run)

    def epoch_start(self, state: EpochState) -> None:
        for hook in self.hooks:
            hook.on_epoch_start(self.run, state)

    def step_end(self, state: EpochState) -> bool:
        """After one optimizer step; True ends the epoch here (a hook set ``run.stop_after_step``)."""
        run = self.run
        run.step += 1
        for hook in self.per_step:
            hook.on_step_end(run, state)
        return run.stop_after_step

    def epoch_end(self, row: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.on_epoch_end(self.run, row)

    def train_end(self) -> None:
        for hook in self.hooks:
            hook.on_train_end(self.run)


def fit(run: Run) -> None:
    """Train ``run`` until its configured epochs, a hook's stop (``run.stop_reason``) or an interruption
    (``run.interrupted``, the epoch left after a step). ``run.history`` holds each epoch's metrics row."""
    cfg = run.config
    epochs = cfg.train.epochs
    steps_per_epoch = len(run.train_loader)
    events = Events(run)
    events.train_start()
    try:
        while run.epoch < epochs and run.stop_reason is None:
            epoch = run.epoch  # 0-based index of the epoch being trained
            state, run.partial = run.partial or EpochState.empty(steps_per_epoch, run.device), None
            events.epoch_start(state)
            t0 = time.perf_counter()
            train_one_epoch(run.module, run.criterion, run.optimizer, run.train_loader.batches(epoch, start=state.step),
                            state, scaler=run.scaler, amp_dtype=run.amp_dtype, grad_clip=cfg.train.grad_clip,
                            on_step_end=events.step_end, **events.step_callbacks())
            if run.stop_after_step:
                break
            state.check_finite(epoch, kept=run.has_checkpoint())
            train_loss, train_acc, _ = run.dist.reduce_epoch(state)
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                                   "val_loss": None, "val_acc": None, "lr": run.scheduler.lr,
                                   "epoch_seconds": time.perf_counter() - t0}
            if run.val_loader is not None:
                acc, _ = evaluate(run.module, run.val_loader.batches(0), len(run.data.classes), run.device,
                                  amp_dtype=run.amp_dtype, loss=run.config.train.loss)
                val = run.dist.reduce_eval(acc, run.data.classes)
                row["val_loss"], row["val_acc"] = val["loss"], val["accuracy"]
            run.history.append(row)
            run.epoch += 1
            events.epoch_end(row)
            if run.interrupted is not None:
                break
    finally:
        events.train_end()
