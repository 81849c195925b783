"""Optimizers and learning-rate schedules, one registry each: ``OPTIMIZERS`` and ``SCHEDULERS``.

When a schedule steps
---------------------
Every schedule but ``plateau`` steps at the END of each optimizer step (``Schedule.interval == "step"``), so
that warmup is smooth. The epoch-based ones are written in optimizer steps, with
``epoch = step // steps_per_epoch``: they hold constant within an epoch and equal torch's per-epoch scheduler at
every epoch boundary.

- ``none``: constant ``lr``.
- ``step``: ``lr * gamma ** (epoch // step_size)`` (torch's StepLR stepped per epoch).
- ``multistep``: ``lr * gamma ** k``, k the number of ``milestones`` (epochs) reached (MultiStepLR).
- ``exponential``: ``lr * gamma ** epoch`` (ExponentialLR).
- ``cosine``: torch's CosineAnnealingLR stepped per step over the steps after warmup, from ``lr`` to ``min_lr``.
- ``onecycle``: torch's OneCycleLR(max_lr=lr, total_steps, pct_start) per step: from lr/25 up to lr over
  ``pct_start`` of the steps, then cosine down to lr/25e4. As torch does by default, it also cycles SGD's and
  RMSprop's momentum, or Adam's beta1, between 0.95 and 0.85 against the lr, in place of ``optimizer.momentum`` /
  ``betas[0]``; not for adagrad or momentum 0 (torch refuses the one and would switch momentum on for the other).
- ``plateau``: torch's ReduceLROnPlateau: ``lr * factor`` once ``scheduler.monitor`` has not improved (torch's
  relative threshold, 1e-4) for more than ``patience`` epochs; mode min for ``*_loss``, max for ``*_acc``.
  It steps at the END of each epoch, after validation, with that epoch's metrics (interval ``"epoch"``).

Warmup
------
``warmup_epochs`` (may be fractional) becomes ``warmup_steps = round(warmup_epochs * steps_per_epoch)``, at most
the run's steps. Over them the lr rises linearly from ``lr * warmup_start_factor`` to ``lr``, per step (torch's
LinearLR); then the schedule goes on:

- ``cosine`` starts its clock after warmup and anneals over the remaining ``total_steps - warmup_steps`` steps
  (LinearLR then CosineAnnealingLR in a SequentialLR).
- ``step``, ``multistep`` and ``exponential`` count epochs from the start of the run, warmup included, as timm
  does: ``milestones: [30, 60]`` are epochs 30 and 60 of metrics.csv. Within the warmup both factors apply
  (LinearLR and StepLR in a ChainedScheduler), which matters only when a decay falls inside the warmup.
- ``onecycle`` warms up by itself (``pct_start``): ``warmup_epochs`` > 0 is a config error.
- ``plateau`` steps per epoch, so its warmup does too: each epoch runs at the lr the per-step warmup has at the
  epoch's first step (LinearLR stepped per epoch when ``warmup_epochs`` is whole). Only epochs that ran wholly
  at the full lr reach the plateau's patience count.

Resume and re-planning
----------------------
``Schedule.state_dict()`` holds a counter and torch's own scheduler states (plain numbers, for
``torch.load(weights_only=True)``); ``load_state_dict`` continues exactly where the saved schedule was.
``load_state_dict(state, replan=True)`` extends a run (``--resume RUN --set train.epochs=N``): the Schedule, built
for the new number of epochs, takes only the step counter (and plateau's best / bad-epoch / cooldown counts) from
the saved state and sets the lr its own plan has at that step: the schedule is re-planned as if the run had been
configured for N epochs from the start, like timm's ``--epochs`` on resume. A cosine's lr rises again to the
longer plan's value; ``step``/``multistep``/``exponential`` (epochs from the start) and ``plateau`` (no end to
plan for) go on as before.

Torch is imported inside functions only: config validation reads the registries' names and stays torch-free.
"""

from __future__ import annotations

import bisect
import importlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cnnctl.errors import CheckpointError, ConfigError, UsageError
from cnnctl.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.optim.lr_scheduler import LambdaLR, LRScheduler

    from cnnctl.config import OptimizerConfig, SchedulerConfig

# ---------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class OptimInfo:
    """An optimizer: its torch class (imported when built) and the config keys it takes besides lr."""

    name: str
    opt_class: str  # "torch.optim.SGD"
    description: str
    has_momentum: bool = False
    has_nesterov: bool = False
    has_betas: bool = False
    has_alpha: bool = False
    has_eps: bool = True

    def kwargs(self, cfg: OptimizerConfig) -> dict[str, Any]:
        """The constructor's arguments from ``cfg``; weight decay is set per parameter group."""
        kw: dict[str, Any] = {"lr": cfg.lr}
        if self.has_momentum:
            kw["momentum"] = cfg.momentum
        if self.has_nesterov:
            kw["nesterov"] = cfg.nesterov
        if self.has_betas:
            kw["betas"] = tuple(cfg.betas)
        if self.has_alpha:
            kw["alpha"] = cfg.alpha
        if self.has_eps:
            kw["eps"] = cfg.eps
        return kw

    def build(self, params: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
        module, _, cls = self.opt_class.rpartition(".")
        return getattr(importlib.import_module(module), cls)(params, **self.kwargs(cfg))


OPTIMIZERS = Registry("optimizer")
for _info in (
    OptimInfo("sgd", "torch.optim.SGD", "stochastic gradient descent with momentum, optionally Nesterov's",
              has_momentum=True, has_nesterov=True, has_eps=False),
    OptimInfo("adagrad", "torch.optim.Adagrad", "per-parameter rates from the sum of squared gradients "
              "(Duchi et al. 2011)"),
    OptimInfo("rmsprop", "torch.optim.RMSprop", "per-parameter rates from a moving mean of squared gradients "
              "(Hinton 2012)", has_momentum=True, has_alpha=True),
    OptimInfo("adam", "torch.optim.Adam", "adaptive moments (Kingma & Ba 2015); weight decay as L2 in the gradient",
              has_betas=True),
    OptimInfo("adamw", "torch.optim.AdamW", "Adam with decoupled weight decay (Loshchilov & Hutter 2019)",
              has_betas=True),
):
    OPTIMIZERS.add(_info.name, _info)


def param_groups(model: nn.Module, weight_decay: float, decay_bias_and_norm: bool, *,
                 frozen: frozenset[str] = frozenset(), frozen_lr: float | None = None) -> list[dict[str, Any]]:
    """The trainable parameters in one group with ``weight_decay``, or, when ``decay_bias_and_norm`` is false,
    in two: biases and all other 1-D tensors (normalization weights) get none, as timm's ``filter_bias_and_bn``.

    The parameters named in ``frozen`` (``train.freeze``) come after the others, in groups of their own marked
    ``"frozen": True`` with ``lr`` ``frozen_lr``: the optimizer holds them from the start, so its groups and the
    schedule stay the same across the unfreeze (a resumed run restores them as saved), and while they have no
    gradient torch's optimizers skip them."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or n in frozen]
    groups = _decay_groups([(n, p) for n, p in named if n not in frozen], weight_decay, decay_bias_and_norm)
    for group in _decay_groups([(n, p) for n, p in named if n in frozen], weight_decay, decay_bias_and_norm):
        groups.append({**group, "frozen": True, **({"lr": frozen_lr} if frozen_lr is not None else {})})
    return groups


def _decay_groups(named: list[tuple[str, Any]], weight_decay: float, decay_bias_and_norm: bool) -> list[dict[str, Any]]:
    if decay_bias_and_norm or weight_decay == 0:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}] if named else []
    no_decay = [p for n, p in named if p.ndim <= 1 or n.endswith(".bias")]
    decay = [p for n, p in named if not (p.ndim <= 1 or n.endswith(".bias"))]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def create_optimizer(model: nn.Module, cfg: OptimizerConfig, *, frozen: frozenset[str] = frozenset(),
                     frozen_lr_factor: float = 1.0) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` over ``model``'s trainable parameters and the ``frozen`` ones, whose groups get
    ``frozen_lr_factor`` x ``cfg.lr`` (see ``param_groups``)."""
    info: OptimInfo = OPTIMIZERS.get(cfg.name)
    groups = param_groups(model, cfg.weight_decay, cfg.decay_bias_and_norm, frozen=frozen,
                          frozen_lr=cfg.lr * frozen_lr_factor if frozen else None)
    return info.build(groups, cfg)


# ---------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Plan:
    """A schedule's clock, in optimizer steps."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    warmup_start_factor: float

    def warmup(self, step: int) -> float:
        """The linear warmup factor at ``step`` (torch's LinearLR), 1 after it."""
        if step >= self.warmup_steps:
            return 1.0
        start = self.warmup_start_factor
        return start + (1.0 - start) * step / self.warmup_steps


@dataclass(frozen=True)
class SchedInfo:
    """A schedule: when it steps, and a builder ``(optimizer, cfg, plan) -> torch scheduler`` at step 0."""

    name: str
    interval: Literal["step", "epoch"]
    description: str
    build: Callable[[torch.optim.Optimizer, SchedulerConfig, Plan], LRScheduler]


def _lambda(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> LambdaLR:
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _none(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, plan: Plan) -> LRScheduler:
    return _lambda(optimizer, plan.warmup)


def _step(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, plan: Plan) -> LRScheduler:
    spe, size, gamma = plan.steps_per_epoch, cfg.step_size, cfg.gamma
    return _lambda(optimizer, lambda s: plan.warmup(s) * gamma ** (s // spe // size))


def _multistep(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, plan: Plan) -> LRScheduler:
    spe, milestones, gamma = plan.steps_per_epoch, sorted(cfg.milestones), cfg.gamma
    return _lambda(optimizer, lambda s: plan.warmup(s) * gamma ** bisect.bisect_right(milestones, s // spe))


def _exponential(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, plan: Plan) -> LRScheduler:
    spe, gamma = plan.steps_per_epoch, cfg.gamma
    return _lambda(optimizer, lambda s: plan.warmup(s) * gamma ** (s // spe))


def _cosine(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, plan: Plan) -> LRScheduler:
    import torch

    warmup, span = plan.warmup_steps, max(1, plan.total_steps - plan.warmup_steps)

    def factor_for(base_lr: float) -> Callable[[int], float]:
        floor = cfg.min_lr / base_lr  # min_lr is an lr, LambdaLR wants a factor of the group's lr

        def factor(s: int) -> float:
            if s < warmup:
                return plan.warmup(s)
            t = min(s - warmup, span)  # the closed form in CosineAnnealingLR's docstring, held at min_lr after
            return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * t / span)) / 2.0

        return factor

    factors = [factor_for(float(g.get("initial_lr", g["lr"]))) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def _onecycle(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, plan: Plan) -> LRScheduler:
    import torch

    if cfg.warmup_epochs > 0:
        raise ConfigError("onecycle warms up by itself (pct_start); set warmup_epochs: 0",
                          key="scheduler.warmup_epochs")
    if cfg.pct_start * plan.total_steps <= 1:  # torch's OneCycleLR divides by zero at exactly 1
        raise ConfigError(f"onecycle rises over pct_start x {plan.total_steps} steps = "
                          f"{cfg.pct_start * plan.total_steps:g} steps; it needs more than 1: raise pct_start or "
                          "train.epochs", key="scheduler.pct_start")
    # Torch would refuse an optimizer without momentum, and switch momentum on for one configured without.
    cycle = any(g.get("momentum", 0) > 0 or "betas" in g for g in optimizer.param_groups)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                               total_steps=plan.total_steps, pct_start=cfg.pct_start,
                                               cycle_momentum=cycle)


def _plateau(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, plan: Plan) -> LRScheduler:
    import torch

    mode = "min" if cfg.monitor.endswith("_loss") else "max"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.factor,
                                                      patience=cfg.patience)


SCHEDULERS = Registry("scheduler")
for _sched in (
    SchedInfo("none", "step", "constant lr (after any warmup)", _none),
    SchedInfo("step", "step", "lr * gamma every step_size epochs", _step),
    SchedInfo("multistep", "step", "lr * gamma at each of the milestones (epochs)", _multistep),
    SchedInfo("exponential", "step", "lr * gamma ** epoch", _exponential),
    SchedInfo("cosine", "step", "cosine annealing from lr to min_lr over the steps after warmup", _cosine),
    SchedInfo("onecycle", "step", "up to lr over pct_start of the steps, then down (Smith & Topin, super-convergence)", _onecycle),
    SchedInfo("plateau", "epoch", "lr * factor when the monitored metric stalls for patience epochs", _plateau),
):
    SCHEDULERS.add(_sched.name, _sched)

# OneCycleLR keeps its plan's lrs and momenta in the optimizer's groups, where a loaded optimizer state overwrites
# them; re-planning puts this plan's back.
_PLAN_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
_PLATEAU_COUNTS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")


class Schedule:
    """Wraps the torch scheduler. ``interval`` says once when it steps: ``"step"``, at the END of every optimizer
    step (``fit`` calls ``step()``); ``"epoch"`` (plateau), at the END of each epoch, after validation
    (``fit`` calls ``step(metrics)``). See the module docstring for the plans, warmup and re-planning."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, *, epochs: int,
                 steps_per_epoch: int) -> None:
        if epochs < 1 or steps_per_epoch < 1:
            raise UsageError(f"a schedule needs epochs >= 1 and steps_per_epoch >= 1, got {epochs} and "
                             f"{steps_per_epoch}")
        self.optimizer = optimizer
        self.cfg = cfg
        self.info: SchedInfo = SCHEDULERS.get(cfg.name)
        self.interval = self.info.interval
        total = epochs * steps_per_epoch
        self.plan = Plan(steps_per_epoch, total, min(round(cfg.warmup_epochs * steps_per_epoch), total),
                         cfg.warmup_start_factor)
        self.count = 0  # steps taken: optimizer steps (interval "step") or epochs ("epoch")
        self.warmup_scheduler: LambdaLR | None = None
        if self.interval == "epoch" and self.plan.warmup_steps:
            self.warmup_scheduler = _lambda(optimizer, lambda epoch: self.plan.warmup(epoch * self.plan.steps_per_epoch))
        self.torch_scheduler = self.info.build(optimizer, cfg, self.plan)
        self._plan_groups = [{k: g[k] for k in _PLAN_KEYS if k in g} for g in optimizer.param_groups]

    @property
    def lr(self) -> float:
        """The current lr of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, metrics: dict[str, Any] | None = None) -> None:
        """Advance one optimizer step (interval "step"), or one epoch given its metrics (interval "epoch")."""
        if self.interval == "step":
            self.count += 1
            if self.count <= self.plan.total_steps:  # past the plan the lr holds (OneCycleLR refuses to go on)
                self.torch_scheduler.step()
            return
        monitor = self.cfg.monitor
        value = (metrics or {}).get(monitor)
        if value is None:
            raise UsageError(f"scheduler {self.cfg.name!r} steps once per epoch with the epoch's metrics, "
                             f"which must hold {monitor!r}")
        warming = self.count * self.plan.steps_per_epoch < self.plan.warmup_steps  # this epoch began in warmup
        self.count += 1
        if warming and self.warmup_scheduler is not None:
            self.warmup_scheduler.step()
        else:
            self.torch_scheduler.step(float(value))

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.cfg.name,
            "count": self.count,
            "scheduler": self.torch_scheduler.state_dict(),
            "warmup": self.warmup_scheduler.state_dict() if self.warmup_scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], *, replan: bool = False) -> None:
        """Continue a saved schedule; call it after the optimizer's ``load_state_dict`` (the lr lives there).

        ``replan``: this Schedule was built for a new number of epochs; take only the step counter (and plateau's
        counts) from ``state`` and set the lr this plan has at that step.
        """
        if not {"name", "count", "scheduler"} <= state.keys():
            raise CheckpointError("the checkpoint's lr schedule state is not one this cnnctl wrote (it lacks "
                                  f"{sorted({'name', 'count', 'scheduler'} - state.keys())}); start a new run")
        if state["name"] != self.cfg.name:
            raise CheckpointError(f"the checkpoint's lr schedule is {state['name']!r} but the config's is "
                                  f"{self.cfg.name!r}; resume with the config the run was started with")
        self.count = int(state["count"])
        if not replan:
            self.torch_scheduler.load_state_dict(state["scheduler"])
            if self.warmup_scheduler is not None and state.get("warmup") is not None:
                self.warmup_scheduler.load_state_dict(state["warmup"])
            return
        if self.interval == "epoch":
            saved = state["scheduler"]
            self.torch_scheduler.__dict__.update({k: saved[k] for k in _PLATEAU_COUNTS if k in saved})
            if self.warmup_scheduler is not None:
                in_warmup = self.count * self.plan.steps_per_epoch < self.plan.warmup_steps
                self._goto(self.warmup_scheduler, self.count, set_lr=in_warmup)
            return
        for group, saved_group in zip(self.optimizer.param_groups, self._plan_groups, strict=True):
            group.update(saved_group)
        self._goto(self.torch_scheduler, min(self.count, self.plan.total_steps))

    @staticmethod
    def _goto(scheduler: LRScheduler, count: int, *, set_lr: bool = True) -> None:
        """Put a closed-form torch scheduler (LambdaLR, OneCycleLR) at ``count`` steps, and the lr where it says."""
        if not set_lr:
            scheduler.last_epoch = count
            return
        scheduler.last_epoch = count - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "lr_scheduler.step() before optimizer.step()": on purpose
            scheduler.step()


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, *, epochs: int,
                     steps_per_epoch: int) -> Schedule:
    """The schedule ``cfg.name`` for a run of ``epochs`` epochs of ``steps_per_epoch`` optimizer steps."""
    return Schedule(optimizer, cfg, epochs=epochs, steps_per_epoch=steps_per_epoch)
