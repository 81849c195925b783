"""``cnnctl runs``: real runs on digits that finished, stopped early, were interrupted by SIGINT and failed on a
non-finite loss, each listed with its status; a held lock lists as running; --json is one document; a failed
run's status.json, cleared by a resume."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnctl.insight.runs import MAX_RUN_FILE_BYTES, STATUS_FILE, list_runs
from tests.conftest import error_line, explode_loss_from, invoke, run_cnnctl, write_config
from tests.test_runlock import _holder_process

TINY = """\
data: {dataset: digits, batch_size: 64}
model:
  arch: custom
  layers: [flatten, {linear: {out: 32}}, relu, linear]
optimizer: {name: adam, lr: 0.01}
train: {epochs: 1}
"""
EXPECTED = {"done": "finished", "patience": "early-stopped", "sigint": "interrupted", "nan": "failed"}


def _invoke(*args: str | Path) -> tuple[int, str, str]:
    result = invoke(*args)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """A folder holding one run of each ending, made by real training."""
    root = tmp_path_factory.mktemp("listing")
    cfg = write_config(root / "tiny.yaml", TINY)
    out = root / "runs"
    assert _invoke("train", cfg, "--name", "done", "--out", out)[0] == 0
    # min_delta 10: no epoch can improve val_loss that much, so patience 1 stops it after epoch 2
    assert _invoke("train", cfg, "--name", "patience", "--out", out, "--set", "train.epochs=4",
                   "--set", "train.early_stopping.patience=1", "--set", "train.early_stopping.min_delta=10")[0] == 0
    # a loss that turns NaN in the first epoch: exit 1, nothing but config.yaml left
    code, _, stderr = _invoke("train", cfg, "--name", "nan", "--out", out, "--set", "model.arch=lenet5",
                              "--set", "model.layers=[]", "--set", "optimizer.name=sgd", "--set", "optimizer.lr=100")
    assert code == 1 and "nan" in stderr
    # the real SIGINT path: a process told to train 500 epochs, interrupted once its first epoch is logged
    proc = subprocess.Popen([sys.executable, "-m", "cnnctl", "train", str(cfg), "--name", "sigint", "--out", str(out),
                             "--set", "train.epochs=500"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    seen = []
    while line := proc.stderr.readline():
        seen.append(line)
        if line.startswith("epoch 1/500"):
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, "".join(seen)
    return out


def _statuses(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    assert lines[0].split()[:5] == ["RUN", "ARCH", "DATASET", "EPOCHS", "STATUS"]
    return {line.split()[0]: line.split()[4] for line in lines[1:]}


def test_each_run_listed_with_its_status(runs_dir):
    code, stdout, _ = _invoke("runs", runs_dir)
    assert code == 0
    assert _statuses(stdout) == EXPECTED
    line = {row.split()[0]: row for row in stdout.splitlines()[1:]}
    assert line["done"].split()[3] == "1/1" and line["patience"].split()[3] == "2/4"
    assert line["sigint"].split()[3] == "1/500" and line["nan"].split()[3] == "0/1"
    assert "%" in line["done"].split()[5] and line["nan"].split()[5:7] == ["-", "-"]


def test_json_is_one_document_with_the_same_runs(runs_dir):
    code, stdout, _ = _invoke("runs", runs_dir, "--json")
    assert code == 0
    runs = json.loads(stdout)
    assert {r["name"]: r["status"] for r in runs} == EXPECTED
    by_name = {r["name"]: r for r in runs}
    done = by_name["done"]
    summary = json.loads((runs_dir / "done" / "summary.json").read_text())
    assert done["test_acc"] == summary["test"]["accuracy"] and done["wall_seconds"] == summary["wall_seconds"]
    assert done["best_val_acc"] == summary["best"]["val_acc"] and done["best_epoch"] == 1
    assert (done["arch"], done["dataset"], done["epochs_done"], done["epochs_planned"]) == ("custom", "digits", 1, 1)
    assert "did not improve" in by_name["patience"]["reason"]
    assert by_name["sigint"]["test_acc"] is None and by_name["sigint"]["best_epoch"] == 1


def test_sort_by_val_acc_puts_the_best_first_and_runs_without_one_last(runs_dir):
    code, stdout, _ = _invoke("runs", runs_dir, "--sort", "val_acc", "--json")
    assert code == 0
    accs = [r["best_val_acc"] for r in json.loads(stdout)]
    assert accs[-1] is None and accs[:-1] == sorted(accs[:-1], reverse=True)
    code, _, stderr = _invoke("runs", runs_dir, "--sort", "val_acc2")
    assert code == 2 and "did you mean 'val_acc'" in stderr


def test_held_lock_lists_as_running_and_a_failure_marker_as_failed(runs_dir, tmp_path):
    folder = tmp_path / "runs"
    shutil.copytree(runs_dir / "sigint", folder / "live")
    shutil.copytree(runs_dir / "sigint", folder / "crashed")
    (folder / "crashed" / STATUS_FILE).write_text('{"status": "failed", "reason": "the training loss became nan"}')
    proc = _holder_process(folder / "live")
    try:
        code, stdout, _ = _invoke("runs", folder)
        (running,) = [r for r in list_runs(folder) if r["name"] == "live"]
    finally:
        proc.kill()
        proc.wait()
    assert code == 0 and f"running (pid {proc.pid})" in stdout
    assert running["status"] == "running" and running["pid"] == proc.pid
    assert {r["name"]: r["status"] for r in list_runs(folder)} == {"live": "interrupted", "crashed": "failed"}


def test_nested_runs_found_and_named_by_path(runs_dir, tmp_path):
    shutil.copytree(runs_dir / "done", tmp_path / "compare" / "adam")
    (tmp_path / "compare" / "adam" / "visualize").mkdir()
    (tmp_path / "compare" / "adam" / "visualize" / "config.yaml").write_text("not a run\n")
    assert [r["name"] for r in list_runs(tmp_path)] == ["compare/adam"]


def test_missing_folder_is_exit_2_naming_it(tmp_path):
    code, _, stderr = _invoke("runs", tmp_path / "nowhere")
    assert code == 2 and str(tmp_path / "nowhere") in stderr


def test_empty_folder_lists_nothing(tmp_path):
    code, stdout, stderr = _invoke("runs", tmp_path)
    assert code == 0 and stdout == "" and "no runs" in stderr
    code, stdout, _ = _invoke("runs", tmp_path, "--json")
    assert code == 0 and json.loads(stdout) == []


def test_listing_does_not_import_torch(runs_dir):
    code = ("import sys\nfrom cnnctl.insight.runs import list_runs\n"
            f"assert len(list_runs({str(runs_dir)!r})) == 4\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- hostile run folders (issue 23, item 4)

# 341 bytes that expand to 9**9 (387 million) strings: the "billion laughs" bomb, as a run's config.yaml
ALIAS_BOMB = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))


def _fake_run(folder: Path, *, arch: object = "lenet5", summary: dict | None = None) -> Path:
    """A run folder as training leaves it, written by hand: config.yaml and, when given, summary.json."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"model: {{arch: {json.dumps(arch)}}}\ndata: {{dataset: digits}}\n"
                                        "train: {epochs: 3}\n")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _tree(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: a regular file's bytes, or what else it is (a FIFO is never opened)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else oct(p.lstat().st_mode)
            for p in sorted(folder.rglob("*"))}


def test_hostile_run_folders_are_skipped_with_a_reason_and_never_hang(tmp_path):
    folder = tmp_path / "runs"
    _fake_run(folder / "good", summary={"epochs": 3, "wall_seconds": 12.5})
    (folder / "bomb").mkdir(parents=True)
    (folder / "bomb" / "config.yaml").write_text(ALIAS_BOMB)
    (folder / "pipe").mkdir()
    os.mkfifo(folder / "pipe" / "config.yaml")
    os.mkfifo(_fake_run(folder / "pipe-summary") / "summary.json")
    os.mkfifo(_fake_run(folder / "pipe-lock", summary={"epochs": 3}) / ".lock")  # listed: a FIFO is no lock holder
    (_fake_run(folder / "huge") / "metrics.csv").write_bytes(b"")
    os.truncate(folder / "huge" / "metrics.csv", MAX_RUN_FILE_BYTES + 1)  # sparse: no disk used
    before = _tree(folder)
    start = time.monotonic()
    result = run_cnnctl("runs", folder, "--json", timeout=120)
    assert time.monotonic() - start < 60  # the bomb took 27 s and 2.5 GB, then a MemoryError traceback
    assert result.exit_code == 0, result.stderr
    assert [r["name"] for r in json.loads(result.stdout)] == ["good", "pipe-lock"]  # stdout: one JSON document
    skipped = {line.split(":")[0].removeprefix("skipped "): line for line in result.stderr.splitlines()}
    assert sorted(skipped) == [str(folder / name) for name in ("bomb", "huge", "pipe", "pipe-summary")]
    assert ": config.yaml: line 6, column 4: this value (f) holds 597,871 values once its aliases (*name) are " \
        "expanded" in skipped[str(folder / "bomb")]  # refused as it is parsed, at the first value past the limit
    assert "config.yaml is a FIFO (named pipe), not a regular file" in skipped[str(folder / "pipe")]
    assert "summary.json is a FIFO (named pipe), not a regular file" in skipped[str(folder / "pipe-summary")]
    assert f"metrics.csv is {MAX_RUN_FILE_BYTES + 1:,} bytes, more than training writes" in skipped[str(folder / "huge")]
    assert "Traceback" not in result.stderr
    assert _tree(folder) == before  # nothing read was changed, no lock created
    table = run_cnnctl("runs", folder, timeout=120)
    assert table.exit_code == 0 and table.stderr == result.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()] == ["RUN", "good", "pipe-lock"]


def test_sort_never_compares_values_of_different_types(tmp_path, caplog):
    folder = tmp_path / "runs"
    _fake_run(folder / "text-wall", arch="resnet20", summary={"epochs": 2, "wall_seconds": "slow", "test": {"accuracy": "high"}})
    _fake_run(folder / "number-arch", arch=5, summary={"epochs": True, "wall_seconds": 3.0, "test": {"accuracy": 0.9}})
    _fake_run(folder / "list-arch", arch=[1, 2], summary={"epochs": 4, "wall_seconds": float("nan")})
    _fake_run(folder / "plain", arch="alexnet", summary={"epochs": 1, "wall_seconds": 7.0, "test": {"accuracy": 0.5}})
    for sort, order in {"arch": ["plain", "text-wall", "list-arch", "number-arch"],
                        "wall": ["number-arch", "plain", "list-arch", "text-wall"],
                        "test_acc": ["number-arch", "plain", "list-arch", "text-wall"],
                        "epochs": ["list-arch", "text-wall", "plain", "number-arch"]}.items():
        code, stdout, stderr = _invoke("runs", folder, "--sort", sort, "--json")
        assert code == 0, stderr
        assert [r["name"] for r in json.loads(stdout)] == order, sort
    runs = {r["name"]: r for r in list_runs(folder)}
    assert runs["number-arch"]["arch"] is None and runs["list-arch"]["arch"] is None  # shown as "?"
    assert runs["text-wall"]["wall_seconds"] is None and runs["text-wall"]["test_acc"] is None
    assert runs["number-arch"]["epochs_done"] == 0  # true is no epoch count
    assert not caplog.records


def test_a_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch, caplog):
    """Root lists any folder whatever its mode, so the operating system's refusal is played by os.scandir."""
    folder = tmp_path / "runs"
    _fake_run(folder / "good")
    (folder / "locked" / "inner").mkdir(parents=True)
    (folder / "locked").chmod(0)
    real = os.scandir

    def scandir(path=".") -> object:
        if Path(path).name == "locked" or (Path(path) == folder and os.environ.get("LOCK_TOP")):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        with caplog.at_level(logging.WARNING, logger="cnnctl"):
            assert [r["name"] for r in list_runs(folder)] == ["good"]
        assert caplog.messages == [f"skipped {folder / 'locked'}: cannot be read: Permission denied"]
        monkeypatch.setenv("LOCK_TOP", "1")
        code, stdout, stderr = _invoke("runs", folder)
    finally:
        (folder / "locked").chmod(0o755)
    assert code == 2 and stdout == ""
    assert stderr == f"error: {folder}: cannot be read: Permission denied\n"


# ---------------------------------------------------------------- status.json of a failed run


def test_a_failed_run_says_so_in_status_json_and_a_resume_clears_it(tmp_path, cli, monkeypatch):
    explode_loss_from(monkeypatch, 50)
    cfg = write_config(tmp_path / "nan.yaml", "data: {dataset: digits, batch_size: 32}\n"
                       "model: {arch: custom, layers: [flatten, {linear: {out: 16}}, relu, linear]}\n"
                       "train: {epochs: 2, checkpoint: {save_every_steps: 5}}\n")
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 1, result.output
    run = tmp_path / "runs" / "nan"
    status = json.loads((run / STATUS_FILE).read_text())
    assert status["status"] == "failed" and "nan" in status["reason"]
    assert error_line(result) == f"error: {status['reason']}"
    listed = cli("runs", tmp_path / "runs", "--json")
    assert json.loads(listed.stdout)[0]["status"] == "failed"
    monkeypatch.undo()
    result = cli("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert not (run / STATUS_FILE).exists()
