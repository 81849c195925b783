"""The Python API (cnnctl.train / evaluate / predict / summary / load_config), driven in-process: what each returns,
the error kinds it raises (never SystemExit), the process left as it was found, and the CLI as a layer over it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnctl
from cnnctl.errors import CnnctlError, ConfigError, UsageError
from tests.test_run import _process_state

TINY = {
    "seed": 0,
    "data": {"dataset": "digits", "batch_size": 64},
    "model": {"arch": "lenet5"},
    "optimizer": {"name": "adam", "lr": 0.003},
    "train": {"epochs": 2, "threads": 1},
}


def _state() -> dict:
    from cnnctl import runtime

    return {**_process_state(), "allocator_tuned": runtime._allocator_tuned, "torch_rng": torch.get_rng_state()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run through cnnctl.train, with the process state before and after it."""
    out = tmp_path_factory.mktemp("api") / "runs"
    torch.manual_seed(1234)
    before = _state()
    result = cnnctl.train(TINY, overrides=["train.epochs=1"], name="tiny", out=out)  # a dict config, a Path out
    return result, before, _state(), out


def test_import_cnnctl_is_torch_free_and_lists_the_api():
    code = "import sys, cnnctl; print(cnnctl.__version__, 'torch' in sys.modules, 'train' in dir(cnnctl))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [cnnctl.__version__, "False", "True"]
    with pytest.raises(AttributeError):
        _ = cnnctl.no_such_name


def test_the_api_names_survive_loading_the_submodules_of_the_same_name():
    """No module of the package root is named as an API function (the predict module is cnnctl.inference.predict),
    so loading every module leaves ``cnnctl.predict`` the function, with no trick in the package's class."""
    import pkgutil

    import cnnctl.inference.predict  # noqa: F401  (the submodule: image discovery and batching)
    from cnnctl.inference.predict import predict_files

    top = {m.name for m in pkgutil.iter_modules(cnnctl.__path__)}
    assert not top & {"train", "evaluate", "predict", "summary", "load_config"}
    assert cnnctl.predict is cnnctl.api.predict and callable(predict_files)


def test_train_returns_the_run_and_its_metrics(trained):
    result, _, _, out = trained
    assert isinstance(result, cnnctl.RunResult)
    assert result.run_dir == out / "tiny" and result.run_dir.is_dir()
    assert result.summary["run_dir"] == str(result.run_dir) and result.summary["epochs"] == 1
    assert [r["epoch"] for r in result.metrics] == [1]
    assert set(result.metrics[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds"}
    assert result.metrics[0]["val_acc"] == result.summary["best"]["val_acc"]
    assert result.config.name == "tiny" and result.config.train.epochs == 1
    assert result.best_checkpoint == result.run_dir / "best.pt" and result.best_checkpoint.is_file()
    assert result.last_checkpoint == result.run_dir / "last.pt" and result.last_checkpoint.is_file()
    with pytest.raises(AttributeError):
        result.run_dir = Path("elsewhere")  # frozen


def test_train_leaves_the_process_as_it_found_it(trained):
    """threads (train.threads: 1 during the run), the malloc tuning, logging, matplotlib's backend and the
    caller's random state are as before the call."""
    _, before, after, _ = trained
    assert _same(before, after), {k: (before[k], after[k]) for k in before if k != "torch_rng"}


def test_evaluate_one_checkpoint_and_an_ensemble(trained):
    result = trained[0]
    before = _state()
    report = cnnctl.evaluate(result.best_checkpoint, device="cpu")  # one Path, not a list
    assert report["split"] == "test" and report["n"] > 0 and 0 <= report["accuracy"] <= 1
    assert report["accuracy"] == pytest.approx(result.summary["test"]["accuracy"])
    both = cnnctl.evaluate([result.run_dir, result.best_checkpoint], split="val", device="cpu")
    assert set(both) == {"ensemble", "members"} and len(both["members"]) == 2
    after = _state()
    del before["torch_rng"], after["torch_rng"]  # building a network draws its initial weights, as torch does
    assert _same(before, after)


def test_predict_images_with_a_run_directory(trained, tmp_path):
    from PIL import Image

    Image.new("L", (8, 8), 128).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    results = cnnctl.predict([tmp_path / "a.png", tmp_path / "bad.png"], trained[0].run_dir, topk=3)
    assert [Path(r["file"]).name for r in results] == ["a.png", "bad.png"]
    assert len(results[0]["topk"]) == 3 and "error" in results[1]  # an unreadable file is reported, not raised


def test_summary_returns_the_json_document_and_the_text():
    s = cnnctl.summary(TINY)
    assert s["arch"] == "lenet5" and s["num_classes"] == 10 and s["params"] > 0 and "explain" not in s
    assert "lenet5 on digits" in s.text
    explained = cnnctl.summary("lenet5-digits", overrides=["model.dropout=0.5"], explain=True)
    assert "explain" in explained and "training" in explained


def test_load_config_takes_a_path_a_bundled_name_a_dict_or_a_config(tmp_path):
    import yaml

    path = tmp_path / "my config.yaml"
    path.write_text(yaml.safe_dump(TINY))
    from_path = cnnctl.load_config(path, overrides=["optimizer.lr=0.05"])
    assert from_path.name == "my-config" and from_path.optimizer.lr == 0.05
    assert cnnctl.load_config(str(path)).optimizer.lr == 0.003
    assert cnnctl.load_config("lenet5-digits").data.dataset == "digits"
    from_dict = cnnctl.load_config(TINY, ["train.epochs=4"])
    assert isinstance(from_dict, cnnctl.Config) and from_dict.train.epochs == 4
    assert TINY["train"]["epochs"] == 2  # the caller's dict is not changed
    assert cnnctl.load_config(from_dict).train.epochs == 4


@pytest.mark.parametrize("call", [
    lambda tmp: cnnctl.train({**TINY, "optimizer": {"name": "adamm"}}, out=tmp),
    lambda tmp: cnnctl.train(TINY, overrides=["train.epochz=1"], out=tmp),
    lambda tmp: cnnctl.summary({**TINY, "model": {"arch": "lenet5", "dropout": 2}}),
    lambda tmp: cnnctl.load_config(tmp / "missing.yaml"),
    lambda tmp: cnnctl.train(TINY, name="../escape", out=tmp),
], ids=["unknown-optimizer", "unknown-key", "bad-value", "missing-file", "bad-name"])
def test_a_bad_config_raises_config_error_not_system_exit(tmp_path, call):
    try:
        call(tmp_path)
    except ConfigError:
        pass
    except SystemExit as e:  # pragma: no cover - the failure this test is for
        pytest.fail(f"SystemExit({e.code}) from the API")
    else:
        pytest.fail("no ConfigError")
    assert not any(tmp_path.iterdir()) or not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("call", [
    lambda tmp: cnnctl.evaluate([], device="cpu"),
    lambda tmp: cnnctl.evaluate(tmp, split="train"),
    lambda tmp: cnnctl.predict([tmp], tmp / "x.pt", topk=0),
    lambda tmp: cnnctl.train(TINY, device="tpu", out=tmp),
    lambda tmp: cnnctl.load_config(42),
])
def test_bad_arguments_raise_cnnctl_errors(tmp_path, call):
    with pytest.raises(CnnctlError):
        call(tmp_path)


class _BytesPath:
    """An os.PathLike whose path is bytes: accepted by os.fspath, not by cnnctl."""

    def __fspath__(self) -> bytes:
        return b"runs"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: cnnctl.train(TINY, out=b"runs"), "out must be a path (str or os.PathLike), not bytes b'runs'"),
    (lambda: cnnctl.train(TINY, out=_BytesPath()), "out must be a path (str or os.PathLike), not bytes b'runs'"),
    (lambda: cnnctl.train(TINY, resume=b"runs/tiny"), "resume must be a path (str or os.PathLike), not bytes "
                                                      "b'runs/tiny'"),
    (lambda: cnnctl.train(TINY, hooks=[object()]), "hooks[0] must be a cnnctl.training.hooks.Hook (subclass it, override the "
                                                   "events you need), not object <object object at"),
    (lambda: cnnctl.train(TINY, name=7), "name must be a run name (str), not int 7"),
    (lambda: cnnctl.train(TINY, device=0), "device must be a device name (str): auto, cpu, cuda, cuda:N or mps, not "
                                           "int 0"),
    (lambda: cnnctl.predict(5), "images must be a path (str or os.PathLike) or a list of paths, not int 5"),
    (lambda: cnnctl.predict(["a.png", 5]), "images[1] must be a path (str or os.PathLike), not int 5"),
    (lambda: cnnctl.predict(["a.png"], b"m.pt"), "checkpoint must be a path (str or os.PathLike), not bytes b'm.pt'"),
    (lambda: cnnctl.predict(["a.png"], "m.pt", topk="3"), "topk must be an int (how many classes to show), not str '3'"),
    (lambda: cnnctl.predict(["a.png"], "m.pt", topk=True), "topk must be an int (how many classes to show), not bool "
                                                           "True"),
    (lambda: cnnctl.predict(["a.png"], "m.pt", explain="yes"), "explain must be True or False, not str 'yes'"),
    (lambda: cnnctl.evaluate(7), "checkpoints must be a path (str or os.PathLike) or a list of paths, not int 7"),
    (lambda: cnnctl.evaluate(b"best.pt"), "checkpoints must be a path (str or os.PathLike) or a list of paths, not "
                                          "bytes b'best.pt'"),
    (lambda: cnnctl.evaluate("best.pt", plots=b"plots"), "plots must be a path (str or os.PathLike), not bytes "
                                                         "b'plots'"),
    (lambda: cnnctl.load_config(TINY, "train.epochs=3"), "overrides must be a list of KEY=VALUE strings (one override "
                                                         "is a list of one: ['train.epochs=3']), not str "
                                                         "'train.epochs=3'"),
    (lambda: cnnctl.summary(TINY, overrides=[("train.epochs", 3)]), "overrides[0] must be a KEY=VALUE string, not "
                                                                    "tuple ('train.epochs', 3)"),
    (lambda: cnnctl.load_config(_BytesPath()), "config must be a path (str or os.PathLike), not bytes b'runs'"),
], ids=["bytes-out", "bytes-pathlike-out", "bytes-resume", "hook-object", "int-name", "int-device", "int-images",
        "int-in-images", "bytes-checkpoint", "str-topk", "bool-topk", "str-explain", "int-checkpoints",
        "bytes-checkpoints", "bytes-plots", "str-overrides", "tuple-override", "bytes-config"])
def test_an_argument_of_the_wrong_type_is_a_usage_error_naming_it(tmp_path, monkeypatch, call, message):
    """Issue 23: ``out=b"runs"`` made a folder named ``b'runs'``; ``predict(5)``, ``evaluate(7)``, a bytes
    checkpoint, ``topk="3"`` and ``hooks=[object()]`` ended in TypeError or AttributeError; a str of overrides was
    read one character at a time (``--set 't': no '='``). Each is refused before anything runs or is written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:
        call()
    assert info.value.exit_code == 2
    assert str(info.value).startswith(message), str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unknown_split_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="split"):
        cnnctl.evaluate(tmp_path, split="train")


def test_the_cli_is_a_layer_over_the_api(cli, monkeypatch, tmp_path):
    """`cnnctl train/eval/predict/summary` call exactly cnnctl.api's functions."""
    import cnnctl.api as api

    calls = []

    def fake(name, value):
        def f(*args, **kwargs):
            calls.append((name, args, kwargs))
            return value
        return f

    run = api.RunResult(tmp_path / "r", {}, [], cnnctl.load_config(TINY))
    monkeypatch.setattr(api, "train", fake("train", run))
    monkeypatch.setattr(api, "evaluate", fake("evaluate", {"checkpoint": "c"}))
    monkeypatch.setattr(api, "predict", fake("predict", []))
    summary = api.Summary({"arch": "x"})
    summary.text = "the table"
    monkeypatch.setattr(api, "summary", fake("summary", summary))
    assert cli("train", "lenet5-digits", "--set", "train.epochs=1", "--name", "n").stdout.strip() == str(tmp_path / "r")
    assert cli("eval", "a.pt", "b.pt", "--json", "--split", "val").stdout.strip().startswith("{")
    assert cli("predict", "x.png", "-c", "m.pt", "--json").stdout.strip() == "[]"
    assert cli("summary", "lenet5-digits").stdout.strip() == "the table"
    assert [(n, a, k) for n, a, k in calls] == [
        ("train", ("lenet5-digits",), {"overrides": ["train.epochs=1"], "name": "n", "out": None, "resume": None,
                                       "device": None}),
        ("evaluate", (["a.pt", "b.pt"],), {"split": "val", "data_root": None, "device": "auto", "plots": None}),
        ("predict", (["x.png"], "m.pt"), {"topk": 5, "device": "cpu", "explain": False, "label": None,
                                          "labels_from_folders": False}),
        ("summary", ("lenet5-digits",), {"overrides": None, "explain": False}),
    ]


def test_a_callers_hook_adds_to_summary_json_as_the_recorders_do(tmp_path):
    """run.finish asks every hook for its summary items; it knows none of them by type."""
    from cnnctl.training.hooks import Hook

    class Count(Hook):
        def __init__(self) -> None:
            self.epochs = 0

        def on_epoch_end(self, run, row) -> None:
            self.epochs += 1

        def summary_items(self):
            return {"my_count": self.epochs}

    result = cnnctl.train(TINY, overrides=["train.epochs=1", "train.record_gradients_every=5"], name="h",
                          out=tmp_path, hooks=[Count()])
    written = json.loads((result.run_dir / "summary.json").read_text())
    assert written["my_count"] == 1 and result.summary["my_count"] == 1
    assert written["gradients"]["every_n_steps"] == 5 and written["activations"]["split"] == "val"
