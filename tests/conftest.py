"""What the test files share: cnnctl run in-process (``cli``, ``invoke``) and as a subprocess (``run_cnnctl``), a tiny
config (``tiny_config``), runs trained once a session (``trained_run``, ``world``), hand-made checkpoints (``members``)
and the checks every refusal makes (``assert_refused``, ``error_line``, ``snapshot``). Each test file holds the tests
of one unit, named after its module (docs/architecture.md, Tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_NUM_THREADS", "2")


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(*args: str | Path) -> Result:
    """Run cnnctl through its Typer app in-process; returns exit code, stdout and stderr apart. The ``cli`` fixture
    for tests, this function for module- and session-scoped fixtures (which cannot ask for a function's fixture)."""
    from cnnctl.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli():
    """``invoke``: cnnctl in-process, through the same Typer app as the console script."""
    return invoke


def train_run(config: Path, out: Path, *args: str | Path) -> Path:
    """Train ``config`` through the CLI into ``out`` (with any further arguments); the run directory it printed."""
    result = invoke("train", config, "--out", out, *args)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def run_cnnctl(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> Result:
    """Run the installed console script in a subprocess (the real entry point)."""
    proc = subprocess.run([sys.executable, "-m", "cnnctl", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def explode_loss_from(monkeypatch: pytest.MonkeyPatch, call: int = 50) -> None:
    """Make training's loss the real cross-entropy turned to NaN from its ``call``-th use on (in a digits run with
    batch 32, epoch 2), as a diverging run would."""
    import torch

    class ExplodingLoss(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, logits, target):
            ExplodingLoss.calls += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if ExplodingLoss.calls >= call else loss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", ExplodingLoss)


# ---------------------------------------------------------------- a tiny config and runs trained once a session

# The smallest digits run worth training: a one-hidden-layer network, one epoch (under a second on 2 cores).
# A three-epoch LeNet-5 on digits with early stopping on: run resolution, early stopping.
LENET_DIGITS = """\
seed: 0
data: {dataset: digits, batch_size: 64}
model: {arch: lenet5}
optimizer: {name: adam, lr: 0.003}
train: {epochs: 3, threads: 1, early_stopping: {patience: 5}}
"""

TINY_CONFIG = """\
data: {dataset: digits, batch_size: 64}
model: {arch: custom, layers: [flatten, {linear: {out: 16}}, relu, linear]}
train: {epochs: 1}
"""


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    """``TINY_CONFIG`` as ``tmp_path/tiny.yaml``, for tests that train or refuse a run and need no particular config."""
    return write_config(tmp_path / "tiny.yaml", TINY_CONFIG)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One finished ``TINY_CONFIG`` run, trained through the CLI once a session for the tests that only read it.
    A test that writes into a run (a resume, an edited file) copies it first: ``shutil.copytree(trained_run, ...)``."""
    tmp = tmp_path_factory.mktemp("trained")
    return train_run(write_config(tmp / "tiny.yaml", TINY_CONFIG), tmp / "runs")


# An image-folder run of 3 channels: a world-readable ``base`` with cat/dog, apple/banana and a/b/c image folders.
WORLD_CONFIG = """\
name: pets
data: {dataset: imagefolder, root: %s, batch_size: 8, val_split: 0.2, test_split: 0.2}
model: {arch: custom, layers: [{conv: {out: 4, kernel: 3}}, relu, flatten, linear]}
train: {epochs: 1}
"""


@pytest.fixture(scope="session")
def world() -> Path:
    """A world-readable folder (``nobody`` must read it) with cat/dog, apple/banana and a/b/c image folders and one
    finished cat/dog run, ``runs/pets``, trained through the CLI once a session. Tests that change the run copy it."""
    import shutil
    import tempfile

    from tests.datafiles import write_image_folder

    base = Path(tempfile.mkdtemp(prefix="cnnctl-hostile-io-"))
    base.chmod(0o755)
    for name, classes in (("pets", ["cat", "dog"]), ("fruit", ["apple", "banana"]), ("three", ["a", "b", "c"])):
        write_image_folder(base / name, {c: 12 for c in classes}, channels=3, size=(12, 12))
    cfg = write_config(base / "pets.yaml", WORLD_CONFIG % (base / "pets"))
    result = run_cnnctl("train", cfg, "--out", base / "runs", cwd=base)
    assert result.exit_code == 0, result.output
    yield base
    shutil.rmtree(base, ignore_errors=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: equal before and after means nothing was written there."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(result: Result) -> str:
    """The first ``error:`` line of a failed command's stderr (there must be one, and no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines, result.output
    assert "Traceback" not in result.output
    return lines[0]


READ_ONLY = Path("/sys")  # mkdir and file creation fail there for every user, root included
read_only = pytest.mark.skipif(not READ_ONLY.is_dir() or os.access(READ_ONLY, os.W_OK) and os.geteuid() != 0,
                               reason="needs /sys (sysfs) as a location nobody can write")


# ---------------------------------------------------------------- hand-made checkpoints


@pytest.fixture(scope="session")
def members(tmp_path_factory):
    """A good (least squares) and a poor (random) digits classifier, as hand-made checkpoints (no training), with
    their weights and biases: ``[(path, weight, bias), ...]`` (tests/checkpoints.py)."""
    from tests.checkpoints import make_members

    return make_members(tmp_path_factory.mktemp("members"))


# ---------------------------------------------------------------- refusals of bad input

# A valid config for commands that only read it (summary) or refuse it before training.
GOOD_CONFIG = "data: {dataset: digits}\nmodel: {arch: lenet5}\ntrain: {epochs: 1}\n"


def assert_refused(result, *words: str, file: Path | None = None) -> str:
    """Exit 2, no traceback, nothing on stdout, a short message; returns its first line (which holds ``words``)."""
    stderr = result.stderr
    code = result.returncode if isinstance(result, subprocess.CompletedProcess) else result.exit_code
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr and result.stdout == ""
    assert len(stderr) < 2000, f"{len(stderr)} characters of message"
    first = stderr.splitlines()[0]
    for word in ([str(file)] if file else []) + list(words):
        assert word in first, (word, first)
    return first


def train_crashing_after(cli, monkeypatch: pytest.MonkeyPatch, cfg: Path, out: Path, step: int) -> None:
    """``cnnctl train CFG --out OUT`` that dies (KeyboardInterrupt, exit 130) right after saving last.pt at optimizer
    step ``step``: the process killed just after a checkpoint, in-process."""
    from cnnctl.training import state

    original = state.save_checkpoint

    def crashing_save(path, ckpt):
        original(path, ckpt)
        if ckpt["step"] == step and Path(path).name == "last.pt":
            raise KeyboardInterrupt  # stands for the process dying right after the save

    monkeypatch.setattr(state, "save_checkpoint", crashing_save)
    try:
        assert cli("train", cfg, "--out", out).exit_code == 130
    finally:
        monkeypatch.setattr(state, "save_checkpoint", original)
