"""Optimizers on a surface (``cnnctl optimizers``): every optimizer of the registry, built by ``create_optimizer``
from the ``optimizer`` config keys exactly as training builds it, moves one 1x2 weight ``(x, y)`` down a classic
2-D test function. The paths show what the training curves only hint at: where each update rule goes and how fast.

The surfaces
------------
- ``rosenbrock``: a curved, flat-bottomed valley (Rosenbrock 1960, started where he started it): easy to find,
  slow to follow. Its values span five decades, so its contours are log-spaced.
- ``saddle``: ``x^2 - y^2`` made bounded by ``y^4 / 2``: a saddle point at the origin between two minima. The start
  lies just off the ridge (y = 0.01), where the gradient pushing off it is tiny.
- ``ravine``: an ill-conditioned quadratic bowl, 50 times steeper across than along, where plain gradient descent
  zig-zags. It lies along an axis, the case that per-parameter rates (Adagrad, RMSProp, Adam) undo exactly.
- ``styblinski-tang``: four wells of unequal depth (Styblinski & Tang 1990); the start lies on the outer slope of a
  local well, so an optimizer that stops in the first well it meets misses the global one.

Each surface is a function of torch tensors that autograd differentiates; the gradient written by hand next to it
is held to autograd's by the tests, so the formula printed on the plot is the one descended.

Learning rates
--------------
One lr cannot serve every optimizer on every surface. SGD steps ``lr * gradient``: Rosenbrock's gradients reach
the hundreds, the saddle's stay near 1, so an lr that moves on one diverges on the other. Adagrad, RMSProp and Adam
divide by the gradient's running size and step about ``lr`` per coordinate whatever its scale, so their lr is a
distance. Each surface therefore carries its own lr per path (``Surface.lrs``), each optimizer at its best:
``default_lr`` tries ``LR_GRID`` (1e-4, 3e-4, 1e-3, ... 1) and keeps the lr with which the path settles soonest,
within ``TOLERANCE`` of the minimum it ends in and staying there, in the default ``STEPS``. A local minimum counts,
so no optimizer is rewarded for a lucky leap into the global well; where no lr settles, the lowest final loss wins.
``--set optimizer.lr=V`` sets one lr for every path instead.

What is drawn
-------------
One PNG with a panel per surface (paths over the contours, start, minima) and one GIF per surface of
``FRAMES`` frames (fewer only for fewer steps): frame k of n shows the paths up to step
``max(k, round(steps * (k / (n - 1))^2))`` (``frame_steps``), each frame ``FRAME_MS`` long and the last held
``HOLD_MS``.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError, WriteError
from cnnctl.registry import Registry
from cnnctl.training.optim import OPTIMIZERS

if TYPE_CHECKING:
    from cnnctl.config import OptimizerConfig

STEPS = 1000
MAX_STEPS = 10_000
TOLERANCE = 1e-3  # "steps to tol": the first step with f - f* <= TOLERANCE
ARRIVED = 0.05  # a run ends in a minimum when its last point lies this close to it
BOUND = 1e6  # a point this far from the origin, or a loss that is not finite, has diverged
FRAMES = 60
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
FRAME_MS, HOLD_MS = 80, 1500
SOURCE = "cnnctl optimizers"
PNG_NAME = "optimizer-paths.png"
PANEL = (8.0, 4.8)  # inches per surface and its legend, in the PNG and (at GIF_DPI) in the GIF
GIF_DPI = 80


# ---------------------------------------------------------------- the surfaces


def rosenbrock(x: Any, y: Any) -> Any:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_grad(x: Any, y: Any) -> tuple[Any, Any]:
    return -2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)


def saddle(x: Any, y: Any) -> Any:
    return x**2 - y**2 + y**4 / 2


def saddle_grad(x: Any, y: Any) -> tuple[Any, Any]:
    return 2 * x, -2 * y + 2 * y**3


def ravine(x: Any, y: Any) -> Any:
    return 0.1 * x**2 + 5 * y**2


def ravine_grad(x: Any, y: Any) -> tuple[Any, Any]:
    return 0.2 * x, 10 * y


def styblinski_tang(x: Any, y: Any) -> Any:
    return (x**4 - 16 * x**2 + 5 * x + y**4 - 16 * y**2 + 5 * y) / 2


def styblinski_tang_grad(x: Any, y: Any) -> tuple[Any, Any]:
    return (4 * x**3 - 32 * x + 5) / 2, (4 * y**3 - 32 * y + 5) / 2


_ST_GLOBAL, _ST_LOCAL = -2.903534027771178, 2.746802770990838  # the roots of 4t^3 - 32t + 5 = 0 that are minima


@dataclass(frozen=True)
class Surface:
    """A 2-D test function, where its descent starts and where its minima are."""

    name: str
    formula: str  # plain text, for the terminal
    tex: str  # matplotlib mathtext, for the plot
    loss: Callable[[Any, Any], Any]  # f(x, y) on tensors or arrays: autograd differentiates this one
    grad: Callable[[Any, Any], tuple[Any, Any]]  # the gradient by hand, held to autograd's by the tests
    start: tuple[float, float]
    global_minima: tuple[tuple[float, float], ...]
    box: tuple[float, float, float, float]  # x0, x1, y0, y1 of the plot
    lrs: dict[str, float] = field(hash=False)  # the default lr of each optimizer here (module docstring)
    local_minima: tuple[tuple[float, float], ...] = ()
    log_levels: bool = False
    convex: bool = False

    @property
    def f_min(self) -> float:
        return float(self.loss(*self.global_minima[0]))


SURFACES = Registry("surface")
for _surface in (
    Surface("rosenbrock", "f(x, y) = (1 - x)^2 + 100 (y - x^2)^2", r"$(1-x)^2 + 100\,(y-x^2)^2$",
            rosenbrock, rosenbrock_grad, (-1.2, 1.0), ((1.0, 1.0),), (-2.0, 2.0, -1.0, 3.0),
            {"sgd momentum=0": 0.003, "sgd": 0.003, "adagrad": 1.0, "rmsprop momentum=0": 0.01, "rmsprop": 0.003,
             "adam": 0.3, "adamw": 0.3}, log_levels=True),
    Surface("saddle", "f(x, y) = x^2 - y^2 + y^4 / 2", r"$x^2 - y^2 + y^4/2$",
            saddle, saddle_grad, (-1.8, 0.01), ((0.0, 1.0), (0.0, -1.0)), (-2.0, 2.0, -1.6, 1.6),
            {"sgd momentum=0": 0.3, "sgd": 0.1, "adagrad": 1.0, "rmsprop momentum=0": 0.03, "rmsprop": 0.003,
             "adam": 0.3, "adamw": 0.3}),
    Surface("ravine", "f(x, y) = 0.1 x^2 + 5 y^2", r"$0.1\,x^2 + 5\,y^2$",
            ravine, ravine_grad, (-4.5, 1.0), ((0.0, 0.0),), (-5.0, 5.0, -2.0, 2.0),
            {"sgd momentum=0": 0.1, "sgd": 0.03, "adagrad": 1.0, "rmsprop momentum=0": 0.01, "rmsprop": 0.003,
             "adam": 0.3, "adamw": 0.3}, convex=True),
    Surface("styblinski-tang", "f(x, y) = (x^4 - 16 x^2 + 5 x + y^4 - 16 y^2 + 5 y) / 2",
            r"$(x^4 - 16x^2 + 5x + y^4 - 16y^2 + 5y)\,/\,2$",
            styblinski_tang, styblinski_tang_grad, (-4.6, 4.0), ((_ST_GLOBAL, _ST_GLOBAL),), (-5.0, 5.0, -5.0, 5.0),
            {"sgd momentum=0": 0.03, "sgd": 0.01, "adagrad": 1.0, "rmsprop momentum=0": 0.3, "rmsprop": 0.003,
             "adam": 1.0, "adamw": 1.0},
            local_minima=((_ST_LOCAL, _ST_LOCAL), (_ST_LOCAL, _ST_GLOBAL), (_ST_GLOBAL, _ST_LOCAL))),
):
    SURFACES.add(_surface.name, _surface)


# ---------------------------------------------------------------- the update rules, for --explain


@dataclass(frozen=True)
class Rule:
    """An optimizer's update as ``torch.optim`` computes it (g is the gradient, t the step, from 1), which config
    key is which symbol, the idea in a sentence, and the weakness the study notes name."""

    update: tuple[str, ...]
    symbols: tuple[tuple[str, str], ...]
    idea: str
    weakness: str


RULES: dict[str, Rule] = {
    "sgd": Rule(("g = ∇f(θ) + λθ", "b = μ·b + g            (b = g at t = 1)",
                 "θ ← θ − η·b            (nesterov: θ ← θ − η·(g + μ·b))"),
                (("lr", "η"), ("momentum", "μ"), ("weight_decay", "λ"), ("nesterov", "the bracketed rule")),
                "a step down the gradient; with μ > 0 the step is a decaying sum of past gradients (momentum), "
                "which keeps going where the gradients agree and cancels where they alternate.",
                "plain SGD (μ = 0) is pushed about by noisy samples and can get stuck in a local minimum; "
                "momentum damps the noise."),
    "adagrad": Rule(("g = ∇f(θ) + λθ", "s = s + g²", "θ ← θ − η·g / (√s + ε)"),
                    (("lr", "η"), ("weight_decay", "λ"), ("eps", "ε")),
                    "a rate of its own for each parameter, η/√s: smaller where the gradients have been large.",
                    "s only grows, so the rate only falls, and it can fall so fast that learning stops before "
                    "the minimum is reached."),
    "rmsprop": Rule(("g = ∇f(θ) + λθ", "v = α·v + (1 − α)·g²", "b = μ·b + g / (√v + ε)",
                     "θ ← θ − η·b            (μ = 0: θ ← θ − η·g / (√v + ε))"),
                    (("lr", "η"), ("alpha", "α"), ("momentum", "μ"), ("weight_decay", "λ"), ("eps", "ε")),
                    "Adagrad with its sum replaced by a moving average that forgets at the rate α, so the rate "
                    "can rise again.",
                    "the notes name none: the decay coefficient α is their answer to Adagrad's."),
    "adam": Rule(("g = ∇f(θ) + λθ", "m = β₁·m + (1 − β₁)·g", "v = β₂·v + (1 − β₂)·g²",
                  "m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)", "θ ← θ − η·m̂ / (√v̂ + ε)"),
                 (("lr", "η"), ("betas", "(β₁, β₂)"), ("weight_decay", "λ"), ("eps", "ε")),
                 "momentum (m) and RMSProp's average (v) together; the bias corrections undo their start at 0, "
                 "so the first steps are not too small.",
                 "the notes name none."),
    "adamw": Rule(("θ ← θ·(1 − ηλ)", "g = ∇f(θ)", "m, v, m̂, v̂ as Adam", "θ ← θ − η·m̂ / (√v̂ + ε)"),
                  (("lr", "η"), ("betas", "(β₁, β₂)"), ("weight_decay", "λ"), ("eps", "ε")),
                  "Adam with the weight decay taken out of the gradient, so that √v̂ does not divide it; with "
                  "weight_decay 0 it is Adam, step for step.",
                  "not in the notes."),
}


# ---------------------------------------------------------------- one descent


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
        **{k: _plain(v) for k, v in descent.hyper.items()},
        "final_loss": None if descent.diverged else descent.losses[-1],
        "distance": None if descent.diverged else min(math.dist(end, m) for m in surface.global_minima),
        "steps_to_tol": next((i for i, v in enumerate(descent.losses) if v - f_min <= TOLERANCE), None),
        "ends_in": None if descent.diverged else (near[0] if near else None),
        "diverged": descent.diverged,
        "steps_taken": len(descent.losses) - 1,
    }


# ---------------------------------------------------------------- pictures


def frame_steps(steps: int) -> list[int]:
    """The step each GIF frame shows: ``FRAMES`` frames (one per step when there are fewer steps), from step 0 to
    ``steps``, spaced quadratically: the early steps, where the paths part, get most of the frames."""
    last = min(FRAMES, steps + 1) - 1
    return [max(k, round(steps * (k / last) ** 2)) for k in range(last)] + [steps]


def _contours(ax: Any, surface: Surface) -> None:
    """The surface's contour lines: log-spaced above f* where its values span decades (Rosenbrock), else linear."""
    import numpy as np
    import torch
    from matplotlib.colors import LogNorm

    x0, x1, y0, y1 = surface.box
    grid_x, grid_y = torch.meshgrid(torch.linspace(x0, x1, 300, dtype=torch.float64),
                                    torch.linspace(y0, y1, 300, dtype=torch.float64), indexing="xy")
    z = surface.loss(grid_x, grid_y).numpy()
    if surface.log_levels:
        gap = z - surface.f_min
        levels = np.logspace(-1, np.log10(gap.max()), 16)
        ax.contour(grid_x.numpy(), grid_y.numpy(), gap, levels=levels, norm=LogNorm(), cmap="viridis",
                   linewidths=0.7)
    else:
        ax.contour(grid_x.numpy(), grid_y.numpy(), z, levels=20, cmap="viridis", linewidths=0.7)


def _axes(nrows: int, ncols: int) -> tuple[Any, Any]:
    """A figure of ``nrows x ncols`` panels, each an axes for the surface and one beside it for the legend (a
    legend of its own, so that no path runs under it and the layout leaves room for it)."""
    from cnnctl.insight.plots import subplots

    fig, axes = subplots(nrows, 2 * ncols, figsize=(PANEL[0] * ncols, PANEL[1] * nrows), squeeze=False,
                         gridspec_kw={"width_ratios": [3, 1] * ncols})
    return fig, [(axes[r, 2 * c], axes[r, 2 * c + 1]) for r in range(nrows) for c in range(ncols)]


def _panel(ax: Any, legend_ax: Any, surface: Surface, descents: list[Descent], steps: int) -> list[Any]:
    """One surface: contours, start, minima and a path per descent (drawn whole; the GIF shortens them), the
    legend in ``legend_ax``. Returns the path artists in the order of ``descents``."""
    from matplotlib import colormaps

    _contours(ax, surface)
    colors = colormaps["tab10"].colors
    paths = []
    for i, d in enumerate(descents):
        style = "--" if d.optimizer == "adamw" else "-"  # with weight_decay 0 it is Adam's path: dashed over it
        (path,) = ax.plot(d.xs, d.ys, style, color=colors[i % len(colors)], linewidth=1.5,
                          label=f"{d.label}, lr {d.hyper['lr']:g}" + (" (diverged)" if d.diverged else ""))
        paths.append(path)
    ax.plot(*surface.start, "o", color="black", markersize=6, label="start")
    ax.plot(*zip(*surface.global_minima, strict=True), "*", color="red", markersize=12, label="global minimum")
    if surface.local_minima:
        ax.plot(*zip(*surface.local_minima, strict=True), "X", color="dimgray", markersize=8, label="local minimum")
    x0, x1, y0, y1 = surface.box
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"{surface.name}: {surface.tex}, {steps} steps", fontsize=10)
    legend_ax.axis("off")
    legend_ax.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="upper left", borderaxespad=0)
    return paths


def plot_paths(runs: list[tuple[Surface, list[Descent]]], steps: int, path: Path) -> Path:
    """One PNG, a panel per surface, two panels a row."""
    from cnnctl.insight.plots import save_figure

    ncols = min(2, len(runs))
    fig, panels = _axes(math.ceil(len(runs) / ncols), ncols)
    for (ax, legend_ax), (surface, descents) in zip(panels, runs, strict=False):
        _panel(ax, legend_ax, surface, descents, steps)
    for ax, legend_ax in panels[len(runs):]:
        ax.set_visible(False)
        legend_ax.set_visible(False)
    return save_figure(fig, path)


def animate_paths(surface: Surface, descents: list[Descent], steps: int, path: Path) -> int:
    """A GIF of the paths growing, a frame for each of ``frame_steps(steps)``; returns the number of frames.

    The frames share one palette, taken from the last (it holds every colour), so colours do not flicker; each
    frame prints its step, so no two are alike and Pillow merges none."""
    from PIL import Image

    from cnnctl.training.checkpoint import atomic_write

    fig, [(ax, legend_ax)] = _axes(1, 1)
    fig.set_dpi(GIF_DPI)
    paths = _panel(ax, legend_ax, surface, descents, steps)
    clock = ax.text(0.98, 0.02, "", transform=ax.transAxes, ha="right", va="bottom", fontsize=9)
    heads = [ax.plot([], [], "o", color=artist.get_color(), markersize=4)[0] for artist in paths]
    for artist in paths:
        artist.set_data([], [])
    canvas = fig.canvas
    canvas.draw()  # the contours once; each frame restores them and draws only the paths (blitting)
    background = canvas.copy_from_bbox(fig.bbox)
    shown = frame_steps(steps)
    images = []
    for step in shown:
        canvas.restore_region(background)
        for artist, head, d in zip(paths, heads, descents, strict=True):
            artist.set_data(d.xs[: step + 1], d.ys[: step + 1])
            at = min(step, len(d.xs) - 1)  # a diverged path ends early
            head.set_data(d.xs[at: at + 1], d.ys[at: at + 1])
            ax.draw_artist(artist)
            ax.draw_artist(head)
        clock.set_text(f"step {step}/{steps}")
        ax.draw_artist(clock)
        images.append(Image.frombytes("RGBA", canvas.get_width_height(), bytes(canvas.buffer_rgba())))
    palette = images[-1].convert("RGB").quantize(colors=128)
    frames_p = [im.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    buffer = io.BytesIO()
    frames_p[0].save(buffer, format="GIF", save_all=True, append_images=frames_p[1:], loop=0,
                     duration=[FRAME_MS] * (len(shown) - 1) + [HOLD_MS])
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    return len(shown)


# ---------------------------------------------------------------- the command


def _check_names(surfaces: Sequence[str], optimizers: Sequence[str], steps: int) -> None:
    """Every argument checked before anything runs or is written."""
    for name in surfaces:
        if name not in SURFACES:
            raise UsageError(f"--surface: {SURFACES.unknown(name)}")
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise UsageError(f"--optimizer: {OPTIMIZERS.unknown(name)}")
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {MAX_STEPS:,}, not {steps}")


def _make_folder(out: Path) -> None:
    from cnnctl.io import make_folders, writing

    with writing(out, note="give -o a writable folder"):
        if out.exists() and not out.is_dir():
            raise WriteError(str(out), "it is a file, not a folder", note="give -o a folder for the pictures")
        make_folders(out)


def _plain(value: Any) -> Any:
    """A value as JSON holds it (betas are a tuple)."""
    return list(value) if isinstance(value, tuple) else value


def explain_rules(names: Sequence[str], overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Each named optimizer's update rule, its symbols with the values the config gives them (the lr is the
    surface's unless ``--set optimizer.lr`` gives one), the idea and the weakness the notes name."""
    from cnnctl.config import parse_override

    lr_set = any(parse_override(item)[0] == ["optimizer", "lr"] for item in overrides)
    rules = {}
    for name in names:
        rule = RULES[name]
        cfg = optimizer_config(Line(name, name), 1.0, overrides)
        symbols = {key: {"symbol": symbol, "value": _plain(getattr(cfg, key))} for key, symbol in rule.symbols}
        if not lr_set:
            symbols["lr"]["value"] = "per surface"
        rules[name] = {"update": list(rule.update), "symbols": symbols, "idea": rule.idea, "weakness": rule.weakness}
    return rules


def optimizers_on_surfaces(surfaces: Sequence[str] = (), optimizers: Sequence[str] = (), *, steps: int = STEPS,
                           overrides: Sequence[str] = (), out: str | Path = "optimizer-paths",
                           explain: bool = False) -> dict[str, Any]:
    """Descend every chosen surface (default: all) with every chosen optimizer (default: the registry's), draw
    ``OUT/optimizer-paths.png`` and ``OUT/optimizer-paths-SURFACE.gif``; returns the table and the files."""
    surfaces = list(dict.fromkeys(surfaces)) or SURFACES.names()
    _check_names(surfaces, optimizers, steps)
    check_overrides(overrides)
    names = [name for name in OPTIMIZERS.names() if name in optimizers or not optimizers]  # the registry's order
    lines = lines_for(names)
    configs = {s: [optimizer_config(line, SURFACES.get(s).lrs[line.key], overrides) for line in lines]
               for s in surfaces}  # every config validated before the first step
    rules = explain_rules(names, overrides) if explain else None
    out = Path(out)
    _make_folder(out)
    runs = [(SURFACES.get(s), [descend(SURFACES.get(s), cfg, steps) for cfg in configs[s]]) for s in surfaces]
    report = []
    for surface, descents in runs:
        gif = out / f"optimizer-paths-{surface.name}.gif"
        report.append({"name": surface.name, "formula": surface.formula, "start": list(surface.start),
                       "global_minima": [list(m) for m in surface.global_minima], "f_min": surface.f_min,
                       "gif": str(gif), "frames": animate_paths(surface, descents, steps, gif),
                       "rows": [summarize(surface, d) for d in descents]})
    png = plot_paths(runs, steps, out / PNG_NAME)
    return {"steps": steps, "tolerance": TOLERANCE, "png": str(png), "frame_ms": FRAME_MS, "hold_ms": HOLD_MS,
            "surfaces": report, **({"rules": rules} if rules is not None else {})}


# ---------------------------------------------------------------- text


def _number(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def format_rules(rules: dict[str, dict[str, Any]]) -> list[str]:
    text = ["Update rules, as torch.optim computes them (g: the gradient, t: the step from 1):"]
    for name, rule in rules.items():
        symbols = ", ".join(f"{key} = {s['symbol']} ({s['value']})" for key, s in rule["symbols"].items())
        text += ["", f"{name}:", *(f"    {line}" for line in rule["update"]),
                 *(line for head, body in (("config", symbols), ("idea", rule["idea"]),
                                           ("weakness (study notes)", rule["weakness"]))
                   for line in textwrap.wrap(f"{head}: {body}", 110, initial_indent="  ", subsequent_indent="    "))]
    return [*text, ""]


def format_table(surface: dict[str, Any], steps: int) -> list[str]:
    minima = " and ".join(f"({x:g}, {y:g})" for x, y in surface["global_minima"])
    head = (f"{surface['name']}: {surface['formula']}; start ({surface['start'][0]:g}, {surface['start'][1]:g}), "
            f"global minimum f* = {surface['f_min']:.6g} at {minima}; {steps} steps")
    rows = [("optimizer", "lr", "final loss", "distance", f"steps to f-f*<={TOLERANCE:g}", "ends in")]
    for r in surface["rows"]:
        reached = "never" if r["steps_to_tol"] is None else str(r["steps_to_tol"])
        rows.append((r["label"], f"{r['lr']:g}", "diverged" if r["diverged"] else _number(r["final_loss"], ".4g"),
                     _number(r["distance"]), reached, r["ends_in"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [head, *("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)]


def format_report(result: dict[str, Any]) -> str:
    """The text ``cnnctl optimizers`` prints: the rules with --explain, a table per surface, the files."""
    text = format_rules(result["rules"]) if "rules" in result else []
    for surface in result["surfaces"]:
        text += [*format_table(surface, result["steps"]), ""]
    text.append(f"wrote {result['png']}")
    text += [f"wrote {s['gif']} ({s['frames']} frames of {result['frame_ms']} ms, the last held "
             f"{result['hold_ms'] / 1000:g} s)" for s in result["surfaces"]]
    return "\n".join(text)
