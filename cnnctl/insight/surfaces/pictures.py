"""The pictures: one PNG with a panel per surface, one GIF per surface."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.insight.surfaces.descent import Descent
from cnnctl.insight.surfaces.functions import Surface
from cnnctl.insight.surfaces.limits import FRAME_MS, FRAMES, GIF_DPI, HOLD_MS, PANEL

if TYPE_CHECKING:
    pass


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


