"""Gradient and activation recording wired into `cnnctl train`: files, summary.json, resume, the loop's events."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from cnnctl.training.checkpoint import load_checkpoint
from tests.conftest import train_run, write_config

TINY = """\
seed: 1
data: {dataset: digits, batch_size: 64}
model: {arch: lenet5}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 2, early_stopping: null, record_gradients_every: 3, checkpoint: {save_every_steps: 7}}
"""
LENET_LAYERS = ["features.0", "features.3", "classifier.0", "classifier.3", "classifier.6"]


def steps_per_epoch(cfg: Path) -> int:
    from cnnctl.config import load_config
    from cnnctl.data.base import load_data

    config, _ = load_config(cfg)
    n = len(load_data(config.data, config.seed).train.labels)
    return math.ceil(n / config.data.batch_size)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rec")
    cfg = write_config(tmp / "tiny.yaml", TINY)
    return cfg, train_run(cfg, tmp / "runs")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_gradients_activations_and_summary(reference):
    cfg, run = reference
    rows = read_rows(run / "gradients.csv")
    assert [(int(r["epoch"]), r["layer"]) for r in rows] == [(e, name) for e in (1, 2) for name in LENET_LAYERS]
    assert {int(r["steps_sampled"]) for r in rows} == {math.ceil(steps_per_epoch(cfg) / 3)}  # steps 0, 3, 6, ...
    assert all(float(r["grad_norm"]) > 0 and 0 < float(r["update_ratio"]) < 1 for r in rows)
    for name in ("gradients.png", "activations.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run / "summary.json").read_text())
    last = [r for r in rows if r["epoch"] == "2"]
    g = summary["gradients"]
    assert (g["epoch"], g["first_layer"], g["last_layer"], g["every_n_steps"]) == (2, "features.0", "classifier.6", 3)
    assert g["first_grad_norm"] == float(last[0]["grad_norm"]) and g["last_grad_norm"] == float(last[-1]["grad_norm"])
    assert g["first_over_last"] == pytest.approx(g["first_grad_norm"] / g["last_grad_norm"])
    a = summary["activations"]
    assert a["epoch"] == 2 and a["split"] == "val"
    assert [layer["type"] for layer in a["layers"]] == ["ReLU"] * 4  # lenet5: 2 conv + 2 hidden linear
    for layer in a["layers"]:
        assert layer["dead"] == len(layer["dead_units"]) and 0 <= layer["dead_fraction"] <= 1
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["callbacks"]["gradients"]["layers"] == LENET_LAYERS
    assert sorted(ckpt["callbacks"]["activations"]["by_epoch"]) == ["1", "2"]


def test_recording_off_writes_nothing_and_costs_no_hook(tmp_path, cli):
    cfg = write_config(tmp_path / "off.yaml", TINY.replace("record_gradients_every: 3", "record_gradients_every: null, "
                                                           "record_activations: false").replace("epochs: 2", "epochs: 1"))
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip())
    assert not (run / "gradients.csv").exists() and not (run / "activations.png").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert "gradients" not in summary and "activations" not in summary


def test_resume_mid_epoch_keeps_the_recorder_state(reference, tmp_path, monkeypatch, cli):
    """A crash right after the mid-epoch save at step 7 of epoch 2: the resumed run's gradients.csv is the
    uninterrupted one's, byte for byte (the epoch's partial sums come back from the checkpoint)."""
    cfg, ref = reference
    import cnnctl.training.state as state  # Run.save writes through its save_checkpoint

    crash_at = steps_per_epoch(cfg) + 7
    original = state.save_checkpoint

    def crashing_save(path, ckpt):
        original(path, ckpt)
        if ckpt["step"] == crash_at and Path(path).name == "last.pt":
            raise KeyboardInterrupt  # the process dying right after the save

    monkeypatch.setattr(state, "save_checkpoint", crashing_save)
    assert cli("train", cfg, "--out", tmp_path / "runs").exit_code == 130
    monkeypatch.setattr(state, "save_checkpoint", original)
    run = tmp_path / "runs" / "tiny"
    assert load_checkpoint(run / "last.pt")["callbacks"]["gradients"]["sums"][3].sum() > 0  # mid-epoch sums saved
    result = cli("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert (run / "gradients.csv").read_bytes() == (ref / "gradients.csv").read_bytes()
    resumed, expected = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    assert resumed["gradients"] == expected["gradients"] and resumed["activations"] == expected["activations"]


def test_optimizer_step_events_see_gradients_then_the_update(tmp_path):
    from cnnctl.training.hooks import Hook
    from cnnctl.training.run import train

    class Probe(Hook):
        def __init__(self):
            self.before, self.after, self.weight = [], [], None

        def on_before_optimizer_step(self, run, state):
            w = run.model.features[0].weight
            self.before.append((state.step, w.grad is not None))
            self.weight = w.detach().clone()

        def on_after_optimizer_step(self, run, state):
            self.after.append((state.step, not torch.equal(run.model.features[0].weight, self.weight)))

    probe = Probe()
    cfg = write_config(tmp_path / "p.yaml", TINY.replace("epochs: 2", "epochs: 1"))
    train(cfg, out=str(tmp_path / "runs"), device="cpu", hooks=[probe])
    n = steps_per_epoch(cfg)
    assert probe.before == [(i, True) for i in range(n)]  # grads there, state.step = the step's index
    assert probe.after == [(i, True) for i in range(n)]  # the weights moved between the two events


def test_only_listening_hooks_are_called_per_optimizer_step():
    from cnnctl.training.hooks import BestMetric, GradientRecorderHook, Hook, MetricsCSV, optimizer_step_hooks

    recorder = GradientRecorderHook(Path("."), torch.nn.Linear(2, 2), 5)
    before, after = optimizer_step_hooks([Hook(), MetricsCSV(Path("."), BestMetric("val_loss")), recorder])
    assert before == [recorder] and after == [recorder]


def test_bad_record_setting_is_refused(tmp_path, cli):
    cfg = write_config(tmp_path / "c.yaml", TINY)
    result = cli("train", cfg, "--set", "train.record_gradients_every=0", "--out", tmp_path / "runs")
    assert result.exit_code == 2 and "train.record_gradients_every" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_tensorboard_gets_the_recorder_scalars(tmp_path, cli):
    pytest.importorskip("tensorboard")
    cfg = write_config(tmp_path / "tb.yaml", TINY.replace("epochs: 2", "epochs: 1, tensorboard: true"))
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(tmp_path / "runs" / "tb" / "tensorboard")).Reload().Tags()["scalars"])
    assert {f"grad_norm/{name}" for name in LENET_LAYERS} <= tags
    assert {"update_ratio/features.0", "dead_fraction/features.1"} <= tags


def test_visualize_names_dead_units_from_the_run_statistics(reference, tmp_path, caplog):
    from cnnctl.insight.visualize import dead_channels, visualize

    _, run = reference
    layers = json.loads((run / "summary.json").read_text())["activations"]["layers"]
    with caplog.at_level("INFO", logger="cnnctl"):
        visualize(run, output=tmp_path / "vis")
    sentence = dead_channels(run / "summary.json")
    assert sentence in caplog.text and "validation split after epoch 2" in sentence
    for layer in layers:
        if layer["dead_units"]:
            assert f"{layer['layer']} {', '.join(map(str, layer['dead_units']))}" in sentence
    summary = {"activations": {"epoch": 3, "layers": [{"layer": "l.1", "dead_units": [2, 5]},
                                                       {"layer": "l.3", "dead_units": []},
                                                       {"layer": "s", "dead_units": None}]}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert dead_channels(tmp_path / "summary.json") == ("dead units over the validation split after epoch 3 "
                                                        "(summary.json): l.1 2, 5")
    (tmp_path / "summary.json").write_text(json.dumps({"name": "x"}))
    assert dead_channels(tmp_path / "summary.json") is None and dead_channels(tmp_path / "nothing.json") is None
