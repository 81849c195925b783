"""The learning-rate range test on the bundled digits data."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from cnnctl.config import load_config
from cnnctl.errors import UsageError
from cnnctl.training.lr_find import format_result, lr_find, lr_find_command, suggest


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_lr_find_writes_its_folder_only_and_raises_the_lr_geometrically(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    import cnnctl.training.engine as engine

    trained, real_epoch = [], engine.train_one_epoch  # the steps are fit's own: no second copy of the step
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: trained.append(real_epoch(*a, **k).step))
    result = lr_find_command("lenet5-digits", ["data.batch_size=64"], start=1e-5, end=1.0, steps=30,
                             out=str(tmp_path / "out"), device="cpu")
    assert sum(trained) == result["steps"] == 30 and len(trained) == math.ceil(30 / trained[0])  # a pass, and more
    folder = tmp_path / "out" / "lr-find-lenet5-digits"
    assert result["out_dir"] == str(folder)
    assert tree(tmp_path) - before == {"out", "out/lr-find-lenet5-digits", "out/lr-find-lenet5-digits/lr_find.csv",
                                       "out/lr-find-lenet5-digits/lr_find.png"}
    assert (folder / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    lines = (folder / "lr_find.csv").read_text().splitlines()
    assert lines[0] == "step,lr,loss,smoothed_loss" and len(lines) == 1 + result["steps"]
    lrs = result["lrs"]
    assert lrs[0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert ratios == pytest.approx([(1.0 / 1e-5) ** (1 / 29)] * len(ratios))
    assert result["stopped_early"] or lrs[-1] == pytest.approx(1.0)
    assert result["rule"] == "min/10" and result["suggestion"] == pytest.approx(result["min_loss_lr"] / 10)
    assert "suggested lr" in format_result(result)
    # a second run gets a folder of its own, the first stays as it was
    again = lr_find_command("lenet5-digits", ["data.batch_size=64"], start=1e-5, end=1.0, steps=20,
                            out=str(tmp_path / "out"), device="cpu")
    assert again["out_dir"].endswith("lr-find-lenet5-digits-2")
    assert len((folder / "lr_find.csv").read_text().splitlines()) == len(lines)
    assert os.listdir(work) == []


def test_lr_find_stops_when_the_loss_diverges(tmp_path):
    cfg = load_config("lenet5-digits", ["optimizer.name=sgd", "optimizer.momentum=0.9", "data.batch_size=64"])[0]
    result = lr_find(cfg, out_dir=tmp_path, start=1e-3, end=1e3, steps=60, device="cpu")
    assert result["stopped_early"]
    assert result["steps"] < 60
    assert "minimum" in result["stop_reason"] or "became" in result["stop_reason"]
    smoothed = result["smoothed"]
    assert smoothed[-1] > 4 * min(smoothed) or not math.isfinite(result["losses"][-1])


def test_the_finder_hook_sets_each_steps_lr_and_ends_the_loop():
    """LRFinder on a stand-in run: the lr of each step (each parameter group keeping its ratio to optimizer.lr),
    the end after ``steps`` steps, and the divergence and non-finite stops, word for word."""
    from types import SimpleNamespace

    import torch

    from cnnctl.training.lr_find import LRFinder

    def drive(losses, steps=3):
        groups = [{"lr": 0.002, "initial_lr": 0.002}, {"lr": 0.001, "initial_lr": 0.001}]
        run = SimpleNamespace(config=SimpleNamespace(optimizer=SimpleNamespace(lr=0.002)), step=0, stop_reason=None,
                              stop_after_step=False, optimizer=SimpleNamespace(param_groups=groups))
        finder, seen = LRFinder(1e-4, 1e-2, steps=steps, diverge=4.0), []
        finder.on_train_start(run)
        for loss in losses:
            seen.append([g["lr"] for g in groups])
            run.step += 1
            finder.on_step_end(run, SimpleNamespace(losses=torch.tensor([0.0, loss]), step=2))
            if run.stop_after_step:
                break
        return finder, run, seen

    finder, run, seen = drive([1.0, 0.9, 0.8, 0.7])
    assert [lr for step in seen for lr in step] == pytest.approx([1e-4, 5e-5, 1e-3, 5e-4, 1e-2, 5e-3])
    assert run.stop_after_step and run.stop_reason is None  # ended after steps=3 steps, not by a divergence
    assert finder.lrs == pytest.approx([1e-4, 1e-3, 1e-2]) and finder.losses == pytest.approx([1.0, 0.9, 0.8])
    assert finder.smoothed[0] == pytest.approx(1.0)  # bias-corrected: the first step is not pulled toward zero
    finder, run, _ = drive([1.0, 10.0])
    assert run.stop_after_step and run.stop_reason == "the smoothed loss 5.55 passed 4 x its minimum 1 at lr 0.001"
    finder, run, _ = drive([1.0, float("nan")])
    assert run.stop_reason == "the loss became nan at lr 0.001" and finder.losses == [1.0]


def test_suggest_on_a_known_curve():
    lrs = [10 ** (-6 + i * 0.25) for i in range(25)]  # 1e-6 .. 1
    # flat, then falling fastest between 1e-3 and 1e-2, lowest at 10**-1.5, then rising
    loss = [2.0 - 1.5 / (1 + math.exp(-4 * (math.log10(lr) + 2.5))) + (0.5 * (math.log10(lr) + 1.5) ** 2
            if lr > 10**-1.5 else 0) for lr in lrs]
    readings = suggest(lrs, loss)
    assert readings["min_loss_lr"] == pytest.approx(10**-1.5)
    assert readings["min/10"] == pytest.approx(10**-2.5)
    assert readings["steepest"] == pytest.approx(10**-2.5)


@pytest.mark.parametrize(("args", "fragment"), [
    ({"start": 0.0}, "--start"),
    ({"start": 1e-3, "end": 1e-4}, "--end"),
    ({"steps": 5}, "--steps"),
])
def test_bad_ranges_are_refused_before_anything_runs(tmp_path, args, fragment):
    with pytest.raises(UsageError, match=fragment):
        lr_find_command("lenet5-digits", out=str(tmp_path), **args)
    assert list(tmp_path.iterdir()) == []


def test_cli_lr_find_prints_a_suggestion_and_refuses_bad_arguments(tmp_path, cli):
    result = cli("lr-find", "lenet5-digits", "--set", "data.batch_size=64", "--start", "1e-5", "--end", "1",
                 "--steps", "20", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "suggested lr:" in result.stdout and "lr_find.png" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "lr-find-lenet5-digits").iterdir()) == ["lr_find.csv",
                                                                                               "lr_find.png"]
    bad = cli("lr-find", "lenet5-digits", "--steps", "5", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "--steps" in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--start", "1e-320"], "--start 1e-320: give a learning rate from 1e-12 to 1000; the defaults are --start 1e-7 "
                            "--end 10"),
    (["--start", "nan"], "--start nan: give a learning rate from 1e-12 to 1000"),
    (["--start", "-1"], "--start -1.0: give a learning rate from 1e-12 to 1000"),
    (["--end", "1e400"], "--end inf: give a learning rate from 1e-12 to 1000"),
    (["--end", "1001"], "--end 1001.0: give a learning rate from 1e-12 to 1000"),
    (["--start", "0.1", "--end", "0.1"], "--end (0.1) must be a learning rate above --start (0.1)"),
    (["--steps", "1000000000"], "--steps 1,000,000,000: give from 20 (a curve worth reading) to 10,000 (a range "
                                "test, not a training run); the default is 200"),
    (["--steps", "10001"], "--steps 10,001: give from 20"),
])
def test_out_of_range_flags_are_refused_naming_the_flag(cli, tmp_path, args, message):
    """Issue 23: --start 1e-320 (a denormal) made the per-step factor infinite and the advice backwards; --steps
    had no upper bound. Refused before anything is built or written."""
    result = cli("lr-find", "lenet5-digits", *args, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_the_bounds_themselves_are_accepted():
    from cnnctl.training.lr_find import LR_LIMITS, MAX_STEPS, _check

    _check(LR_LIMITS[0], LR_LIMITS[1], MAX_STEPS, 4.0)
    _check(LR_LIMITS[0], LR_LIMITS[1], 20, 4.0)


@pytest.mark.parametrize(("start", "nan_from", "message"), [
    # the first loss is measured before any step: no --start would help
    ("1e-7", 1, "lr-find: the loss is not finite on the first batch, at the initial weights, before any step at "
                "--start 1e-07: the learning rate is not the cause; check the data (data.normalize) and the model "
                "(cnnctl summary CONFIG)"),
    # one step at --start broke it: a lower --start helps
    ("1e-7", 2, "lr-find: the loss diverged within 1 step of --start 1e-07 (the loss became nan at lr 1.27e-07); "
                "start lower, e.g. --start 1e-10, or climb slower with more --steps (each step now multiplies the "
                "lr by 1.27)"),
    # ... unless --start is the lowest allowed already
    ("1e-12", 2, "lr-find: the loss diverged within 1 step of --start 1e-12 (the loss became nan at lr 2.34e-12); "
                 "--start is already the lowest allowed (1e-12), so the learning rate is not the cause: check the "
                 "data (data.normalize) and the model (cnnctl summary CONFIG)"),
])
def test_a_curve_too_short_to_read_gives_advice_that_can_help(cli, tmp_path, monkeypatch, start, nan_from, message):
    from tests.conftest import explode_loss_from

    explode_loss_from(monkeypatch, call=nan_from)
    result = cli("lr-find", "lenet5-digits", "--set", "data.batch_size=64", "--start", start, "--end", "1e-5",
                 "--steps", "20", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_the_cli_parses_the_config_once_for_lr_find_and_tune(cli, tmp_path, monkeypatch):
    """One parse per command: the thread count and the work read the same resolved config."""
    import cnnctl.config
    import cnnctl.tune.search

    calls = []
    real = cnnctl.config.load_config

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(cnnctl.config, "load_config", counting)
    monkeypatch.setattr(cnnctl.tune.search, "load_config", counting)
    result = cli("lr-find", "lenet5-digits", "--steps", "20", "--end", "1", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert calls == ["lenet5-digits"]
    calls.clear()
    space = tmp_path / "space.yaml"
    space.write_text("optimizer.lr: {bogus: 1}\n")
    result = cli("tune", "lenet5-digits", "--space", space, "--out", tmp_path / "t")
    assert result.exit_code == 2  # the space is refused after the config is read
    assert calls == ["lenet5-digits"]
