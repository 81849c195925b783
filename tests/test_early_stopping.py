"""Early stopping and the best-metric tracker it shares with the checkpoints (cnnctl/training/hooks/early_stopping.py,
best_metric.py): the stop epoch for given sequences, the state a checkpoint holds and a resume continues, the
messages word for word, the hook's events on a stand-in run, and real runs through the CLI (a flat loss, patience
running out at the last epoch, which weights the test split sees with restore_best)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnctl.errors import UsageError
from cnnctl.training import hooks
from cnnctl.training.hooks import BestMetric, EarlyStopping, resolve_mode
from tests.conftest import LENET_DIGITS, write_config
from tests.test_hook_events import fake_run

# ---------------------------------------------------------------- stop epochs and state

# (monitor, mode, patience, min_delta, values, expected stop epoch or None)
CASES = [
    ("val_loss", "auto", 2, 0.0, [1.0, 0.9, 0.95, 0.96, 0.5], 4),
    ("val_loss", "auto", 3, 0.0, [1.0, 0.9, 0.8, 0.7, 0.6], None),
    ("val_acc", "auto", 2, 0.0, [0.5, 0.6, 0.6, 0.59], 4),
    ("val_acc", "auto", 1, 0.0, [0.5, 0.4], 2),
    ("val_loss", "min", 2, 0.05, [1.0, 0.97, 0.96, 0.5], 3),  # improvements smaller than min_delta do not count
    ("val_loss", "max", 2, 0.0, [1.0, 0.9, 0.8], 3),  # explicit mode wins over the name
    ("val_loss", "auto", 5, 0.0, [1.0, math.nan], 2),  # a non-finite metric stops at once
]


@pytest.mark.parametrize(("monitor", "mode", "patience", "min_delta", "values", "expected"), CASES)
def test_stop_epoch(monitor, mode, patience, min_delta, values, expected):
    es = EarlyStopping(monitor, mode, patience, min_delta)
    stopped = None
    for epoch, value in enumerate(values, start=1):
        stop, reason = es.step(value, epoch)
        if stop:
            stopped = epoch
            assert reason and monitor in reason
            break
    assert stopped == expected


def test_state_round_trip_decides_the_same():
    values = [1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.76, 0.77]
    full = EarlyStopping("val_loss", patience=3)
    decisions = [full.step(v, e)[0] for e, v in enumerate(values, 1)]
    part = EarlyStopping("val_loss", patience=3)
    for e, v in enumerate(values[:4], 1):
        part.step(v, e)
    resumed = EarlyStopping("val_loss", patience=3)
    resumed.load_state_dict(part.state_dict())
    assert decisions[4:] == [resumed.step(v, e)[0] for e, v in enumerate(values[4:], 5)]
    assert resumed.state_dict() == full.state_dict()


def test_best_metric_and_modes():
    best = BestMetric("val_acc")
    assert best.mode == "max"
    assert best.update(0.5, 1) and not best.update(0.4, 2) and best.update(0.6, 3)
    assert (best.best, best.best_epoch) == (0.6, 3)
    again = BestMetric("val_acc")
    again.load_state_dict(best.state_dict())
    assert again.state_dict() == best.state_dict()
    assert resolve_mode("train_loss", "auto") == "min"
    with pytest.raises(UsageError, match="mode must be auto, min or max"):
        resolve_mode("val_loss", "up")
    with pytest.raises(UsageError, match="patience must be at least 1"):
        EarlyStopping(patience=0)


@pytest.mark.parametrize("values", [[1.0, 0.9, 0.95, 0.96], [1.0, 0.9, 0.95, math.nan]])
def test_patience_running_out_at_the_last_epoch_is_not_an_early_stop(values):
    es = EarlyStopping("val_loss", patience=2)
    decisions = [es.step(v, e, last=e == len(values)) for e, v in enumerate(values, 1)]
    assert decisions == [(False, None)] * len(values)
    assert es.stopped_epoch is None
    early = EarlyStopping("val_loss", patience=2)
    assert [early.step(v, e)[0] for e, v in enumerate(values, 1)][-1]  # the same values, epochs to come: it stops


def test_early_stopping_min_mode_counts_an_equal_value_as_no_improvement():
    try:
        from cnnctl.training.hooks import EarlyStopping
    except ImportError:
        from cnnctl.callbacks import EarlyStopping
    for mode in ("min", "auto"):
        es = EarlyStopping("val_loss", mode, patience=2)
        assert [es.step(0.5, epoch)[0] for epoch in (1, 2, 3)] == [False, False, True]
    es = EarlyStopping("val_acc", "max", patience=2)
    assert [es.step(0.5, epoch)[0] for epoch in (1, 2, 3)] == [False, False, True]
    es = EarlyStopping("val_loss", "min", patience=1, min_delta=0.1)
    assert [es.step(v, e)[0] for e, v in enumerate([1.0, 0.9], 1)] == [False, True]  # 0.1 better is not > 0.1


def test_early_stopping_state_is_a_file_format_and_resumes_mid_wait():
    """The state's keys are what checkpoints hold (old checkpoints must keep loading); a resumed wait goes on."""
    try:
        from cnnctl.training.hooks import EarlyStopping
    except ImportError:
        from cnnctl.callbacks import EarlyStopping
    fresh = EarlyStopping("val_loss", "auto", patience=3)
    assert fresh.restore_best is True
    assert fresh.state_dict() == {"monitor": "val_loss", "mode": "min", "best": None, "best_epoch": None, "wait": 0,
                                  "patience": 3, "stopped_epoch": None}
    for epoch, value in enumerate([1.0, 0.8, 0.9, 0.95], 1):
        fresh.step(value, epoch)
    assert fresh.state_dict() == {"monitor": "val_loss", "mode": "min", "best": 0.8, "best_epoch": 2, "wait": 2,
                                  "patience": 3, "stopped_epoch": None}
    resumed = EarlyStopping("val_loss", "auto", patience=3)
    resumed.load_state_dict(fresh.state_dict())
    stop, reason = resumed.step(0.85, 5)
    assert stop and resumed.stopped_epoch == 5 and "best 0.8000 at epoch 2" in reason
    assert resumed.state_dict()["stopped_epoch"] == 5
    stopped = EarlyStopping("val_loss", "auto", patience=3)
    stopped.load_state_dict(resumed.state_dict())
    assert stopped.stopped_epoch == 5 and stopped.wait == 3
    assert EarlyStopping("val_loss", "auto", patience=1, restore_best=False).restore_best is False
    with pytest.raises(UsageError, match="patience must be at least 1, not 0"):
        EarlyStopping(patience=0)
    nan = EarlyStopping("val_loss", patience=3)
    assert nan.step(float("nan"), 1)[0] and nan.stopped_epoch == 1


def test_best_metric_ignores_non_finite_values_and_honours_min_delta_in_max_mode():
    """The mutants scripts/mutation.sh found alive in callbacks: NaN as a best value, min_delta's sign in max mode,
    the constructor's defaults, and an old state without "wait"."""
    try:
        from cnnctl.training.hooks import BestMetric, EarlyStopping, resolve_mode
    except ImportError:
        from cnnctl.callbacks import BestMetric, EarlyStopping, resolve_mode
    best = BestMetric("val_acc")
    assert not best.update(float("nan"), 1) and best.best is None
    assert best.update(0.5, 2) and not best.update(float("inf"), 3) and best.best == 0.5
    strict = BestMetric("val_acc", "max", min_delta=0.1)
    assert strict.update(0.5, 1)
    assert not strict.update(0.55, 2) and not strict.update(0.6, 3) and strict.update(0.65, 4)
    default = EarlyStopping()
    assert (default.monitor, default.tracker.mode, default.patience) == ("val_loss", "min", 5)
    old = EarlyStopping(patience=2)
    old.load_state_dict({"monitor": "val_loss", "mode": "min", "best": 1.0, "best_epoch": 1})
    assert old.wait == 0 and old.stopped_epoch is None
    with pytest.raises(UsageError, match="mode must be auto, min or max, not 'up'"):
        resolve_mode("val_loss", "up")


# ---------------------------------------------------------------- messages word for word, and the hook at its events


def test_refusals_word_for_word():
    with pytest.raises(UsageError) as info:
        resolve_mode("val_loss", "up")
    assert str(info.value) == "mode must be auto, min or max, not 'up'"
    with pytest.raises(UsageError) as info:
        EarlyStopping(patience=0)
    assert str(info.value) == "patience must be at least 1, not 0"
    assert EarlyStopping(patience=1).patience == 1


def test_early_stopping_reasons_word_for_word():
    es = EarlyStopping("val_loss", patience=2, min_delta=0.01)
    assert es.monitor == "val_loss" and es.restore_best is True
    assert [es.step(v, e) for e, v in enumerate([1.0, 0.995], 1)] == [(False, None), (False, None)]
    assert es.step(0.999, 3) == (True, "val_loss did not improve by more than 0.01 for 2 epochs (best 1.0000 at "
                                       "epoch 1); stopping at epoch 3.")
    assert es.stopped_epoch == 3
    es.restart_patience()
    assert (es.wait, es.stopped_epoch) == (0, None)
    nan = EarlyStopping("val_acc")
    assert nan.step(math.inf, 4) == (True, "val_acc is inf at epoch 4; stopping.")
    assert nan.stopped_epoch == 4
    assert EarlyStopping("val_acc").step(math.nan, 4, last=True) == (False, None)


def test_early_stopping_state_holds_its_count_and_its_stop():
    es = EarlyStopping("val_acc", patience=3)
    es.step(0.5, 1)
    es.step(0.4, 2)
    assert es.state_dict() == {"monitor": "val_acc", "mode": "max", "best": 0.5, "best_epoch": 1, "wait": 1,
                               "patience": 3, "stopped_epoch": None}
    fresh = EarlyStopping("val_acc", patience=3)
    fresh.load_state_dict({"best": 0.5, "best_epoch": 1})  # a state from before wait was kept
    assert (fresh.wait, fresh.stopped_epoch, fresh.tracker.best) == (0, None, 0.5)


def test_early_stopping_tells_the_run_through_the_rank_broadcast():
    broadcast = []
    dist = SimpleNamespace(broadcast_reason=lambda reason: broadcast.append(reason) or reason)
    es = EarlyStopping("val_loss", patience=1)
    run = fake_run(dist=dist, epoch=1)
    es.on_epoch_end(run, {"val_loss": 1.0})
    run.epoch = 2
    es.on_epoch_end(run, {"val_loss": 2.0})
    assert broadcast == [None, "val_loss did not improve by more than 0.0 for 1 epochs (best 1.0000 at epoch 1); "
                               "stopping at epoch 2."]
    assert run.stop_reason == broadcast[-1]
    last = fake_run(dist=dist, epoch=10)  # the configured last epoch: patience running out is no early stop
    es.on_epoch_end(last, {"val_loss": 3.0})
    assert last.stop_reason is None


def test_the_best_metric_ignores_non_finite_values_and_counts_min_delta():
    best = hooks.BestMetric("val_loss", min_delta=0.1)
    assert not best.improves(math.nan) and not best.improves(True) and best.improves(5.0)
    best.update(1.0, 1)
    assert not best.improves(0.9) and best.improves(0.89)
    up = hooks.BestMetric("val_acc", min_delta=0.1)
    up.update(0.5, 1)
    assert not up.improves(0.6) and up.improves(0.61)
    run = fake_run(epoch=7)
    up.on_epoch_end(run, {"val_acc": 0.9})
    assert (up.best, up.best_epoch) == (0.9, 7)


def test_early_stoppings_defaults_are_the_configs():
    from cnnctl.config import EarlyStoppingConfig

    es, config = EarlyStopping(), EarlyStoppingConfig()
    assert (es.monitor, es.tracker.mode, es.patience, es.tracker.min_delta, es.restore_best) == (
        config.monitor, "min", config.patience, config.min_delta, config.restore_best) == ("val_loss", "min", 5, 0.0, True)


# ---------------------------------------------------------------- real runs through the CLI

FLAT = """\
seed: 0
data: {dataset: digits, batch_size: 256}
model: {arch: custom, layers: [flatten, linear]}
optimizer: {name: sgd, lr: 1.0e-30, momentum: 0.0}
train: {epochs: 6, early_stopping: {monitor: val_loss, mode: min, patience: 2}}
"""


def test_early_stopping_min_mode_stops_a_flat_loss(cli, tmp_path):
    """An lr of 1e-30 moves no float32 weight: val_loss is the same number every epoch, which is no improvement."""
    cfg = write_config(tmp_path / "flat.yaml", FLAT)
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len({r["val_loss"] for r in rows}) == 1  # the loss is flat
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] is True
    assert summary["epochs"] == 3 and len(rows) == 3  # best at 1, no improvement at 2 and 3: patience 2 spent
    assert summary["best_epoch"] == 1


TINY = LENET_DIGITS


def test_patience_running_out_at_the_last_epoch_of_a_run_is_not_an_early_stop(cli, tmp_path, monkeypatch):
    import cnnctl.insight.plots as plots

    marked = []
    real_plot_curves = plots.plot_curves

    def plot_curves(rows, path, **kwargs):
        marked.append(kwargs.get("stopped_epoch"))
        return real_plot_curves(rows, path, **kwargs)

    monkeypatch.setattr(plots, "plot_curves", plot_curves)
    # train_loss with mode max never improves after epoch 1 (the loss falls): patience 2 runs out at epoch 3.
    text = TINY.replace("early_stopping: {patience: 5}", "early_stopping: {monitor: train_loss, mode: max, patience: 2}")
    cfg = write_config(tmp_path / "es.yaml", text)
    last = cli("train", cfg, "--out", tmp_path / "runs")
    assert last.exit_code == 0, last.output
    summary = json.loads((Path(last.stdout.strip()) / "summary.json").read_text())
    assert (summary["epochs"], summary["stopped_early"], summary["stop_reason"]) == (3, False, None)
    early = cli("train", cfg, "--out", tmp_path / "runs", "--set", "train.epochs=5")
    assert early.exit_code == 0, early.output
    summary = json.loads((Path(early.stdout.strip()) / "summary.json").read_text())
    assert (summary["epochs"], summary["stopped_early"]) == (3, True)
    assert marked == [None, 3]  # curves.png marks an early stop only for the run that stopped early


RESTORE = """\
seed: 0
data: {dataset: fake, num_samples: 200, num_classes: 3, channels: 1, image_size: 8, batch_size: 32}
model: {arch: custom, layers: [flatten, linear]}
optimizer: {name: adam, lr: 0.05}
train: {epochs: 4, early_stopping: {patience: 10, restore_best: RESTORE}}
"""


@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_decides_which_weights_the_test_split_sees(cli, tmp_path, restore):
    """Random images and labels: val_acc wanders at chance (epoch 1 is the best here, seeded), so the best epoch is
    not the last; the summary's test numbers are those of best.pt (restore_best: true) or last.pt (false), as
    `cnnctl eval` computes them."""
    cfg = write_config(tmp_path / "r.yaml", RESTORE.replace("RESTORE", str(restore).lower()))
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] < summary["epochs"] == 4  # otherwise best and last are the same weights
    evaluated = {}
    for name in ("best", "last"):
        report = cli("eval", run / f"{name}.pt", "--json")
        assert report.exit_code == 0, report.output
        evaluated[name] = json.loads(report.stdout)
    assert evaluated["best"]["confusion_matrix"] != evaluated["last"]["confusion_matrix"]
    used = "best" if restore else "last"
    assert summary["test_weights"] == used
    assert summary["test"]["confusion_matrix"] == evaluated[used]["confusion_matrix"]
    assert summary["test"]["accuracy"] == evaluated[used]["accuracy"]
