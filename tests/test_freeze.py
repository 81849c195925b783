"""train.freeze, the unfreeze schedule (freeze_epochs, frozen_lr_factor), their resume and their refusals."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

import cnnctl
from cnnctl.training.checkpoint import load_checkpoint
from cnnctl.training.hooks import Hook
from tests.conftest import assert_refused, snapshot, train_crashing_after, train_run, write_config

# BatchNorm in the body (its running statistics must not move while frozen), Dropout before the head (it trains
# with the head), on digits: a few steps an epoch.
BN_NET = """\
seed: 1
data: {dataset: digits, batch_size: 64}
model:
  arch: custom
  layers: [{conv: {out: 4, kernel: 3}}, batchnorm, relu, {maxpool: 2}, flatten, {dropout: 0.2}, linear]
optimizer: {name: adam, lr: 0.01}
train: {epochs: 1, early_stopping: null, record_gradients_every: 2, freeze: body}
"""
BODY = tuple(f"layers.{k}" for k in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                      "1.num_batches_tracked"))
HEAD = ("layers.6.weight", "layers.6.bias")


class Snapshots(Hook):
    """The network's tensors at the start and after each epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, run) -> None:
        self.states.append({k: v.clone() for k, v in run.model.state_dict().items()})

    def on_epoch_end(self, run, row) -> None:
        self.states.append({k: v.clone() for k, v in run.model.state_dict().items()})


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def without_time(run_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows(run_dir / "metrics.csv")]


def test_frozen_parameters_and_batchnorm_buffers_are_bit_identical_after_an_epoch(tmp_path):
    """Through the whole network every step (no feature cache): the frozen BatchNorm stays in eval mode although
    the loop puts the network in train mode."""
    snaps = Snapshots()
    result = cnnctl.train(write_config(tmp_path / "bn.yaml", BN_NET), out=tmp_path / "runs", hooks=[snaps],
                          overrides=["train.cache_features=false"])
    start, end = snaps.states
    assert [k for k in BODY if not torch.equal(start[k], end[k])] == []
    assert [k for k in HEAD if torch.equal(start[k], end[k])] == []
    saved = load_checkpoint(result.run_dir / "last.pt")["model"]
    assert all(torch.equal(saved[k], end[k]) for k in end)
    # a freeze of the whole run has no lr_frozen column; gradients.csv marks the held layers
    assert "lr_frozen" not in rows(result.run_dir / "metrics.csv")[0]
    grads = {r["layer"]: r for r in rows(result.run_dir / "gradients.csv")}
    assert grads["layers.0"]["frozen"] == grads["layers.1"]["frozen"] == "1"
    assert grads["layers.0"]["grad_norm"] == ""
    assert grads["layers.6"]["frozen"] == "0" and float(grads["layers.6"]["grad_norm"]) > 0
    assert (result.run_dir / "gradients.png").stat().st_size > 0


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    """BN_NET frozen for 1 epoch of 2, then every layer at lr x 0.1: the run, its snapshots and its log."""
    tmp = tmp_path_factory.mktemp("scheduled")
    snaps, messages, logger = Snapshots(), Messages(), logging.getLogger("cnnctl")
    logger.addHandler(messages)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = cnnctl.train(write_config(tmp / "bn.yaml", BN_NET), out=tmp / "runs", hooks=[snaps],
                              overrides=["train.epochs=2", "train.freeze_epochs=1", "train.frozen_lr_factor=0.1"])
    finally:
        logger.removeHandler(messages)
        logger.setLevel(level)
    return result.run_dir, snaps.states, messages.lines


def test_unfreeze_schedule_trains_everything_at_the_lr_factor_and_logs_it(scheduled):
    run_dir, (start, first, second), lines = scheduled
    assert [k for k in BODY if not torch.equal(start[k], first[k])] == []
    assert [k for k in BODY if torch.equal(first[k], second[k])] == []  # BatchNorm's statistics move again too
    metrics = rows(run_dir / "metrics.csv")
    assert [float(r["lr_frozen"]) for r in metrics] == [0.0, pytest.approx(0.001)]
    assert [float(r["lr"]) for r in metrics] == [0.01, 0.01]
    assert "epoch 2: the frozen layers train from here on, at lr 0.001" in lines
    grads = rows(run_dir / "gradients.csv")
    assert [(r["epoch"], r["frozen"]) for r in grads if r["layer"] == "layers.0"] == [("1", "1"), ("2", "0")]


def test_optimizer_groups_round_trip_through_the_checkpoint(scheduled):
    """The frozen layers are in the optimizer from the start, in groups of their own: the same groups before and
    after the unfreeze, so a checkpoint of either side restores into the optimizer a fresh run builds."""
    groups = load_checkpoint(scheduled[0] / "last.pt")["optimizer"]["param_groups"]
    assert [g.get("frozen", False) for g in groups] == [False, True]
    assert [len(g["params"]) for g in groups] == [2, 4]  # the head; conv and BatchNorm weights and biases
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]


# Dropout in the head, a cosine schedule, mid-epoch saves: every kind of state across the unfreeze boundary.
EXACT = BN_NET.replace("train: {epochs: 1, early_stopping: null, record_gradients_every: 2, freeze: body}", """\
scheduler: {name: cosine}
train: {epochs: 2, early_stopping: null, record_gradients_every: 2, freeze: body, freeze_epochs: 1,
        frozen_lr_factor: 0.1, checkpoint: {save_every_steps: 5}}""")


def tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, state in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{pid}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


@pytest.mark.slow
def test_a_run_killed_after_the_unfreeze_resumes_bit_exact(tmp_path, monkeypatch, cli):

    cfg = write_config(tmp_path / "exact.yaml", EXACT)
    reference = train_run(cfg, tmp_path / "ref")
    steps = load_checkpoint(reference / "last.pt")["step"] // 2  # per epoch
    for crash_at in (5, steps + 5):  # mid-epoch in the cached frozen epoch, and mid-epoch after the unfreeze
        out = tmp_path / f"runs{crash_at}"
        train_crashing_after(cli, monkeypatch, cfg, out, crash_at)
        result = cli("train", "--resume", out / "exact")
        assert result.exit_code == 0, result.output
        final, expected = tensors(load_checkpoint(out / "exact" / "last.pt")), tensors(load_checkpoint(reference / "last.pt"))
        assert final.keys() == expected.keys()
        assert all(torch.equal(final[k], expected[k]) for k in final), crash_at
        assert without_time(out / "exact") == without_time(reference)
        assert (out / "exact" / "gradients.csv").read_text() == (reference / "gradients.csv").read_text()


def test_a_layer_name_that_matches_nothing_is_refused_naming_the_layers(tmp_path, cli):
    cfg = write_config(tmp_path / "lenet.yaml", "data: {dataset: digits}\nmodel: {arch: lenet5}\n"
                       "train: {epochs: 1, freeze: [featurs]}\n")
    result = cli("train", cfg, "--out", tmp_path / "runs")
    first = assert_refused(result, "train.freeze", "'featurs'", "did you mean 'features'?",
                           "Its layers: features, classifier", "features.0")
    assert first.startswith("error: ")
    assert not any((tmp_path / "runs").glob("*/*.pt"))


@pytest.mark.parametrize(("sets", "words"), [
    (["train.freeze=[features, classifier]"], ("freezes every parameter of lenet5", "nothing would train")),
    (["train.freeze=[classifier.9]"], ("'classifier.9' names no layer", "Its layers: features, classifier")),
])
def test_a_freeze_that_leaves_nothing_or_names_nothing_is_refused(tmp_path, cli, sets, words):
    cfg = write_config(tmp_path / "lenet.yaml", "data: {dataset: digits}\nmodel: {arch: lenet5}\ntrain: {epochs: 1}\n")
    result = cli("train", cfg, "--out", tmp_path / "runs", *[a for s in sets for a in ("--set", s)])
    assert_refused(result, "train.freeze", *words)
    assert not any((tmp_path / "runs").glob("*/*.pt"))


@pytest.mark.parametrize(("sets", "words"), [
    (["train.freeze_epochs=2"], ("train: freeze_epochs", "needs train.freeze")),
    (["train.freeze=body", "train.frozen_lr_factor=0.1"], ("train: frozen_lr_factor", "needs train.freeze_epochs")),
    (["train.freeze=[]"], ("train.freeze", "at least 1 item")),
    (["train.freeze=head"], ("train.freeze", "body or a list of layer names", "not 'head'")),
])
def test_schedule_keys_that_do_not_fit_together_are_refused_at_load(tiny_config, tmp_path, cli, sets, words):
    result = cli("train", tiny_config, "--out", tmp_path / "runs", *[a for s in sets for a in ("--set", s)])
    assert_refused(result, *words)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change", ["train.freeze=[layers.0]", "train.freeze_epochs=2", "train.frozen_lr_factor=0.5"])
def test_the_freeze_keys_may_not_change_on_resume(scheduled, cli, change):
    run = scheduled[0]
    before = snapshot(run)
    result = cli("train", "--resume", run, "--set", "train.epochs=3", "--set", change)
    assert_refused(result, "different run", change.split("=")[0])
    assert snapshot(run) == before


def test_frozen_layers_are_shaded_and_labelled_in_gradients_png():
    from cnnctl.insight.plots import subplots
    from cnnctl.training.recorder_plots import _shade_frozen

    rows_ = [{"epoch": e, "layer": name, "frozen": name != "fc" and e == 1} for e in (1, 2) for name in ("a", "b", "fc")]
    fig, axes = subplots(1, 1, figsize=(4, 3), squeeze=False)
    _shade_frozen(axes[0][0], ["a", "b", "fc"], rows_)
    texts = [t.get_text() for t in axes[0][0].texts]
    assert texts == ["frozen (epoch 1)"]  # one band over a and b, none over the head
    assert len(axes[0][0].patches) == 1
