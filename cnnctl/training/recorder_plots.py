"""gradients.png and activations.png: the recorders' rows drawn per layer, one line per epoch (frozen layers shaded)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnctl.training.recorders import SATURATION_TOL

MAX_TICKS = 40  # layer names on a plot's x axis, at most


def figure(size: tuple[float, float], ncols: int, nrows: int = 1) -> tuple[Any, Any]:
    """A Figure (no pyplot) and its axes as one flat array."""
    from cnnctl.insight.plots import subplots

    fig, axes = subplots(nrows, ncols, figsize=size, squeeze=False)
    return fig, axes.flatten()


def _epoch_lines(ax: Any, fig: Any, layers: list[str], by_epoch: dict[int, dict[str, float | None]], *,
                 log: bool) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    epochs = sorted(by_epoch)
    norm = Normalize(vmin=epochs[0], vmax=max(epochs[-1], epochs[0] + 1)) if epochs else Normalize(0, 1)
    cmap = colormaps["viridis"]
    x = list(range(len(layers)))
    for e in epochs:
        y = [by_epoch[e].get(name) for name in layers]
        y = [v if v is not None and math.isfinite(v) and (v > 0 or not log) else math.nan for v in y]
        ax.plot(x, y, marker="o", markersize=3, color=cmap(norm(e)), linewidth=1.2)
    if log:
        ax.set_yscale("log")
    every = math.ceil(len(layers) / MAX_TICKS)  # a 56-layer net keeps readable names: every k-th one
    ax.set_xticks(x[::every], layers[::every], rotation=60, ha="right", fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    if epochs:
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="epoch")


def plot_gradients(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """``gradients.png``: gradient norm and update/weight ratio per layer (input on the left, output on the
    right), one line per epoch coloured by epoch, log y. A vanishing gradient is a line that falls to the left."""
    from cnnctl.insight.plots import save_figure

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    if len(layers) <= MAX_TICKS // 2:  # side by side
        fig, (ax_g, ax_u) = figure((max(10.0, 0.5 * len(layers) + 4), 4.5), 2)
    else:  # one above the other, each the full width
        fig, (ax_g, ax_u) = figure((min(16.0, 0.25 * len(layers) + 4), 9.0), 1, 2)
    for ax, key, label in ((ax_g, "grad_norm", "gradient L2 norm"), (ax_u, "update_ratio", "||update|| / ||weight||")):
        by_epoch: dict[int, dict[str, float | None]] = {}
        for r in rows:
            by_epoch.setdefault(int(r["epoch"]), {})[r["layer"]] = r[key]
        _epoch_lines(ax, fig, layers, by_epoch, log=True)
        ax.set_ylabel(label)
        ax.set_xlabel("layer (input -> output)")
    for ax in (ax_g, ax_u):
        _shade_frozen(ax, layers, rows)
    ax_u.axhline(1e-3, color="grey", linestyle="--", linewidth=0.8)
    ax_u.annotate("1e-3", (0, 1e-3), fontsize=7, color="grey", va="bottom")
    fig.suptitle(title or "gradient flow (mean over sampled steps)")
    return save_figure(fig, Path(path))


def _shade_frozen(ax: Any, layers: list[str], rows: Sequence[dict[str, Any]]) -> None:
    """Grey bands, labelled, over the layers ``train.freeze`` held (no line there: they had no gradient, which is
    not a vanishing one). A band says in which epochs when the layers were released during the run."""
    epochs = sorted({int(r["epoch"]) for r in rows})
    held = {name: [int(r["epoch"]) for r in rows if r["layer"] == name and r.get("frozen")] for name in layers}
    label = {name: _frozen_label(e, epochs) for name, e in held.items() if e}
    i = 0
    while i < len(layers):
        text = label.get(layers[i])
        j = i
        while text and j + 1 < len(layers) and label.get(layers[j + 1]) == text:
            j += 1
        if text:
            ax.axvspan(i - 0.5, j + 0.5, color="grey", alpha=0.18, linewidth=0)
            ax.text((i + j) / 2, 0.98, text, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8,
                    color="dimgrey")
        i = j + 1


def _frozen_label(frozen_epochs: list[int], epochs: list[int]) -> str:
    if frozen_epochs == epochs:
        return "frozen"
    first, last = frozen_epochs[0], frozen_epochs[-1]
    return f"frozen (epoch {first})" if first == last else f"frozen (epochs {first}-{last})"


def plot_activations(stats_by_epoch: dict[int, list[dict[str, Any]]], path: str | Path, *, title: str = "") -> Path:
    """``activations.png``: per activation layer, the fraction of dead units (rectifiers) and of saturated
    outputs (sigmoid/tanh), one line per epoch; ``stats_by_epoch`` maps an epoch to ``activation_stats`` rows."""
    from cnnctl.insight.plots import save_figure

    panels = [(key, label) for key, label in (("dead_fraction", "dead units (never positive)"),
                                              ("saturated_fraction", f"saturated outputs (within {SATURATION_TOL} of a bound)"))
              if any(r[key] is not None for rows in stats_by_epoch.values() for r in rows)]
    fig, axes = figure((6.5 * max(len(panels), 1), 4.5), max(len(panels), 1))
    if not panels:
        axes[0].text(0.5, 0.5, "no activation layers", ha="center", va="center", transform=axes[0].transAxes)
    for ax, (key, label) in zip(axes, panels, strict=False):
        layers = list(dict.fromkeys(r["layer"] for rows in stats_by_epoch.values() for r in rows if r[key] is not None))
        by_epoch = {e: {r["layer"]: r[key] for r in rows if r[key] is not None} for e, rows in stats_by_epoch.items()}
        _epoch_lines(ax, fig, layers, by_epoch, log=False)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(label)
        ax.set_xlabel("activation layer (input -> output)")
    fig.suptitle(title or "activations over the validation split")
    return save_figure(fig, Path(path))
