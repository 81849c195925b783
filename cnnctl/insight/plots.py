"""PNG plots drawn with matplotlib (Agg, no display): training curves, confusion matrices, run comparisons.

Every figure has a fixed size in inches at ``DPI``, so its pixel size is known: ``FIGSIZE[name] * DPI``.
Figures are ``matplotlib.figure.Figure`` objects on their own Agg canvas (``subplots``, ``save_figure``): pyplot
is never imported, so its global figure list and a notebook's chosen backend are left alone.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from cnnctl.config.text import clip
from cnnctl.errors import CnnctlError, DataError, UsageError
from cnnctl.io import writing
from cnnctl.registry import did_you_mean

DPI = 100
FIGSIZE = {"curves": (13.0, 4.0), "confusion": (7.0, 6.0), "per_class": (9.0, 4.0), "comparison": (8.0, 5.0)}
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], layout: str | None = "constrained",
             **kwargs: Any) -> tuple[Any, Any]:
    """A new ``Figure`` on an Agg canvas and its axes, as ``pyplot.subplots`` would return them (``kwargs``:
    ``squeeze``, ``gridspec_kw``, ``sharex``...), without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def integer_epochs(*axes: Any) -> None:
    """Integer ticks on the x axes (epochs, trials)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``DPI``, atomically (WriteError naming the file on failure)."""
    from cnnctl.training.checkpoint import atomic_write

    path = Path(path)
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    return path


def _edited(path: Path) -> str:
    return f"{path.name} is written by `cnnctl train`, was it edited or damaged?"


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str | None, Any]]]]:
    """A CSV file training wrote: its header and its rows, each with the line it ends on (a row longer than the
    header has its extra cells under the key None, a shorter one None for the cells it lacks).

    DataError naming the file and line for what the csv module cannot read: a byte that is not UTF-8, a field
    past its size limit."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot be read: {e.strerror or e}", file=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        at = e.start - raw.rfind(b"\n", 0, e.start)  # 1 for the line's first byte
        raise DataError(f"line {line}: byte {at} (0x{raw[e.start]:02x}) is not UTF-8 text; {_edited(path)}",
                        file=str(path)) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = list(reader.fieldnames or [])
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise DataError(f"line {reader.line_num}: {e}; {_edited(path)}", file=str(path)) from None
    return header, rows


def _not_a_number(path: Path, line: int, key: str | None, value: Any, kind: str = "a number") -> DataError:
    column = repr(key) if key is not None else "past the header's last"
    return DataError(f"line {line}, column {column}: {str(value)[:40]!r} is not {kind}; {_edited(path)}",
                     file=str(path))


def read_metrics(run_dir: str | Path) -> list[dict[str, float | None]]:
    """A run's metrics.csv as rows of floats (None where a value is missing)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise CnnctlError(f"{run_dir}: no metrics.csv here; give a run directory written by `cnnctl train`")
    header, lines = _read_csv(path)
    if "epoch" not in header:
        raise DataError(f"line 1: no 'epoch' column (the header is {_short_header(header)}); {_edited(path)}",
                        file=str(path))
    rows = []
    for line, row in lines:
        parsed: dict[str, float | None] = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value) if value not in ("", None) else None
            except (ValueError, TypeError):  # TypeError: a row longer than the header (key None, a list)
                raise _not_a_number(path, line, key, value) from None
        rows.append(parsed)
    return rows


def _short_header(header: list[str]) -> str:
    """A CSV header as the message shows it: its first few columns, quoted."""
    shown = ", ".join(clip(c, 40, quoted=True) for c in header[:8]) + (", ..." if len(header) > 8 else "")
    return shown or "empty"


def plot_curves(rows: list[dict[str, float | None]], path: Path, *, best_epoch: int | None = None,
                stopped_epoch: int | None = None, title: str = "") -> Path:
    """Loss and accuracy (train and val) per epoch and the learning rate on its own axis; best epoch and the
    early-stopping point marked."""
    fig, (ax_loss, ax_acc, ax_lr) = subplots(1, 3, figsize=FIGSIZE["curves"], layout="constrained")
    epochs = [r["epoch"] for r in rows]
    for ax, kind, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            values = [r.get(f"{split}_{kind}") for r in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_lr.plot(epochs, [r.get("lr") for r in rows], color="tab:green", marker="o", markersize=3)
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate (end of epoch)")
    ax_lr.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc, ax_lr):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:purple", linestyle=":", label=f"best (epoch {best_epoch})")
        if stopped_epoch is not None:
            ax.axvline(stopped_epoch, color="tab:red", linestyle="-.", label=f"early stop (epoch {stopped_epoch})")
    integer_epochs(ax_loss, ax_acc, ax_lr)
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path, *, title: str = "") -> Path:
    """The confusion matrix normalized per true class (colour), with the counts written in the cells."""
    import numpy as np

    counts = np.asarray(cm, dtype=np.int64)
    totals = counts.sum(1, keepdims=True)
    normalized = counts / np.maximum(totals, 1)
    fig, ax = subplots(figsize=FIGSIZE["confusion"], layout="constrained")
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    k = len(classes)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=90 if max(map(len, classes)) > 3 else 0, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                color = "white" if normalized[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (colour: row-normalized; numbers: counts)", fontsize=10)
    return save_figure(fig, path)


def plot_per_class(per_class: list[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Precision, recall and F1 of each class as grouped bars."""
    import numpy as np

    fig, ax = subplots(figsize=FIGSIZE["per_class"], layout="constrained")
    x = np.arange(len(per_class))
    for i, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [c[key] for c in per_class], width=0.27, label=key)
    if len(per_class) <= 40:
        ax.set_xticks(x, [c["class"] for c in per_class], rotation=90 if len(per_class) > 12 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(ncol=3, fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "per-class precision, recall, F1", fontsize=10)
    return save_figure(fig, path)


def plot_runs(runs: list[str], *, metric: str = "val_acc", output: Path = Path("comparison.png")) -> Path:
    """The runs' ``metric`` overlaid, one line per run, labelled with the run's name: any metrics.csv column per
    epoch, or ``grad_norm`` / ``update_ratio``: the last epoch's value per layer from each run's gradients.csv
    (layer index on x, input to output, log y: gradient flow side by side)."""
    if metric in GRADIENT_METRICS:
        return _plot_gradient_runs(runs, metric, output)
    fig, ax = subplots(figsize=FIGSIZE["comparison"], layout="constrained")
    for run in runs:
        rows = read_metrics(run)
        columns = [c for c in rows[0] if c != "epoch"] if rows else list(METRICS)
        if metric not in columns:
            choices = sorted({*columns, *GRADIENT_METRICS})
            raise UsageError(f"--metric {metric!r}: {run}/metrics.csv has no such column; choose one of "
                             f"{', '.join(choices)}{did_you_mean(metric, choices)}")
        values = [r.get(metric) for r in rows]
        if not any(v is not None for v in values):
            raise CnnctlError(f"{run}: metrics.csv has no {metric} values (no validation split?); choose another --metric")
        ax.plot([r["epoch"] for r in rows], values, marker="o", markersize=3, label=Path(run).name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    integer_epochs(ax)
    if metric == "lr" or metric.endswith("loss"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(output))


GRADIENT_METRICS = ("grad_norm", "update_ratio")


def _gradient_rows(path: Path, metric: str) -> list[tuple[int, float | None]]:
    """(epoch, ``metric``) of each row of a gradients.csv; DataError naming the line of a row that is not what
    training writes (a column missing, a cell that is not a number, more or fewer cells than the header).
    (recorders.read_gradients reads the whole row; importing it here would close a cycle.)"""
    header, lines = _read_csv(path)
    missing = [c for c in ("epoch", metric) if c not in header]
    if missing:
        raise DataError(f"line 1: no {' or '.join(map(repr, missing))} column (the header is {_short_header(header)}); "
                        f"{_edited(path)}", file=str(path))
    rows = []
    for line, row in lines:
        cells = len(header) + len(row.get(None) or []) - sum(v is None for k, v in row.items() if k is not None)
        if cells != len(header):
            raise DataError(f"line {line}: {cells} cells, the header has {len(header)}; {_edited(path)}",
                            file=str(path))
        try:
            epoch = int(row["epoch"])
        except ValueError:
            raise _not_a_number(path, line, "epoch", row["epoch"], "a whole number") from None
        try:
            value = float(row[metric]) if row[metric] else None
        except ValueError:
            raise _not_a_number(path, line, metric, row[metric]) from None
        rows.append((epoch, value))
    return rows


def _plot_gradient_runs(runs: list[str], metric: str, output: Path) -> Path:
    fig, ax = subplots(figsize=FIGSIZE["comparison"], layout="constrained")
    for run in runs:
        path = Path(run) / "gradients.csv"
        if not path.is_file():
            raise CnnctlError(f"{run}: no gradients.csv here; train with train.record_gradients_every set (e.g. "
                              "--set train.record_gradients_every=20)")
        rows = _gradient_rows(path, metric)
        if not rows:
            raise CnnctlError(f"{path}: no rows yet (no epoch finished); choose another run")
        last = max(e for e, _ in rows)
        values = [v for e, v in rows if e == last]
        ax.plot(range(len(values)), [math.nan if v is None or v <= 0 else v for v in values], marker="o",
                markersize=3, label=f"{Path(run).name} (epoch {last})")
    ax.set_xlabel("layer with parameters (0 = input side)")
    ax.set_ylabel(f"{metric} (last epoch, mean over sampled steps)")
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(output))


def run_plots(run_dir: Path, summary: dict[str, Any], classes: list[str], stopped_epoch: int | None) -> list[Path]:
    """What every ``cnnctl train`` draws: curves.png and, with a test split, confusion_matrix.png."""
    paths = [plot_curves(read_metrics(run_dir), run_dir / "curves.png", best_epoch=summary.get("best_epoch"),
                         stopped_epoch=stopped_epoch, title=str(summary.get("name") or ""))]
    test = summary.get("test")
    if test:
        paths.append(plot_confusion(test["confusion_matrix"], classes, run_dir / "confusion_matrix.png",
                                    title=f"test, {summary.get('test_weights')} weights: accuracy {test['accuracy']:.2%}"))
    return paths


def eval_plots(result: dict[str, Any], folder: Path, *, mistake_images: Any = None) -> list[Path]:
    """``cnnctl eval --plots DIR``: the confusion matrix, the per-class bar chart and, given the images of
    ``result``'s mistakes (uint8 ``[N, C, H, W]``, in their order), mistakes.png (of the ensemble, if any)."""
    r = result.get("ensemble", result)
    classes = [c["class"] for c in r["per_class"]]
    title = f"{r['split']}: accuracy {r['accuracy']:.2%}"
    paths = [plot_confusion(r["confusion_matrix"], classes, Path(folder) / "confusion_matrix.png", title=title),
             plot_per_class(r["per_class"], Path(folder) / "per_class.png", title=title)]
    if mistake_images is not None:
        paths.append(plot_mistakes(mistake_images, r.get("mistakes") or [], Path(folder) / "mistakes.png",
                                   title=f"{r['split']}: the most confidently wrong of {r['n']} images"))
    return paths


def plot_mistakes(images: Any, mistakes: list[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """mistakes.png: the most confidently wrong images (up to 32), each with its true class, the predicted class
    and the probability the network gave it; ``images`` uint8 ``[N, C, H, W]`` in the order of ``mistakes``."""
    n = len(mistakes)
    cols = min(8, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = subplots(rows, cols, figsize=(1.6 * cols + 0.4, 1.9 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, image, m in zip(axes.ravel(), images, mistakes, strict=False):
        pixels = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
        ax.imshow(pixels, cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"#{m['index']} true {m['true']}\npred {m['pred']} {m['prob']:.0%}", fontsize=7, color="tab:red")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle(title or "most confident mistakes", fontsize=9)
    return save_figure(fig, path)
