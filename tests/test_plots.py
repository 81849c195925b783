"""Pictures: each exists, decodes as PNG, has the expected size, and draws exactly the numbers it is about
(metrics.csv, the confusion matrix, per-class scores), read back from the saved figure's artists."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.insight.plots import DPI, FIGSIZE
from tests.conftest import error_line, train_run, write_config

CONFIG = """\
seed: 0
data: {dataset: digits, batch_size: 64}
model: {arch: lenet5}
optimizer: {name: adam, lr: 0.003}
train: {epochs: 3, early_stopping: {patience: 1, min_delta: 5.0}}
"""


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def expected(kind: str) -> tuple[int, int]:
    w, h = FIGSIZE[kind]
    return round(w * DPI), round(h * DPI)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    out = []
    with pytest.MonkeyPatch.context() as mp:
        drawn = capture_figures(mp)
        for name, lr in (("fast", 0.003), ("slow", 0.0003)):
            cfg = write_config(tmp / f"{name}.yaml", CONFIG.replace("lr: 0.003", f"lr: {lr}"))
            first = len(drawn)
            out.append(train_run(cfg, tmp / "runs"))
            DRAWN[out[-1]] = drawn[first:]
    return out


# The figures each run's training saved, in order, by run directory (filled by the ``runs`` fixture).
DRAWN: dict[Path, list] = {}


def capture_figures(mp: pytest.MonkeyPatch) -> list:
    """Record every matplotlib Figure as it is saved (pyplot's or a bare Figure's), to read what it draws."""
    from matplotlib.figure import Figure

    drawn = []
    real = Figure.savefig

    def savefig(self, *args, **kwargs):
        drawn.append(self)
        return real(self, *args, **kwargs)

    mp.setattr(Figure, "savefig", savefig)
    return drawn


def metrics_columns(run: Path) -> dict[str, list[float]]:
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0]}


def data_lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    """The axes' lines by label: (xdata, ydata) as floats."""
    return {line.get_label(): ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
            for line in ax.get_lines()}


def check_confusion_figure(fig, cm: list[list[int]]) -> None:
    """The colours are the row-normalized matrix, the numbers written in the cells are the counts."""
    counts = np.asarray(cm, dtype=float)
    [ax] = [a for a in fig.axes if a.images]
    assert np.array_equal(np.asarray(ax.images[0].get_array()), counts / np.maximum(counts.sum(1, keepdims=True), 1))
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(int(counts[i, j])) for i in range(len(cm)) for j in range(len(cm))}


def test_train_writes_curves_and_confusion_matrix(runs):
    run = runs[0]
    assert png_size(run / "curves.png") == expected("curves")
    assert png_size(run / "confusion_matrix.png") == expected("confusion")
    summary = json.loads((run / "summary.json").read_text())
    columns = metrics_columns(run)
    gradients, activations, curves, confusion = DRAWN[run]  # the recorders draw when the loop ends, before finish
    assert [ax.get_xlabel() for ax in gradients.axes[:2]] == ["layer (input -> output)"] * 2
    assert activations.axes[0].get_xlabel() == "activation layer (input -> output)"
    loss, acc, lr = curves.axes[:3]
    epochs = columns["epoch"]
    for ax, kind in ((loss, "loss"), (acc, "acc")):
        lines = data_lines(ax)
        assert lines["train"] == (epochs, columns[f"train_{kind}"])  # exactly the numbers of metrics.csv
        assert lines["val"] == (epochs, columns[f"val_{kind}"])
    for ax in (loss, acc, lr):
        lines = data_lines(ax)
        assert lines[f"best (epoch {summary['best_epoch']})"][0] == [summary["best_epoch"]] * 2
        assert lines[f"early stop (epoch {summary['epochs']})"][0] == [summary["epochs"]] * 2
    marks = ("best", "early stop")  # vertical lines: two points each, as many as a 2-epoch run's lr curve
    assert [xy for label, xy in data_lines(lr).items() if not label.startswith(marks)] == [(epochs, columns["lr"])]
    check_confusion_figure(confusion, summary["test"]["confusion_matrix"])


def test_confusion_matrix_numbers_agree_with_eval(runs, cli, tmp_path):
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    # no loss falls by min_delta 5.0: it stops at epoch 2 of 3, early (the early-stop line is drawn); patience that
    # ran out at the last epoch would not count (tests/test_run.py)
    assert summary["stopped_early"] and summary["epochs"] == 2
    with pytest.MonkeyPatch.context() as mp:
        drawn = capture_figures(mp)
        result = cli("eval", run / "best.pt", "--json", "--plots", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    confusion, per_class, _mistakes = drawn
    check_confusion_figure(confusion, json.loads(result.stdout)["confusion_matrix"])
    bars = [[float(r.get_height()) for r in container] for container in per_class.axes[0].containers]
    rows = json.loads(result.stdout)["per_class"]
    assert bars == [[c[key] for c in rows] for key in ("precision", "recall", "f1")]
    report = json.loads(result.stdout)
    assert report["confusion_matrix"] == summary["test"]["confusion_matrix"]  # the matrix confusion_matrix.png draws
    assert png_size(tmp_path / "eval" / "confusion_matrix.png") == expected("confusion")
    assert png_size(tmp_path / "eval" / "per_class.png") == expected("per_class")


def test_plot_overlays_runs(runs, cli, tmp_path):
    out = tmp_path / "cmp.png"
    with pytest.MonkeyPatch.context() as mp:
        drawn = capture_figures(mp)
        result = cli("plot", *runs, "--metric", "val_loss", "-o", out)
    assert result.exit_code == 0, result.output
    [figure] = drawn
    lines = data_lines(figure.axes[0])
    assert lines == {run.name: (metrics_columns(run)["epoch"], metrics_columns(run)["val_loss"]) for run in runs}
    assert figure.axes[0].get_yscale() == "log"
    assert png_size(out) == expected("comparison")
    assert cli("plot", *runs, "--metric", "val_los").exit_code == 2
    bad = cli("plot", tmp_path)
    assert bad.exit_code == 2 and "metrics.csv" in bad.stderr


def test_plot_overlays_any_column_and_the_gradient_flow(runs, cli, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        drawn = capture_figures(mp)
        assert cli("plot", *runs, "--metric", "epoch_seconds", "-o", tmp_path / "s.png").exit_code == 0
        result = cli("plot", *runs, "--gradients", "-o", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    seconds, flow = drawn
    assert data_lines(seconds.axes[0]) == {run.name: (metrics_columns(run)["epoch"], metrics_columns(run)["epoch_seconds"])
                                           for run in runs}
    for run in runs:  # the last epoch's grad_norm per layer, as gradients.csv has it
        with (run / "gradients.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        last = max(int(r["epoch"]) for r in rows)
        norms = [float(r["grad_norm"]) for r in rows if int(r["epoch"]) == last]
        assert data_lines(flow.axes[0])[f"{run.name} (epoch {last})"] == (list(map(float, range(len(norms)))), norms)
    assert flow.axes[0].get_yscale() == "log"
    bad = cli("plot", *runs, "--metric", "val_los")
    assert bad.exit_code == 2 and "val_loss" in bad.stderr
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "metrics.csv").write_text((runs[0] / "metrics.csv").read_text())
    missing = cli("plot", tmp_path / "bare", "--gradients")
    assert missing.exit_code == 2 and "gradients.csv" in missing.stderr and "record_gradients_every" in missing.stderr


def test_tensorboard_logs_scalars_and_histograms(tmp_path, cli):
    pytest.importorskip("tensorboard")
    cfg = write_config(tmp_path / "tb.yaml", CONFIG.replace("train: {epochs: 3,", "train: {tensorboard: true, epochs: 3,"))
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "tb" / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "lr"} <= set(tags["scalars"])
    assert "weights/features.0.weight" in tags["histograms"]
    epochs = len((tmp_path / "runs" / "tb" / "metrics.csv").read_text().splitlines()) - 1
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, epochs + 1))


def test_tensorboard_missing_says_how_to_install(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else object())
    cfg = write_config(tmp_path / "tb.yaml", CONFIG.replace("train: {epochs: 3,", "train: {tensorboard: true, epochs: 3,"))
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert "pip install 'cnnctl[tensorboard]'" in result.stderr
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- corrupt run files (issue 23, item 6)

METRICS = ("epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_seconds\n"
           "1,2.1,0.34,1.48,0.58,0.003,2.1\n"
           "2,0.98,0.69,0.56,0.82,0.003,0.34\n")
GRADIENTS = ("epoch,layer,grad_norm,update_ratio,weight_norm,steps_sampled\n"
             "1,features.0,0.26,0.022,1.58,2\n"
             "1,features.3,0.38,0.048,2.58,2\n"
             "2,features.0,0.21,0.019,1.60,2\n")


def refused(result, path: Path, message: str, out: Path) -> None:
    """Exit 2, one error line naming the file and what is wrong at which line, no traceback, no picture."""
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[0] == f"error: {path}: {message}"
    assert "Traceback" not in result.output
    assert not out.exists()


def test_plot_names_the_line_of_a_metrics_csv_that_is_not_utf8(cli, tmp_path):
    run = tmp_path / "latin1"
    run.mkdir()
    (run / "metrics.csv").write_bytes(METRICS.encode() + "3,0.5,0.9,0.5,0.9,0.003,0.3 # caf\u00e9\n".encode("latin-1"))
    before = (run / "metrics.csv").read_bytes()
    result = cli("plot", run, "-o", tmp_path / "cmp.png")
    refused(result, run / "metrics.csv", "line 4: byte 34 (0xe9) is not UTF-8 text; metrics.csv is written by "
            "`cnnctl train`, was it edited or damaged?", tmp_path / "cmp.png")
    assert (run / "metrics.csv").read_bytes() == before


@pytest.mark.parametrize(("text", "message"), [
    (GRADIENTS.replace("grad_norm,", ""), "line 1: no 'grad_norm' column (the header is 'epoch', 'layer', "
     "'update_ratio', 'weight_norm', 'steps_sampled')"),
    (GRADIENTS.replace("0.38", "fast"), "line 3, column 'grad_norm': 'fast' is not a number"),
    (GRADIENTS.replace("2,features.0", "two,features.0"), "line 4, column 'epoch': 'two' is not a whole number"),
    (GRADIENTS.replace(",2\n1,features.3", ",2,9\n1,features.3"), "line 2: 7 cells, the header has 6"),
    (GRADIENTS.replace("0.048,2.58,2", "0.048"), "line 3: 4 cells, the header has 6"),
    ("", "line 1: no 'epoch' or 'grad_norm' column (the header is empty)"),
], ids=["missing-column", "not-a-number", "epoch-not-a-number", "extra-cell", "missing-cells", "empty"])
def test_plot_gradients_names_the_line_of_a_malformed_gradients_csv(cli, tmp_path, text, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "gradients.csv").write_text(text)
    result = cli("plot", run, "--gradients", "-o", tmp_path / "flow.png")
    refused(result, run / "gradients.csv", f"{message}; gradients.csv is written by `cnnctl train`, was it edited or "
            "damaged?", tmp_path / "flow.png")
    assert (run / "gradients.csv").read_text() == text


def test_plot_gradients_of_a_well_formed_file_draws_its_last_epoch(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "gradients.csv").write_text(GRADIENTS)
    with pytest.MonkeyPatch.context() as mp:
        drawn = capture_figures(mp)
        result = cli("plot", run, "--gradients", "-o", tmp_path / "flow.png")
    assert result.exit_code == 0, result.output
    assert data_lines(drawn[0].axes[0]) == {"run (epoch 2)": ([0.0], [0.21])}


# ---------------------------------------------------------------- metrics.csv with a bad cell


def test_plot_names_the_file_line_and_column_of_a_bad_cell(world, cli, tmp_path):
    run = tmp_path / "pets"
    shutil.copytree(world / "runs" / "pets", run)
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("val_acc")] = "oops"
    (run / "metrics.csv").write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    result = cli("plot", run, "-o", tmp_path / "cmp.png")
    assert result.exit_code == 2
    assert error_line(result).startswith(f"error: {run / 'metrics.csv'}: line 2, column 'val_acc': 'oops' is not a "
                                         "number")
    assert not (tmp_path / "cmp.png").exists()
