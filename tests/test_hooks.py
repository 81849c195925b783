"""Hooks: the hook interface's events as the loop calls them, and the order of the run's hooks. Early stopping and
the best metric have their own file, test_early_stopping.py."""

from __future__ import annotations

from cnnctl.training.hooks import BestMetric, EarlyStopping, Hook, steps_hooks


def test_only_hooks_with_a_step_event_run_per_step():
    class Counter(Hook):
        def on_step_end(self, run, state):
            pass

    counter, plain, best = Counter(), Hook(), BestMetric("val_acc")
    assert steps_hooks([plain, counter, best]) == [counter]


def test_the_run_declares_its_hook_order_and_hands_the_shared_trackers(tmp_path):
    """The order ``assembly._hooks`` states: the schedule first (later hooks read its lr), the stop decisions, the caller's
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
    from cnnctl.training.run import Trackers, build_run

    config = cnnctl.load_config({"data": {"dataset": "digits"}, "model": {"arch": "lenet5"}, "out": str(tmp_path),
                             "train": {"epochs": 1, "tensorboard": True, "checkpoint": {"save_every_steps": 5}}})
    mine = Hook()
    trackers = Trackers.from_config(config)
    run = build_run(config, hooks=[mine], trackers=trackers)
    kinds = [type(h) for h in run.hooks]
    assert kinds == [LRSchedule, BestMetric, EarlyStopping, Hook, GradientRecorderHook, ActivationStatsHook,
                     TensorBoard, MetricsCSV, Progress, StepCheckpoint, EpochCheckpoint, Interruption]
    assert run.hooks[3] is mine and run.hooks[1] is trackers.best and run.hooks[2] is trackers.early_stopping
    by_kind = {type(h): h for h in run.hooks}
    assert by_kind[MetricsCSV].best is trackers.best and by_kind[EpochCheckpoint].best is trackers.best
    assert by_kind[GradientRecorderHook].tensorboard is by_kind[TensorBoard]
    assert by_kind[ActivationStatsHook].tensorboard is by_kind[TensorBoard]
