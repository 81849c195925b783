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


@pytest.fixture
def cli():
    """Run cnnctl through its Typer app in-process; returns exit code, stdout and stderr apart."""
    from cnnctl.cli import app

    def run(*args: str) -> Result:
        runner = CliRunner()
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return run


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
