"""``cnnctl tune``: spaces checked before any trial, grid/TPE/random studies on digits, pruning, a study shared by
two processes through SQLite, the ensemble of the best trials, a search stopped by SIGINT/SIGTERM and resumed, and
the study name and storage checked before anything runs."""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnctl.config import load_config, parse_override
from tests.conftest import ROOT, write_config

pytest.importorskip("optuna")

TINY = """\
name: tiny
seed: 0
data: {dataset: digits, batch_size: 128}
model: {arch: lenet5}
optimizer: {name: adam, lr: 0.003}
train: {epochs: 2, early_stopping: null}
"""


def read_trials(study_dir: Path) -> list[dict[str, str]]:
    with (study_dir / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def ensemble_by_hand(checkpoints: list[Path]) -> tuple[float, float]:
    """Test accuracy and loss of the mean softmax of ``checkpoints``, with plain torch (not cnnctl's evaluation)."""
    import torch

    from cnnctl.config import Config
    from cnnctl.data.base import load_data, to_model_input
    from cnnctl.models.registry import create_model

    probs, labels = [], None
    for path in checkpoints:
        ckpt = torch.load(path, weights_only=True)
        cfg, spec = Config.model_validate(ckpt["config"]), ckpt["input"]
        test = load_data(cfg.data, cfg.seed).test
        model = create_model(cfg.model, in_channels=spec["channels"], image_size=tuple(spec["size"]),
                             num_classes=len(ckpt["classes"]))
        model.load_state_dict(ckpt["model"])
        with torch.no_grad():
            x = to_model_input(test.images, spec["mean"], spec["std"], torch.device("cpu"))
            probs.append(model.eval()(x).softmax(1))
        assert labels is None or torch.equal(labels, test.labels)
        labels = test.labels
    mean = torch.stack(probs).mean(0)
    accuracy = (mean.argmax(1) == labels).double().mean().item()
    return accuracy, torch.nn.functional.nll_loss(mean.log(), labels).item()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write_config(tmp_path / "tiny.yaml", TINY)


def test_tpe_study_best_yaml_and_ensemble(cli, base, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cnnctl")
    # 1e-3 without a dot is a string to YAML; the space reads it as the number meant.
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: {loguniform: [1e-3, 1.0e-2]}\n"
                                                  "model.dropout: {uniform: [0.0, 0.3]}\n")
    result = cli("tune", base, "--space", space, "--trials", "3", "--method", "tpe", "--no-prune",
                 "--ensemble-top", "2", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    study_dir = Path(result.stdout.strip().splitlines()[-1])
    assert study_dir == tmp_path / "out" / "tiny"

    rows = read_trials(study_dir)
    assert list(rows[0]) == ["trial", "optimizer.lr", "model.dropout", "val_acc", "epochs", "seconds", "state",
                             "run_dir", "note"]
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"complete"} and {r["epochs"] for r in rows} == {"2"}
    assert all(1e-3 <= float(r["optimizer.lr"]) <= 1e-2 and 0 <= float(r["model.dropout"]) <= 0.3 for r in rows)
    for r in rows:  # each trial is an ordinary run; its value is the best val_acc of its epochs
        run = Path(r["run_dir"])
        assert run == study_dir / f"trial-{int(r['trial']):04d}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["trial"] == int(r["trial"]) and summary["pruned"] is False
        with (run / "metrics.csv").open() as f:
            assert float(r["val_acc"]) == max(float(m["val_acc"]) for m in csv.DictReader(f))

    assert (study_dir / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    importances = json.loads((study_dir / "importances.json").read_text())
    assert set(importances["importances"]) == {"optimizer.lr", "model.dropout"}

    best = max(rows, key=lambda r: float(r["val_acc"]))
    cfg, _ = load_config(study_dir / "best.yaml")
    assert cfg.name == "tiny-best" and cfg.optimizer.lr == float(best["optimizer.lr"])
    assert cfg.model.dropout == float(best["model.dropout"]) and cfg.train.epochs == 2

    ensemble = json.loads((study_dir / "ensemble.json").read_text())
    ranked = sorted(rows, key=lambda r: -float(r["val_acc"]))[:2]
    assert [m["trial"] for m in ensemble["members"]] == [int(r["trial"]) for r in ranked]
    assert ensemble["ensemble"]["split"] == "test" and ensemble["ensemble"]["n"] == 359
    # The figures against computations made elsewhere: each member's test accuracy is the one its own run measured
    # at its end (summary.json, the engine's evaluation), and the ensemble's is the mean of the members' softmax
    # computed here by hand from the two best.pt files.
    for member, r in zip(ensemble["members"], ranked, strict=True):
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["test_weights"] == "best" and member["accuracy"] == summary["test"]["accuracy"]
        assert member["value"] == float(r["val_acc"]) == summary["best"]["val_acc"]
    accuracy, loss = ensemble_by_hand([Path(r["run_dir"]) / "best.pt" for r in ranked])
    assert ensemble["ensemble"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert ensemble["ensemble"]["loss"] == pytest.approx(loss, rel=1e-4)
    header = (study_dir / "best.yaml").read_text().splitlines()[0]
    assert header == f"# best trial {ranked[0]['trial']} of study tiny: val_acc {float(ranked[0]['val_acc']):.4f}"
    text = caplog.text
    assert "ensemble of the 2 best trials on test (n=359)" in text
    assert f"trial {ranked[0]['trial']:>4} (val_acc" in text and "optimizer.lr" in text  # the table

    trained = cli("train", study_dir / "best.yaml", "--set", "train.epochs=1", "--out", tmp_path / "runs")
    assert trained.exit_code == 0, trained.output
    assert Path(trained.stdout.strip()).name == "tiny-best"


def test_grid_runs_every_point_once(cli, base, tmp_path):
    space = write_config(tmp_path / "grid.yaml", "optimizer.lr: [0.003, 0.01]\noptimizer.name: {choice: [adam]}\n")
    result = cli("tune", base, "--space", space, "--method", "grid", "--study", "g", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = read_trials(tmp_path / "out" / "g")
    assert sorted(float(r["optimizer.lr"]) for r in rows) == [0.003, 0.01]
    assert {r["optimizer.name"] for r in rows} == {"adam"} and {r["state"] for r in rows} == {"complete"}
    assert sorted(p.name for p in (tmp_path / "out" / "g").glob("trial-*")) == ["trial-0000", "trial-0001"]
    assert "note" in json.loads((tmp_path / "out" / "g" / "importances.json").read_text())  # one parameter varies


def test_hopeless_trials_are_pruned(cli, base, tmp_path, monkeypatch):
    monkeypatch.setattr("cnnctl.tune.study.PRUNER", {"n_startup_trials": 1, "n_warmup_steps": 0})
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: [0.003, 1.0e-7]\n")  # a good and a useless lr
    # seed 0 draws lr 1e-7, 0.003, 1e-7: the second useless trial meets a median that the good run lifts
    result = cli("tune", base, "--space", space, "--method", "random", "--trials", "3", "--seed", "0",
                 "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = read_trials(tmp_path / "out" / "tiny")
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned, rows
    for r in pruned:
        assert float(r["optimizer.lr"]) == 1e-7 and r["epochs"] == "1" and "median" in r["note"]
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["pruned"] is True and summary["trial"] == int(r["trial"]) and summary["epochs"] == 1
        assert "median" in summary["stop_reason"]
    assert any(r["state"] == "complete" and float(r["optimizer.lr"]) == 0.003 for r in rows)


def test_two_processes_share_one_sqlite_study(cli, base, tmp_path):
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: {loguniform: [1.0e-3, 1.0e-2]}\n")
    db = tmp_path / "study.db"
    args = [sys.executable, "-m", "cnnctl", "tune", str(base), "--space", str(space), "--method", "random",
            "--trials", "4", "--storage", f"sqlite:///{db}", "--study", "shared", "--out", str(tmp_path / "out"),
            "--set", "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    import optuna

    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{db}").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # four in all, none run twice
    assert all(t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    dirs = sorted((tmp_path / "out" / "shared").glob("trial-*"))
    assert [d.name for d in dirs] == ["trial-0000", "trial-0001", "trial-0002", "trial-0003"]
    assert [json.loads((d / "summary.json").read_text())["trial"] for d in dirs] == [0, 1, 2, 3]
    assert len({t.params["optimizer.lr"] for t in trials}) == 4  # the processes' samplers are seeded apart
    assert len(read_trials(tmp_path / "out" / "shared")) == 4

    again = cli("tune", base, "--space", space, "--method", "random", "--trials", "4", "--storage", f"sqlite:///{db}",
                "--study", "shared", "--out", tmp_path / "out")  # the study is full: nothing more runs
    assert again.exit_code == 0 and len(optuna.load_study(study_name="shared", storage=f"sqlite:///{db}").trials) == 4
    other = write_config(tmp_path / "other.yaml", "optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    result = cli("tune", base, "--space", other, "--method", "random", "--trials", "5", "--storage", f"sqlite:///{db}",
                 "--study", "shared", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "share one metric and space" in result.stderr


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("optimizer.lrr: {loguniform: [1.0e-4, 1.0e-1]}", "optimizer.lrr", "unknown config key; did you mean 'lr'?"),
    ("optimizr.lr: {loguniform: [1.0e-4, 1.0e-1]}", "optimizr.lr", "did you mean 'optimizer'?"),
    ("optimizer: {lrr: {loguniform: [1.0e-4, 1.0e-1]}}", "optimizer.lrr", "did you mean 'lr'?"),  # nested form
    ("optimizer.lr.x: [1, 2]", "optimizer.lr.x", "optimizer.lr is a value, not a section"),
    ("model.dropout: {uniform: [0.0, 0.5], lgo: true}", "model.dropout.lgo", "unknown option of uniform; did you mean 'log'?"),
    ("optimizer.name: {choise: [sgd, adam]}", "optimizer.name.choise", "unknown distribution 'choise'; did you mean 'choice'?"),
    ("optimizer.lr: {uniform: [0.1, 0.2], loguniform: [0.1, 0.2]}", "optimizer.lr", "give exactly one of"),
    ("optimizer.name: {uniform: [0, 1]}", "optimizer.name", "uniform draws numbers, but optimizer.name refuses them"),
    ("optimizer.nesterov: {int: [0, 1]}", "optimizer.nesterov", "valid boolean"),  # a 0/1 is no true/false
    ("optimizer.lr: {uniform: [0.1, 0.01]}", "optimizer.lr", "low is greater than high"),
    ("optimizer.lr: {uniform: [abc, 0.01]}", "optimizer.lr.uniform[0]", "needs a finite number, not 'abc'"),
    ("optimizer.lr: {uniform: [0.01, 0.1], step: 0.01, log: true}", "optimizer.lr", "not both"),
    ("optimizer.name: {choice: []}", "optimizer.name", "non-empty list"),
    ("optimizer.name: [adam, sgd, adam]", "optimizer.name", "choice lists adam twice"),
    ("optimizer.betas: [[0.9, 0.99], [0.8, 0.9]]", "optimizer.betas.choice[0]", "optuna samples no lists"),
    ("optimizer.lr: [.inf, 0.1]", "optimizer.lr.choice[0]", "inf is not a finite number"),
    ("optimizer.lr: {uniform: [true, 0.1]}", "optimizer.lr.uniform[0]", "needs a finite number, not True"),
    ("train.epochs: {int: [1, 4], step: 0}", "train.epochs.step", "greater than or equal to 1"),
    ("optimizer.name: [sgd, adamm]", "optimizer.name", "did you mean 'adam'"),
    ("optimizer.lr: {loguniform: [0, 0.1]}", "optimizer.lr", "low must be > 0"),
    ("model.dropout: {uniform: [0.0, 1.5]}", "model.dropout", "cannot be 1.5: input should be less than 1"),
    ("data.batch_size: {uniform: [16, 64]}", "data.batch_size", "takes whole numbers; use {int: [16, 64]}"),
    ("train.epochs: {int: [1, 4.5]}", "train.epochs.int[1]", "needs a whole number, not 4.5"),
    ("train.epochs: {int: [1, 6], step: 2}", "train.epochs", "not a multiple of the step"),
    ("data.channels: [1, 2]", "data.channels", "cannot be 2"),
    ("optimizer.lr: {logunifrom: [1.0e-4, 1.0e-1]}", "optimizer.lr.logunifrom", "did you mean 'loguniform'"),
    ("optimizer.lr: 0.1", "optimizer.lr", "give a list of values"),
    ("name: [a, b]", "name", "set by cnnctl tune"),
])
def test_bad_space_is_refused_before_any_trial(cli, base, tmp_path, text, key, expected):
    space = write_config(tmp_path / "bad.yaml", text + "\n")
    result = cli("tune", base, "--space", space, "--trials", "2", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {space}: {key}: "), result.stderr
    assert expected.lower() in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_huge_value_in_a_space_is_not_echoed_whole(cli, base, tmp_path):
    space = write_config(tmp_path / "huge.yaml", f"optimizer.name: [adam, {'x' * 100_000}]\n")
    result = cli("tune", base, "--space", space, "--out", tmp_path / "out")
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {space}: optimizer.name: "), result.stderr
    assert "unknown optimizer" in result.stderr and len(result.stderr) < 2_000


def test_space_typos_read_as_the_issue_asks(cli, base, tmp_path):
    space = write_config(tmp_path / "typo.yaml", "optimizer.lrr: [0.01, 0.1]\n")
    result = cli("tune", base, "--space", space, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].startswith(f"error: {space}: optimizer.lrr: unknown config key; did you "
                                                    "mean 'lr'?")
    space = write_config(tmp_path / "typo.yaml", "optimizer.lr: {uniform: [0.01, 0.1], lgo: true}\n")
    result = cli("tune", base, "--space", space, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].startswith(f"error: {space}: optimizer.lr.lgo: unknown option of uniform; "
                                                    "did you mean 'log'?")


@pytest.mark.parametrize(("text", "key", "expected"), [
    # issue 13.9: an architecture that cannot take the digits' 8x8 input
    ("model.arch: {choice: [vgg11]}", "model.arch", "vgg11: model.arch vgg11 cannot take a 1x8x8 input"),
    # only one combination fails: the architecture is named beside the other shaping values
    ("model.arch: [lenet5, vgg11]\ndata.image_size: [32, 8]\noptimizer.lr: {loguniform: [1.0e-3, 1.0e-2]}",
     "model.arch", "vgg11 (beside data.image_size=8): model.arch vgg11 cannot take a 1x8x8 input"),
    # the ends of an int range of image sizes
    ("data.image_size: {int: [8, 24]}\nmodel.arch: [vgg11]", "model.arch", "(beside data.image_size=8)"),
])
def test_space_whose_network_cannot_take_the_input_is_refused_before_any_trial(cli, base, tmp_path, text, key,
                                                                                expected):
    space = write_config(tmp_path / "shape.yaml", text + "\n")
    result = cli("tune", base, "--space", space, "--trials", "2", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {space}: {key}: "), result.stderr
    assert expected in result.stderr and "needs inputs of at least 32x32" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_custom_layers_are_checked_at_each_image_size_of_the_space(cli, tmp_path):
    custom = write_config(tmp_path / "custom.yaml", TINY.replace(
        "model: {arch: lenet5}", "model: {arch: custom, layers: [{conv: {out: 4, kernel: 5}}, relu, flatten, linear]}"))
    space = write_config(tmp_path / "sizes.yaml", "data.image_size: [16, 4]\n")
    result = cli("tune", custom, "--space", space, "--trials", "2", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {space}: data.image_size: 4: "), result.stderr
    assert "model.layers[0] (conv): a 5x5 kernel does not fit the 1x4x4 map" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_base_config_whose_network_cannot_take_the_input_names_the_config(cli, tmp_path):
    vgg = write_config(tmp_path / "vgg.yaml", TINY.replace("arch: lenet5", "arch: vgg11"))
    space = write_config(tmp_path / "lr.yaml", "optimizer.lr: [0.01, 0.1]\n")
    result = cli("tune", vgg, "--space", space, "--trials", "2", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {vgg}: model.arch vgg11 cannot take a 1x8x8 input"), result.stderr
    assert not (tmp_path / "out").exists()


def test_grid_needs_listed_values(cli, base, tmp_path):
    space = write_config(tmp_path / "bad.yaml", "optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}\n")
    result = cli("tune", base, "--space", space, "--method", "grid", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "optimizer.lr: --method grid needs the values listed" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_arguments_and_missing_optuna(cli, base, tmp_path, monkeypatch):
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: [0.01, 0.1]\n")
    result = cli("tune", base, "--space", space, "--metric", "val_accuracy")  # Typer lists the valid choices
    assert result.exit_code == 2 and "'val_accuracy' is not one of 'val_acc'" in result.stderr
    result = cli("tune", base, "--space", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "no such space file" in result.stderr
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    result = cli("tune", base, "--space", space, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "pip install 'cnnctl[tune]'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bundled_space_validates_against_its_config():
    from cnnctl.tune import load_space, resolve_space_path

    cfg, path = load_config("lenet5-digits")
    params = load_space(resolve_space_path("lenet5-digits"), cfg.dump(), str(path), grid=False)
    assert {p.key: p.kind for p in params} == {"optimizer.lr": "loguniform", "optimizer.name": "choice",
                                               "model.dropout": "uniform", "data.batch_size": "choice"}


@pytest.mark.parametrize("value", [1e-05, 0.1 + 0.2, "adam", None, True, 64, "yes", "1e-3"])
def test_trial_values_round_trip_through_set(value):
    from cnnctl.tune.space import yaml_value

    assert parse_override(f"k={yaml_value(value)}")[1] == value


# ---------------------------------------------------------------- signals and the study name (issue 23, items 2, 7, 8)


# A search whose trials are quick: a small MLP, without the gradient and activation recorders.
QUICK = TINY.replace("model: {arch: lenet5}", "model: {arch: custom, layers: [flatten, {linear: {out: 16}}, relu, linear]}"
                     ).replace("early_stopping: null}", "early_stopping: null, record_gradients_every: null, "
                               "record_activations: false}")


def resume_command(stderr: str) -> str:
    lines = stderr.splitlines()
    said = [i for i, line in enumerate(lines) if line.endswith("Resume with:")]
    assert said and said[-1] + 1 < len(lines), stderr
    return lines[said[-1] + 1].strip()


def load_study(study_dir: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_trial_stops_the_search_and_says_how_to_resume_it(cli, tmp_path, sig, code):
    base = write_config(tmp_path / "tiny.yaml", QUICK.replace("epochs: 2", "epochs: 10000"))  # training when asked
    space = write_config(tmp_path / "grid.yaml", "optimizer.lr: [0.003, 0.01]\n")
    out, study_dir = tmp_path / "out", tmp_path / "out" / "tiny"
    proc = subprocess.Popen([sys.executable, "-m", "cnnctl", "tune", str(base), "--space", str(space), "--method",
                             "grid", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (study_dir / "trial-0000" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # trial 0 has trained an epoch: the signal meets its training
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:  # a search that ignored the signal would train on for hours
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == code, stderr
    assert stdout == "" and "Traceback" not in stderr
    assert f"interrupted by {sig.name}; the study is saved in sqlite:///{study_dir / 'study.db'}; trial 0 is marked " \
           "interrupted and runs again first. Resume with:" in stderr, stderr
    assert resume_command(stderr) == shlex.join([
        "cnnctl", "tune", str(base), "--space", str(space), "--method", "grid", "--metric", "val_acc", "--out",
        str(out), "--storage", f"sqlite:///{study_dir / 'study.db'}", "--study", "tiny"])
    assert sorted(p.name for p in study_dir.glob("trial-*")) == ["trial-0000"], "no later trial started"
    assert (study_dir / "trial-0000" / "last.pt").is_file() and not (study_dir / "trial-0000" / "summary.json").exists()
    interrupted, retry = load_study(study_dir, "tiny").get_trials()
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs["interrupted"] == sig.name
    assert interrupted.user_attrs["run_dir"] == str(study_dir / "trial-0000")
    assert retry.state.name == "WAITING" and retry.params == interrupted.params

    if sig == signal.SIGINT:  # the printed command resumes the grid: the interrupted point first, then the other
        write_config(base, QUICK.replace("epochs: 2", "epochs: 1"))
        resumed = cli(*shlex.split(resume_command(stderr))[1:])
        assert resumed.exit_code == 0, resumed.output
        rows = read_trials(study_dir)
        assert [r["state"] for r in rows] == ["interrupted", "complete", "complete"]
        assert float(rows[1]["optimizer.lr"]) == float(rows[0]["optimizer.lr"])
        assert sorted(float(r["optimizer.lr"]) for r in rows[1:]) == [0.003, 0.01]


@pytest.fixture
def sigterm_fails_the_test():
    """A SIGTERM that tune leaves unhandled fails the test instead of ending pytest."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the test: tune did not handle it")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("when", ["before training", "after the trial"])
def test_a_signal_outside_training_stops_the_search_too(cli, tmp_path, monkeypatch, sigterm_fails_the_test, when):
    from cnnctl.tune import search

    base = write_config(tmp_path / "tiny.yaml", QUICK.replace("epochs: 2", "epochs: 1"))
    train = search._train_trial

    def train_and_signal(cfg, pruning):  # SIGTERM while the trial is set up, or once it has finished
        if when == "before training":
            os.kill(os.getpid(), signal.SIGTERM)
        summary = train(cfg, pruning)
        if when == "after the trial":
            os.kill(os.getpid(), signal.SIGTERM)
        return summary

    monkeypatch.setattr(search, "_train_trial", train_and_signal)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    space = write_config(tmp_path / "grid.yaml", "optimizer.lr: [0.003, 0.01]\n")
    result = cli("tune", base, "--space", space, "--method", "grid", "--out", tmp_path / "out")

    assert result.exit_code == 143, result.output
    study_dir = tmp_path / "out" / "tiny"
    assert resume_command(result.stderr).endswith(f"--storage sqlite:///{study_dir / 'study.db'} --study tiny")
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers, "handlers restored"
    assert sorted(p.name for p in study_dir.glob("trial-*")) == ["trial-0000"], "no later trial started"
    trials = load_study(study_dir, "tiny").get_trials()
    if when == "before training":  # stopped at its first step, last.pt saved there
        assert [t.state.name for t in trials] == ["FAIL", "WAITING"] and trials[0].user_attrs["epochs"] == 0
        assert "trial 0 is marked interrupted" in result.stderr
        assert (study_dir / "trial-0000" / "last.pt").is_file()
    else:  # the finished trial stands; nothing to run again
        assert [t.state.name for t in trials] == ["COMPLETE"] and "marked interrupted" not in result.stderr


@pytest.mark.parametrize(("study", "expected"), [
    ("-x", "run name '-x' starts with '-'"),  # issue 23.8: ran every trial, then failed on a --set never given
    ("s" * 300, "is 300 characters long: at most 80"),  # issue 23.7: refused as bad input before the storage
    ("a/b", "holds a path separator"),
])
def test_study_name_is_checked_before_the_storage_or_any_trial(cli, base, tmp_path, study, expected):
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: [0.01, 0.1]\n")
    db = tmp_path / "study.db"
    result = cli("tune", base, "--space", space, "--storage", f"sqlite:///{db}", "--study", study,
                 "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --study: ") and expected in result.stderr, result.stderr
    assert len(result.stderr) < 1_000 and "Traceback" not in result.output
    assert not db.exists() and not (tmp_path / "out").exists()


def test_long_config_name_asks_for_a_study_name(cli, tmp_path):
    cfg = write_config(tmp_path / "long.yaml", TINY.replace("name: tiny", f"name: {'n' * 90}"))
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: [0.01, 0.1]\n")
    result = cli("tune", cfg, "--space", space, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {cfg}: name: study name "), result.stderr
    assert "choose a shorter one with --study" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("storage", "expected"), [
    ("bogus", "not a database URL"),
    ("sqlite:///{tmp}/missing/study.db", "the folder {tmp}/missing does not exist"),
    ("postgresql://me:secret@host:port/db", "'postgresql://me:***@host:port/db': not a database URL"),
])
def test_storage_is_checked_before_the_config_or_any_trial(cli, base, tmp_path, storage, expected):
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: [0.01, 0.1]\n")
    result = cli("tune", base, "--space", space, "--storage", storage.format(tmp=tmp_path), "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --storage ") and expected.format(tmp=tmp_path) in result.stderr
    assert "secret" not in result.stderr and not (tmp_path / "out").exists()
