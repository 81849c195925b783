"""A run from command to outputs: resolved once, built complete, hooks, the library's manners (no process-wide
changes), and the end-of-run fixes (a NaN before any save says so; the last epoch is not an early stop:
test_early_stopping.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnctl.config import Config, resolve_run
from cnnctl.errors import ConfigError, UsageError, WriteError
from tests.conftest import LENET_DIGITS, write_config

TINY = LENET_DIGITS


# ---------------------------------------------------------------- resolving a run


def test_resolve_run_applies_name_and_out_as_validated_overrides(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    plain = resolve_run(str(cfg))
    assert plain.config.name == "tiny" and plain.config.out == "runs" and plain.resume_from is None
    named = resolve_run(str(cfg), overrides=["optimizer.lr=0.01"], name="123", out=str(tmp_path / "o"))
    assert named.config.name == "123"  # a string, not the YAML number 123
    assert named.config.out == str(tmp_path / "o") and named.config.optimizer.lr == 0.01
    assert named.overrides == ("optimizer.lr=0.01",)
    from_object = resolve_run(Config(), name="x")
    assert from_object.config.name == "x"
    with pytest.raises(ConfigError, match="optimizer.lrr"):
        resolve_run(str(cfg), overrides=["optimizer.lrr=1"])
    with pytest.raises(UsageError, match="CONFIG"):
        resolve_run(None)


def test_resolve_run_on_resume_keeps_the_name_and_refuses_changes_of_meaning(tmp_path):
    saved = resolve_run(write_config(tmp_path / "orig.yaml", TINY)).config.dump()
    ckpt = {"config": saved}
    resumed = resolve_run(None, overrides=["train.epochs=5"], resume_from=tmp_path / "last.pt", checkpoint=ckpt)
    assert resumed.config.name == "orig" and resumed.config.train.epochs == 5
    assert resumed.resume_from == tmp_path / "last.pt" and resumed.checkpoint is ckpt
    other = write_config(tmp_path / "other.yaml", TINY)  # the same config under another file name
    assert resolve_run(str(other), resume_from=tmp_path / "last.pt", checkpoint=ckpt).config.name == "orig"
    with pytest.raises(ConfigError, match=r"changing optimizer.lr \(0.003 -> 0.1\) would make this a different run"):
        resolve_run(None, overrides=["optimizer.lr=0.1"], resume_from=tmp_path / "last.pt", checkpoint=ckpt)


def test_resolving_a_run_imports_no_torch(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    code = ("import sys; from cnnctl.config import resolve_run; "
            f"r = resolve_run({str(cfg)!r}, overrides=['train.epochs=2'], name='n', out='o'); "
            "print(r.config.name, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["n", "False"]


# ---------------------------------------------------------------- the library changes nothing process-wide


def _process_state() -> dict:
    import matplotlib

    root, cnnctl_log = logging.getLogger(), logging.getLogger("cnnctl")
    return {
        # the raw rcParams value: reading rcParams["backend"] would itself resolve (and switch) the backend
        "backend": dict.__getitem__(matplotlib.rcParams, "backend"),
        "pyplot_figures": len(sys.modules["matplotlib.pyplot"].get_fignums()) if "matplotlib.pyplot" in sys.modules else 0,
        "threads": torch.get_num_threads(),
        "root_handlers": list(root.handlers), "root_level": root.level,
        "cnnctl_handlers": list(cnnctl_log.handlers), "cnnctl_level": cnnctl_log.level,
    }


def test_train_evaluate_predict_leave_the_process_as_they_found_it(tmp_path):
    from PIL import Image

    from cnnctl.inference.evaluate import evaluate_checkpoints
    from cnnctl.inference.predict import predict
    from cnnctl.training.run import train

    threads = torch.get_num_threads()
    cfg = write_config(tmp_path / "tiny.yaml", TINY.replace("threads: 1", f"threads: {threads + 1}"))
    before = _process_state()
    summary = train(str(cfg), out=str(tmp_path / "runs"), overrides=["train.epochs=1"])
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "curves.png").is_file()  # the plots were drawn
    evaluate_checkpoints([str(run_dir)], split="test", device="cpu")
    Image.new("L", (8, 8), 128).save(tmp_path / "x.png")
    assert "topk" in predict([str(tmp_path / "x.png")], str(run_dir / "best.pt"))[0]
    assert _process_state() == before


# ---------------------------------------------------------------- fixes


def test_nonfinite_loss_before_any_checkpoint_does_not_claim_one(cli, tmp_path, monkeypatch):
    class NaNLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            return super().forward(logits, target) * float("nan")

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NaNLoss)
    cfg = write_config(tmp_path / "nan.yaml", TINY)
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 1, result.output
    assert "nan at epoch 1, step 1" in result.stderr
    assert "last.pt" not in result.stderr.replace("no checkpoint", "")
    assert "no checkpoint had been written yet" in result.stderr
    assert not (tmp_path / "runs" / "nan" / "last.pt").exists()


# ---------------------------------------------------------------- errors, mapped by the CLI alone


@pytest.mark.parametrize(("args", "option"), [
    (["eval", "x.pt", "--split", "train"], "--split"),
    (["export", "x.pt", "--format", "tflite"], "--format"),
    (["tune", "c.yaml", "--space", "s.yaml", "--method", "bayes"], "--method"),
])
def test_choice_options_are_refused_by_typer_with_the_valid_ones(cli, args, option):
    result = cli(*args)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr and "is not one of" in result.stderr


def test_a_failed_write_is_a_write_error_naming_the_file(tmp_path):
    from cnnctl.training.checkpoint import write_text

    with pytest.raises(WriteError, match="missing/x.txt") as info:
        write_text(tmp_path / "missing" / "x.txt", "text")
    assert info.value.exit_code == 1 and info.value.path.endswith("x.txt")


@pytest.mark.parametrize("where", ["last", "inside"])
def test_an_out_too_long_for_the_file_system_is_a_failed_write(cli, tmp_path, where):
    """Issue 23, item 7: ``--out`` with a 300-character folder name (ENAMETOOLONG) ended in an OSError traceback.
    The folders ``mkdir -p`` made before the long name are removed again: nothing outside is left changed."""
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / ("a" * 300) if where == "last" else tmp_path / "new" / "parents" / ("a" * 300) / "runs"
    result = cli("train", cfg, "--out", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == f"error: could not write {out}: File name too long; give --out a " \
                                             "writable folder"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.yaml"]


def test_predict_names_the_unreadable_files_after_the_results(cli, tmp_path):
    from cnnctl.inference.predict import check_results

    results = [{"file": f"f{i}.png", "error": "no such file"} for i in range(5)] + [{"file": "ok.png", "topk": []}]
    with pytest.raises(Exception, match=r"5 of 6 files could not be read: f0.png, f1.png, f2.png and 2 more") as info:
        check_results(results)
    assert info.value.exit_code == 2
    check_results([{"file": "ok.png", "topk": []}])


# ---------------------------------------------------------------- a torchrun restart


@pytest.mark.parametrize("saved", [True, False])
def test_a_torchrun_restart_reads_the_config_once(trained_run, tmp_path, monkeypatch, saved):
    """Issue 24: a restarted attempt read and validated CONFIG twice (once to find its marker under ``out``, once to
    resume). Now once: the resolved config is the base the checkpoint's is checked against. With no last.pt saved
    (the first attempt died earlier), the restart starts the run afresh."""
    import builtins

    from cnnctl.training.run import resolve

    config = trained_run / "config.yaml"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".torchrun-job7").write_text(str(trained_run if saved else tmp_path / "died-early"))
    opened, real_open = [], builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(Path(file)) or real_open(file, *a, **k))

    resolved = resolve(str(config), overrides=["train.epochs=2"], out=str(out))

    assert opened.count(config) == 1
    assert resolved.overrides == ("train.epochs=2",) and resolved.config.train.epochs == 2
    if saved:
        assert resolved.resume_from == trained_run / "last.pt" and resolved.checkpoint["step"] > 0
        assert resolved.config.out == resolved.checkpoint["config"]["out"]  # the run stays where it is
    else:
        assert resolved.resume_from is None and resolved.config.out == str(out)
