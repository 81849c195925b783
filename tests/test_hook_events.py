"""Each hook of cnnctl.training.hooks at its events, on a stand-in run: what it saves and when, what it prints, what it
writes to metrics.csv and TensorBoard, its messages word for word (mutation survivors of ``hooks``). The hooks
inside real training runs are tested in test_recording.py, test_tensorboard.py and test_train.py."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from types import SimpleNamespace

import pytest
import torch

from cnnctl import interrupts
from cnnctl.errors import ConfigError
from cnnctl.training import hooks
from cnnctl.training.hooks import (
    ActivationStatsHook,
    EpochCheckpoint,
    GradientRecorderHook,
    Hook,
    Interruption,
    LRSchedule,
    MetricsCSV,
    Progress,
    StepCheckpoint,
    TensorBoard,
    epoch_line,
    final_metrics,
    first_layer_filters,
    hparam_values,
    optimizer_step_hooks,
    write_metrics,
)
from cnnctl.training.hooks import progress as progress_module


class Loader(list):
    num_samples = 1000


def fake_run(**fields) -> SimpleNamespace:
    """A stand-in for run.Run with what the hooks read, and a record of its saves."""
    saves: list = []
    run = SimpleNamespace(
        epoch=1, step=0, last_saved_step=0, interrupted=None, stop_after_step=False, stop_reason=None, history=[],
        config=SimpleNamespace(name="r", train=SimpleNamespace(epochs=10)), train_loader=Loader(range(4)),
        val_loader=None, best=SimpleNamespace(best_epoch=None), scheduler=SimpleNamespace(lr=0.05), hooks=[],
        saves=saves, has_checkpoint=lambda: True,
        save=lambda *names, partial=None: saves.append((names, partial)))
    for key, value in fields.items():
        setattr(run, key, value)
    return run


class State(SimpleNamespace):
    def __init__(self, step: int) -> None:
        super().__init__(step=step, checks=[])

    def check_finite(self, epoch: int, *, kept: bool) -> None:
        self.checks.append((epoch, kept))

    def totals(self) -> tuple[float, float, int]:
        return 0.123456, 0.5, 640


ROW = {"epoch": 3, "train_loss": 0.12345, "train_acc": 0.9876, "val_loss": 0.2, "val_acc": 0.95, "lr": 0.00123456,
       "epoch_seconds": 2.5}


# ---------------------------------------------------------------- which hooks run on the hot path


def test_optimizer_step_hooks_are_the_ones_that_override_an_optimizer_event():
    class Before(Hook):
        def on_before_optimizer_step(self, run, state):
            pass

    class After(Hook):
        def on_after_optimizer_step(self, run, state):
            pass

    before, after, plain = Before(), After(), Hook()
    assert optimizer_step_hooks([plain, before, after]) == ([before], [after])
    assert plain.wants_unscaled_gradients(fake_run(), State(0)) is True
    assert plain.state_dict() == {} and plain.key is None


def test_the_lr_schedule_steps_per_step_or_per_epoch_with_the_row():
    calls = []
    per_step = LRSchedule(SimpleNamespace(interval="step", step=lambda *a: calls.append(("step", a))))
    per_epoch = LRSchedule(SimpleNamespace(interval="epoch", step=lambda *a: calls.append(("epoch", a))))
    for hook in (per_step, per_epoch):
        hook.on_step_end(fake_run(), State(1))
        hook.on_epoch_end(fake_run(), ROW)
    assert calls == [("step", ()), ("epoch", (ROW,))]


# ---------------------------------------------------------------- the epoch line and metrics.csv


def test_the_epoch_line_word_for_word():
    assert epoch_line(ROW, 10, 1000, True) == ("epoch 3/10  train_loss 0.1235  train_acc 98.76%  val_loss 0.2000  "
                                               "val_acc 95.00%  lr 0.00123  400 img/s  2.5s  *")
    no_val = {**ROW, "val_loss": None, "val_acc": None, "epoch_seconds": 0.0}
    assert epoch_line(no_val, 10, 1000, False) == ("epoch 3/10  train_loss 0.1235  train_acc 98.76%  lr 0.00123  "
                                                   "1,000,000,000,000 img/s  0.0s")


def test_metrics_csv_keeps_every_digit_and_leaves_missing_values_empty(tmp_path):
    history = [{**ROW, "val_loss": None, "val_acc": None, "lr": 0.1}, {**ROW, "epoch": 4, "train_loss": 1 / 3}]
    write_metrics(tmp_path, history)
    assert (tmp_path / "metrics.csv").read_bytes().decode() == (  # "\n" line ends, not csv's default "\r\n"
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_seconds\n"
        "3,0.12345,0.9876,,,0.1,2.5\n"
        "4,0.3333333333333333,0.9876,0.2,0.95,0.00123456,2.5\n")


def test_the_metrics_hook_writes_the_file_and_logs_the_line(tmp_path, caplog):
    run = fake_run(epoch=3, history=[ROW], best=SimpleNamespace(best_epoch=3))
    with caplog.at_level(logging.INFO, logger="cnnctl"):
        MetricsCSV(tmp_path, run.best).on_epoch_end(run, ROW)
        run.best.best_epoch = 2
        MetricsCSV(tmp_path, run.best).on_epoch_end(run, ROW)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1] == "3,0.12345,0.9876,0.2,0.95,0.00123456,2.5"
    assert caplog.messages == [epoch_line(ROW, 10, 1000, True), epoch_line(ROW, 10, 1000, False)]


# ---------------------------------------------------------------- the progress bar


def test_progress_checks_the_loss_at_most_once_a_second(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = Progress(enabled=False)  # pytest's stderr is no terminal: no bar
    assert progress.enabled is False
    run, state = fake_run(epoch=2), State(1)
    progress.on_epoch_start(run, state)
    assert progress.bar is None and progress.t0 == progress.last == 100.0
    clock[0] = 100.999
    progress.on_step_end(run, state)
    assert state.checks == []
    clock[0] = 101.0  # exactly REFRESH_SECONDS later
    progress.on_step_end(run, state)
    assert state.checks == [(2, True)] and progress.last == 101.0
    progress.on_step_end(run, state)
    assert state.checks == [(2, True)]


def test_progress_draws_a_bar_with_the_running_figures(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = Progress(enabled=True)
    assert progress.enabled is True
    run = fake_run(epoch=2, config=SimpleNamespace(name="r", train=SimpleNamespace(epochs=5)))
    progress.on_epoch_start(run, State(1))  # a mid-epoch resume starts the bar at its step
    bar = progress.bar
    assert (bar.total, bar.n, bar.desc, bar.unit, bar.leave) == (4, 1, "epoch 3/5", "batch", False)
    clock[0] = 102.0
    progress.on_step_end(run, State(3))
    assert bar.n == 3
    assert bar.postfix == "loss=0.1235, acc=50.00%, lr=0.05, img/s=320"
    progress.on_epoch_end(run, ROW)
    assert progress.bar is None and bar.disable  # closed
    progress.on_epoch_start(run, State(0))
    progress.on_train_end(run)
    assert progress.bar is None
    assert Progress(enabled=False).enabled is False


def test_a_notebook_kernel_counts_as_a_screen(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert not hooks.in_notebook()
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", object())
    assert hooks.in_notebook()
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert not hooks.in_notebook()


# ---------------------------------------------------------------- checkpoints and interruption


@pytest.mark.parametrize("step, saved, state_step, expected", [
    (5, 2, 2, True),  # 3 steps since the last save
    (4, 2, 2, False),  # 2
    (5, 2, 4, False),  # the epoch's last step: the epoch's own checkpoint follows
])
def test_step_checkpoints_every_n_steps_inside_an_epoch(step, saved, state_step, expected):
    run, state = fake_run(step=step, last_saved_step=saved), State(state_step)
    StepCheckpoint(3).on_step_end(run, state)
    assert run.saves == ([(("last.pt",), state)] if expected else [])
    assert state.checks == ([(1, True)] if expected else [])


@pytest.mark.parametrize("epoch, best_epoch, stop_reason, expected", [
    (4, 4, None, ("best.pt", "last.pt")),  # improved, and a save_every epoch
    (3, 2, None, None),
    (3, 3, None, ("best.pt",)),
    (10, 2, None, ("last.pt",)),  # the last epoch (of 10), not a save_every one
    (3, 2, "stopped", ("last.pt",)),
])
def test_epoch_checkpoints(epoch, best_epoch, stop_reason, expected):
    run = fake_run(epoch=epoch, best=SimpleNamespace(best_epoch=best_epoch), stop_reason=stop_reason)
    EpochCheckpoint(save_every=4, best=run.best).on_epoch_end(run, ROW)
    assert run.saves == ([(expected, None)] if expected else [])


def test_an_interruption_finishes_the_step_saves_and_restores_the_handlers(monkeypatch, caplog):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    exits = []
    monkeypatch.setattr(interrupts, "_on_second_signal", lambda signum: exits.append(128 + signum))  # the CLI's
    hook, run = Interruption(), fake_run(step=7, last_saved_step=5)
    hook.on_train_start(run)
    assert signal.getsignal(signal.SIGINT) == hook._handle and signal.getsignal(signal.SIGTERM) == hook._handle
    state = State(3)
    hook.on_step_end(run, state)
    assert run.saves == [] and not run.stop_after_step
    with caplog.at_level(logging.WARNING, logger="cnnctl"):
        hook._handle(signal.SIGTERM, None)
    assert run.interrupted == signal.SIGTERM and exits == []
    assert caplog.messages == ["SIGTERM received: finishing this step and saving last.pt (press Ctrl-C again to quit "
                               "at once)"]
    hook.on_step_end(run, state)
    assert run.saves == [(("last.pt",), state)] and run.stop_after_step and state.checks == [(1, True)]
    hook._handle(signal.SIGINT, None)  # a second signal: out at once
    assert exits == [128 + signal.SIGINT]
    hook.on_train_end(run)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_an_interruption_saves_once():
    hook = Interruption()
    run = fake_run(step=7, last_saved_step=7, interrupted=signal.SIGINT)
    hook.on_step_end(run, State(3))  # already saved at this step
    hook.on_epoch_end(run, ROW)
    assert run.saves == [] and run.stop_after_step
    run.step = 8
    hook.on_epoch_end(run, ROW)
    assert run.saves == [(("last.pt",), None)]
    quiet = fake_run(step=8, last_saved_step=7)
    hook.on_epoch_end(quiet, ROW)
    assert quiet.saves == []


def test_off_the_main_thread_the_signals_stay_as_they_are():
    import threading

    hook, errors = Interruption(), []

    def start():
        try:
            hook.on_train_start(fake_run())
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert errors == [] and hook._previous == {}


def test_a_signal_with_no_run_leaves_at_once(monkeypatch):
    def leave(signum):
        raise SystemExit(128 + signum)

    monkeypatch.setattr(interrupts, "_on_second_signal", leave)
    with pytest.raises(SystemExit) as info:
        Interruption()._handle(signal.SIGTERM, None)
    assert info.value.code == 128 + signal.SIGTERM


def test_through_the_api_a_second_signal_raises_and_never_exits_the_process(monkeypatch):
    """No os._exit in library code: a second Ctrl-C in a notebook raises KeyboardInterrupt, the kernel lives."""
    monkeypatch.setattr(os, "_exit", lambda code: pytest.fail(f"os._exit({code}) from library code"))
    hook, run = Interruption(), fake_run(step=7, last_saved_step=5)
    hook._run = run
    hook._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        hook._handle(signal.SIGINT, None)


def test_the_cli_entry_point_exits_at_once_on_a_second_signal(monkeypatch):
    import cnnctl.cli as cli_module

    monkeypatch.setattr(interrupts, "_on_second_signal", interrupts._on_second_signal)  # restored after the test
    monkeypatch.setattr(cli_module, "with_completion", lambda command: lambda: None)
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    cli_module.main()
    interrupts.second_signal(signal.SIGTERM)
    assert exits == [128 + signal.SIGTERM]


# ---------------------------------------------------------------- TensorBoard


class Writer:
    def __init__(self) -> None:
        self.calls: list = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args + ((kwargs,) if kwargs else ())))


def test_tensorboard_gets_each_epochs_scalars_and_weights(tmp_path):
    hook = TensorBoard(tmp_path)
    hook.writer = writer = Writer()
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    hook.on_epoch_end(fake_run(model=model), {**ROW, "val_acc": None})
    assert [name for name, _ in writer.calls] == ["add_scalar"] * 4 + ["add_histogram"] * 2 + ["flush"]
    assert [args for name, args in writer.calls if name == "add_scalar"] == [
        ("train/loss", 0.12345, 3), ("train/acc", 0.9876, 3), ("val/loss", 0.2, 3), ("lr", 0.00123456, 3)]
    histograms = [args for name, args in writer.calls if name == "add_histogram"]
    assert [(tag, epoch) for tag, _, epoch in histograms] == [("weights/0.weight", 3), ("weights/0.bias", 3)]
    assert torch.equal(histograms[0][1], model[0].weight.detach())
    assert writer.calls[-1][0] == "flush"
    hook.on_train_end(fake_run())
    assert hook.writer is None and writer.calls[-1][0] == "close"
    hook.on_train_end(fake_run())  # closed already: nothing to do
    TensorBoard(tmp_path).on_train_end(fake_run())  # never opened (training raised before it started)


def test_tensorboard_needs_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError) as info:
        TensorBoard(None)
    assert str(info.value) == ("train.tensorboard: true needs the tensorboard package: pip install 'cnnctl[tensorboard]' "
                               "(or set train.tensorboard: false)")


def test_the_hparams_are_the_flat_config_and_the_final_numbers():
    assert hparam_values({"a": {"b": 1, "c": None, "d": True}, "e": [1, 2], "f": "x", "g": 0.5}) == {
        "a.b": 1, "a.c": "null", "a.d": "true", "e": "[1, 2]", "f": "x", "g": 0.5}
    summary = {"best": {"val_acc": 0.9, "val_loss": math.nan}, "best_epoch": 3,
               "test": {"accuracy": 0.8, "loss": 0.5, "top5": 0.95}, "epochs": 4, "wall_seconds": 12.5}
    assert final_metrics(summary) == {"hparams/best_val_acc": 0.9, "hparams/best_epoch": 3.0,
                                      "hparams/test_accuracy": 0.8, "hparams/test_loss": 0.5, "hparams/test_top5": 0.95,
                                      "hparams/epochs": 4.0, "hparams/wall_seconds": 12.5}
    assert final_metrics({"best": None, "test": None}) == {}


def test_the_first_conv_layers_filters_as_one_picture():
    torch.manual_seed(0)
    grey = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Conv2d(2, 3, 5), torch.nn.Conv2d(3, 3, 3))
    name, grid = first_layer_filters(grey)
    # 3 filters x 2 channels: six grey tiles of 5x5, enlarged 6x (32 // 5) to 30x30, in rows of 3 with 1-pixel padding
    assert name == "1" and grid.shape == (3, 2 * 31 + 1, 3 * 31 + 1)
    tile = grid[0, 1:31, 1:31]
    weight = grey[1].weight.detach()[0, 0]
    expected = ((weight - weight.min()) / (weight.max() - weight.min())).repeat_interleave(6, 0).repeat_interleave(6, 1)
    assert torch.allclose(tile, expected)
    assert float(grid.min()) == 0.0 and float(grid.max()) == 1.0
    assert first_layer_filters(grey, limit=4)[1].shape == (3, 2 * 31 + 1, 2 * 31 + 1)
    rgb = torch.nn.Conv2d(3, 4, 5)
    with torch.no_grad():
        rgb.weight[1] = 0.25  # a flat filter is drawn black, not divided by zero
    name, grid = first_layer_filters(rgb)
    assert name == "" and grid.shape == (3, 2 * 31 + 1, 2 * 31 + 1)  # four colour tiles of 5x5 enlarged 6x, 2 by 2
    assert float(grid[:, 1:31, 32:62].abs().sum()) == 0.0  # the flat filter, second in the first row
    colour = rgb.weight.detach()[0]
    expected = ((colour - colour.min()) / (colour.max() - colour.min())).repeat_interleave(6, 1).repeat_interleave(6, 2)
    assert torch.allclose(grid[:, 1:31, 1:31], expected)  # one tile of three channels, scaled together
    many = torch.nn.Conv2d(1, 70, 3)
    assert first_layer_filters(many)[1].shape == (3, 8 * 31 + 1, 8 * 31 + 1)  # the first 64 of 70, 8 by 8
    assert float(grid[:, 0].min()) == 1.0 and float(grid[:, :, 31].min()) == 1.0  # white lines between the tiles
    assert first_layer_filters(torch.nn.Conv2d(1, 2, 17))[1].shape == (3, 19, 37)  # over 16 pixels: not enlarged
    assert first_layer_filters(torch.nn.Conv2d(1, 2, (5, 1)))[1].shape == (3, 32, 15)  # 6x, by the longer side
    assert first_layer_filters(torch.nn.Linear(2, 2)) is None


# ---------------------------------------------------------------- gradients and activations


def test_a_gradient_state_that_does_not_fit_is_refused_on_resume(tmp_path):
    hook = GradientRecorderHook(tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2)), every_n_steps=4)
    assert hook.summary() is None
    other = GradientRecorderHook(tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), 4)
    with pytest.raises(ConfigError) as info:
        hook.load_state_dict(other.state_dict())
    assert str(info.value) == ("--resume: the saved gradient record has layers ['0', '1'], this model ['0']; it belongs "
                               "to another model")
    for broken in ({"every_n_steps": 5}, {"layers": ["0"], "sums": [1.0]}):
        with pytest.raises(ConfigError) as info:
            hook.load_state_dict(broken)
        assert str(info.value) == ("--resume: the checkpoint's gradient record is not one cnnctl wrote; resume from "
                                   "another checkpoint, or without the record: --set train.record_gradients_every=null")
    hook.load_state_dict(GradientRecorderHook(tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2)), 4).state_dict())


def test_activation_statistics_state_and_summary(tmp_path):
    hook = ActivationStatsHook(tmp_path)
    hook.on_epoch_end(fake_run(val_loader=None), ROW)  # no validation split: nothing to measure
    assert hook.summary() is None and hook.by_epoch == {}
    hook.by_epoch = {1: [{"layer": "a"}], 3: [{"layer": "b"}]}
    assert hook.summary() == {"epoch": 3, "split": "val", "layers": [{"layer": "b"}]}
    again = ActivationStatsHook(tmp_path)
    again.load_state_dict(hook.state_dict())
    assert again.by_epoch == hook.by_epoch and hook.state_dict() == {"by_epoch": {"1": [{"layer": "a"}],
                                                                                 "3": [{"layer": "b"}]}}
    again.load_state_dict({})
    assert again.by_epoch == {}


def test_gradients_are_unscaled_only_on_the_recorded_steps(tmp_path):
    hook = GradientRecorderHook(tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2)), every_n_steps=3)
    assert [hook.wants_unscaled_gradients(fake_run(), State(step)) for step in range(7)] == [
        True, False, False, True, False, False, True]


@pytest.mark.parametrize("test, png, drawn", [(True, True, True), (False, True, False), (True, False, False)])
def test_tensorboard_at_the_end_of_the_run(tmp_path, monkeypatch, test, png, drawn):
    from PIL import Image

    hook = TensorBoard(tmp_path)
    writer, protos = Writer(), []
    writer._get_file_writer = lambda: SimpleNamespace(add_summary=protos.append)
    monkeypatch.setattr(hook, "_open", lambda: writer)
    if png:
        Image.new("L", (5, 4), 200).save(tmp_path / "confusion_matrix.png")  # grey: drawn as RGB
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    run = fake_run(epoch=4, model=model, config=SimpleNamespace(name="r", dump=lambda: {"optimizer": {"lr": 0.1}}))
    summary = {"best": {"val_acc": 0.5}, "epochs": 4, **({"test": {"accuracy": 0.25}} if test else {})}
    hook.on_run_end(run, summary)
    assert len(protos) == 3  # the HParams experiment, session start and end
    calls = [(name, args) for name, args in writer.calls]
    scalars = [args for name, args in calls if name == "add_scalar"]
    assert scalars == [("hparams/best_val_acc", 0.5, 4), *([("hparams/test_accuracy", 0.25, 4)] if test else []),
                       ("hparams/epochs", 4.0, 4)]
    images = {args[0]: args[1:] for name, args in calls if name == "add_image"}
    assert list(images) == (["confusion_matrix/test"] if drawn else []) + ["filters/0"]
    if drawn:
        pixels, step, options = images["confusion_matrix/test"]
        assert step == 4 and options == {"dataformats": "HWC"} and pixels.shape == (4, 5, 3) and int(pixels.min()) == int(pixels.max()) == 200
    assert images["filters/0"][1:] == (4,) and torch.equal(images["filters/0"][0], first_layer_filters(model)[1])
    assert calls[-1][0] == "close"


def test_the_recorders_add_their_scalars_to_tensorboard_at_the_epoch(tmp_path, monkeypatch):
    from cnnctl.training import recorders

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tensorboard = TensorBoard(tmp_path)
    tensorboard.writer = writer = Writer()
    gradients = GradientRecorderHook(tmp_path, model, every_n_steps=1, tensorboard=tensorboard)
    activations = ActivationStatsHook(tmp_path, tensorboard=tensorboard)
    x = torch.randn(8, 2)
    run = fake_run(model=model, hooks=[],  # handed the hook, the recorders never search the run's list
                   val_loader=SimpleNamespace(batches=lambda epoch: [(x, torch.zeros(8, dtype=torch.long))]))
    model(x).sum().backward()
    gradients.on_before_optimizer_step(run, State(0))
    optimizer.step()
    gradients.on_after_optimizer_step(run, State(0))
    gradients.on_epoch_end(run, {**ROW, "epoch": 3})
    activations.on_epoch_end(run, {**ROW, "epoch": 3})
    expected = recorders.tensorboard_scalars(gradient_rows=gradients.recorder.rows,
                                             activation_rows=activations.by_epoch[3])
    assert [args for _, args in writer.calls] == [(tag, value, 3) for tag, value in expected]
    assert [tag.split("/")[0] for tag, _ in expected] == ["grad_norm", "update_ratio"] * 2 + ["dead_fraction"]
    assert (tmp_path / "gradients.csv").read_text().count("\n") == 3  # the header and a row per layer

    titles = {}
    from cnnctl.training import recorder_plots

    monkeypatch.setattr(recorder_plots, "plot_gradients",
                        lambda rows, path, title: titles.update(gradients=(path, title)))
    monkeypatch.setattr(recorder_plots, "plot_activations",
                        lambda by, path, title: titles.update(activations=(path, title)))
    gradients.on_train_end(run)
    activations.on_train_end(run)
    assert titles == {"gradients": (tmp_path / "gradients.png", "r: gradient flow (every 1 steps, mean per epoch)"),
                      "activations": (tmp_path / "activations.png", "r: activations over the validation split")}
