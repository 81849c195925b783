"""Hooks: early stopping and best-metric tracking (stop epochs for given sequences, state round-trips), the
hook interface's events as the loop calls them."""

from __future__ import annotations

import math

import pytest

from cnnctl.errors import UsageError
from cnnctl.training.hooks import BestMetric, EarlyStopping, Hook, resolve_mode, steps_hooks

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


def test_only_hooks_with_a_step_event_run_per_step():
    class Counter(Hook):
        def on_step_end(self, run, state):
            pass

    counter, plain, best = Counter(), Hook(), BestMetric("val_acc")
    assert steps_hooks([plain, counter, best]) == [counter]


def test_the_run_declares_its_hook_order_and_hands_the_shared_trackers(tmp_path):
    """The order ``run._hooks`` states: the schedule first (later hooks read its lr), the stop decisions, the caller's
    hooks, the recorders before TensorBoard (it flushes their scalars), the writers, the checkpoints last (a stop
    decided this epoch is saved with it). The best-metric tracker is one object, handed to the hooks that read it."""
    import cnnctl
    from cnnctl.training.hooks import (
        ActivationStatsHook,
        EpochCheckpoint,
        GradientRecorderHook,
        Interruption,
        LRSchedule,
        MetricsCSV,
        Progress,
        StepCheckpoint,
        TensorBoard,
    )
    from cnnctl.training.run import build_run

    config = cnnctl.load_config({"data": {"dataset": "digits"}, "model": {"arch": "lenet5"}, "out": str(tmp_path),
                             "train": {"epochs": 1, "tensorboard": True, "checkpoint": {"save_every_steps": 5}}})
    mine = Hook()
    run = build_run(config, hooks=[mine])
    kinds = [type(h) for h in run.hooks]
    assert kinds == [LRSchedule, BestMetric, EarlyStopping, Hook, GradientRecorderHook, ActivationStatsHook,
                     TensorBoard, MetricsCSV, Progress, StepCheckpoint, EpochCheckpoint, Interruption]
    assert run.hooks[3] is mine and run.hooks[1] is run.best and run.hooks[2] is run.early_stopping
    by_kind = {type(h): h for h in run.hooks}
    assert by_kind[MetricsCSV].best is run.best and by_kind[EpochCheckpoint].best is run.best
    assert by_kind[GradientRecorderHook].tensorboard is by_kind[TensorBoard]
    assert by_kind[ActivationStatsHook].tensorboard is by_kind[TensorBoard]
