"""torchrun + DistributedDataParallel on CPU (gloo): one run directory, global metrics, exact sharding, restarts."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cnnctl
from tests.conftest import ROOT, run_cnnctl, write_config

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")

# No batch norm, no dropout, no augmentation: a 2-rank step is then the same arithmetic as a 1-process step.
CONFIG = """\
seed: 0
data: {{dataset: digits, batch_size: 64, val_split: {val_split}}}
model: {{arch: lenet5}}
optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}
train: {{epochs: {epochs}, early_stopping: null, threads: 1}}
"""


def even_val_split() -> float:
    """A val_split that leaves an even number of training images, so no sample is trimmed across 2 ranks."""
    from cnnctl.config import DataConfig
    from cnnctl.data.base import load_data

    for val_split in (0.1, 0.11, 0.12, 0.13, 0.14):
        bundle = load_data(DataConfig(dataset="digits", val_split=val_split, batch_size=64), 0)
        if len(bundle.train.labels) % 64 % 2 == 0:
            return val_split
    raise AssertionError("no even split found")


def torchrun(*args: str, nproc: int = 2, extra: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *extra, "-m", "cnnctl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = write_config(tmp / "ddp.yaml", CONFIG.format(val_split=even_val_split(), epochs=4))
    single = run_cnnctl("train", cfg, "--out", tmp / "single")
    assert single.exit_code == 0, single.stderr
    double = torchrun("train", str(cfg), "--out", str(tmp / "double"))
    assert double.returncode == 0, double.stderr[-3000:]
    return Path(single.stdout.strip()), tmp / "double", double


def test_one_run_directory_and_metrics_file(runs):
    _, double_out, proc = runs
    dirs = [p for p in double_out.iterdir() if p.is_dir()]
    assert [d.name for d in dirs] == ["ddp"]
    assert len(rows(dirs[0])) == 4
    assert json.loads((dirs[0] / "summary.json").read_text())["world_size"] == 2
    assert proc.stdout.strip().splitlines() == [str(dirs[0])]  # printed once, by rank 0


def test_first_epoch_loss_matches_single_process(runs):
    single, double_out, _ = runs
    one, two = rows(single)[0], rows(double_out / "ddp")[0]
    assert abs(float(one["train_loss"]) - float(two["train_loss"])) < 1e-5
    assert float(one["train_acc"]) == pytest.approx(float(two["train_acc"]), abs=1e-9)


def test_accuracy_within_one_point_and_checkpoint_loads_single_process(runs, cli):
    single, double_out, _ = runs
    s1 = json.loads((single / "summary.json").read_text())
    s2 = json.loads((double_out / "ddp" / "summary.json").read_text())
    assert abs(s1["test"]["accuracy"] - s2["test"]["accuracy"]) <= 0.01
    result = cli("eval", double_out / "ddp" / "best.pt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(s2["test"]["accuracy"], abs=1e-9)


def test_single_process_checkpoint_resumes_under_torchrun(runs, tmp_path):
    single, _, _ = runs
    run_dir = tmp_path / "ddp"
    shutil.copytree(single, run_dir)
    proc = torchrun("train", "--resume", str(run_dir), "--set", "train.epochs=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [int(r["epoch"]) for r in rows(run_dir)] == [1, 2, 3, 4, 5]


def test_batch_must_divide_across_ranks(tmp_path):
    cfg = write_config(tmp_path / "odd.yaml", CONFIG.format(val_split=0.1, epochs=1).replace("batch_size: 64", "batch_size: 63"))
    proc = torchrun("train", str(cfg), "--out", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert "error: data.batch_size: 63 is the global batch over 2 processes" in proc.stderr
    # torchrun prints its own traceback; cnnctl's code prints none. The package's own folder is matched, not the
    # text "cnnctl/": a clone into a folder named cnnctl puts that in every path, torch's in .venv included.
    package = f'File "{Path(cnnctl.__file__).parent}{os.sep}'
    assert not [line for line in proc.stderr.splitlines() if line.strip().startswith(package)]


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def test_killed_rank_restarts_from_last_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "kill.yaml", CONFIG.format(val_split=0.1, epochs=8))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node=2", "--max-restarts=1", "-m", "cnnctl",
                             "train", str(cfg), "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out / "kill" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "no worker processes found"
    os.kill(workers[-1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "resuming" in stderr
    assert [int(r["epoch"]) for r in rows(out / "kill")] == list(range(1, 9))
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["kill"]
