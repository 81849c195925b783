"""End to end through the CLI: train on digits, evaluate, predict; the run directory contract."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import READ_ONLY, error_line, read_only, train_run, write_config

TINY = """\
seed: 0
data: {{dataset: digits, batch_size: 64}}
model: {{arch: {arch}}}
optimizer: {{name: adam, lr: 0.003}}
train: {{epochs: {epochs}, early_stopping: {{patience: 5}}}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short digits run shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    return train_run(write_config(tmp / "tiny.yaml", TINY.format(arch="lenet5", epochs=4)), tmp / "runs")


def test_run_directory(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.yaml", "metrics.csv", "best.pt", "last.pt", "summary.json", "curves.png", "confusion_matrix.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["test"]["n"] == 359  # round(1797 * 0.2) - 0.4: the test split
    assert summary["test"]["accuracy"] > 0.8
    best = max(rows, key=lambda r: float(r["val_acc"]))
    assert summary["best_epoch"] == int(best["epoch"])


def test_second_run_gets_a_new_directory(cli, tmp_path):
    cfg = write_config(tmp_path / "t.yaml", TINY.format(arch="lenet5", epochs=1))
    first = cli("train", cfg, "--out", tmp_path / "runs")
    second = cli("train", cfg, "--out", tmp_path / "runs", "--name", "t")
    assert first.exit_code == 0 and second.exit_code == 0
    assert Path(first.stdout.strip()).name == "t" and Path(second.stdout.strip()).name == "t-2"


def test_eval_json_agrees_with_independent_computation(cli, trained):
    from cnnctl.config import Config
    from cnnctl.data.base import load_data, to_model_input
    from cnnctl.inference.evaluate import model_from_checkpoint
    from cnnctl.training.checkpoint import load_checkpoint

    result = cli("eval", trained / "best.pt", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"checkpoint", "split", "n", "loss", "accuracy", "top5", "per_class", "confusion_matrix"}
    ckpt = load_checkpoint(trained / "best.pt")
    cfg = Config.model_validate(ckpt["config"])
    bundle = load_data(cfg.data, cfg.seed)
    model = model_from_checkpoint(ckpt, "best.pt", torch.device("cpu"))
    with torch.no_grad():
        logits = model(to_model_input(bundle.test.images, ckpt["input"]["mean"], ckpt["input"]["std"], torch.device("cpu")))
    preds = logits.argmax(1)
    assert report["n"] == len(bundle.test.labels)
    assert report["accuracy"] == pytest.approx(float((preds == bundle.test.labels).double().mean()), abs=1e-12)
    assert report["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, bundle.test.labels)), rel=1e-5)
    assert sum(map(sum, report["confusion_matrix"])) == report["n"]


def test_eval_text_and_ensemble(cli, trained, tmp_path):
    text = cli("eval", trained)
    assert text.exit_code == 0 and "accuracy" in text.stdout and "confusion matrix" in text.stdout
    result = cli("eval", trained / "best.pt", trained / "last.pt", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["members"]) == 2 and report["ensemble"]["n"] == report["members"][0]["n"]
    val = cli("eval", trained / "best.pt", "--split", "val", "--json")
    assert json.loads(val.stdout)["split"] == "val"


def test_predict_matches_eval_for_the_same_image(cli, trained, tmp_path):
    from cnnctl.config import Config
    from cnnctl.data.base import load_data, to_model_input
    from cnnctl.inference.evaluate import model_from_checkpoint
    from cnnctl.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained / "best.pt")
    cfg = Config.model_validate(ckpt["config"])
    bundle = load_data(cfg.data, cfg.seed)
    image = bundle.test.images[5]
    path = tmp_path / "digit.png"
    Image.fromarray(image[0].numpy(), mode="L").save(path)
    model = model_from_checkpoint(ckpt, "best.pt", torch.device("cpu"))
    with torch.no_grad():
        probs = model(to_model_input(image[None], ckpt["input"]["mean"], ckpt["input"]["std"], torch.device("cpu"))).softmax(1)[0]
    result = cli("predict", path, "-c", trained / "best.pt", "--json", "--topk", "3")
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)
    top = entry["topk"][0]
    assert top["index"] == int(probs.argmax()) and top["class"] == bundle.classes[top["index"]]
    assert top["prob"] == pytest.approx(float(probs.max()), abs=1e-6)
    assert len(entry["topk"]) == 3


def test_predict_reports_bad_files_and_predicts_the_rest(cli, trained, tmp_path):
    good = tmp_path / "good.png"
    Image.new("L", (8, 8), 128).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    result = cli("predict", good, empty, text, tmp_path / "missing.png", "-c", trained / "best.pt", "--json")
    assert result.exit_code == 2
    entries = {Path(e["file"]).name: e for e in json.loads(result.stdout)}
    assert "topk" in entries["good.png"]
    for name in ("empty.png", "notes.png", "missing.png"):
        assert "error" in entries[name]
    assert "Traceback" not in result.output


def test_predict_folder_recursive(cli, trained, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i, folder in enumerate([tmp_path / "a", tmp_path / "a" / "b"]):
        Image.new("RGB", (20, 20), (i * 100, 50, 50)).save(folder / f"x{i}.jpg")
    result = cli("predict", tmp_path / "a", "-c", trained, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2


def test_unknown_checkpoint_errors(cli, tmp_path):
    result = cli("eval", tmp_path / "nope.pt")
    assert result.exit_code == 2 and "no such file" in result.stderr and "nope.pt" in result.stderr


def test_compile_trains_and_evaluates_through_the_compiled_module(cli, tmp_path, monkeypatch):
    """train.compile wraps the model in torch.compile's OptimizedModule (which has no truth value for a ResNet);
    the eager backend keeps the test fast and free of a C++ toolchain while running the same wrapper."""
    calls = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        calls.append(type(module).__name__)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = write_config(tmp_path / "c.yaml", TINY.format(arch="resnet20", epochs=1).replace(
        "early_stopping: {patience: 5}}", "early_stopping: null, compile: true}"))
    result = cli("train", cfg, "--out", tmp_path / "runs", "--set", "data.image_size=16")
    assert result.exit_code == 0, result.stderr
    assert calls == ["ResNet"]
    # The same run without compile: the compiled module trained the real weights and computed the same numbers.
    eager = cli("train", cfg, "--out", tmp_path / "eager", "--set", "data.image_size=16", "--set", "train.compile=false")
    assert eager.exit_code == 0, eager.stderr
    assert calls == ["ResNet"]
    runs = [Path(r.stdout.strip().splitlines()[-1]) for r in (result, eager)]
    compiled_ckpt, eager_ckpt = (torch.load(run / "last.pt", weights_only=True) for run in runs)
    assert compiled_ckpt["model"].keys() == eager_ckpt["model"].keys()  # no _orig_mod. prefix
    for key, value in eager_ckpt["model"].items():
        assert torch.equal(compiled_ckpt["model"][key], value), key
    rows = [[{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader((run / "metrics.csv").open())]
            for run in runs]
    assert rows[0] == rows[1]
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert summaries[0]["test"] == summaries[1]["test"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("env, expected", [({}, "True"), ({"CNNCTL_DEFAULT_MALLOC": "1"}, "False")])
def test_cpu_allocator_tuning_and_its_opt_out(env, expected):
    """A fresh process: the thresholds are raised once (mallopt succeeds), or left alone with the opt-out."""
    code = "from cnnctl.runtime import tune_cpu_allocator as t; print(t(), t())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if k != "CNNCTL_DEFAULT_MALLOC"}, **env})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [expected, expected]


# ---------------------------------------------------------------- --out where no run folder can be made


def test_train_out_that_is_a_regular_file(tmp_path, world, cli):
    out = tmp_path / "runs"
    out.write_text("keep me\n")
    result = cli("train", world / "pets.yaml", "--out", out)
    assert result.exit_code == 1
    assert error_line(result) == f"error: could not write {out}: it is a file, not a folder; give --out a folder " \
                                 "for run directories"
    assert out.read_text() == "keep me\n"


def test_train_out_under_a_regular_file(tmp_path, world, cli):
    (tmp_path / "file").write_text("keep me\n")
    result = cli("train", world / "pets.yaml", "--out", tmp_path / "file" / "runs")
    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: could not write {tmp_path / 'file' / 'runs'}: Not a directory")
    assert (tmp_path / "file").read_text() == "keep me\n"


@read_only
def test_train_out_on_a_read_only_location(world, cli):
    out = READ_ONLY / "cnnctl-runs"
    result = cli("train", world / "pets.yaml", "--out", out)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"error: could not write {out}: ") and "give --out a writable folder" in line
    assert not out.exists()


def test_a_run_that_fails_before_writing_leaves_no_run_folder(tmp_path, world, cli, monkeypatch):
    import cnnctl.training.rundir
    from cnnctl.errors import WriteError

    def full_disk(path, text):
        raise WriteError(str(path), "No space left on device")

    monkeypatch.setattr(cnnctl.training.rundir, "write_text", full_disk)  # config.yaml, the first file a run writes
    result = cli("train", world / "pets.yaml", "--out", tmp_path / "runs")
    assert result.exit_code == 1
    assert error_line(result) == f"error: could not write {tmp_path / 'runs' / 'pets' / 'config.yaml'}: No space " \
                                 "left on device"
    assert list((tmp_path / "runs").iterdir()) == [], "the empty run folder is removed"
