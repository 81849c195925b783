"""One descent: an optimizer built from the config keys moves one 1x2 weight down a surface; the lr each path gets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError
from cnnctl.insight.surfaces.functions import Surface
from cnnctl.insight.surfaces.limits import ARRIVED, BOUND, LR_GRID, SOURCE, STEPS, TOLERANCE
from cnnctl.training.optim import OPTIMIZERS

if TYPE_CHECKING:
    from cnnctl.config import OptimizerConfig


@dataclass(frozen=True)
class Line:
    """One path: an optimizer of the registry, the name its lr goes by in ``Surface.lrs`` and the config keys it
    fixes (momentum 0 for the plain form)."""

    optimizer: str
    key: str
    fixed: tuple[tuple[str, Any], ...] = ()


def lines_for(names: Sequence[str]) -> list[Line]:
    """The paths drawn for ``names``: one per optimizer, and a second with momentum 0 for one with a momentum
    key, since the notes' SGD and RMSProp have none while cnnctl's default momentum is 0.9."""
    lines = []
    for name in names:
        if OPTIMIZERS.get(name).has_momentum:
            lines.append(Line(name, f"{name} momentum=0", (("momentum", 0.0), ("nesterov", False))))
        lines.append(Line(name, name))
    return lines


def check_overrides(overrides: Sequence[str]) -> None:
    """Only ``optimizer.KEY`` can be set here; the optimizers themselves are chosen with ``--optimizer``."""
    from cnnctl.config import parse_override

    for item in overrides:
        keys, _ = parse_override(item)
        if keys[0] != "optimizer" or len(keys) != 2:
            raise UsageError(f"--set {item}: {SOURCE} reads only the optimizer section's keys, e.g. "
                             "--set optimizer.lr=0.01 or --set optimizer.momentum=0.5")
        if keys[1] == "name":
            raise UsageError(f"--set {item}: choose the optimizers with --optimizer NAME (repeatable); "
                             f"known: {', '.join(OPTIMIZERS.names())}")


def optimizer_config(line: Line, lr: float, overrides: Sequence[str]) -> OptimizerConfig:
    """The ``optimizer`` section a training config would hold: ``lr`` and the config's defaults, then the
    ``--set`` overrides (``nesterov`` only for an optimizer that has it), then the keys the line fixes; validated
    as every config is."""
    from cnnctl.config import apply_overrides, validate_config

    data = apply_overrides({"optimizer": {"name": line.optimizer, "lr": lr}}, list(overrides))
    data["optimizer"] = {**data["optimizer"], **dict(line.fixed)}
    if not OPTIMIZERS.get(line.optimizer).has_nesterov:
        data["optimizer"].pop("nesterov", None)  # meant for sgd: a config refuses it with another optimizer
    return validate_config(data, SOURCE, list(overrides)).optimizer


@dataclass
class Descent:
    """The points and losses of one path, the start included; ``hyper`` is what the built optimizer holds."""

    optimizer: str
    hyper: dict[str, Any]
    xs: list[float]
    ys: list[float]
    losses: list[float]
    diverged: bool

    @property
    def label(self) -> str:
        label = self.optimizer
        if "momentum" in self.hyper:
            label += f" momentum={self.hyper['momentum']:g}" + (" nesterov" if self.hyper.get("nesterov") else "")
        return label


def _point(start: tuple[float, float]) -> Any:
    """A module holding the 1x2 weight (x, y): a weight to ``param_groups``, so weight decay applies to it."""
    import torch

    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.tensor([start], dtype=torch.float64))
    return module


def descend(surface: Surface, cfg: OptimizerConfig, steps: int) -> Descent:
    """``steps`` updates by ``create_optimizer(point, cfg)``, training's own builder, from the surface's start;
    stops early once the loss is not finite or the point is past ``BOUND``."""
    from cnnctl.training.optim import create_optimizer

    point = _point(surface.start)
    optimizer = create_optimizer(point, cfg)
    group = optimizer.param_groups[0]
    hyper = {k: group[k] for k in ("lr", "momentum", "nesterov", "alpha", "betas", "eps", "weight_decay") if k in group}
    xs, ys, losses = [], [], []
    for step in range(steps + 1):
        loss = surface.loss(*point.weight[0])
        (x, y), value = point.weight.detach()[0].tolist(), loss.item()
        if not (math.isfinite(value) and math.hypot(x, y) < BOUND):
            return Descent(cfg.name, hyper, xs, ys, losses, diverged=True)
        xs.append(x)
        ys.append(y)
        losses.append(value)
        if step < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return Descent(cfg.name, hyper, xs, ys, losses, diverged=False)


def settled_at(surface: Surface, descent: Descent) -> int | None:
    """The step from which the path stays within ``TOLERANCE`` of the minimum it ends in, local ones included;
    None when it ends in none."""
    if descent.diverged:
        return None
    end = (descent.xs[-1], descent.ys[-1])
    minimum = min((*surface.global_minima, *surface.local_minima), key=lambda m: math.dist(end, m))
    ceiling = float(surface.loss(*minimum)) + TOLERANCE
    above = [i for i, v in enumerate(descent.losses) if v > ceiling]
    if math.dist(end, minimum) > ARRIVED or (above and above[-1] == len(descent.losses) - 1):
        return None
    return above[-1] + 1 if above else 0


def default_lr(surface: Surface, line: Line, steps: int = STEPS) -> float:
    """How ``Surface.lrs`` were chosen (module docstring): the lr of ``LR_GRID`` whose path settles soonest, or,
    when none settles, the one with the lowest final loss. A test holds the table to it."""
    runs = []
    for lr in LR_GRID:
        descent = descend(surface, optimizer_config(line, lr, ()), steps)
        runs.append((lr, settled_at(surface, descent), math.inf if descent.diverged else descent.losses[-1]))
    settled = [(step, lr) for lr, step, _ in runs if step is not None]
    return min(settled)[1] if settled else min(runs, key=lambda run: run[2])[0]


def summarize(surface: Surface, descent: Descent) -> dict[str, Any]:
    """A table row: final loss, distance to the nearest global minimum, steps to ``TOLERANCE`` (None: never) and
    the minimum the path ends in (``"global"``, ``"local"`` or None)."""
    f_min = surface.f_min
    end = (descent.xs[-1], descent.ys[-1])
    near = [kind for kind, minima in (("global", surface.global_minima), ("local", surface.local_minima))
            if any(math.dist(end, m) <= ARRIVED for m in minima)]
    return {
        "optimizer": descent.optimizer,
        "label": descent.label,
        **{k: plain(v) for k, v in descent.hyper.items()},
        "final_loss": None if descent.diverged else descent.losses[-1],
        "distance": None if descent.diverged else min(math.dist(end, m) for m in surface.global_minima),
        "steps_to_tol": next((i for i, v in enumerate(descent.losses) if v - f_min <= TOLERANCE), None),
        "ends_in": None if descent.diverged else (near[0] if near else None),
        "diverged": descent.diverged,
        "steps_taken": len(descent.losses) - 1,
    }


def plain(value: Any) -> Any:
    """A value as JSON holds it (betas are a tuple)."""
    return list(value) if isinstance(value, tuple) else value
