"""Pictures: each exists, decodes as PNG, has the expected size; the numbers drawn agree with eval's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from cnnctl.plots import DPI, FIGSIZE
from tests.conftest import write_config

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
    from typer.testing import CliRunner

    from cnnctl.cli import app

    tmp = tmp_path_factory.mktemp("plots")
    out = []
    for name, lr in (("fast", 0.003), ("slow", 0.0003)):
        cfg = write_config(tmp / f"{name}.yaml", CONFIG.replace("lr: 0.003", f"lr: {lr}"))
        result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp / "runs")], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        out.append(Path(result.stdout.strip()))
    return out


def test_train_writes_curves_and_confusion_matrix(runs):
    run = runs[0]
    assert png_size(run / "curves.png") == expected("curves")
    assert png_size(run / "confusion_matrix.png") == expected("confusion")


def test_confusion_matrix_numbers_agree_with_eval(runs, cli, tmp_path):
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    # no loss falls by min_delta 5.0: it stops at epoch 2 of 3, early (the early-stop line is drawn); patience that
    # ran out at the last epoch would not count (tests/test_run.py)
    assert summary["stopped_early"] and summary["epochs"] == 2
    result = cli("eval", run / "best.pt", "--json", "--plots", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["confusion_matrix"] == summary["test"]["confusion_matrix"]  # the matrix confusion_matrix.png draws
    assert png_size(tmp_path / "eval" / "confusion_matrix.png") == expected("confusion")
    assert png_size(tmp_path / "eval" / "per_class.png") == expected("per_class")


def test_plot_overlays_runs(runs, cli, tmp_path):
    out = tmp_path / "cmp.png"
    result = cli("plot", *runs, "--metric", "val_loss", "-o", out)
    assert result.exit_code == 0, result.output
    assert png_size(out) == expected("comparison")
    assert cli("plot", *runs, "--metric", "val_los").exit_code == 2
    bad = cli("plot", tmp_path)
    assert bad.exit_code == 2 and "metrics.csv" in bad.stderr


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
